"""Fetching dataset archives: download (resumable, verified) then safe, atomic extraction.

The transfer itself is :func:`featmatch_core.weights.download` (``.part`` file, HTTP Range
resume, sha256, atomic rename, ``FEATMATCH_OFFLINE``); this module adds the archive side:

- :func:`fetch_archive` downloads an archive next to the folder it is extracted into,
  refuses members that would land outside it (absolute paths, ``..``, links pointing out,
  device files), extracts into a temporary folder and renames the result into place, then
  records a marker so that later calls neither download nor extract again;
- :func:`ensure_dataset` checks that a dataset folder holds the paths a loader needs and
  names exactly what is missing (fetching first when allowed).

Offline (or on a failed download) the error is a :class:`DatasetUnavailableError` naming the
URL, the archive's file name and the folder to extract it into. An archive put at that place
by hand is extracted without any network access.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

from .. import weights
from ..weights import OFFLINE_ENV, WeightsUnavailableError, is_offline

logger = logging.getLogger(__name__)



def marker_path(dest_dir: Path, archive_name: str) -> Path:
    """The file recording that ``archive_name`` was extracted into ``dest_dir`` (one per archive, so
    that several datasets can share a folder)."""
    return dest_dir / f".featmatch-extracted-{archive_name}.json"


class DatasetUnavailableError(RuntimeError):
    """A dataset is not on disk and could not (or may not) be downloaded."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder (or is a device file)."""


def archive_name_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]


def manual_instructions(urls: Sequence[str], archive_name: str, dest_dir: Path, archive_path: Path | None = None
                        ) -> str:
    """How to get a dataset by hand: the URL, the archive name, where to extract it (and, when
    ``archive_path`` is given, where to drop the archive for fetch_archive to extract it)."""
    url_lines = "\n".join(f"    {u}" for u in urls)
    if archive_name.endswith(".zip"):
        command = f"unzip {archive_name} -d {dest_dir}"
    else:
        command = f"tar -xf {archive_name} -C {dest_dir}"
    text = (f"  Download {archive_name} from:\n{url_lines}\n"
            f"  and extract it into {dest_dir}\n"
            f"    (mkdir -p {dest_dir} && {command})")
    if archive_path is not None:
        text += f",\n  or put {archive_name} at {archive_path} and run again: it is then extracted without network."
    return text


