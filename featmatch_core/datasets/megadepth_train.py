"""MegaDepth for training: pairs sampled by covisibility from posed scenes, depth-based ground truth.

Layout (Glue Factory's, i.e. D2-Net's undistorted preprocessing of MegaDepth v1)::

    <root>/megadepth/                          root may also be the megadepth folder itself
        Undistorted_SfM/<scene>/images/<image>.jpg
        depth_undistorted/<scene>/<image stem>.h5   dataset 'depth' (metres up to scale, 0 = invalid),
                                                    the size of its image
        scene_info/<scene>.npz                      image_paths, depth_paths, intrinsics, poses,
                                                    overlap_matrix (pickled object arrays)

In ``scene_info``: ``image_paths[i]`` is relative to the megadepth folder (None: view not
usable), only the None-ness of ``depth_paths[i]`` is used (the map is read from
``depth_undistorted``), ``intrinsics[i]`` is a 3x3 K in COLMAP's pixel convention (converted
as for MegaDepth-1500, see :mod:`.megadepth`), ``poses[i]`` the 4x4 (or 16 values)
world-to-camera transform and ``overlap_matrix[i, j]`` the fraction of SfM points the two
views share (-1: unknown). The files are pickles: load only trusted copies.

Sampling: the candidate pairs of a scene are the usable views with ``min_overlap <= overlap <=
max_overlap``; ``num_per_scene`` of them are drawn, spread evenly over ``num_overlap_bins``
equal overlap bins, from a generator seeded with (seed, epoch, scene). ``set_epoch`` draws
the pairs of another epoch; the number of pairs never changes, so samplers and resuming
stay exact. Views keep their aspect ratio (long side ``resize``) and are padded to ``resize``
x ``resize`` in the training batch (depth 0 = invalid there).

Features: computed in the dataset by a frozen extractor (as :mod:`.homographies`), or read
from per-scene h5 files written by ``python -m featmatch_core.scripts.export_megadepth``
(``load_features: {do: true, path: FOLDER}``); both give identical tensors.

    train, val = build_megadepth_datasets({"root": "data/", "features": {"name": "sift", ...}})
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config import ConfigError, ConfLike, merge_strict, to_container
from ..geometry.depth import invert_transform
from ..weights import OFFLINE_ENV, is_offline
from .base import BASE_CONF, fit_depth, join_errors, load_view, resized_size, scaling_matrix
from .download import DatasetUnavailableError, fetch_archive, manual_instructions, missing_paths
from .megadepth import MegaDepth1500, read_depth_h5

logger = logging.getLogger(__name__)

FOLDER = "megadepth"
IMAGES, DEPTHS, INFOS = "Undistorted_SfM", "depth_undistorted", "scene_info"
PARTS = (IMAGES, DEPTHS, INFOS)
# Glue Factory's copies of D2-Net's undistorted MegaDepth v1 (images, depth, scene info).
ARCHIVE_URL = "https://cvg-data.inf.ethz.ch/megadepth/{}.tar.gz"
UPSTREAM = "https://www.cs.cornell.edu/projects/megadepth/"  # the original MegaDepth v1 release
SCENE_LIST_DIR = Path(__file__).with_name("megadepth_scenes")
TRAIN_SCENES, VAL_SCENES = "train_scenes_clean.txt", "valid_scenes_clean.txt"
FEATURE_FORMAT = "featmatch-megadepth-features-1"
FEATURE_KEYS = ("keypoints", "keypoint_scores", "descriptors", "scales", "oris")


class MegaDepthUnavailableError(DatasetUnavailableError, FileNotFoundError):
    """MegaDepth (or its cached features) is not on disk; a FileNotFoundError too, so that the
    training command reports it as an error message, not a traceback."""


# ---- scene lists and pair sampling ---------------------------------------------------
def plain_value(value: Any) -> Any:
    """A config value as plain Python (lists of a DictConfig are ListConfig)."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def read_scene_list(spec: str | Sequence[str]) -> list[str]:
    """Scene ids from a list shipped with the package (by file name), a .txt path, or a list."""
    if isinstance(spec, str):
        path = SCENE_LIST_DIR / spec if (SCENE_LIST_DIR / spec).is_file() else Path(spec).expanduser()
        if not path.is_file():
            shipped = sorted(p.name for p in SCENE_LIST_DIR.glob("*.txt"))
            raise ConfigError(f"MegaDepth: no scene list '{spec}': give one of {shipped}, the path of a "
                              "text file (one scene id a line) or a list of scene ids")
        lines = (line.strip() for line in path.read_text().splitlines())
        scenes = [line for line in lines if line and not line.startswith("#")]
    else:
        scenes = list(spec)
        bad = [s for s in scenes if not isinstance(s, str)]
        if bad:
            raise ConfigError(f"MegaDepth: scene ids must be strings, got {bad[:5]} (quote them in YAML: "
                              "'0015', or YAML reads 0015 as a number)")
    if not scenes:
        raise ConfigError(f"MegaDepth: the scene list {spec!r} is empty")
    return sorted(set(scenes))


