"""Coloured point clouds from a reconstruction or from matches + known poses, with Open3D.

Open3D is an optional extra (``pip install -e '.[open3d]'``; on Debian/Ubuntu its wheel needs
``apt-get install libusb-1.0-0``): it does the statistical outlier removal, the PLY file and,
where an offscreen renderer works (EGL/Vulkan), the picture. Building the cloud and the
matplotlib picture need only numpy.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_bytes
from ..geometry.triangulation import projection_matrix, reprojection_errors, triangulate_dlt
from ..image import read_image
from . import h5io
from .pairs import Pair

logger = logging.getLogger(__name__)
_OFFSCREEN_FAILED: list[str] = []  # the reason, once Open3D's renderer failed in this process


@dataclass
class PointCloud:
    xyz: np.ndarray  # (N, 3) float64, world frame
    rgb: np.ndarray  # (N, 3) uint8

    def __len__(self) -> int:
        return len(self.xyz)

    def select(self, keep: np.ndarray) -> PointCloud:
        return PointCloud(self.xyz[keep], self.rgb[keep])


def require_open3d() -> Any:
    try:
        import open3d
    except (ImportError, OSError) as err:  # OSError: a shared library it links against (libusb) is missing
        raise ImportError(
            f"this needs open3d ({err}): pip install open3d (on Debian/Ubuntu also apt-get install libusb-1.0-0)"
        ) from None
    return open3d


def to_open3d(cloud: PointCloud) -> Any:
    o3d = require_open3d()
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(np.asarray(cloud.xyz, np.float64))
    pcd.colors = o3d.utility.Vector3dVector(np.asarray(cloud.rgb, np.float64) / 255.0)
    return pcd


def cloud_from_reconstruction(reconstruction: Any, min_track_length: int = 2,
                              max_error: float | None = None) -> PointCloud:
    """The 3D points of a pycolmap reconstruction with their colours (extracted by the mapper)."""
    xyz, rgb = [], []
    for point in reconstruction.points3D.values():
        if point.track.length() < min_track_length or (max_error is not None and point.error > max_error):
            continue
        xyz.append(point.xyz)
        rgb.append(point.color)
    if not xyz:
        return PointCloud(np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    return PointCloud(np.asarray(xyz, np.float64), np.asarray(rgb, np.uint8))


def _colours(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1)
    colours = image[y, x]
    return np.repeat(colours[:, None], 3, axis=1) if colours.ndim == 1 else colours


def triangulation_angles(X: np.ndarray, centre0: np.ndarray, centre1: np.ndarray) -> np.ndarray:
    """Angle in degrees between the two viewing rays of each point (N, 3)."""
    ray0, ray1 = X - centre0, X - centre1
    cos = (ray0 * ray1).sum(1) / (np.linalg.norm(ray0, axis=1) * np.linalg.norm(ray1, axis=1) + 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def cloud_from_matches(image_dir: str | Path, features_path: str | Path, matches_path: str | Path,
                       pairs: Sequence[Pair], K: np.ndarray | Mapping[str, np.ndarray],
                       poses: Mapping[str, np.ndarray], max_error: float = 2.0,
                       min_angle: float = 1.0) -> PointCloud:
    """Triangulate the matches of each pair with known intrinsics and poses (``T_cam_world``).

    Two-view points are kept when they lie in front of both cameras, reproject within
    ``max_error`` pixels in both and see a triangulation angle of at least ``min_angle`` degrees;
    colours come from the first image.
    """
    intrinsics = K if isinstance(K, Mapping) else None
    missing = sorted({n for pair in pairs for n in pair
                      if n not in poses or (intrinsics is not None and n not in intrinsics)})
    if missing:
        raise KeyError(f"no pose or intrinsics for {len(missing)} image(s) of the pairs: {', '.join(missing[:10])}")
    xyz, rgb = [], []
    with h5io.open_h5(features_path) as feats, h5io.open_h5(matches_path) as matches_file:
        for name0, name1 in h5io.missing_pairs(None, pairs):
            matches, _ = h5io.read_matches(matches_file, name0, name1)
            if len(matches) == 0:
                continue
            x0 = h5io.read_keypoints(feats, name0)[matches[:, 0]]
            x1 = h5io.read_keypoints(feats, name1)[matches[:, 1]]
            K0 = np.asarray(intrinsics[name0] if intrinsics else K, np.float64)
            K1 = np.asarray(intrinsics[name1] if intrinsics else K, np.float64)
            T0, T1 = np.asarray(poses[name0], np.float64), np.asarray(poses[name1], np.float64)
            X = triangulate_dlt(x0, x1, projection_matrix(K0, T0), projection_matrix(K1, T1))
            with np.errstate(invalid="ignore"):
                err0, z0 = reprojection_errors(X, x0, K0, T0)
                err1, z1 = reprojection_errors(X, x1, K1, T1)
                centre0, centre1 = -T0[:3, :3].T @ T0[:3, 3], -T1[:3, :3].T @ T1[:3, 3]
                keep = (np.isfinite(X).all(1) & (z0 > 0) & (z1 > 0) & (err0 < max_error) & (err1 < max_error)
                        & (triangulation_angles(X, centre0, centre1) >= min_angle))
            if keep.any():
                xyz.append(X[keep])
                rgb.append(_colours(read_image(Path(image_dir) / name0), x0[keep]))
    if not xyz:
        return PointCloud(np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    return PointCloud(np.concatenate(xyz), np.concatenate(rgb).astype(np.uint8))


def remove_outliers(cloud: PointCloud, nb_neighbors: int = 20, std_ratio: float = 2.0) -> tuple[PointCloud, np.ndarray]:
    """Open3D's statistical outlier removal: drop points whose mean distance to their
    ``nb_neighbors`` nearest neighbours exceeds the global mean by ``std_ratio`` standard deviations.
    Returns the kept cloud and the boolean mask of kept points."""
    keep = np.zeros(len(cloud), bool)
    if len(cloud) <= nb_neighbors:
        return cloud, np.ones(len(cloud), bool)  # too few points for the statistics to mean anything
    _, index = to_open3d(cloud).remove_statistical_outlier(nb_neighbors=nb_neighbors, std_ratio=std_ratio)
    keep[np.asarray(index, np.int64)] = True
    return cloud.select(keep), keep


def save_ply(cloud: PointCloud, path: str | Path) -> Path:
    """Write a coloured PLY (binary) with Open3D, atomically."""
    o3d = require_open3d()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".ply", dir=path.parent)
    os.close(fd)
    try:
        if not o3d.io.write_point_cloud(tmp, to_open3d(cloud)):
            raise OSError(f"Open3D could not write {path}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_ply(path: str | Path) -> PointCloud:
    o3d = require_open3d()
    if not Path(path).is_file():
        raise FileNotFoundError(f"no point cloud at {path}")
    pcd = o3d.io.read_point_cloud(str(path))
    return PointCloud(np.asarray(pcd.points), np.round(np.asarray(pcd.colors) * 255).astype(np.uint8))


def _view(cloud: PointCloud) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre, eye and extent of a default view: robust centre, looking along +z (COLMAP/OpenCV cameras)."""
    centre = np.median(cloud.xyz, axis=0)
    extent = float(np.percentile(np.linalg.norm(cloud.xyz - centre, axis=1), 90)) or 1.0
    return centre, centre - np.array([0.0, 0.5, 2.5]) * extent, extent


