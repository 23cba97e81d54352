"""What the evaluation datasets share: strict configs, the data directory, resizing, reading.

Every dataset is a sequence of pair items (plain dicts of numpy arrays and strings):

- ``name`` (unique pair id), ``scene``;
- ``image0``/``image1``: uint8 RGB (H, W, 3) as :func:`featmatch_core.image.read_image` reads
  them, resized by the dataset's ``resize`` policy; ``None`` if a file could not be read;
- ``image_size0/1``: (W, H) of the images as returned; ``original_image_size0/1``: (W, H) in
  the file (both ``None`` for an unreadable image);
- ``load_error``: ``None``, or a message naming each image file that could not be read (the
  evaluation counts such pairs instead of crashing);
- geometry, always for the images as returned: ``H_0to1`` (homography datasets) or ``K0``,
  ``K1``, ``T_0to1`` and optionally ``depth0``/``depth1`` (posed datasets; a depth map that
  cannot be read is ``None`` with the reason in ``depth_error``, which does not invalidate the
  pair for pose metrics).

Pixel convention: OpenCV's, the project's (centre of the top-left pixel at (0, 0)). Resizing
an image by (sx, sy) maps ``x' = sx (x + 0.5) - 0.5``, the exact relation between the pixel
grids (cv2.resize aligns pixel centres this way); see :func:`scaling_matrix`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from ..config import ConfigError, ConfLike, merge_strict, to_container
from ..image import read_image

logger = logging.getLogger(__name__)

DATA_ENV = "FEATMATCH_DATA_DIR"
RESIZE_SIDES = ("short", "long")


def data_dir() -> Path:
    """Root of the dataset cache: ``$FEATMATCH_DATA_DIR``, else ``$XDG_CACHE_HOME/featmatch/data``
    (default ``~/.cache/featmatch/data``). Not created here."""
    explicit = os.environ.get(DATA_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "featmatch" / "data"


# ---- resizing -------------------------------------------------------------------
def resized_size(size: tuple[int, int], resize: int | None, side: str) -> tuple[int, int]:
    """(W, H) after scaling the ``side`` ('short' or 'long') edge to ``resize`` pixels.

    The other edge keeps the aspect ratio and is truncated to an integer, as Glue Factory's
    ImagePreprocessor does, so that image sizes (and hence metrics) match its evaluations.
    """
    w, h = size
    if resize is None:
        return w, h
    if side not in RESIZE_SIDES:
        raise ConfigError(f"resize_side must be one of {RESIZE_SIDES}, got {side!r}")
    aspect = w / h
    if (side == "short") != (aspect < 1.0):  # the edge to set is the height
        return int(resize * aspect), int(resize)
    return int(resize), int(resize / aspect)


def scaling_matrix(size_in: tuple[int, int], size_out: tuple[int, int]) -> np.ndarray:
    """3x3 map from pixels of an image of (W, H) ``size_in`` to the same image resized to ``size_out``.

    Per-axis scales s = out / in; pixel centres: ``x' = s (x + 0.5) - 0.5`` (OpenCV convention).
    (Glue Factory writes this as diag(sx, sy, 1) because its keypoints are in the corner
    convention, centre of the top-left pixel at (0.5, 0.5): the same map.)
    """
    sx = size_out[0] / size_in[0]
    sy = size_out[1] / size_in[1]
    return np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (W, H): area averaging when shrinking (anti-aliased), bilinear when enlarging."""
    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image
    shrink = size[0] < w or size[1] < h
    return cv2.resize(image, tuple(int(s) for s in size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a depth map to (W, H) by nearest neighbour: no blending across depth edges or
    with invalid (0) pixels."""
    h, w = depth.shape[:2]
    if (w, h) == tuple(size):
        return depth
    return cv2.resize(depth, tuple(int(s) for s in size), interpolation=cv2.INTER_NEAREST)


def fit_depth(depth: np.ndarray, view: dict[str, Any], path: Path) -> tuple[np.ndarray | None, str | None]:
    """The depth map of ``view`` (from :func:`load_view`) at the size of the returned image.

    The map must have the size of the image file; it is then resized like the image (nearest
    neighbour). Returns (depth or None, error or None).
    """
    original = view["original_image_size"]
    depth_size = (int(depth.shape[1]), int(depth.shape[0]))
    if original is not None and depth_size != tuple(original):
        return None, f"{path}: depth is {depth_size[0]}x{depth_size[1]} but the image is {original[0]}x{original[1]}"
    if view["image_size"] is not None:
        depth = resize_depth(depth, view["image_size"])
    return np.ascontiguousarray(depth, dtype=np.float32), None


def scale_intrinsics(K: np.ndarray, S: np.ndarray) -> np.ndarray:
    """K of the resized image: ``S @ K`` (S from :func:`scaling_matrix`)."""
    return S @ np.asarray(K, dtype=np.float64)


def scale_homography(H: np.ndarray, S0: np.ndarray, S1: np.ndarray) -> np.ndarray:
    """H between resized images: ``S1 H S0^-1``."""
    return S1 @ np.asarray(H, dtype=np.float64) @ np.linalg.inv(S0)


# ---- reading --------------------------------------------------------------------
def load_view(path: Path, resize: int | None, side: str) -> dict[str, Any]:
    """Read one image and apply the resize policy; never raises for a bad file.

    Returns ``image`` (or None), ``image_size`` and ``original_image_size`` (W, H) (or None),
    ``scale`` (the 3x3 :func:`scaling_matrix`, identity when unreadable) and ``error``.
    """
    try:
        image = read_image(path)
    except (OSError, cv2.error) as err:  # FileNotFoundError, IOError (decode failure)
        return {"image": None, "image_size": None, "original_image_size": None,
                "scale": np.eye(3), "error": f"{path}: {err}"}
    h, w = image.shape[:2]
    new_size = resized_size((w, h), resize, side)
    image = resize_image(image, new_size)
    return {"image": image, "image_size": (int(new_size[0]), int(new_size[1])),
            "original_image_size": (int(w), int(h)), "scale": scaling_matrix((w, h), new_size), "error": None}


def pair_views(view0: dict[str, Any], view1: dict[str, Any]) -> dict[str, Any]:
    """The image fields of a pair item from two :func:`load_view` results."""
    return {"image0": view0["image"], "image1": view1["image"],
            "image_size0": view0["image_size"], "image_size1": view1["image_size"],
            "original_image_size0": view0["original_image_size"],
            "original_image_size1": view1["original_image_size"]}


def join_errors(*errors: str | None) -> str | None:
    found = [e for e in errors if e]
    return "; ".join(found) if found else None


def parse_floats(tokens: list[str], path: Path, lineno: int) -> np.ndarray:
    try:
        return np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{path}:{lineno}: not a number ({err})") from None


def read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated text matrix (HPatches H files, K.txt, pose files), checked for shape."""
    values = []
    with open(path) as handle:
        for lineno, line in enumerate(handle, 1):
            tokens = line.split()
            if tokens and not tokens[0].startswith("#"):
                values.extend(parse_floats(tokens, path, lineno))
    if len(values) != shape[0] * shape[1]:
        raise ValueError(f"{path}: expected a {shape[0]}x{shape[1]} matrix ({shape[0] * shape[1]} numbers), "
                         f"found {len(values)} numbers")
    matrix = np.array(values, dtype=np.float64).reshape(shape)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{path}: matrix has NaN or Inf entries")
    return matrix


# ---- the dataset base class -----------------------------------------------------
BASE_CONF: dict[str, Any] = {
    "root": None,  # None: the default folder under data_dir()
    "download": True,  # fetch the official archive when the dataset is missing (not when offline)
    "resize": None,  # int: target length of the resize_side edge; None: original images
    "resize_side": "long",  # short | long
}


class PairDataset:
    """Base of the evaluation datasets: ``len(ds)``, ``ds[i] -> dict``, iteration.

    Subclasses set ``default_conf`` (a superset of :data:`BASE_CONF`), ``dirname`` (folder
    under :func:`data_dir` of the default root), implement ``_init()`` (find the layout,
    list the pairs) and ``_get(i)``.
    """

    default_conf: ClassVar[dict[str, Any]] = BASE_CONF
    dirname = "dataset"

    def __init__(self, conf: ConfLike = None, **kwargs: Any) -> None:
        self.conf = merge_strict(self.default_conf, _plain(conf), _plain(kwargs), owner=type(self).__name__)
        self._check_conf()
        root = self.conf.root
        self.root = Path(root).expanduser() if root else data_dir() / self.dirname
        self._init()

    def _check_conf(self) -> None:
        resize = self.conf.resize
        if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize <= 0):
            raise ConfigError(f"{type(self).__name__}: 'resize' must be a positive int or None, got {resize!r}")
        check_choice(self, "resize_side", RESIZE_SIDES)
        if not isinstance(self.conf.download, bool):
            raise ConfigError(f"{type(self).__name__}: 'download' must be true or false")

    def _init(self) -> None:
        raise NotImplementedError

    def _get(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def pair_name(self, index: int) -> str:
        """``self[index]["name"]`` without reading any file."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, got {type(index).__name__}")
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{type(self).__name__} index {index} out of range for {n} pairs")
        return self._get(int(index))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} pairs, root={self.root})"


def check_rendered(dataset: PairDataset) -> None:
    """A dataset that renders its images: no resize (set ``image_size``) and nothing to download."""
    name = type(dataset).__name__
    if dataset.conf.resize is not None:
        raise ConfigError(f"{name}: images are rendered at data.image_size; set that instead of data.resize")
    if dataset.conf.download:
        raise ConfigError(f"{name}: generated images cannot be downloaded (download=false)")


def check_choice(dataset: PairDataset, key: str, choices: tuple) -> None:
    value = dataset.conf[key]
    if value not in choices:
        raise ConfigError(f"{type(dataset).__name__}: '{key}' must be one of {list(choices)}, got {value!r}")


def _plain(conf: ConfLike) -> dict:
    """A plain dict with paths as strings (OmegaConf takes no Path values in every version)."""
    if conf is None:
        return {}
    if not isinstance(conf, Mapping):
        raise ConfigError(f"a dataset conf must be a mapping, got {type(conf).__name__}")
    plain = to_container(conf)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in plain.items()}
