"""A generic image sequence with intrinsics, per-frame poses and (optionally) depth.

Layout (relative to ``root``; folder and file names configurable)::

    images/NNNN.png        any format OpenCV reads; frames ordered by name (numerically if digits)
    depth/NNNN.npz         optional; array 'depth' (float32 metres, z along the optical axis,
                           0 = invalid), same size as the image (NNNN.h5 with dataset 'depth' and
                           NNNN.npy are read too)
    poses/NNNN.txt         4x4 T_cam_world: X_cam = R X_world + t
    K.txt                  3x3 pinhole intrinsics (OpenCV pixel convention), shared by all frames
    pairs.txt              optional, one pair a line, '#' comments:
                               image0 image1 [gap covis] [R(9) t(3)]
                           (2, 4, 14 or 16 fields; names relative to root or to images/, with
                           or without extension; R, t: X1 = R X0 + t, checked against the poses)

Pairs come from ``pairs_file`` (``pairs_from='file'``), from frame gaps (``'gaps'``: frame i
with frame i + g for each g of ``gaps``), or from the file when it exists and gaps otherwise
(``'auto'``, default). ``T_0to1 = T_cam1_world @ inv(T_cam0_world)`` (X1 = R X0 + t).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import ConfigError
from .base import (
    BASE_CONF,
    PairDataset,
    check_choice,
    fit_depth,
    join_errors,
    load_view,
    pair_views,
    parse_floats,
    read_matrix,
    scale_intrinsics,
)
from .download import DatasetUnavailableError, ensure_dataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")
DEPTH_EXTENSIONS = (".npz", ".h5", ".npy")
# Tolerances when checking a pairs file's R, t against the poses (files print ~6-9 decimals).
_ROT_TOL = 1e-4
_TRANS_TOL = 1e-4


@dataclass(frozen=True)
class FramePair:
    frame0: str
    frame1: str
    gap: int  # frame index difference (or the pairs file's 'gap' column)
    covis: float | None = None  # the pairs file's covisibility column, if any
    T_file: np.ndarray | None = None  # the pairs file's R, t as 4x4, if any (checked against the poses)
    source: str = ""  # 'file:line' for pairs read from a file


def _frame_key(stem: str) -> tuple:
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def read_depth(path: Path) -> np.ndarray:
    """A depth map from .npz (key 'depth'), .h5 (dataset 'depth') or .npy, as float32 (H, W)."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            if "depth" not in data.files:
                raise KeyError(f"no array 'depth' (has: {', '.join(data.files)})")
            depth = data["depth"]
    elif path.suffix == ".h5":
        from .megadepth import read_depth_h5

        depth = read_depth_h5(path)
    else:
        depth = np.load(path, allow_pickle=False)
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be 2-D, got shape {depth.shape}")
    return depth