def _render_open3d(cloud: PointCloud, width: int, height: int, point_size: float) -> np.ndarray:
    o3d = require_open3d()
    renderer = o3d.visualization.rendering.OffscreenRenderer(width, height)
    material = o3d.visualization.rendering.MaterialRecord()
    material.shader, material.point_size = "defaultUnlit", float(point_size)
    renderer.scene.set_background([1.0, 1.0, 1.0, 1.0])
    renderer.scene.add_geometry("cloud", to_open3d(cloud), material)
    centre, eye, _ = _view(cloud)
    renderer.setup_camera(60.0, centre, eye, [0.0, -1.0, 0.0])  # y down in the camera frames
    return np.asarray(renderer.render_to_image())


def _render_matplotlib(cloud: PointCloud, width: int, height: int, point_size: float,
                       cameras: np.ndarray | None) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_subplot(projection="3d")
    centre, _, extent = _view(cloud)
    xyz = cloud.xyz - centre
    # plot (x, z, -y): cameras look along +z with y down, so -y is up in the picture
    ax.scatter(xyz[:, 0], xyz[:, 2], -xyz[:, 1], c=cloud.rgb / 255.0, s=point_size, linewidths=0, depthshade=False)
    if cameras is not None and len(cameras):
        c = np.asarray(cameras) - centre
        ax.plot(c[:, 0], c[:, 2], -c[:, 1], "r^-", markersize=4, linewidth=1, label="cameras")
        ax.legend(loc="upper right")
    for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        set_lim(-extent, extent)
    ax.view_init(elev=20, azim=-70)
    ax.set_xlabel("x")
    ax.set_ylabel("z")
    ax.set_zlabel("-y")
    ax.set_title(f"{len(cloud)} points")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def render_png(cloud: PointCloud, path: str | Path, width: int = 800, height: int = 600, point_size: float = 4.0,
               renderer: str = "auto", cameras: np.ndarray | None = None) -> str:
    """Save a picture of the cloud; returns the renderer used ("open3d" or "matplotlib").

    ``auto`` tries Open3D's offscreen renderer (it needs EGL or Vulkan) and falls back to a
    matplotlib scatter where it cannot run (headless machines without a GPU driver), which also
    draws the camera centres ``cameras`` (M, 3) when given.
    """
    if renderer not in ("auto", "open3d", "matplotlib"):
        raise ValueError(f"unknown renderer '{renderer}'; use auto, open3d or matplotlib")
    if len(cloud) == 0:
        raise ValueError("the point cloud is empty: nothing to render")
    if renderer in ("auto", "open3d") and not _OFFSCREEN_FAILED:
        try:
            import cv2

            image = _render_open3d(cloud, width, height, point_size)
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., :3][..., ::-1]))
            if ok:
                atomic_write_bytes(path, buf.tobytes())
                return "open3d"
        except (ImportError, RuntimeError) as err:
            _OFFSCREEN_FAILED.append(str(err))
            if renderer == "open3d":
                raise
            logger.info("Open3D offscreen rendering unavailable (%s); using matplotlib", err)
    elif renderer == "open3d":
        raise RuntimeError(f"Open3D offscreen rendering unavailable: {_OFFSCREEN_FAILED[0]}")
    atomic_write_bytes(path, _render_matplotlib(cloud, width, height, point_size, cameras))
    return "matplotlib"


def export_cloud(reconstruction: Any, output_dir: str | Path, nb_neighbors: int = 20, std_ratio: float = 2.0,
                 renderer: str = "auto") -> dict[str, Any]:
    """``cloud.ply`` (outliers removed) and ``cloud.png`` of a reconstruction; returns paths and counts."""
    output_dir = Path(output_dir)
    cloud = cloud_from_reconstruction(reconstruction)
    kept, _ = remove_outliers(cloud, nb_neighbors, std_ratio)
    info: dict[str, Any] = {"points": len(cloud), "kept": len(kept), "ply": save_ply(kept, output_dir / "cloud.ply")}
    if len(kept):
        info["png"] = output_dir / "cloud.png"
        centres = np.stack([reconstruction.images[i].projection_center() for i in reconstruction.reg_image_ids()])
        info["renderer"] = render_png(kept, info["png"], renderer=renderer, cameras=centres)
    return info
