"""Official checkpoints: URLs, checksums, cache directory and a resumable downloader.

``resolve_weights(source)`` turns a file path or a registry id (``"superpoint_lightglue"``)
into the path of a checkpoint on disk, downloading it into the cache when needed;
``load_checkpoint(path)`` reads it as a state dict on the CPU.

Cache: ``$FEATMATCH_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/featmatch`` (default
``~/.cache/featmatch``). Copies already in torch.hub's checkpoint directory (left there by
LightGlue, kornia or glue-factory) are used as they are. ``FEATMATCH_OFFLINE=1`` (or
``featmatch_core.weights.OFFLINE = True``) forbids any network access; a missing file then
raises :class:`WeightsUnavailableError` telling where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pickle
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

CACHE_ENV = "FEATMATCH_CACHE_DIR"
OFFLINE_ENV = "FEATMATCH_OFFLINE"
#: Module-level switch equivalent to FEATMATCH_OFFLINE=1 (either one forbids downloads).
OFFLINE: bool = False
DEFAULT_TIMEOUT = 30.0  # seconds per socket operation, not for the whole download
_CHUNK = 1 << 20
_USER_AGENT = "featmatch-weights/0.1 (python-urllib)"


class WeightsUnavailableError(RuntimeError):
    """A checkpoint is not on disk and could not (or may not) be downloaded."""


@dataclass(frozen=True)
class WeightSpec:
    """One official checkpoint.

    ``aliases`` are the names other libraries give the same file in torch.hub's
    checkpoint directory, so that an existing copy is found without downloading.
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    aliases: tuple[str, ...] = ()
    bundled: bool = False  # shipped inside the package (featmatch_core/weights/), never downloaded


_LG_RELEASE = "https://github.com/cvg/LightGlue/releases/download/v0.1_arxiv"
_HF = "https://huggingface.co/kornia"
_SG_REPO = "https://github.com/magicleap/SuperGluePretrainedNetwork/raw/master/models/weights"
_LOFTR_CMP = "https://cmp.felk.cvut.cz/~mishkdmy/models"


def _lightglue_spec(features: str, sha256: str | None = None, mirror: bool = True) -> WeightSpec:
    name = f"{features}_lightglue"
    urls = (f"{_LG_RELEASE}/{name}.pth",) + ((f"{_HF}/lightglue/resolve/main/{name}.pth",) if mirror else ())
    # The LightGlue package caches these as '<name>_v0-1_arxiv.pth' (older releases, through
    # a misplaced str.replace, as '<name>_v0-1_arxiv-pth'); kornia uses the URL's basename.
    return WeightSpec(f"{name}.pth", urls, sha256, aliases=(f"{name}_v0-1_arxiv.pth", f"{name}_v0-1_arxiv-pth"))


