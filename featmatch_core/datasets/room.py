"""A generated scene with exact geometry: textured planes (a room corner) seen by a moving camera.

Used by ``python -m lightglue_ros.make_bag --synthetic N`` (the README demo), by the video
evaluation (``python -m featmatch_core.eval.video``: consecutive frames) and by the tests:
every frame comes with its depth (z along the optical axis, metres) and its pose
``T_cam_world`` (``X_cam = R X_world + t``), so matches, relative poses, triangulation and
stereo baselines can be checked exactly. Rendering is the ray casting of
``featmatch_core.datasets.render`` (each pixel's ray hits the nearest plane, whose texture,
``featmatch_core.datasets.synthetic.random_texture``, is sampled with ``cv2.remap``).
Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..config import ConfigError
from .base import BASE_CONF, PairDataset, check_rendered
from .render import Plane, camera_pose, render_planes
from .synthetic import random_texture


def rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def default_K(width: int = 640, height: int = 480) -> np.ndarray:
    f = 0.8 * width
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


class RoomScene:
    """A back wall, a floor and a left wall x = -1.6 (world frame = the first camera's optical frame:
    x right, y down, z forward)."""

    def __init__(self, seed: int = 0, texture_size: int = 1024) -> None:
        tex = [random_texture(texture_size, texture_size, seed=seed * 10 + i) for i in range(3)]
        ex, ey, ez = np.eye(3)
        self.planes = [
            Plane(
                -ez, -4.0, np.array([-4.0, -3.0, 4.0]), ex, ey, tex[0], 8.0 / texture_size
            ),  # back wall z=4
            Plane(-ey, -1.2, np.array([-4.0, 1.2, -1.0]), ex, ez, tex[1], 8.0 / texture_size),  # floor y=1.2
            Plane(ex, -1.6, np.array([-1.6, -3.0, -1.0]), ez, ey, tex[2], 8.0 / texture_size),  # wall x=-1.6
        ]

    def render(
        self, K: np.ndarray, T_cam_world: np.ndarray, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(gray uint8 image, float32 z-depth in metres) seen by a pinhole camera."""
        return render_planes(self.planes, K, T_cam_world, width, height)


def trajectory(num_frames: int, step: float = 0.04, seed: int = 0) -> list[np.ndarray]:
    """T_cam_world of a camera moving forward and sideways while it pans and tilts a little."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    poses = []
    for i in range(num_frames):
        s = i * step
        centre = np.array(
            [
                0.6 * np.sin(0.8 * s + phase[0]) - 0.6 * np.sin(phase[0]),
                0.15 * np.sin(1.3 * s + phase[1]) - 0.15 * np.sin(phase[1]),
                0.9 * s,
            ]
        )
        R_wc = (
            rotation("y", 8 * np.sin(1.1 * s + phase[2]) - 8 * np.sin(phase[2]))
            @ rotation("x", 4 * np.sin(0.7 * s))
            @ rotation("z", 2 * np.sin(0.9 * s))
        )
        poses.append(camera_pose(R_wc, centre))
    return poses


@dataclass
class SyntheticFrame:
    image: np.ndarray  # (H, W) uint8
    depth: np.ndarray  # (H, W) float32 metres, 0 = nothing
    T_cam_world: np.ndarray
    K: np.ndarray
    stamp_ns: int


def sequence(
    num_frames: int = 10,
    width: int = 640,
    height: int = 480,
    step: float = 0.04,
    seed: int = 0,
    fps: float = 10.0,
    start_ns: int = 1_700_000_000_000_000_000,
) -> list[SyntheticFrame]:
    scene = RoomScene(seed)
    K = default_K(width, height)
    frames = []
    for i, T in enumerate(trajectory(num_frames, step, seed)):
        image, depth = scene.render(K, T, width, height)
        frames.append(SyntheticFrame(image, depth, T, K, start_ns + int(round(i * 1e9 / fps))))
    return frames


def stereo_pair(
    baseline: float = 0.12,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    T_left_world: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, depth_left, K) of a rectified pair; the right camera sits ``baseline`` m to the right."""
    scene = RoomScene(seed)
    K = default_K(width, height)
    T_left = np.eye(4) if T_left_world is None else T_left_world
    T_right_left = np.eye(4)
    T_right_left[0, 3] = -baseline
    left, depth = scene.render(K, T_left, width, height)
    right, _ = scene.render(K, T_right_left @ T_left, width, height)
    return left, right, depth, K


class RoomVideoPairs(PairDataset):
    """Consecutive frames of generated room sequences: video-like pairs with exact ground truth.

    Sequence ``seed`` is :func:`sequence` (``num_frames`` frames, ``step`` of motion each); pair
    i of a sequence is frame i with frame i + ``gap``. Items carry what the depth-based
    evaluations read (``K0/1``, ``T_0to1``, ``depth0/1``), as ``SceneEvalPairs``. Nothing is
    read from disk: ``root`` is unused. Seeds 1-3 were used to choose the adaptivity of the
    bundled SIFT LightGlue; the default evaluation seeds are other ones.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        **BASE_CONF,
        "download": False,
        "seeds": [10, 11, 12],
        "num_frames": 40,
        "step": 0.06,  # the README demo's motion per frame
        "gap": 1,
        "image_size": [480, 640],  # (H, W)
    }
    dirname = "room_video"

    def _check_conf(self) -> None:
        super()._check_conf()
        check_rendered(self)
        if not list(self.conf.seeds):
            raise ConfigError("RoomVideoPairs: data.seeds is empty")
        if not 1 <= int(self.conf.gap) < int(self.conf.num_frames):
            raise ConfigError(f"RoomVideoPairs: data.gap must be in [1, num_frames), got {self.conf.gap}")

    def _init(self) -> None:
        frames, gap = int(self.conf.num_frames), int(self.conf.gap)
        self.pairs = [(int(seed), i) for seed in self.conf.seeds for i in range(frames - gap)]
        self._cached: tuple[int, RoomScene, list[np.ndarray]] | None = None  # the last sequence used

    def __len__(self) -> int:
        return len(self.pairs)

    def pair_name(self, index: int) -> str:
        seed, i = self.pairs[index]
        return f"room{seed}_{i:04d}_{i + int(self.conf.gap):04d}"

    def _scene(self, seed: int) -> tuple[RoomScene, list[np.ndarray]]:
        """Sequence ``seed``'s scene and poses; pairs come in seed order, so one is kept."""
        if self._cached is None or self._cached[0] != seed:
            self._cached = (seed, RoomScene(seed), trajectory(int(self.conf.num_frames), float(self.conf.step), seed))
        return self._cached[1], self._cached[2]

    def _get(self, index: int) -> dict[str, Any]:
        seed, i = self.pairs[index]
        scene, poses = self._scene(seed)
        height, width = (int(v) for v in self.conf.image_size)
        K = default_K(width, height)
        T0, T1 = poses[i], poses[i + int(self.conf.gap)]
        item: dict[str, Any] = {"name": self.pair_name(index), "scene": f"room{seed}",
                                "T_0to1": T1 @ np.linalg.inv(T0), "load_error": None, "depth_error": None}
        for side, T in enumerate((T0, T1)):
            image, depth = scene.render(K, T, width, height)
            item.update({f"image{side}": image, f"image_size{side}": (width, height),
                         f"original_image_size{side}": (width, height), f"K{side}": K, f"depth{side}": depth})
        return item
