"""ETH3D (undistorted DSLR images) as used by SOLD2, GlueStick and Glue Factory for point and line matching.

Layout of ``ETH3D_undistorted.zip`` (SOLD2's repackaging of the ETH3D high-resolution
multi-view training scenes; Glue Factory downloads it into its data folder)::

    <root>/ETH3D_undistorted/<scene>/
        images/dslr_images_undistorted/<NAME>.JPG      full resolution (6048 x 4032)
        dslr_calibration_undistorted/cameras.txt       COLMAP text: CAMERA_ID PINHOLE W H fx fy cx cy
        dslr_calibration_undistorted/images.txt        COLMAP text: two lines per image (pose, POINTS2D)
        ground_truth_depth/undistorted_depth/<NAME>.png  uint16, metres * 256 (0 = invalid), 1/8 resolution

``root`` may be the ``ETH3D_undistorted`` folder itself or its parent (the default,
``<data_dir>/eth3d``, which the archive is extracted into), or a single scene folder.

Protocol (Glue Factory's ``datasets/eth3d.py``): the images are resized so that their long
side is ``max(W, H) // downsize_factor`` (factor 8 by default, 756 x 504, the size of the
depth maps, which exist only at that resolution); K scaled to match. Pairs: within each
scene, every pair of images (i < j in name order) that sees at least ``min_covisibility``
(500) common 3D points of the COLMAP model (``POINT3D_ID`` columns of ``images.txt``).
``T_0to1 = T_cam1_world @ inv(T_cam0_world)`` from the quaternion + translation of images.txt
(world to camera, ``X_cam = R X_world + t``).

Departures, deliberate: each image's intrinsics are looked up by its CAMERA_ID in the
undistorted ``cameras.txt`` (Glue Factory takes the camera at the list position of the
*distorted* calibration's camera id, which is the same camera when ids are 0..n-1 in order,
as in the release); the COLMAP pixel convention (centre of the top-left pixel at (0.5, 0.5))
is converted to this project's OpenCV convention (``cx, cy -= 0.5``) before the exact
pixel-centre rescaling of :func:`~featmatch_core.datasets.base.scaling_matrix`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from ..config import ConfigError
from .base import (
    BASE_CONF,
    PairDataset,
    join_errors,
    load_view,
    pair_views,
    parse_floats,
    resize_depth,
    scale_intrinsics,
)
from .download import DatasetUnavailableError, ensure_archive_dataset, ensure_dataset

logger = logging.getLogger(__name__)

URL = "https://cvg-data.inf.ethz.ch/SOLD2/SOLD2_ETH3D_undistorted/ETH3D_undistorted.zip"
SHA256 = None  # not published; verify by hand and record it here to have downloads checked
FOLDER = "ETH3D_undistorted"
IMAGES = Path("images/dslr_images_undistorted")
CALIBRATION = Path("dslr_calibration_undistorted")
DEPTHS = Path("ground_truth_depth/undistorted_depth")
DEPTH_SCALE = 256.0  # the PNG stores metres * 256


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    K: np.ndarray  # COLMAP pixel convention, as in the file


@dataclass(frozen=True)
class Frame:
    name: str  # file name in IMAGES
    camera_id: int
    T_cam_world: np.ndarray  # 4x4
    points3D: frozenset  # ids of the 3D points it sees


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a (w, x, y, z) quaternion (COLMAP order), normalised first."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def read_cameras(path: Path) -> dict[int, Camera]:
    """COLMAP ``cameras.txt`` with PINHOLE (fx fy cx cy) or SIMPLE_PINHOLE (f cx cy) cameras."""
    cameras = {}
    with open(path) as handle:
        for lineno, line in enumerate(handle, 1):
            tokens = line.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            model = tokens[1] if len(tokens) > 1 else ""
            expected = {"PINHOLE": 8, "SIMPLE_PINHOLE": 7}.get(model)
            if expected is None or len(tokens) != expected:
                raise ValueError(f"{path}:{lineno}: expected 'CAMERA_ID PINHOLE W H fx fy cx cy' (or SIMPLE_PINHOLE "
                                 f"W H f cx cy) of undistorted images, got {line.strip()!r}")
            values = parse_floats(tokens[2:], path, lineno)
            width, height = int(values[0]), int(values[1])
            fx, fy = (values[2], values[3]) if model == "PINHOLE" else (values[2], values[2])
            cx, cy = values[-2:]
            if not (np.isfinite(values).all() and fx > 0 and fy > 0 and width > 0 and height > 0):
                raise ValueError(f"{path}:{lineno}: non-finite values, or non-positive size or focal length")
            cameras[int(tokens[0])] = Camera(width, height, np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]))
    return cameras


def read_images(path: Path) -> list[Frame]:
    """COLMAP ``images.txt``: ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then a line of
    ``X Y POINT3D_ID`` triplets (possibly empty) per image; '#' lines are comments."""
    with open(path) as handle:
        lines = [(n, line) for n, line in enumerate(handle.read().split("\n"), 1) if not line.startswith("#")]
    frames = []
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        tokens = line.split()
        if not tokens:  # blank line between records or at the end
            i += 1
            continue
        if len(tokens) != 10:
            raise ValueError(f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', "
                             f"got {line.strip()!r}")
        values = parse_floats(tokens[1:8], path, lineno)
        T = np.eye(4)
        T[:3, :3] = quaternion_to_rotation(values[:4])
        T[:3, 3] = values[4:7]
        observations = lines[i + 1][1].split() if i + 1 < len(lines) else []
        if len(observations) % 3:
            raise ValueError(f"{path}:{lines[i + 1][0]}: POINTS2D must be X Y POINT3D_ID triplets")
        ids = frozenset(int(p) for p in observations[2::3] if int(p) != -1)
        frames.append(Frame(Path(tokens[9]).name, int(tokens[8]), T, ids))
        i += 2
    return frames


def read_depth_png(path: Path) -> np.ndarray:
    """ETH3D depth PNG (uint16, metres * 256) as float32 metres, 0 = invalid."""
    depth = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    if depth is None:
        raise OSError(f"{path}: missing or not an image")
    if depth.ndim != 2:
        raise ValueError(f"{path}: depth must be a single-channel image, got shape {depth.shape}")
    return depth.astype(np.float32) / DEPTH_SCALE


@dataclass(frozen=True)
class ScenePair:
    scene: str
    frame0: Frame
    frame1: Frame
    covisibility: int


def scene_pairs(scene: str, frames: list[Frame], min_covisibility: int) -> list[ScenePair]:
    """Pairs (i < j, by file name) seeing at least ``min_covisibility`` common 3D points."""
    frames = sorted(frames, key=lambda f: f.name)
    pairs = []
    for i, frame0 in enumerate(frames):
        for frame1 in frames[i + 1:]:
            common = len(frame0.points3D & frame1.points3D)
            if common >= min_covisibility:
                pairs.append(ScenePair(scene, frame0, frame1, common))
    return pairs


class ETH3D(PairDataset):
    """ETH3D pairs: ``K0``, ``K1`` (for the images as returned, OpenCV convention), ``T_0to1``,
    ``depth0``/``depth1`` (float32 metres, 0 = invalid, at the size of the returned images;
    None if unreadable, see ``depth_error``), ``scene`` and ``covisibility``."""

    default_conf: ClassVar[dict[str, Any]] = {
        **BASE_CONF,
        "downsize_factor": 8,  # long side = max(W, H) // factor (the depth maps exist at factor 8 only)
        "min_covisibility": 500,  # common COLMAP 3D points for a pair
        "scenes": None,  # list of scene names to keep; None: all
    }
    dirname = "eth3d"
    url = URL

    def _check_conf(self) -> None:
        super()._check_conf()
        factor = self.conf.downsize_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ConfigError(f"ETH3D: 'downsize_factor' must be an int >= 1, got {factor!r}")
        if self.conf.resize is not None:
            raise ConfigError("ETH3D: set 'downsize_factor' (the depth maps fix the image size), not 'resize'")
        if self.conf.min_covisibility < 0:
            raise ConfigError(f"ETH3D: 'min_covisibility' must be >= 0, got {self.conf.min_covisibility}")

    def _init(self) -> None:
        scenes = self._locate()
        if not scenes:
            parent = self.root
            ensure_archive_dataset(parent, [FOLDER], URL, SHA256, download=self.conf.download, what="ETH3D")
            scenes = self._locate()
            if not scenes:
                raise DatasetUnavailableError(f"ETH3D: no scene folders (with {CALIBRATION}/images.txt) under "
                                              f"{parent / FOLDER}")
        wanted = None if self.conf.scenes is None else {str(s) for s in self.conf.scenes}
        if wanted is not None:
            unknown = wanted - {s.name for s in scenes}
            if unknown:
                raise ConfigError(f"ETH3D: unknown scene(s) {sorted(unknown)}; found {[s.name for s in scenes]}")
            scenes = [s for s in scenes if s.name in wanted]
        self.cameras: dict[str, dict[int, Camera]] = {}
        self.folders: dict[str, Path] = {}
        self.pairs: list[ScenePair] = []
        for folder in scenes:
            self._add_scene(folder)
        if not self.pairs:
            raise DatasetUnavailableError(f"ETH3D: no pair with at least {self.conf.min_covisibility} covisible "
                                          f"points under {self.root}")

    def _add_scene(self, folder: Path) -> None:
        scene = folder.name
        ensure_dataset(folder, [IMAGES, CALIBRATION / "cameras.txt", CALIBRATION / "images.txt"], None,
                       what=f"ETH3D scene {scene}", how=f"  Extract {URL} again (delete the incomplete folder first).")
        cameras = read_cameras(folder / CALIBRATION / "cameras.txt")
        frames = read_images(folder / CALIBRATION / "images.txt")
        for frame in frames:
            if frame.camera_id not in cameras:
                raise ValueError(f"{folder / CALIBRATION / 'images.txt'}: image {frame.name} uses camera "
                                 f"{frame.camera_id}, which is not in cameras.txt (ids: {sorted(cameras)})")
        pairs = scene_pairs(scene, frames, self.conf.min_covisibility)
        names = sorted({f.name for p in pairs for f in (p.frame0, p.frame1)})
        ensure_dataset(folder / IMAGES, names, None, what=f"ETH3D images of {scene}",
                       how=f"  ({len(names)} images listed in images.txt); extract {URL} again.")
        self.cameras[scene] = cameras
        self.folders[scene] = folder
        self.pairs.extend(pairs)

    def _locate(self) -> list[Path]:
        for candidate in (self.root / FOLDER, self.root):
            if (candidate / CALIBRATION / "images.txt").is_file():
                return [candidate]  # a single scene folder
            if candidate.is_dir():
                scenes = sorted(d for d in candidate.iterdir() if (d / CALIBRATION / "images.txt").is_file())
                if scenes:
                    return scenes
        return []

    def __len__(self) -> int:
        return len(self.pairs)

    def pair_name(self, index: int) -> str:
        pair = self.pairs[index]
        return f"{pair.scene}/{Path(pair.frame0.name).stem}-{Path(pair.frame1.name).stem}"

    def _view(self, scene: str, frame: Frame) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None, str | None]:
        """(view, K of the returned image, depth or None, depth error or None)."""
        camera = self.cameras[scene][frame.camera_id]
        target = max(camera.width, camera.height) // self.conf.downsize_factor
        resize = None if self.conf.downsize_factor == 1 else target
        view = load_view(self.folders[scene] / IMAGES / frame.name, resize, "long")
        K = np.array(camera.K)
        K[:2, 2] -= 0.5  # COLMAP -> OpenCV pixel centres
        if view["original_image_size"] is not None and tuple(view["original_image_size"]) != (camera.width,
                                                                                             camera.height):
            w, h = view["original_image_size"]
            view["error"] = join_errors(view["error"], f"{frame.name} is {w}x{h} but cameras.txt says "
                                                       f"{camera.width}x{camera.height}")
        K = scale_intrinsics(K, view["scale"])
        depth, error = self._depth(scene, frame, view)
        return view, K, depth, error

    def _depth(self, scene: str, frame: Frame, view: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
        path = self.folders[scene] / DEPTHS / (Path(frame.name).stem + ".png")
        try:
            depth = read_depth_png(path)
        except (OSError, ValueError) as err:
            return None, str(err)
        size = view["image_size"]
        if size is None:
            return None, None
        depth_size = (depth.shape[1], depth.shape[0])
        if depth_size == tuple(size):
            return depth, None
        if depth_size == tuple(view["original_image_size"]):
            return resize_depth(depth, size), None
        return None, (f"{path}: depth is {depth_size[0]}x{depth_size[1]}, neither the image ({size[0]}x{size[1]}) "
                      f"nor the file ({view['original_image_size'][0]}x{view['original_image_size'][1]}); the "
                      "ETH3D depth maps are at downsize_factor 8")

    def _get(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        view0, K0, depth0, derr0 = self._view(pair.scene, pair.frame0)
        view1, K1, depth1, derr1 = self._view(pair.scene, pair.frame1)
        return {
            "name": self.pair_name(index),
            "scene": pair.scene,
            "covisibility": pair.covisibility,
            **pair_views(view0, view1),
            "K0": K0,
            "K1": K1,
            "T_0to1": pair.frame1.T_cam_world @ np.linalg.inv(pair.frame0.T_cam_world),
            "depth0": depth0,
            "depth1": depth1,
            "depth0_id": f"{pair.scene}/{pair.frame0.name}",  # caches store each depth map once
            "depth1_id": f"{pair.scene}/{pair.frame1.name}",
            "depth_error": join_errors(derr0, derr1),
            "load_error": join_errors(view0["error"], view1["error"]),
        }