class PosedSequence(PairDataset):
    """Pairs of a posed sequence: ``K0``, ``K1``, ``T_0to1``, ``depth0``/``depth1`` (when the
    depth folder exists; None if unreadable, see ``depth_error``), ``scene`` (the root folder's
    name), ``gap`` (frame index difference) and ``covis`` (from the pairs file, else None)."""

    default_conf: ClassVar[dict[str, Any]] = {
        **BASE_CONF,
        "download": False,  # no official archive: the sequence must be on disk
        "images_dir": "images",
        "depth_dir": "depth",
        "poses_dir": "poses",
        "intrinsics": "K.txt",
        "pairs_from": "auto",  # auto | file | gaps
        "pairs_file": "pairs.txt",
        "gaps": [1, 2, 4],
        "load_depth": True,
    }
    dirname = "posed_sequence"

    def _check_conf(self) -> None:
        super()._check_conf()
        check_choice(self, "pairs_from", ("auto", "file", "gaps"))
        if self.conf.download:
            raise ConfigError("PosedSequence: there is no archive to download; set 'root' to the sequence folder")
        gaps = list(self.conf.gaps)
        if not gaps or any(isinstance(g, bool) or not isinstance(g, int) or g <= 0 for g in gaps):
            raise ConfigError(f"PosedSequence: 'gaps' must be a non-empty list of positive ints, got {gaps}")

    def _init(self) -> None:
        conf = self.conf
        if conf.root is None:
            raise ConfigError("PosedSequence: set 'root' to the sequence folder (images/, poses/, K.txt)")
        ensure_dataset(self.root, [conf.images_dir, conf.poses_dir, conf.intrinsics], None,
                       what="posed sequence", how="  Expected images/NNNN.png, poses/NNNN.txt (4x4 T_cam_world), "
                       "K.txt, optional depth/NNNN.npz and pairs.txt (see featmatch_core.datasets.posed_sequence).")
        self.K = read_matrix(self.root / conf.intrinsics, (3, 3))
        image_dir = self.root / conf.images_dir
        images = [p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        if not images:
            raise DatasetUnavailableError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
        self.frames = sorted((p.stem for p in images), key=_frame_key)
        self.image_paths = {p.stem: p for p in images}
        if len(self.image_paths) != len(images):
            raise ValueError(f"{image_dir}: several images share a frame name (same stem, other extension)")
        self.index = {stem: i for i, stem in enumerate(self.frames)}
        self.depth_dir = self.root / conf.depth_dir
        self.with_depth = bool(conf.load_depth) and self.depth_dir.is_dir()

        pairs_path = Path(conf.pairs_file).expanduser() if conf.pairs_file else None
        if pairs_path is not None and not pairs_path.is_absolute():
            pairs_path = self.root / pairs_path
        use_file = conf.pairs_from == "file" or (conf.pairs_from == "auto" and pairs_path is not None
                                                 and pairs_path.is_file())
        if use_file:
            if pairs_path is None or not pairs_path.is_file():
                raise DatasetUnavailableError(f"pairs_from='file' but there is no pairs file {pairs_path}")
            self.pairs = self._read_pairs(pairs_path)
            self.pairs_source = str(pairs_path)
        else:
            self.pairs = [FramePair(a, self.frames[i + g], g)
                          for g in conf.gaps for i, a in enumerate(self.frames) if i + g < len(self.frames)]
            self.pairs_source = f"gaps {list(conf.gaps)}"
        if not self.pairs:
            raise ValueError(f"PosedSequence {self.root}: no pairs ({self.pairs_source}, {len(self.frames)} frames)")
        used = sorted({f for p in self.pairs for f in (p.frame0, p.frame1)}, key=_frame_key)
        ensure_dataset(self.root, [f"{conf.poses_dir}/{f}.txt" for f in used], None, what="posed sequence poses",
                       how="  Every frame used by a pair needs poses/<frame>.txt (4x4 T_cam_world).")
        self.poses = {f: self._read_pose(self.root / conf.poses_dir / f"{f}.txt") for f in used}
        for pair in self.pairs:
            if pair.T_file is not None:
                self._check_pose(pair)

    # ---- parsing -----------------------------------------------------------------
    def _frame_of(self, name: str, path: Path, lineno: int) -> str:
        candidates = [Path(name).stem, name]
        for c in candidates:
            if c in self.image_paths:
                return c
        raise ValueError(f"{path}:{lineno}: image '{name}' is not in {self.root / self.conf.images_dir}")

    def _read_pairs(self, path: Path) -> list[FramePair]:
        pairs = []
        with open(path) as handle:
            for lineno, line in enumerate(handle, 1):
                tokens = line.split()
                if not tokens or tokens[0].startswith("#"):
                    continue
                if len(tokens) not in (2, 4, 14, 16):
                    raise ValueError(f"{path}:{lineno}: expected 'image0 image1 [gap covis] [R(9) t(3)]' "
                                     f"(2, 4, 14 or 16 fields), found {len(tokens)}")
                f0, f1 = self._frame_of(tokens[0], path, lineno), self._frame_of(tokens[1], path, lineno)
                values = parse_floats(tokens[2:], path, lineno)
                gap, covis, T = self.index[f1] - self.index[f0], None, None
                if len(tokens) in (4, 16):
                    gap, covis = int(values[0]), float(values[1])
                    values = values[2:]
                if len(values) == 12:
                    T = np.eye(4)
                    T[:3, :3], T[:3, 3] = values[:9].reshape(3, 3), values[9:]
                pairs.append(FramePair(f0, f1, gap, covis, T, f"{path}:{lineno}"))
        return pairs

    @staticmethod
    def _read_pose(path: Path) -> np.ndarray:
        T = read_matrix(path, (4, 4))
        if not np.allclose(T[3], [0, 0, 0, 1]):
            raise ValueError(f"{path}: the last row of a 4x4 pose must be 0 0 0 1, got {T[3]}")
        return T

    def _check_pose(self, pair: FramePair) -> None:
        T = self.relative_pose(pair.frame0, pair.frame1)
        d_rot = np.abs(T[:3, :3] - pair.T_file[:3, :3]).max()
        d_t = np.abs(T[:3, 3] - pair.T_file[:3, 3]).max()
        if d_rot > _ROT_TOL or d_t > _TRANS_TOL * max(1.0, float(np.linalg.norm(T[:3, 3]))):
            raise ValueError(
                f"{pair.source}: R, t disagree with the poses of {pair.frame0} and {pair.frame1} "
                f"(max |dR| {d_rot:.2g}, max |dt| {d_t:.2g}); expected T_0to1 = T_cam1_world @ inv(T_cam0_world)")

    # ---- items ---------------------------------------------------------------------
    def relative_pose(self, f0: str, f1: str) -> np.ndarray:
        """T_0to1 = T_cam1_world @ inv(T_cam0_world): camera-0 points to camera 1."""
        return self.poses[f1] @ np.linalg.inv(self.poses[f0])

    def __len__(self) -> int:
        return len(self.pairs)

    def _depth(self, frame: str, view: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
        for ext in DEPTH_EXTENSIONS:
            path = self.depth_dir / f"{frame}{ext}"
            if path.is_file():
                break
        else:
            return None, f"{self.depth_dir / (frame + '.npz')}: no depth file"
        try:
            depth = read_depth(path)
        except (OSError, KeyError, ValueError) as err:
            return None, f"{path}: {err}"
        return fit_depth(depth, view, path)

    def pair_name(self, index: int) -> str:
        return f"{self.pairs[index].frame0}/{self.pairs[index].frame1}"

    def _get(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        f0, f1 = pair.frame0, pair.frame1
        view0 = load_view(self.image_paths[f0], self.conf.resize, self.conf.resize_side)
        view1 = load_view(self.image_paths[f1], self.conf.resize, self.conf.resize_side)
        item = {
            "name": self.pair_name(index),
            "scene": self.root.resolve().name,
            "gap": int(pair.gap),
            "covis": pair.covis,
            **pair_views(view0, view1),
            "K0": scale_intrinsics(self.K, view0["scale"]),
            "K1": scale_intrinsics(self.K, view1["scale"]),
            "T_0to1": self.relative_pose(f0, f1),
        }
        item["load_error"] = join_errors(view0["error"], view1["error"])
        if self.with_depth:
            errors = []
            for i, (frame, view) in enumerate(((f0, view0), (f1, view1))):
                item[f"depth{i}"], error = self._depth(frame, view)
                errors.append(error)
            item["depth_error"] = join_errors(*errors)
        return item