def spread_quota(total: int, capacities: Sequence[int]) -> list[int]:
    """Split ``total`` as evenly as possible over bins holding ``capacities`` items; what a bin
    cannot take goes to the others. Depends only on the counts (so dataset lengths are fixed)."""
    quotas = [0] * len(capacities)
    remaining = min(total, sum(capacities))
    open_bins = [b for b, cap in enumerate(capacities) if cap > 0]
    while remaining > 0:
        share = remaining // len(open_bins)
        if share == 0:  # fewer items left than bins: one more to each of the first bins
            for b in open_bins[:remaining]:
                quotas[b] += 1
            break
        for b in open_bins:
            added = min(share, capacities[b] - quotas[b])
            quotas[b] += added
            remaining -= added
        open_bins = [b for b in open_bins if quotas[b] < capacities[b]]
    return quotas


def candidate_pairs(overlap: np.ndarray, usable: np.ndarray, lo: float, hi: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) view indices i < j of usable views with ``lo <= overlap <= hi``, and their overlaps."""
    ok = (overlap >= lo) & (overlap <= hi) & usable[:, None] & usable[None, :]
    i, j = np.nonzero(np.triu(ok, 1))
    return np.stack([i, j], -1).astype(np.int32), overlap[i, j].astype(np.float32)


def sample_pairs(overlaps: np.ndarray, num: int | None, lo: float, hi: float, num_bins: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the chosen candidates: ``num`` spread over the overlap bins (None: all)."""
    if num is None or num >= len(overlaps):
        return np.arange(len(overlaps))
    if num == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.linspace(lo, hi, num_bins + 1)
    which = np.clip(np.searchsorted(edges, overlaps, side="right") - 1, 0, num_bins - 1)
    members = [np.flatnonzero(which == b) for b in range(num_bins)]
    quotas = spread_quota(num, [len(m) for m in members])
    chosen = [rng.choice(m, q, replace=False) for m, q in zip(members, quotas, strict=True) if q]
    return np.sort(np.concatenate(chosen))


def pair_seed(seed: int, epoch: int, scene: str) -> np.random.Generator:
    """One stream per (seed, epoch, scene): a scene's pairs do not depend on the other scenes."""
    return np.random.default_rng([seed, epoch, zlib.crc32(scene.encode())])


# ---- scene info --------------------------------------------------------------------------
@dataclass
class SceneInfo:
    image_paths: list[str | None]  # relative to the megadepth folder
    intrinsics: np.ndarray  # (N, 3, 3), NaN for unusable views
    poses: np.ndarray  # (N, 4, 4) world-to-camera, NaN for unusable views
    usable: np.ndarray  # (N,) image, depth, K and pose all known
    pairs: np.ndarray  # (P, 2) candidate pairs (view indices)
    overlaps: np.ndarray  # (P,)


def _matrices(values: np.ndarray, shape: tuple[int, int], path: Path, key: str) -> np.ndarray:
    out = np.full((len(values), *shape), np.nan)
    for k, value in enumerate(values):
        if value is not None:
            array = np.asarray(value, dtype=np.float64)
            if array.size != shape[0] * shape[1]:
                raise ValueError(f"{path}: {key}[{k}] has {array.size} values, expected "
                                 f"{shape[0]}x{shape[1]}")
            out[k] = array.reshape(shape)
    return out


