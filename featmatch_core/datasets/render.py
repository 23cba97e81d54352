"""Ray casting of textured planes: exact images and depth maps of generated 3D scenes.

Shared by the training scenes (:mod:`.scenes`) and the ROS demo scene
(``featmatch_core.datasets.room``). Each pixel's ray hits the nearest plane (or bounded rectangle),
whose texture is sampled with ``cv2.remap``; the depth is z along the optical axis.
Conventions: ``T_cam_world`` maps world points to the camera (``X_cam = R X_world + t``),
OpenCV pixels (centre of the top-left pixel at (0, 0)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Plane:
    normal: np.ndarray  # unit normal n: the plane is n . X = offset (world frame)
    offset: float
    origin: np.ndarray  # a point of the plane, texture pixel (0, 0)
    axis_u: np.ndarray  # in-plane unit vectors along texture x and y
    axis_v: np.ndarray
    texture: np.ndarray  # uint8 gray
    texel: float  # metres per texture pixel
    # (u, v) size in metres of a rectangle from ``origin`` along axis_u/axis_v; None: infinite plane
    extent: tuple[float, float] | None = None


def camera_pose(R_wc: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """T_cam_world of a camera at ``centre`` whose axes in the world are the columns of ``R_wc``."""
    T = np.eye(4)
    T[:3, :3] = R_wc.T
    T[:3, 3] = -R_wc.T @ centre
    return T


def camera_rays(K: np.ndarray, T_cam_world: np.ndarray, width: int, height: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(camera centre (3,), world ray directions (H, W, 3) scaled so that z_cam = 1)."""
    R, t = T_cam_world[:3, :3], T_cam_world[:3, 3]
    centre = -R.T @ t
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    return centre, rays_cam @ R  # R^T d: with z_cam = 1 the hit distance is the z-depth


def _inside(plane: Plane, centre: np.ndarray, rays: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Which hits at distances ``s`` fall within the plane's rectangle (all of them if unbounded)."""
    if plane.extent is None:
        return np.ones(s.shape, bool)
    rel = centre - plane.origin + rays * np.where(np.isfinite(s), s, 0.0)[..., None]
    u, v = rel @ plane.axis_u, rel @ plane.axis_v
    return (u >= 0) & (u <= plane.extent[0]) & (v >= 0) & (v <= plane.extent[1])


def nearest_hits(planes: Sequence[Plane], centre: np.ndarray, rays: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(z-depth (H, W), +inf where nothing is hit; index of the plane hit (H, W), -1 for none)."""
    depth = np.full(rays.shape[:2], np.inf)
    which = np.full(rays.shape[:2], -1, np.int64)
    for i, plane in enumerate(planes):
        denom = rays @ plane.normal
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (plane.offset - plane.normal @ centre) / denom
        hit = (s > 1e-6) & (s < depth) & np.isfinite(s)
        if plane.extent is not None:
            hit &= _inside(plane, centre, rays, s)
        depth[hit], which[hit] = s[hit], i
    return depth, which


def shade(planes: Sequence[Plane], centre: np.ndarray, rays: np.ndarray, depth: np.ndarray,
          which: np.ndarray) -> np.ndarray:
    """Float32 (H, W) intensities: each pixel samples the texture of the plane it hits (0: none)."""
    image = np.zeros(depth.shape, np.float32)
    for i, plane in enumerate(planes):
        mask = which == i
        if not mask.any():
            continue
        X = centre + rays * np.where(mask, depth, 0)[..., None]
        rel = X - plane.origin
        map_x = (rel @ plane.axis_u / plane.texel).astype(np.float32)
        map_y = (rel @ plane.axis_v / plane.texel).astype(np.float32)
        sampled = cv2.remap(plane.texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        image[mask] = sampled[mask]
    return image


def render_planes(planes: Sequence[Plane], K: np.ndarray, T_cam_world: np.ndarray, width: int, height: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(gray uint8 image, float32 z-depth in metres, 0 where no plane is hit) of a pinhole camera."""
    centre, rays = camera_rays(K, T_cam_world, width, height)
    depth, which = nearest_hits(planes, centre, rays)
    image = shade(planes, centre, rays, depth, which)
    depth[which < 0] = 0.0
    return np.clip(image, 0, 255).astype(np.uint8), depth.astype(np.float32)