REGISTRY: dict[str, WeightSpec] = {
    # The two sha256 below were reported by a third-party build script and have NOT been
    # verified here against a download; a mismatch raises, so fix them if they prove wrong.
    "superpoint_v1": WeightSpec(
        "superpoint_v1.pth",
        (f"{_LG_RELEASE}/superpoint_v1.pth",),
        "52b6708629640ca883673b5d5c097c4ddad37d8048b33f09c8ca0d69db12c40e",
    ),
    "superpoint_lightglue": _lightglue_spec(
        "superpoint", "6ff7040d0a497fc6639337946d7538dae07428c18f77a067a0b5a960e7cc551a", mirror=False
    ),
    "disk_lightglue": _lightglue_spec("disk"),
    "aliked_lightglue": _lightglue_spec("aliked"),
    "sift_lightglue": _lightglue_spec("sift"),
    "aliked-n16": WeightSpec(
        "aliked-n16.pth",
        ("https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-n16.pth",
         f"{_HF}/aliked/resolve/main/aliked-n16.pth"),
    ),
    # Trained by this project (training/sift+lightglue-cpu.yaml) and shipped with the package,
    # so that a LightGlue pipeline works offline; see featmatch_core/weights/MODEL_CARD.md.
    "sift_lightglue_cpu": WeightSpec("sift_lightglue_cpu.pth", (), bundled=True),
    # Official SuperGlue weights (Magic Leap's non-commercial licence), committed in the reference repository.
    "superglue_indoor": WeightSpec("superglue_indoor.pth", (f"{_SG_REPO}/superglue_indoor.pth",)),
    "superglue_outdoor": WeightSpec("superglue_outdoor.pth", (f"{_SG_REPO}/superglue_outdoor.pth",)),
    # LoFTR as kornia hosts it (kornia.feature.LoFTR(pretrained=...)): the same files, under the
    # names torch.hub gives them from these URLs, are found in its cache.
    "loftr_outdoor": WeightSpec("loftr_outdoor.ckpt", (f"{_HF}/loftr/resolve/main/loftr_outdoor.ckpt",
                                                       f"{_LOFTR_CMP}/loftr_outdoor.ckpt")),
    "loftr_indoor": WeightSpec("loftr_indoor.ckpt", (f"{_HF}/loftr/resolve/main/loftr_indoor.ckpt",
                                                     f"{_LOFTR_CMP}/loftr_indoor.ckpt")),
    "loftr_indoor_new": WeightSpec("loftr_indoor_ds_new.ckpt",
                                   (f"{_HF}/loftr/resolve/main/loftr_indoor_ds_new.ckpt",
                                    f"{_LOFTR_CMP}/loftr_indoor_ds_new.ckpt")),
    # GlueStick (SuperPoint + LSD wireframe) trained on MegaDepth: a training state whose 'model'
    # entry holds the matcher under 'matcher.*' (URL of the reference's loading code; no sha256 published)
    "gluestick_md": WeightSpec(
        "checkpoint_GlueStick_MD.tar",
        ("https://github.com/cvg/GlueStick/releases/download/v0.1_arxiv/checkpoint_GlueStick_MD.tar",),
    ),
    "disk-depth": WeightSpec(
        "depth-save.pth",
        ("https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",
         f"{_HF}/disk/resolve/main/depth-save.pth"),
    ),
}


# ---- locations ---------------------------------------------------------------
def is_offline() -> bool:
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    return OFFLINE or value not in ("", "0", "false", "no", "off")


def cache_dir() -> Path:
    """Where downloads go (not created here: only a download creates it)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "featmatch"


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def bundled_dir() -> Path:
    """Checkpoints shipped inside the package."""
    return Path(__file__).parent / "weights"


def cache_path(weights_id: str) -> Path:
    """The path a registry checkpoint is downloaded to (and where to put it by hand)."""
    return cache_dir() / _spec(weights_id).filename


def find_cached(weights_id: str) -> Path | None:
    """An existing copy of a registry checkpoint: our cache first, then torch.hub's."""
    spec = _spec(weights_id)
    own = cache_dir() / spec.filename
    if own.is_file():
        return own
    hub = torch_hub_checkpoint_dir()
    for name in (spec.filename, *spec.aliases):
        candidate = hub / name
        if not candidate.is_file():
            continue
        # Another tool wrote this copy, possibly of another release: check it when we can.
        if spec.sha256 is not None and sha256sum(candidate) != spec.sha256:
            logger.warning("ignoring %s: its sha256 differs from the one recorded for '%s'", candidate, weights_id)
            continue
        return candidate
    return None


def _spec(weights_id: str) -> WeightSpec:
    try:
        return REGISTRY[weights_id]
    except KeyError:
        raise ValueError(_unknown_message(weights_id)) from None


def _unknown_message(source: str) -> str:
    return (f"weights '{source}' is neither an existing file nor a known checkpoint id. "
            f"Known ids: {', '.join(sorted(REGISTRY))}")