def read_scene_info(path: Path, min_overlap: float, max_overlap: float, with_pairs: bool = True) -> SceneInfo:
    """The parts of a D2-Net/Glue Factory ``scene_info/<scene>.npz`` that training needs
    (``with_pairs=False``: the views only, no candidate pairs)."""
    with np.load(str(path), allow_pickle=True) as npz:
        missing = [k for k in ("image_paths", "depth_paths", "intrinsics", "poses", "overlap_matrix")
                   if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing {missing} (has {sorted(npz.files)})")
        images = [None if p is None else str(p) for p in npz["image_paths"]]
        depths = npz["depth_paths"]
        intrinsics = _matrices(npz["intrinsics"], (3, 3), path, "intrinsics")
        poses = _matrices(npz["poses"], (4, 4), path, "poses")
        overlap = np.asarray(npz["overlap_matrix"], dtype=np.float64)
    n = len(images)
    if overlap.shape != (n, n) or len(depths) != n or len(intrinsics) != n or len(poses) != n:
        raise ValueError(f"{path}: {n} image_paths but depth_paths {len(depths)}, intrinsics "
                         f"{len(intrinsics)}, poses {len(poses)}, overlap_matrix {overlap.shape}")
    usable = np.array([img is not None and dep is not None for img, dep in zip(images, depths, strict=True)],
                      dtype=bool)
    usable &= np.isfinite(intrinsics).all((1, 2)) & np.isfinite(poses).all((1, 2))
    if with_pairs:
        pairs, overlaps = candidate_pairs(overlap, usable, min_overlap, max_overlap)
    else:
        pairs, overlaps = np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
    return SceneInfo(images, intrinsics, poses, usable, pairs, overlaps)


def sized_view(size: tuple[int, int], resize: int | None, side: str) -> dict[str, Any]:
    """What :func:`load_view` returns about sizes, for an image not read (its size known)."""
    new_size = resized_size(size, resize, side)
    return {"image": None, "image_size": (int(new_size[0]), int(new_size[1])),
            "original_image_size": (int(size[0]), int(size[1])), "scale": scaling_matrix(size, new_size),
            "error": None}


# ---- the pair dataset (evaluation-style items) ---------------------------------------------
class MegaDepthPairs(MegaDepth1500):
    """Pairs sampled from MegaDepth scenes; items as every evaluation dataset's (see :mod:`.base`):
    images, ``K0``/``K1`` of the returned images, ``T_0to1``, ``depth0``/``depth1``, plus
    ``overlap``. Shares MegaDepth-1500's K convention handling and depth reading."""

    default_conf: ClassVar[dict[str, Any]] = {
        **BASE_CONF,
        "resize": 1024,
        "resize_side": "long",
        "k_convention": "colmap",  # colmap: K as in scene_info, converted to OpenCV pixels
        "scenes": None,  # a list shipped with the package, a .txt path, or a list of ids (None: validation)
        "num_per_scene": 50,  # pairs drawn per scene and epoch (None: every candidate; 0: views only)
        "min_overlap": 0.1,
        "max_overlap": 0.7,
        "num_overlap_bins": 1,
        "seed": 0,
        "read_image": True,  # False: sizes from the depth maps (features come from a cache)
    }
    dirname = FOLDER

    def _check_conf(self) -> None:
        super()._check_conf()
        c = self.conf
        if not 0.0 <= c.min_overlap <= c.max_overlap <= 1.0:
            raise ConfigError(f"MegaDepth: need 0 <= min_overlap <= max_overlap <= 1, got "
                              f"[{c.min_overlap}, {c.max_overlap}]")
        bins = c.num_overlap_bins
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ConfigError(f"MegaDepth: num_overlap_bins must be an integer >= 1, got {bins!r}")
        n = c.num_per_scene
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ConfigError(f"MegaDepth: num_per_scene must be null or an integer >= 0, got {n!r}")

    def _init(self) -> None:
        inside = (self.root / INFOS).is_dir() or self.root.name == FOLDER  # root is megadepth/ itself
        self.folder = self.root if inside else self.root / FOLDER
        self._ensure_layout()
        self.depth_dir = self.folder / DEPTHS  # read by MegaDepth1500._depth
        self.infos: dict[str, SceneInfo] = {}
        wanted = read_scene_list(plain_value(self.conf.scenes) or VAL_SCENES)
        absent = [s for s in wanted if not (self.folder / INFOS / f"{s}.npz").is_file()]
        if len(absent) == len(wanted):
            raise MegaDepthUnavailableError(f"MegaDepth: none of the {len(wanted)} scenes {wanted[:5]} has a "
                                            f"scene info file in {self.folder / INFOS}")
        if absent:
            logger.warning("MegaDepth: %d of %d scenes have no scene info in %s and are skipped: %s",
                           len(absent), len(wanted), self.folder / INFOS, ", ".join(absent[:20]))
        for scene in (s for s in wanted if s not in absent):
            self.infos[scene] = read_scene_info(self.folder / INFOS / f"{scene}.npz", self.conf.min_overlap,
                                                self.conf.max_overlap, self.conf.num_per_scene != 0)
        self.scenes = list(self.infos)
        self.epoch = 0
        self.items = self.sample(0)
        if not self.items and self.conf.num_per_scene != 0:
            lo, hi = self.conf.min_overlap, self.conf.max_overlap
            raise ConfigError(f"MegaDepth: no pair of usable views has an overlap in [{lo}, {hi}] in the "
                              f"scenes {self.scenes[:10]}")

    def _ensure_layout(self) -> None:
        """Fetch the missing archives (when allowed), else name each one and where it goes."""
        missing = [p.name for p in missing_paths(self.folder, PARTS)]
        if not missing:
            return
        errors = []
        if self.conf.download:
            if not is_offline():
                logger.warning("MegaDepth is missing at %s (%s): downloading it, hundreds of GB "
                               "(data.download=false to stop this)", self.folder, ", ".join(missing))
            for part in missing:  # downloaded, or extracted from an archive put beside the folder by hand
                try:
                    fetch_archive(ARCHIVE_URL.format(part), None, self.folder, what=f"MegaDepth {part}")
                except DatasetUnavailableError as err:
                    errors.append(err)
            missing = [p.name for p in missing_paths(self.folder, PARTS)]
            if not missing:
                return
        archive_dir = self.folder.parent if self.conf.download else None
        how = "\n".join(manual_instructions([ARCHIVE_URL.format(p)], f"{p}.tar.gz", self.folder,
                                            archive_dir / f"{p}.tar.gz" if archive_dir else None)
                        for p in missing)
        if not self.conf.download:
            reason = "download=false"
        elif is_offline():
            reason = f"{OFFLINE_ENV} is set: no download"
        else:
            reason = f"download failed: {str(errors[0]).splitlines()[0]}" if errors else "incomplete archives"
        raise MegaDepthUnavailableError(
            f"MegaDepth training data is not at {self.folder} ({reason}); missing: {', '.join(missing)}.\n"
            f"{how}\n"
            f"  (hundreds of GB in all; the images are D2-Net's undistorted MegaDepth v1, {UPSTREAM}). "
            "Or point data.root at the folder holding megadepth/.")

    # ---- pairs -----------------------------------------------------------------------------
    def sample(self, epoch: int) -> list[tuple[str, int, int, float]]:
        """The pairs of ``epoch``: (scene, view i, view j, overlap), scene by scene."""
        c = self.conf
        items = []
        for scene, info in self.infos.items():
            rng = pair_seed(int(c.seed), epoch, scene)
            chosen = sample_pairs(info.overlaps, c.num_per_scene, c.min_overlap, c.max_overlap,
                                  int(c.num_overlap_bins), rng)
            swap = rng.random(len(chosen)) < 0.5  # either view may come first
            for k, flip in zip(chosen, swap, strict=True):
                i, j = (int(v) for v in info.pairs[k][::-1 if flip else 1])
                items.append((scene, i, j, float(info.overlaps[k])))
        return items

    def set_epoch(self, epoch: int) -> None:
        """Draw the pairs of ``epoch`` (same count; deterministic given the seed)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.items = self.sample(self.epoch)

    def __len__(self) -> int:
        return len(self.items)

    def views(self, scene: str) -> list[int]:
        """Indices of the usable views of ``scene`` (the ones pairs are made of)."""
        return [int(k) for k in np.flatnonzero(self.infos[scene].usable)]

    def image_name(self, scene: str, view: int) -> str:
        return Path(self.infos[scene].image_paths[view]).name

    def pair_name(self, index: int) -> str:
        scene, i, j, _ = self.items[index]
        return f"{scene}/{Path(self.image_name(scene, i)).stem}-{Path(self.image_name(scene, j)).stem}"

    def load_image(self, scene: str, view: int) -> dict[str, Any]:
        """One view read and resized by :func:`load_view` (never raises; see its ``error``)."""
        return load_view(self.folder / self.infos[scene].image_paths[view], self.conf.resize,
                         self.conf.resize_side)

    def read_view(self, scene: str, view: int) -> tuple[dict[str, Any], np.ndarray | None, str | None]:
        """(view as :func:`load_view` returns it, depth resized like it, error) of one view."""
        depth_name = f"{scene}/{self.image_name(scene, view)}"  # depth_undistorted/<scene>/<stem>.h5
        if self.conf.read_image:
            loaded = self.load_image(scene, view)
            depth, error = self._depth(depth_name, loaded)
            return loaded, depth, error
        path = (self.depth_dir / depth_name).with_suffix(".h5")
        try:
            raw = read_depth_h5(path)
        except (OSError, KeyError, ValueError) as err:
            unknown = {"image": None, "image_size": None, "original_image_size": None, "scale": np.eye(3),
                       "error": None}
            return unknown, None, f"{path}: {err}"
        loaded = sized_view((raw.shape[1], raw.shape[0]), self.conf.resize, self.conf.resize_side)
        depth, error = fit_depth(raw, loaded, path)
        return loaded, depth, error

    def _get(self, index: int) -> dict[str, Any]:
        scene, i, j, overlap = self.items[index]
        info = self.infos[scene]
        item: dict[str, Any] = {"name": self.pair_name(index), "scene": scene, "overlap": overlap,
                                "image_name0": self.image_name(scene, i),
                                "image_name1": self.image_name(scene, j)}
        load_errors, depth_errors = [], []
        for slot, view in enumerate((i, j)):
            loaded, depth, depth_error = self.read_view(scene, view)
            item[f"image{slot}"] = loaded["image"]
            item[f"image_size{slot}"] = loaded["image_size"]
            item[f"original_image_size{slot}"] = loaded["original_image_size"]
            item[f"K{slot}"] = self._intrinsics(info.intrinsics[view], loaded["scale"])
            item[f"depth{slot}"] = depth
            load_errors.append(loaded["error"])
            depth_errors.append(depth_error)
        item["T_0to1"] = info.poses[j] @ invert_transform(info.poses[i])
        item["load_error"] = join_errors(*load_errors)
        item["depth_error"] = join_errors(*depth_errors)
        return item


# ---- features: extraction, padding, the h5 cache ---------------------------------------------
@torch.no_grad()
def extract_features(extractor: torch.nn.Module, image: np.ndarray, device: str | torch.device = "cpu"
                     ) -> dict[str, torch.Tensor]:
    """Per-image features (N, ...) on the CPU, without padding, mask or image size."""
    from ..image import to_tensor_image

    feats = extractor({"image": to_tensor_image(image).to(device)})
    return {k: feats[k][0].cpu() for k in FEATURE_KEYS if k in feats}


def pad_features(feats: Mapping[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """Pad (or cut) every (N, ...) tensor to ``length`` rows and add ``keypoint_mask``, so that
    pairs with different keypoint counts batch together."""
    count = min(int(feats["keypoints"].shape[0]), length)
    out = {}
    for key, value in feats.items():
        padded = value.new_zeros((length, *value.shape[1:]))
        padded[:count] = value[:count]
        out[key] = padded
    out["keypoint_mask"] = torch.arange(length) < count
    return out


def pad_depth(depth: np.ndarray, size: int) -> torch.Tensor:
    """A depth map in the top-left corner of a ``size`` x ``size`` map of zeros (no depth)."""
    h, w = depth.shape
    if h > size or w > size:
        raise ValueError(f"depth map {w}x{h} does not fit the {size}x{size} padding")
    out = torch.zeros((size, size), dtype=torch.float32)
    out[:h, :w] = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
    return out


def extractor_signature(features: ConfLike) -> dict[str, Any]:
    """The complete extractor config (class defaults + ``features``), checked, without building it:
    what a feature file records and must match."""
    from ..models import get_model

    plain = to_container(features)
    try:
        cls = get_model("extractor", plain.get("name"))
    except ValueError as err:
        raise ConfigError(f"data.features: {err}") from None
    merged = merge_strict(cls.full_default_conf(), plain, owner=f"data.features ({plain['name']})")
    return to_container(merged)


def _describe_difference(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    return ", ".join(f"{k}: file {found.get(k)!r} vs config {wanted.get(k)!r}" for k in keys)


class FeatureCache:
    """Per-scene feature files ``<folder>/<scene>.h5``: one group per image (named by its file
    name) with ``keypoints``, ``keypoint_scores``, ``descriptors`` (and ``scales``/``oris``), and
    its ``image_size`` (W, H) as an attribute; the file records the extractor config and resize."""

    def __init__(self, folder: str | Path, signature: Mapping[str, Any], resize: int) -> None:
        self.folder = Path(folder).expanduser()
        self.signature = dict(signature)
        self.resize = int(resize)

    def path(self, scene: str) -> Path:
        return self.folder / f"{scene}.h5"

    def check(self, scenes: Iterable[str]) -> None:
        """Every scene has a file made with this extractor config and resize (before any work)."""
        import h5py

        scenes = list(scenes)
        absent = [self.path(s) for s in scenes if not self.path(s).is_file()]
        if absent:
            shown = "\n".join(f"    {p}" for p in absent[:10]) + (f"\n    ... and {len(absent) - 10} more"
                                                                 if len(absent) > 10 else "")
            raise MegaDepthUnavailableError(
                f"data.load_features: {len(absent)} of {len(scenes)} feature files are missing:\n{shown}\n"
                f"  Write them with: python -m featmatch_core.scripts.export_megadepth --method ... "
                f"--resize {self.resize} --out {self.folder} (the extractor config must be data.features), "
                "or set data.load_features.do=false to extract features on the fly.")
        for scene in scenes:
            with h5py.File(self.path(scene), "r") as f:
                self.check_attrs(f, self.path(scene))

    def check_attrs(self, handle: Any, path: Path) -> None:
        if handle.attrs.get("format") != FEATURE_FORMAT:
            raise ValueError(f"{path}: not a feature file of this project "
                             f"(format {handle.attrs.get('format')!r})")
        found = json.loads(handle.attrs["features"])
        if found != self.signature or int(handle.attrs["resize"]) != self.resize:
            diff = _describe_difference({**found, "(data.resize)": int(handle.attrs["resize"])},
                                        {**self.signature, "(data.resize)": self.resize})
            raise ConfigError(f"{path} was exported with another config than data.features / data.resize: "
                              f"{diff}. Export again into another folder, or match the config.")

    def read(self, scene: str, image_name: str, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The stored features of one image (float32 tensors), checked against its size."""
        import h5py

        path = self.path(scene)
        with h5py.File(path, "r") as f:
            if image_name not in f:
                raise KeyError(f"{path} has no features for image '{image_name}': export the scene again")
            group = f[image_name]
            size = tuple(int(v) for v in group.attrs["image_size"])
            if size != tuple(image_size):
                raise ValueError(f"{path}:{image_name}: features of a {size[0]}x{size[1]} image, but the "
                                 f"dataset makes it {image_size[0]}x{image_size[1]}")
            return {k: torch.from_numpy(np.asarray(group[k])).float() for k in FEATURE_KEYS if k in group}


def write_feature_file(path: Path, scene: str, signature: Mapping[str, Any], resize: int,
                       entries: Iterable[tuple[str, tuple[int, int], Mapping[str, torch.Tensor]]],
                       half: bool = False) -> Path:
    """Write ``(image name, image size, features)`` entries as ``path``, atomically: into a
    temporary file beside it, renamed over ``path`` only when complete."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FEATURE_FORMAT, scene=scene, resize=int(resize),
                           features=json.dumps(dict(signature), sort_keys=True))
            for name, size, feats in entries:
                group = f.create_group(name)
                group.attrs["image_size"] = np.asarray(size, dtype=np.int64)
                for key, value in feats.items():
                    array = value.numpy()
                    if half and key == "descriptors":  # halves the disk space; training casts back
                        array = array.astype(np.float16)
                    group.create_dataset(key, data=array)
            f.flush()
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- the training dataset --------------------------------------------------------------------
class MegaDepthTraining(torch.utils.data.Dataset):
    """Batches for :class:`~featmatch_core.train.two_view.TwoViewModel`: features of both views
    (padded to ``max_num_keypoints`` with ``keypoint_mask``), ``image_size0/1``, ``depth0/1``
    (padded to ``resize`` x ``resize``), ``K0/K1``, ``T_0to1``, ``overlap_0to1``."""

    def __init__(self, pairs: MegaDepthPairs, features: DictConfig, cache: FeatureCache | None) -> None:
        self.pairs = pairs
        self.features = features
        self.cache = cache
        self.length = int(features.max_num_keypoints)
        self.pad_size = int(pairs.conf.resize)
        self._extractor = None

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    @property
    def extractor(self) -> torch.nn.Module:
        if self._extractor is None:  # built lazily: once per DataLoader worker
            from ..models import build_model

            self._extractor = build_model("extractor", self.features).eval()
        return self._extractor

    def view_features(self, item: Mapping[str, Any], slot: int) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            return self.cache.read(item["scene"], item[f"image_name{slot}"], item[f"image_size{slot}"])
        return extract_features(self.extractor, item[f"image{slot}"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.pairs[index]
        error = join_errors(item["load_error"], item["depth_error"])
        if error:
            raise ValueError(f"MegaDepth pair {item['name']}: {error}")
        out = {"T_0to1": torch.from_numpy(item["T_0to1"]).float(),
               "overlap_0to1": torch.tensor(item["overlap"], dtype=torch.float32)}
        for slot in (0, 1):
            for key, value in pad_features(self.view_features(item, slot), self.length).items():
                out[f"{key}{slot}"] = value
            out[f"image_size{slot}"] = torch.tensor(item[f"image_size{slot}"], dtype=torch.float32)
            out[f"K{slot}"] = torch.from_numpy(item[f"K{slot}"]).float()
            out[f"depth{slot}"] = pad_depth(item[f"depth{slot}"], self.pad_size)
        return out


DEFAULT_CONF: dict[str, Any] = {
    "name": "megadepth",
    "root": None,  # folder holding megadepth/ (or megadepth/ itself); None: <data_dir>/megadepth
    "download": True,  # fetch the missing archives (not when offline)
    "resize": 1024,  # long side of every view; views are padded to resize x resize in a batch
    "k_convention": "colmap",
    "train_split": None,  # a list shipped with the package, a .txt path, or scene ids (None: TRAIN_SCENES)
    "val_split": None,  # (None: VAL_SCENES)
    "train_num_per_scene": 500,  # pairs per scene, drawn again each epoch
    "val_num_per_scene": 50,  # drawn once
    "min_overlap": 0.1,
    "max_overlap": 0.7,
    "num_overlap_bins": 1,  # >1: pairs spread evenly over equal overlap bins
    "seed": 0,
    "features": {"name": "superpoint", "max_num_keypoints": 2048, "resize": None},  # frozen extractor
    "load_features": {"do": False, "path": None},  # folder of <scene>.h5 from scripts.export_megadepth
}
SHARED_KEYS = ("root", "download", "resize", "k_convention", "min_overlap", "max_overlap", "num_overlap_bins",
               "seed")


def _split_value(conf: DictConfig, key: str, default: str) -> str | list:
    value = plain_value(conf[key]) or default
    if not isinstance(value, (str, list)):
        raise ConfigError(f"data.{key} must be a scene list name, a .txt path or a list of scene ids, "
                          f"got {value!r}")
    return value


def build_megadepth_datasets(conf: ConfLike) -> tuple[MegaDepthTraining, MegaDepthTraining]:
    """(train, val) from a data config; a missing dataset, feature file or bad key fails here,
    before any training step."""
    conf = merge_strict(DEFAULT_CONF, conf, owner="data (megadepth)", open_keys=("features",))
    resize = conf.resize
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < 1:
        raise ConfigError(f"data.resize must be a positive integer (long side; views are padded to a square "
                          f"of that size to batch), got {resize!r}")
    signature = extractor_signature(conf.features)
    n_max = signature.get("max_num_keypoints")
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ConfigError(f"data.features.max_num_keypoints must be a positive integer (features are padded "
                          f"to it), got {n_max!r}")
    cache = None
    if conf.load_features.do:
        if not conf.load_features.path:
            raise ConfigError("data.load_features.do=true needs data.load_features.path (the export folder)")
        cache = FeatureCache(conf.load_features.path, signature, resize)
    shared = {k: conf[k] for k in SHARED_KEYS}
    shared["read_image"] = cache is None
    splits = []
    for split, default in (("train", TRAIN_SCENES), ("val", VAL_SCENES)):
        pairs = MegaDepthPairs({**shared, "scenes": _split_value(conf, f"{split}_split", default),
                                "num_per_scene": conf[f"{split}_num_per_scene"]})
        if cache is not None:
            cache.check(pairs.scenes)
        splits.append(MegaDepthTraining(pairs, conf.features, cache))
    return splits[0], splits[1]


# ---- a generated scene in the MegaDepth layout (tests, demos) ----------------------------------
def _plane_camera(view: int) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of view ``view``: moving sideways and turning a little."""
    angle = np.deg2rad(-2.0 * view)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    return R, np.array([-0.4 * view, 0.05 * view, 0.0])


def _plane_depth(K: np.ndarray, R: np.ndarray, t: np.ndarray, distance: float, size: tuple[int, int]
                 ) -> np.ndarray:
    """z of the plane Z_world = distance at every pixel (plane in camera coordinates: n.X = d)."""
    u, v = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    rays = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    normal, offset = R[:, 2], distance + R[:, 2] @ t
    return (offset / (normal @ rays)).reshape(size[1], size[0])


def _visible_fraction(depth_i: np.ndarray, K_i: np.ndarray, K_j: np.ndarray, T_itoj: np.ndarray,
                      size_j: tuple[int, int]) -> float:
    h, w = depth_i.shape
    u, v = np.meshgrid(np.arange(0, w, 4), np.arange(0, h, 4))
    z = depth_i[v, u].ravel()
    X = (np.linalg.inv(K_i) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])) * z
    X = T_itoj[:3, :3] @ X + T_itoj[:3, 3:]
    x = (K_j @ X)[:2] / X[2]
    inside = (X[2] > 0) & (x[0] >= 0) & (x[0] <= size_j[0] - 1) & (x[1] >= 0) & (x[1] <= size_j[1] - 1)
    return float(inside.mean())


