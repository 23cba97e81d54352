"""A generated scene with exact geometry: textured planes (a room corner) seen by a moving camera.

Used by ``python -m lightglue_ros.make_bag --synthetic N`` (the README demo) and by the tests:
every frame comes with its depth (z along the optical axis, metres) and its pose
``T_cam_world`` (``X_cam = R X_world + t``), so matches, relative poses, triangulation and
stereo baselines can be checked exactly. Rendering is the ray casting of
``featmatch_core.datasets.render`` (each pixel's ray hits the nearest plane, whose texture,
``featmatch_core.datasets.synthetic.random_texture``, is sampled with ``cv2.remap``).
Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featmatch_core.datasets.render import Plane, render_planes
from featmatch_core.datasets.synthetic import random_texture

# Plane is re-exported: it was defined here before the ray casting moved to featmatch_core
__all__ = ["Plane", "RoomScene", "SyntheticFrame", "default_K", "rotation", "sequence", "stereo_pair",
           "trajectory"]


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
        T = np.eye(4)
        T[:3, :3] = R_wc.T
        T[:3, 3] = -R_wc.T @ centre
        poses.append(T)
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