def fetch_archive(urls: str | Sequence[str], sha256: str | None, dest_dir: str | Path, *,
                  archive_name: str | None = None, progress: bool = True, keep_archive: bool = False,
                  timeout: float | None = None, what: str = "dataset") -> Path:
    """Download an archive (tar, tar.gz/bz2/xz or zip) and extract it into ``dest_dir``.

    The archive is written to ``dest_dir``'s parent (same file system, so renames are atomic)
    and deleted after extraction unless ``keep_archive``. Top-level entries of the archive
    appear in ``dest_dir`` by rename once fully extracted; an entry that already exists
    there is an error (a half-extracted copy must be removed by hand, never merged).
    Returns ``dest_dir``. A second call finds the marker file (:func:`marker_path`) and returns at once.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls and archive_name is None:
        raise ValueError("fetch_archive needs at least one URL")
    dest_dir = Path(dest_dir).expanduser()
    name = archive_name or archive_name_of(urls[0])
    archive = dest_dir.parent / name
    marker = marker_path(dest_dir, name)
    if _extracted(marker):
        return dest_dir
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    # Two evaluations started together: one downloads and extracts, the other waits.
    with weights._file_lock(dest_dir.parent / f".{dest_dir.name}.lock"):
        if _extracted(marker):
            return dest_dir
        if archive.is_file():  # weights.download renames it into place only when complete
            if sha256 is not None and weights.sha256sum(archive) != sha256:
                raise ValueError(f"{archive} does not have the expected sha256 {sha256}; delete it to download "
                                 "it again")
        else:
            _download_archive(urls, sha256, archive, dest_dir, progress, timeout, what)
        entries = extract_archive(archive, dest_dir, progress=progress)
        record = {"archive": name, "urls": urls, "sha256": sha256, "entries": entries}
        marker.write_text(json.dumps(record, indent=2) + "\n")
        if not keep_archive:
            archive.unlink()
    logger.info("%s extracted into %s", what, dest_dir)
    return dest_dir


def _extracted(marker: Path) -> bool:
    """Whether the marker exists and every top-level entry it lists is still there."""
    if not marker.is_file():
        return False
    try:
        entries = json.loads(marker.read_text()).get("entries", [])
    except (ValueError, AttributeError):
        return False
    missing = [e for e in entries if not (marker.parent / e).exists()]
    if missing:
        logger.warning("%s lists %s, which no longer exist(s): extracting again", marker, ", ".join(missing))
    return not missing


def _download_archive(urls: list[str], sha256: str | None, archive: Path, dest_dir: Path,
                      progress: bool, timeout: float | None, what: str) -> None:
    how = manual_instructions(urls, archive.name, dest_dir, archive)
    if is_offline():
        raise DatasetUnavailableError(f"{what} is not available at {dest_dir}: {OFFLINE_ENV} is set "
                                      f"(no download).\n{how}")
    logger.info("downloading %s (%s) from %s", what, archive.name, urls[0])
    try:
        weights.download(urls, archive, sha256=sha256, progress=progress, timeout=timeout)
    except WeightsUnavailableError as err:
        raise DatasetUnavailableError(f"{what} could not be downloaded: {err}\n{how}") from err


# ---- extraction -----------------------------------------------------------------
def _safe_relative(name: str, archive: Path) -> PurePosixPath:
    """The member path, or UnsafeArchiveError if it is absolute or climbs out with '..'."""
    clean = name.replace("\\", "/")
    path = PurePosixPath(clean)
    if clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: refusing member '{name}' (absolute path or '..' would "
                                 "write outside the extraction folder); the archive is not trustworthy, delete it")
    return path


def _inside(base: PurePosixPath, target: str) -> bool:
    """Whether ``target`` (relative to ``base``, '..' resolved lexically) stays inside the root."""
    parts: list[str] = []
    for part in (base / target).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return False
            parts.pop()
        else:
            parts.append(part)
    return True


def _check_tar(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        path = _safe_relative(member.name, archive)
        if member.issym() or member.islnk():
            # Symlink targets are relative to the link's folder, hard-link targets to the root.
            base = path.parent if member.issym() else PurePosixPath()
            if member.linkname.startswith("/") or not _inside(base, member.linkname):
                raise UnsafeArchiveError(f"{archive}: refusing link '{member.name}' -> '{member.linkname}' "
                                         "(points outside the extraction folder)")
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: refusing member '{member.name}' (device, fifo or other "
                                     "special file)")
    return members


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for info in members:
        _safe_relative(info.filename, archive)
        mode = info.external_attr >> 16
        if mode and stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"{archive}: refusing symbolic link '{info.filename}' in a zip archive")
    return members


def extract_archive(archive: str | Path, dest_dir: str | Path, progress: bool = True) -> list[str]:
    """Extract a tar or zip archive into ``dest_dir`` safely and atomically (see fetch_archive).

    Returns the names of the archive's top-level entries, now in ``dest_dir``.
    """
    from tqdm import tqdm

    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.extract-", dir=dest_dir.parent))
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                members = _check_tar(tar, archive)
                for member in tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=not progress,
                                   leave=False):
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: a second line of defence
                        tar.extract(member, tmp, filter="data")
                    else:  # pragma: no cover - older Pythons; members were checked above
                        tar.extract(member, tmp)
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = _check_zip(zf, archive)
                for info in tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=not progress,
                                 leave=False):
                    zf.extract(info, tmp)
        else:
            raise ValueError(f"{archive} is neither a tar nor a zip archive (truncated or wrong file?); "
                             "delete it to download it again")
        entries = _move_into(tmp, dest_dir)
    except tarfile.TarError as err:
        raise ValueError(f"{archive}: corrupt tar archive ({err}); delete it to download it again") from err
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive}: corrupt zip archive ({err}); delete it to download it again") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entries


def _move_into(tmp: Path, dest_dir: Path) -> list[str]:
    entries = sorted(tmp.iterdir())
    names = [e.name for e in entries]
    if not dest_dir.exists():
        os.replace(tmp, dest_dir)  # the whole folder appears at once
        return names
    clashes = [e.name for e in entries if (dest_dir / e.name).exists()]
    if clashes:
        raise DatasetUnavailableError(
            f"cannot extract into {dest_dir}: {', '.join(clashes)} already exist(s) there, probably an "
            "incomplete copy; remove it (or complete it by hand) and run again")
    for entry in entries:
        os.replace(entry, dest_dir / entry.name)
    return names


# ---- layout checks --------------------------------------------------------------
def missing_paths(root: Path, required_paths: Iterable[str | Path]) -> list[Path]:
    return [root / p for p in required_paths if not (root / p).exists()]


def ensure_archive_dataset(parent: Path, required_paths: Iterable[str | Path], url: str, sha256: str | None, *,
                           download: bool, what: str) -> Path:
    """:func:`ensure_dataset` for a dataset distributed as one archive (``url``) extracted into
    ``parent``: fetched when ``download`` is true; otherwise (and offline) the error says how to get
    it by hand (and to set ``download=true``)."""
    archive = archive_name_of(url)
    if download:
        how = manual_instructions([url], archive, parent, parent.parent / archive)
        fetch = lambda: fetch_archive(url, sha256, parent, what=what)  # noqa: E731
    else:
        how = "  Set download=true to fetch it automatically, or:\n" + manual_instructions([url], archive, parent)
        fetch = None
    return ensure_dataset(parent, required_paths, fetch, what=what, how=how)


def ensure_dataset(root: str | Path, required_paths: Iterable[str | Path],
                   fetch: Callable[[], object] | None = None, *, what: str = "dataset",
                   how: str | None = None) -> Path:
    """Check that ``root`` holds every path of ``required_paths`` (relative to it).

    When some are missing and ``fetch`` is given, call it (it downloads and extracts, and
    raises DatasetUnavailableError offline) and check again. Still missing: raise
    :class:`DatasetUnavailableError` listing the missing paths and ``how`` to get them.
    """
    root = Path(root)
    required = list(required_paths)
    missing = missing_paths(root, required)
    if not missing:
        return root
    if fetch is not None:
        fetch()
        missing = missing_paths(root, required)
        if not missing:
            return root
    shown = "\n".join(f"    {p}" for p in missing[:10])
    more = f"\n    ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    state = "does not exist" if not root.exists() else "is incomplete"
    message = f"{what} at {root} {state}; missing:\n{shown}{more}"
    if how:
        message += f"\n{how}"
    raise DatasetUnavailableError(message)