def write_synthetic_megadepth(root: str | Path, scenes: Mapping[str, tuple[int, tuple[int, int]]],
                              unusable: Mapping[str, Sequence[int]] | None = None, distance: float = 3.0,
                              seed: int = 0) -> dict[str, dict[str, Any]]:
    """A textured plane seen by moving cameras, written as ``<root>/megadepth`` (JPEG images,
    depth h5, scene info with COLMAP-convention K, geometric overlaps).

    ``scenes``: scene id -> (number of views, (W, H)); ``unusable``: views written with
    ``depth_paths`` None. Returns per scene the OpenCV-convention ``K``, the world-to-camera
    ``poses`` and the ``plane`` (normal, distance) in world coordinates, for checks.
    """
    import cv2
    import h5py

    from .synthetic import random_texture, warp_image

    folder = Path(root) / FOLDER
    texture = random_texture(480, 640, seed=seed)
    A = np.array([[1 / 120, 0, -320 / 120], [0, 1 / 120, -240 / 120], [0, 0, 1]])  # texture px -> (X, Y, 1)
    truth = {}
    for scene, (num_views, (w, h)) in scenes.items():
        K = np.array([[0.9 * w, 0, (w - 1) / 2], [0, 0.9 * w, (h - 1) / 2], [0, 0, 1]])
        K_colmap = K + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])  # pixel centres at +0.5
        poses, depths, paths, depth_paths = [], [], [], []
        for view in range(num_views):
            R, t = _plane_camera(view)
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = R, t
            M = np.column_stack([R[:, 0], R[:, 1], distance * R[:, 2] + t])
            name = f"view{view:03d}"
            image_path = folder / IMAGES / scene / "images" / f"{name}.jpg"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            image = warp_image(texture, K @ M @ A, (w, h))
            cv2.imwrite(str(image_path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            depth = _plane_depth(K, R, t, distance, (w, h)).astype(np.float32)
            (folder / DEPTHS / scene).mkdir(parents=True, exist_ok=True)
            with h5py.File(folder / DEPTHS / scene / f"{name}.h5", "w") as f:
                f.create_dataset("depth", data=depth)
            poses.append(T)
            depths.append(depth)
            paths.append(f"{IMAGES}/{scene}/images/{name}.jpg")
            skip = view in (unusable or {}).get(scene, ())
            depth_paths.append(None if skip else f"{DEPTHS}/{scene}/{name}.h5")
        overlap = np.full((num_views, num_views), -1.0)
        for i in range(num_views):
            for j in range(num_views):
                if i != j and depth_paths[i] is not None and depth_paths[j] is not None:
                    T_ij = poses[j] @ np.linalg.inv(poses[i])
                    overlap[i, j] = min(_visible_fraction(depths[i], K, K, T_ij, (w, h)),
                                        _visible_fraction(depths[j], K, K, np.linalg.inv(T_ij), (w, h)))
        (folder / INFOS).mkdir(parents=True, exist_ok=True)
        np.savez(folder / INFOS / f"{scene}.npz", image_paths=np.array(paths, dtype=object),
                 depth_paths=np.array(depth_paths, dtype=object),
                 intrinsics=np.array([K_colmap] * num_views, dtype=object),
                 poses=np.array([T.reshape(-1) for T in poses], dtype=object), overlap_matrix=overlap)
        truth[scene] = {"K": K, "poses": poses, "plane": (np.array([0.0, 0.0, 1.0]), distance)}
    return truth
