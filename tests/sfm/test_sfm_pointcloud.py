"""Triangulation with known poses, point clouds, outlier removal, PLY and the picture."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from featmatch_core.geometry.depth import project, transform_points
from featmatch_core.geometry.triangulation import projection_matrix, reprojection_errors, triangulate_dlt
from featmatch_core.sfm import h5io, pointcloud
from featmatch_core.sfm.extract import extract_features
from featmatch_core.sfm.match import match_pairs
from featmatch_core.sfm.pairs import sequential_pairs
from featmatch_core.sfm.pointcloud import PointCloud

try:
    import open3d  # noqa: F401

    HAVE_OPEN3D, WHY = True, ""
except (ImportError, OSError) as err:  # the wheel also fails to load without Debian's libusb-1.0-0
    HAVE_OPEN3D, WHY = False, f"open3d unavailable: {err}"
needs_open3d = pytest.mark.skipif(not HAVE_OPEN3D, reason=WHY or "open3d")


def two_cameras():
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    T0 = np.eye(4)
    angle = np.radians(10)
    T1 = np.eye(4)
    T1[:3, :3] = [[np.cos(angle), 0, -np.sin(angle)], [0, 1, 0], [np.sin(angle), 0, np.cos(angle)]]
    T1[:3, 3] = [-0.5, 0.05, 0.1]
    return K, T0, T1


def test_triangulation_recovers_exact_points():
    K, T0, T1 = two_cameras()
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50), rng.uniform(3, 8, 50)])
    x0, _ = project(transform_points(T0, X), K)
    x1, _ = project(transform_points(T1, X), K)
    X_est = triangulate_dlt(x0, x1, projection_matrix(K, T0), projection_matrix(K, T1))
    np.testing.assert_allclose(X_est, X, atol=1e-6)
    errors, z = reprojection_errors(X_est, x1, K, T1)
    assert errors.max() < 1e-6 and (z > 0).all()


@pytest.mark.parametrize("baseline", [0.5, 0.01])
def test_triangulation_is_the_smallest_singular_vector_of_the_dlt_system(baseline):
    """Noisy pixels, wide and video-like (1 cm) baselines: the points are those of an SVD of the
    (row-normalised) DLT system, so solving through its Gram matrix loses nothing."""
    K, T0, T1 = two_cameras()
    T1[:3, 3] *= baseline / np.linalg.norm(T1[:3, 3])
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200), rng.uniform(3, 8, 200)])
    x0 = project(transform_points(T0, X), K)[0] + rng.normal(0, 0.5, (200, 2))
    x1 = project(transform_points(T1, X), K)[0] + rng.normal(0, 0.5, (200, 2))
    P0, P1 = projection_matrix(K, T0), projection_matrix(K, T1)
    X_est = triangulate_dlt(x0, x1, P0, P1)
    rows = np.stack([x0[:, :1] * P0[2] - P0[0], x0[:, 1:] * P0[2] - P0[1],
                     x1[:, :1] * P1[2] - P1[0], x1[:, 1:] * P1[2] - P1[1]], 1)
    rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
    homogeneous = np.linalg.svd(rows)[2][:, -1]
    np.testing.assert_allclose(X_est, homogeneous[:, :3] / homogeneous[:, 3:], rtol=1e-8)
    if baseline == 0.5:  # well posed: near the true points
        assert np.median(np.abs(X_est[:, 2] - X[:, 2])) < 0.1  # 0.5 px noise, 3-8 m deep


def synthetic_cloud(seed: int = 0) -> tuple[PointCloud, int]:
    rng = np.random.default_rng(seed)
    surface = np.column_stack([rng.uniform(-1, 1, 2000), rng.uniform(-1, 1, 2000), rng.normal(5, 0.01, 2000)])
    far = rng.uniform(-1, 1, (20, 3)) * 3 + np.array([0, 0, 12])  # isolated points far behind the surface
    xyz = np.concatenate([surface, far])
    rgb = np.concatenate([np.full((2000, 3), 200), np.full((20, 3), 10)]).astype(np.uint8)
    return PointCloud(xyz, rgb), 2000


@needs_open3d
def test_statistical_outlier_removal_drops_isolated_points():
    cloud, n_surface = synthetic_cloud()
    kept, mask = pointcloud.remove_outliers(cloud, nb_neighbors=20, std_ratio=2.0)
    assert not mask[n_surface:].any()  # every far point removed
    assert mask[:n_surface].mean() > 0.95  # the surface stays
    assert len(kept) == mask.sum() and (kept.rgb == 200).all()


@needs_open3d
def test_ply_round_trip(tmp_path):
    cloud, _ = synthetic_cloud()
    path = pointcloud.save_ply(cloud, tmp_path / "cloud.ply")
    back = pointcloud.load_ply(path)
    np.testing.assert_allclose(back.xyz, cloud.xyz, atol=1e-9)
    np.testing.assert_array_equal(back.rgb, cloud.rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["cloud.ply"]  # no temporary left behind


def test_matplotlib_picture(tmp_path):
    cloud, _ = synthetic_cloud()
    path = tmp_path / "cloud.png"
    assert pointcloud.render_png(cloud, path, 320, 240, renderer="matplotlib") == "matplotlib"
    image = cv2.imread(str(path))
    assert image.shape == (240, 320, 3) and image.std() > 5  # a picture, not a blank canvas
    with pytest.raises(ValueError, match="empty"):
        pointcloud.render_png(cloud.select(np.zeros(len(cloud), bool)), path)


@needs_open3d
def test_auto_picture_falls_back_without_a_renderer(tmp_path):
    cloud, _ = synthetic_cloud()
    used = pointcloud.render_png(cloud, tmp_path / "auto.png", 320, 240)
    assert used in ("open3d", "matplotlib") and cv2.imread(str(tmp_path / "auto.png")).shape == (240, 320, 3)


def test_cloud_from_matches_and_known_poses_lies_on_the_scene(room, sift_nn, tmp_path):
    features, matches = tmp_path / "f.h5", tmp_path / "m.h5"
    names = room.names[:3]
    pairs = sequential_pairs(names, 2)
    extract_features(sift_nn, room.image_dir, features, names)
    match_pairs(sift_nn, pairs, features, matches)
    cloud = pointcloud.cloud_from_matches(room.image_dir, features, matches, pairs, room.K, room.poses)
    assert len(cloud) > 300 and cloud.rgb.dtype == np.uint8
    # every point lies on the rendered surface: compare with the depth map of the first camera
    T0 = room.poses[names[0]]
    pixels, z = project(transform_points(T0, cloud.xyz), room.K)
    inside = (z > 0) & (pixels[:, 0] >= 0) & (pixels[:, 0] <= 319) & (pixels[:, 1] >= 0) & (pixels[:, 1] <= 239)
    depth = room.depths[names[0]][np.round(pixels[inside, 1]).astype(int), np.round(pixels[inside, 0]).astype(int)]
    relative = np.abs(z[inside] - depth) / depth
    assert inside.mean() > 0.5 and np.median(relative) < 0.01
    with pytest.raises(KeyError, match="no pose or intrinsics"):
        pointcloud.cloud_from_matches(room.image_dir, features, matches, pairs, room.K, {names[0]: T0})


def test_cloud_from_reconstruction_keeps_colours(room, room_sfm):
    result, out = room_sfm
    cloud = pointcloud.cloud_from_reconstruction(result.reconstruction)
    assert len(cloud) == result.reconstruction.num_points3D() and cloud.rgb.std() > 5  # texture grey levels
    strict = pointcloud.cloud_from_reconstruction(result.reconstruction, min_track_length=4)
    assert 0 < len(strict) < len(cloud)
    with h5io.open_h5(out / "features.h5") as f:
        assert sorted(h5io.list_names(f)) == room.names


@needs_open3d
def test_export_cloud_of_a_reconstruction(room_sfm, tmp_path):
    result, _ = room_sfm
    info = pointcloud.export_cloud(result.reconstruction, tmp_path, renderer="matplotlib")
    assert 0.8 * info["points"] <= info["kept"] <= info["points"] == result.reconstruction.num_points3D()
    assert len(pointcloud.load_ply(info["ply"])) == info["kept"]
    assert info["renderer"] == "matplotlib" and cv2.imread(str(info["png"])).shape == (600, 800, 3)