# ---- resolving -----------------------------------------------------------------
def resolve_weights(source: str, download: bool = True) -> Path:
    """Path of the checkpoint named by ``source``: a file path, or a registry id.

    A registry id is looked up in the caches and downloaded when ``download`` is true and
    FEATMATCH_OFFLINE is not set; otherwise :class:`WeightsUnavailableError` is raised.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if source not in REGISTRY:
        raise ValueError(_unknown_message(source))
    if REGISTRY[source].bundled:
        bundled = bundled_dir() / REGISTRY[source].filename
        if not bundled.is_file():
            raise WeightsUnavailableError(f"bundled checkpoint '{source}' is missing from this installation "
                                          f"({bundled}); reinstall the package")
        return bundled
    found = find_cached(source)
    if found is not None:
        return found
    spec = REGISTRY[source]
    dest = cache_dir() / spec.filename
    if not download or is_offline():
        why = f"{OFFLINE_ENV} is set" if is_offline() else "downloading is disabled (download=False)"
        raise WeightsUnavailableError(_manual_instructions(source, spec, dest, why))
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Two nodes launched together may ask for the same file: one downloads, the other waits.
    with _file_lock(dest.with_name(dest.name + ".lock")):
        found = find_cached(source)
        if found is not None:
            return found
        try:
            _download_spec(spec, dest)
        except WeightsUnavailableError as err:
            raise WeightsUnavailableError(_manual_instructions(source, spec, dest, str(err))) from err
    return dest


def _download_spec(spec: WeightSpec, dest: Path) -> Path:
    # resolve_weights' ``download`` argument shadows the function of that name.
    return download(spec.urls, dest, sha256=spec.sha256)


def _manual_instructions(weights_id: str, spec: WeightSpec, dest: Path, why: str) -> str:
    urls = "\n".join(f"    {url}" for url in spec.urls)
    return (
        f"checkpoint '{weights_id}' ({spec.filename}) is not available: {why}\n"
        f"  Download it from one of:\n{urls}\n"
        f"  and put it at: {dest}\n"
        f"  (the directory is ${CACHE_ENV}, default $XDG_CACHE_HOME/featmatch or ~/.cache/featmatch;\n"
        f"  a copy under {torch_hub_checkpoint_dir()} is also found), or pass the file's path as weights."
    )


@contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock, released by the OS if the process dies (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---- downloading ---------------------------------------------------------------
def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _ChecksumError(ValueError):
    pass


def download(urls: Sequence[str], dest: Path, sha256: str | None = None, progress: bool = True,
             timeout: float | None = None) -> Path:
    """Download the first of ``urls`` that works to ``dest``.

    Bytes go to ``dest + '.part'``, which a later call resumes with an HTTP Range request;
    ``dest`` only appears, by an atomic rename, once the file is complete and its sha256
    (when given) matches. Network failures: :class:`WeightsUnavailableError` listing each
    URL's error. Wrong checksum from every URL that answered: ValueError. ``timeout``
    (default ``DEFAULT_TIMEOUT``) bounds each connect and read, not the whole transfer.
    """
    dest = Path(dest)
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    urls = [urls] if isinstance(urls, str) else list(urls)
    if is_offline():
        raise WeightsUnavailableError(f"{OFFLINE_ENV} is set: not downloading {dest.name} from {', '.join(urls)}")
    if not urls:
        raise ValueError(f"no URL to download {dest.name} from")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    errors: list[str] = []
    bad_checksum: list[str] = []
    for url in urls:
        try:
            _fetch_verified(url, part, sha256, progress, timeout)
        except _ChecksumError as err:
            bad_checksum.append(str(err))
            continue
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError is an OSError
            logger.warning("download of %s failed: %s", url, err)
            errors.append(f"{url}: {err}")
            continue
        os.replace(part, dest)
        if sha256 is None:
            logger.info("downloaded %s; sha256 %s is not recorded, add it to featmatch_core.weights.REGISTRY "
                        "to have future downloads verified", dest, sha256sum(dest))
        else:
            logger.info("downloaded %s (sha256 verified)", dest)
        return dest
    if bad_checksum:
        raise ValueError("downloaded file failed its checksum:\n  " + "\n  ".join(bad_checksum + errors))
    raise WeightsUnavailableError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))


def _fetch_verified(url: str, part: Path, sha256: str | None, progress: bool, timeout: float) -> None:
    resumed = _fetch(url, part, progress, timeout)
    if sha256 is None:
        return
    got = sha256sum(part)
    if got == sha256:
        return
    part.unlink()
    if resumed:
        # The stale .part may have held the bad bytes: one clean retry from zero.
        logger.warning("checksum mismatch after resuming %s; downloading it again from the start", url)
        _fetch(url, part, progress, timeout)
        got = sha256sum(part)
        if got == sha256:
            return
        part.unlink()
    raise _ChecksumError(f"{url}: expected sha256 {sha256}, got {got}")


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> bool:
    """Stream ``url`` into ``part``, resuming it if present. Returns whether it resumed.

    A .part left by an interrupted run is reused across mirrors too: they serve the same
    file, and the checksum (when recorded) or load_checkpoint catches a mismatch.
    """
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        # Range not satisfiable: the .part is already complete, or longer than the file.
        total = _content_range_total(err.headers.get("Content-Range"))
        if total == offset:
            return True
        part.unlink()
        return _fetch(url, part, progress, timeout)
    with response:
        resumed = bool(offset) and response.status == 206
        if resumed:
            start = _content_range_start(response.headers.get("Content-Range"))
            if start != offset:
                raise OSError(f"server resumed at byte {start} instead of {offset}")
        elif offset:
            logger.info("%s ignored the Range request; restarting %s from zero", url, part.name)
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        written = offset
        with open(part, "ab" if resumed else "wb") as out, _progress_bar(expected, offset, part, progress) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    if expected is not None and written != expected:
        # Keep the .part: the next attempt resumes from here.
        raise OSError(f"connection closed after {written} of {expected} bytes")
    return resumed


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", value or "")
    return int(match.group(1)) if match else None


def _content_range_total(value: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", value or "")
    return int(match.group(1)) if match else None


def _progress_bar(total: int | None, initial: int, part: Path, enabled: bool) -> Any:
    from tqdm import tqdm

    name = part.name.removesuffix(".part")
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=not enabled, leave=False)


# ---- loading -------------------------------------------------------------------
_WRAPPER_KEYS = ("state_dict", "model")  # not 'extractor': the DISK model unwraps that itself


def _is_flat_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU (tensors only: ``weights_only=True``) as a state dict.

    Training checkpoints that wrap the weights under 'state_dict' or 'model' are unwrapped.
    Released training states also pickle objects that are not tensors (a Lightning
    checkpoint's hyper-parameters, numpy scalars in logged metrics): those load as inert
    :class:`PickledObject` stand-ins, never executed, so the tensors can still be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = _torch_load_tensors(path)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {reason}). The file is probably "
            "truncated or corrupt (or not a plain-tensor checkpoint): delete it and it will be "
            "downloaded again, or download it by hand."
        ) from err
    while not _is_flat_tensor_dict(obj) and isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):  # bad file content, like a corrupt file: ValueError, not TypeError
        raise ValueError(  # noqa: TRY004
            f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


class PickledObject:
    """Stand-in for an object of a class that a checkpoint pickled and ``weights_only`` loading
    does not allow: it keeps the arguments and state it was rebuilt from and runs nothing."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.qualified_name}>"


def _torch_load_tensors(path: Path) -> Any:
    """``torch.load(weights_only=True)``; the globals it refuses are swapped for stand-ins."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        refused = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        if not refused:
            raise
    stand_ins = [(type("PickledObject", (PickledObject,), {"qualified_name": name}), name) for name in refused]
    with torch.serialization.safe_globals(stand_ins):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    logger.info("%s: replaced %d pickled non-tensor types by inert stand-ins: %s", path.name, len(refused),
                ", ".join(refused[:5]))
    return obj
