"""MegaDepth-1500: the 1500 test pairs of scenes 0015 and 0022 (LoFTR's split), Glue Factory's copy.

Layout of ``megadepth1500.zip`` (Glue Factory extracts it into its data folder)::

    <root>/megadepth1500/
        images/<scene>/<image>.jpg
        pairs_calibrated.txt
        depths/<scene>/<image>.h5     optional; dataset 'depth' (metres, 0 = invalid)

``root`` may be the ``megadepth1500`` folder itself or its parent (the default,
``<data_dir>/megadepth1500``, which the archive is extracted into).

``pairs_calibrated.txt``, one pair per line, whitespace separated::

    name0 name1 K0(9) K1(9) R(9) t(3)        32 fields (the file as distributed)
    name0 name1 K0(9) K1(9) T_0to1(16)      36 fields (also accepted, as Glue Factory does)

names relative to ``images/`` (``<scene>/<image>.jpg``), matrices row-major, ``X1 = R X0 + t``.
The intrinsics come from COLMAP, whose pixel convention puts the centre of the top-left
pixel at (0.5, 0.5); with ``k_convention='colmap'`` (default) they are converted to this
project's OpenCV convention (centre at (0, 0): ``cx, cy -= 0.5``), which is what Glue Factory
achieves by adding 0.5 to its keypoints instead. ``'opencv'`` takes K as written.

Evaluation protocol (Glue Factory's LightGlue benchmark configs): long side resized to 1600
(``resize=1600, resize_side='long'``, other side truncated to an int), K rescaled to match.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .base import (
    BASE_CONF,
    PairDataset,
    check_choice,
    fit_depth,
    join_errors,
    load_view,
    pair_views,
    parse_floats,
    scale_intrinsics,
)
from .download import ensure_archive_dataset, ensure_dataset

logger = logging.getLogger(__name__)

URL = "https://cvg-data.inf.ethz.ch/megadepth/megadepth1500.zip"
SHA256 = None  # not published; verify by hand and record it here to have downloads checked
FOLDER = "megadepth1500"


def read_depth_h5(path: Path, key: str = "depth") -> np.ndarray:
    import h5py

    with h5py.File(str(path), "r") as handle:
        if key not in handle:
            raise KeyError(f"no dataset '{key}' (has: {', '.join(handle.keys())})")
        depth = np.asarray(handle[key], dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be 2-D, got shape {depth.shape}")
    return depth


def parse_calibrated_pairs(path: Path) -> list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """Lines ``name0 name1 K0(9) K1(9) R(9) t(3)`` or ``... T_0to1(16)`` -> (name0, name1, K0, K1, T_0to1).

    Empty lines and lines starting with '#' are skipped; anything else malformed raises
    ValueError naming the file and line.
    """
    pairs = []
    with open(path) as handle:
        for lineno, line in enumerate(handle, 1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            if len(tokens) not in (32, 36):
                raise ValueError(f"{path}:{lineno}: expected 32 fields (name0 name1 K0(9) K1(9) R(9) t(3)) "
                                 f"or 36 (... T_0to1(16)), found {len(tokens)}")
            values = parse_floats(tokens[2:], path, lineno)
            K0, K1 = values[:9].reshape(3, 3), values[9:18].reshape(3, 3)
            T = np.eye(4)
            if len(tokens) == 32:
                T[:3, :3] = values[18:27].reshape(3, 3)
                T[:3, 3] = values[27:30]
            else:
                T = values[18:34].reshape(4, 4)
                if not np.allclose(T[3], [0, 0, 0, 1]):
                    raise ValueError(f"{path}:{lineno}: the last row of T_0to1 must be 0 0 0 1, got {T[3]}")
            if not (np.isfinite(values).all() and K0[0, 0] > 0 and K1[0, 0] > 0):
                raise ValueError(f"{path}:{lineno}: non-finite values or non-positive focal length")
            pairs.append((tokens[0], tokens[1], K0, K1, T))
    return pairs


class MegaDepth1500(PairDataset):
    """MegaDepth-1500 pairs: ``K0``, ``K1`` (for the images as returned), ``T_0to1``, ``scene``
    and, when ``depths/`` exists, ``depth0``/``depth1`` (float32 metres, 0 = invalid, resized
    with the images by nearest neighbour; None if unreadable, see ``depth_error``)."""

    default_conf: ClassVar[dict[str, Any]] = {
        **BASE_CONF,
        "resize": 1600,
        "resize_side": "long",
        "pairs_file": "pairs_calibrated.txt",  # relative to the megadepth1500 folder
        "load_depth": True,  # when depths/ exists
        "k_convention": "colmap",  # colmap: K as in the file, converted to OpenCV pixels; opencv: as-is
    }
    dirname = FOLDER
    url = URL

    def _check_conf(self) -> None:
        super()._check_conf()
        check_choice(self, "k_convention", ("colmap", "opencv"))

    def _init(self) -> None:
        self.folder = self._locate()
        pairs_file = self.conf.pairs_file
        if self.folder is None:
            parent = self.root  # the archive holds a megadepth1500/ folder
            ensure_archive_dataset(parent, [f"{FOLDER}/images", f"{FOLDER}/{pairs_file}"], URL, SHA256,
                                   download=self.conf.download, what="MegaDepth-1500")
            self.folder = parent / FOLDER
        pairs_path = self.folder / pairs_file
        ensure_dataset(self.folder, ["images", pairs_file], None, what="MegaDepth-1500",
                       how=f"  Extract {URL} again (delete the incomplete folder first).")
        self.pairs = parse_calibrated_pairs(pairs_path)
        if not self.pairs:
            raise ValueError(f"{pairs_path} lists no pairs")
        names = sorted({n for p in self.pairs for n in p[:2]})
        ensure_dataset(self.folder / "images", names, None, what="MegaDepth-1500 images",
                       how=f"  ({len(names)} images listed in {pairs_path}); extract {URL} again.")
        self.depth_dir = self.folder / "depths"
        self.with_depth = bool(self.conf.load_depth) and self.depth_dir.is_dir()
        if self.conf.load_depth and not self.with_depth:
            logger.info("MegaDepth-1500: no %s, items come without depth", self.depth_dir)

    def _locate(self) -> Path | None:
        for candidate in (self.root / FOLDER, self.root):
            if (candidate / "images").is_dir() or (candidate / self.conf.pairs_file).is_file():
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.pairs)

    def _intrinsics(self, K: np.ndarray, S: np.ndarray) -> np.ndarray:
        K = np.array(K, dtype=np.float64)
        if self.conf.k_convention == "colmap":
            K[:2, 2] -= 0.5 * K[2, 2]
        return scale_intrinsics(K, S)

    def _depth(self, name: str, view: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
        path = (self.depth_dir / name).with_suffix(".h5")
        try:
            depth = read_depth_h5(path)
        except (OSError, KeyError, ValueError) as err:
            return None, f"{path}: {err}"
        return fit_depth(depth, view, path)

    def pair_name(self, index: int) -> str:
        name0, name1 = self.pairs[index][:2]
        return f"{name0.replace('/', '-')}/{name1.replace('/', '-')}"

    def _get(self, index: int) -> dict[str, Any]:
        name0, name1, K0, K1, T = self.pairs[index]
        images = self.folder / "images"
        view0 = load_view(images / name0, self.conf.resize, self.conf.resize_side)
        view1 = load_view(images / name1, self.conf.resize, self.conf.resize_side)
        scene = Path(name0).parts[0] if len(Path(name0).parts) > 1 else ""
        item = {
            "name": self.pair_name(index),
            "scene": scene,
            **pair_views(view0, view1),
            "K0": self._intrinsics(K0, view0["scale"]),
            "K1": self._intrinsics(K1, view1["scale"]),
            "T_0to1": np.array(T, dtype=np.float64),
        }
        item["load_error"] = join_errors(view0["error"], view1["error"])
        if self.with_depth:
            errors = []
            for i, (name, view) in enumerate(((name0, view0), (name1, view1))):
                item[f"depth{i}"], error = self._depth(name, view)
                errors.append(error)
            item["depth_error"] = join_errors(*errors)
        return item
