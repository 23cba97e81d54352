"""Geometry: homographies, DLT, epipolar errors, depth projection, ground-truth labels."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from featmatch_core.geometry.utils import numpy_compat
from featmatch_core.geometry.depth import (
    image_to_camera,
    invert_transform,
    project,
    reproject,
    sample_depth,
    transform_points,
    unproject,
)
from featmatch_core.geometry.epipolar import (
    angle_error_mat,
    angle_error_vec,
    essential_from_pose,
    fundamental_from_pose,
    relative_pose_error,
    sampson_error,
    skew,
    sym_epipolar_distance,
)
from featmatch_core.geometry.gt_matches import (
    IGNORE,
    UNMATCHED,
    gt_matches_from_depth,
    gt_matches_from_homography,
)
from featmatch_core.geometry.homography import (
    corner_error,
    homography_dlt,
    image_corners,
    poses_from_homography,
    rotation_from_bearings,
    sym_transfer_error,
    warp_points,
)

H_TEST = np.array([[1.1, 0.05, 3.0], [0.02, 0.9, -7.0], [1e-4, 2e-4, 1.0]])


def rotation(axis, degrees):
    axis = np.asarray(axis, dtype=np.float64)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * np.deg2rad(degrees))[0]


def pose(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


# ---------------------------------------------------------------- homographies
def _plane_views(t, num=100, seed=0):
    """Pixels of a tilted plane 3 m away in two 640x480 views; the plane's homography."""
    rng = np.random.default_rng(seed)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    normal = np.array([0.2, -0.1, 1.0]) / np.linalg.norm([0.2, -0.1, 1.0])
    T = pose(rotation([0.4, -1.0, 0.2], 3.2), t)
    pts0 = rng.uniform([0, 0], [640, 480], (num, 2))
    rays = np.hstack([pts0, np.ones((num, 1))]) @ np.linalg.inv(K).T
    X1 = (rays * (3.0 / (rays @ normal))[:, None]) @ T[:3, :3].T + T[:3, 3]
    pts1 = (X1 @ K.T)[:, :2] / X1[:, 2:]
    H = K @ (T[:3, :3] + np.outer(T[:3, 3], normal) / 3.0) @ np.linalg.inv(K)
    return K, T, normal, pts0, pts1, H


@pytest.mark.parametrize(("t", "num_poses"), [([0.3, 0.05, 0.1], 1), ([0.02, 0.01, 0.3], 2), ([0.05, 0.0, -0.2], 2)])
def test_poses_from_homography_are_the_true_pose_and_its_twin(t, num_poses):
    """A plane allows two poses; the twin is dropped when it puts points behind a camera."""
    K, T, normal, pts0, pts1, H = _plane_views(t)
    poses = poses_from_homography(H / H[2, 2], K, K, pts0, pts1)
    assert len(poses) == num_poses
    errors = [relative_pose_error(T, P[:3, :3], P[:3, 3]) for P, _ in poses]
    true = int(np.argmin([max(e) for e in errors]))
    assert max(errors[true]) < 1e-4
    np.testing.assert_allclose(poses[true][1], normal, atol=1e-6)
    assert np.linalg.norm(poses[true][0][:3, 3]) == pytest.approx(1.0)
    for P, _ in poses:  # every pose explains every match on the plane
        assert np.abs(sampson_error(pts0, pts1, fundamental_from_pose(K, K, P))).max() < 1e-6
    if num_poses == 2:
        assert max(errors[1 - true]) > 5.0  # degrees: a real second solution, not a copy


def test_a_rotation_homography_gives_the_rotation_fitted_to_the_bearings():
    rng = np.random.default_rng(1)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    R = rotation([0.2, 1.0, -0.1], 4.0)
    pts0 = rng.uniform([0, 0], [640, 480], (80, 2))
    bearings0 = np.hstack([pts0, np.ones((80, 1))]) @ np.linalg.inv(K).T
    bearings1 = bearings0 @ R.T
    pts1 = (bearings1 @ K.T)[:, :2] / bearings1[:, 2:]
    (T, normal), = poses_from_homography(K @ R @ np.linalg.inv(K), K, K, pts0, pts1)
    assert not T[:3, 3].any() and not normal.any()
    np.testing.assert_allclose(T[:3, :3], R, atol=1e-9)
    # the fit uses the bearings only: their lengths and a mirror-image solution do not count
    scaled = bearings1 * rng.uniform(1, 5, (80, 1))
    np.testing.assert_allclose(rotation_from_bearings(bearings0, scaled), R, atol=1e-9)
    mirrored = bearings0 * np.array([1.0, 1.0, -1.0])  # best fitted by a reflection
    assert np.linalg.det(rotation_from_bearings(bearings0, mirrored)) == pytest.approx(1.0)


def test_poses_from_homography_rejects_a_matrix_that_is_no_homography():
    with pytest.raises(ValueError, match="finite 3x3"):
        poses_from_homography(np.full((3, 3), np.nan), np.eye(3), np.eye(3), np.zeros((4, 2)), np.zeros((4, 2)))




def test_corner_error_of_a_translation_is_its_length():
    H = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    assert corner_error(H, np.eye(3), (640, 480)) == pytest.approx(5.0)
    assert corner_error(torch.tensor(H), torch.eye(3, dtype=torch.float64), (64, 48)) == pytest.approx(5.0)
    assert image_corners((640, 480)).tolist() == [[0, 0], [639, 0], [639, 479], [0, 479]]


def test_warp_points_numpy_torch_and_batched_agree():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 500, (2, 10, 2))
    Hs = np.stack([H_TEST, np.linalg.inv(H_TEST)])
    batched = warp_points(torch.from_numpy(points), torch.from_numpy(Hs))
    assert isinstance(batched, torch.Tensor) and batched.shape == (2, 10, 2)
    for b in range(2):
        np.testing.assert_allclose(batched[b].numpy(), warp_points(points[b], Hs[b]), atol=1e-9)
    np.testing.assert_allclose(warp_points(warp_points(points[0], H_TEST), np.linalg.inv(H_TEST)), points[0],
                               atol=1e-9)


@pytest.mark.parametrize("num", [4, 50])
def test_dlt_recovers_exact_homography(num):
    rng = np.random.default_rng(num)
    points0 = torch.from_numpy(rng.uniform(0, 640, (num, 2)))
    points1 = warp_points(points0, torch.from_numpy(H_TEST))
    H = homography_dlt(points0, points1)
    assert H.shape == (3, 3) and H.dtype == torch.float64
    np.testing.assert_allclose(H.numpy(), H_TEST, rtol=1e-6, atol=1e-8)
    # float32 and batched inputs
    batch0 = torch.stack([points0, points0 * 0.5]).float()
    batch1 = torch.stack([points1, warp_points(points0 * 0.5, torch.from_numpy(H_TEST))]).float()
    Hb = homography_dlt(batch0, batch1)
    assert Hb.shape == (2, 3, 3) and Hb.dtype == torch.float32
    for b in range(2):
        err = (warp_points(batch0[b].double(), Hb[b].double()) - batch1[b].double()).norm(dim=-1)
        assert err.max() < 0.05


def test_dlt_weights_remove_outliers():
    rng = np.random.default_rng(1)
    points0 = torch.from_numpy(rng.uniform(0, 640, (40, 2)))
    points1 = warp_points(points0, torch.from_numpy(H_TEST))
    points1[:10] = torch.from_numpy(rng.uniform(0, 640, (10, 2)))  # 25 % gross outliers
    weights = torch.ones(40, dtype=torch.float64)
    weights[:10] = 0
    assert corner_error(homography_dlt(points0, points1).numpy(), H_TEST, (640, 480)) > 10
    H = homography_dlt(points0, points1, weights)
    assert corner_error(H.numpy(), H_TEST, (640, 480)) < 1e-6


def test_dlt_gradients():
    torch.manual_seed(0)
    H = torch.from_numpy(H_TEST)
    points0 = (torch.rand(6, 2, dtype=torch.float64) * 100).requires_grad_()
    points1 = (warp_points(points0.detach(), H) + torch.randn(6, 2, dtype=torch.float64)).requires_grad_()
    weights = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(homography_dlt, (points0, points1, weights))
    # a zero weight still has a finite gradient (no sqrt at 0)
    weights = weights.detach().clone()
    weights[0] = 0
    weights.requires_grad_()
    homography_dlt(points0, points1, weights).sum().backward()
    assert torch.isfinite(weights.grad).all() and torch.isfinite(points0.grad).all()


def test_sym_transfer_error():
    H = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    points0 = np.array([[0.0, 0.0], [10.0, 20.0]])
    points1 = points0 + [3, 4] + [[0, 0], [6, 8]]  # second match off by 10 px
    np.testing.assert_allclose(sym_transfer_error(points0, points1, H), [0.0, 10.0], atol=1e-12)
    # symmetric: a scaling by 2 and a 2 px error in image 1 is 1 px in image 0 -> mean 1.5
    S = np.diag([2.0, 2.0, 1.0])
    err = sym_transfer_error(np.array([[5.0, 5.0]]), np.array([[12.0, 10.0]]), S)
    assert err[0] == pytest.approx(1.5)
    assert isinstance(sym_transfer_error(torch.zeros(3, 2), torch.zeros(3, 2), torch.eye(3)), torch.Tensor)


# ---------------------------------------------------------------- epipolar


def test_skew_and_essential():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([-2.0, 0.5, 4.0])
    np.testing.assert_allclose(skew(a) @ b, np.cross(a, b))
    T = pose(rotation([0.2, 1, 0.1], 12), [-1.0, 0.1, 0.2])
    K0 = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    K1 = np.array([[600.0, 0, 330], [0, 600, 250], [0, 0, 1]])
    X0 = np.random.default_rng(0).uniform([-2, -2, 4], [2, 2, 8], (20, 3))
    x0, _ = project(X0, K0)
    x1, _ = project(transform_points(T, X0), K1)
    E = essential_from_pose(T)
    n0, n1 = image_to_camera(x0, K0), image_to_camera(x1, K1)
    residual = np.einsum("ni,ij,nj->n", np.c_[n1, np.ones(20)], E, np.c_[n0, np.ones(20)])
    np.testing.assert_allclose(residual, 0, atol=1e-12)
    F = fundamental_from_pose(K0, K1, T)
    np.testing.assert_allclose(sampson_error(x0, x1, F), 0, atol=1e-8)
    np.testing.assert_allclose(sym_epipolar_distance(n0, n1, E), 0, atol=1e-12)


def test_sampson_error_of_rectified_stereo():
    # horizontal stereo: x1^T F x0 = y0 - y1; a vertical disparity d has Sampson distance d / sqrt(2)
    F = np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    points0 = np.array([[10.0, 20.0], [50.0, 60.0]])
    points1 = np.array([[5.0, 20.0], [40.0, 63.0]])
    np.testing.assert_allclose(sampson_error(points0, points1, F), [0.0, 3 / np.sqrt(2)], atol=1e-12)
    np.testing.assert_allclose(sampson_error(points0, points1, F, squared=True), [0.0, 4.5], atol=1e-12)
    # symmetric epipolar distance: both point-to-line distances are 3 -> squared sum 18, mean 3
    np.testing.assert_allclose(sym_epipolar_distance(points0, points1, F), [0.0, 18.0], atol=1e-12)
    np.testing.assert_allclose(sym_epipolar_distance(points0, points1, F, squared=False), [0.0, 3.0], atol=1e-12)


def test_relative_pose_error():
    R_gt = rotation([0, 1, 0], 20)
    T_gt = pose(R_gt, [1.0, 0, 0])
    R_est = rotation([1, 1, 0], 10) @ R_gt
    t_30 = np.array([np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30)), 0])
    err_R, err_t = relative_pose_error(T_gt, R_est, t_30)
    assert err_R == pytest.approx(10.0) and err_t == pytest.approx(30.0)
    assert relative_pose_error(T_gt, R_gt, -t_30)[1] == pytest.approx(30.0)  # 150 deg folds to 30
    assert relative_pose_error(T_gt, R_gt, [-5.0, 0, 0])[1] == pytest.approx(0.0, abs=1e-6)
    assert relative_pose_error(pose(R_gt, [0, 0, 0]), R_gt, t_30, ignore_gt_t_thr=1e-3)[1] == 0
    assert angle_error_vec(np.array([1.0, 0, 0]), np.array([0, 2.0, 0])) == pytest.approx(90.0)
    assert angle_error_mat(np.eye(3), rotation([0, 0, 1], 45)) == pytest.approx(45.0)
    # batched torch
    Ts = torch.from_numpy(np.stack([T_gt, T_gt]))
    Rs = torch.from_numpy(np.stack([R_est, R_gt]))
    ts = torch.from_numpy(np.stack([t_30, -t_30]))
    err_R, err_t = relative_pose_error(Ts, Rs, ts)
    np.testing.assert_allclose(err_R.numpy(), [10.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(err_t.numpy(), [30.0, 30.0], atol=1e-5)


# ---------------------------------------------------------------- depth


def test_unproject_project_roundtrip():
    K = np.array([[300.0, 0.5, 160], [0, 310, 120], [0, 0, 1]])
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 320, (30, 2))
    depth = rng.uniform(1, 10, 30)
    X = unproject(points, depth, K)
    np.testing.assert_allclose(X[:, 2], depth)
    back, z = project(X, K)
    np.testing.assert_allclose(back, points, atol=1e-9)
    np.testing.assert_allclose(z, depth)
    T = pose(rotation([1, 2, 3], 30), [0.3, -0.2, 1.0])
    np.testing.assert_allclose(transform_points(invert_transform(T), transform_points(T, X)), X, atol=1e-12)


def test_sample_depth_nearest_and_safe_bilinear():
    depth = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0], [7.0, 8.0, 9.0]])  # (1, 2) has no depth
    points = np.array([[0.5, 0.5],    # bilinear of 1, 2, 4, 5
                       [1.5, 0.5],    # touches the hole -> invalid
                       [1.0, 0.0],    # exactly on a pixel
                       [0.0, 2.0],    # corner of the grid
                       [2.0, 2.0],    # last pixel
                       [3.5, 1.0],    # outside
                       [1.0, 1.0],    # on a pixel next to the hole: its weight is 0 there
                       [np.nan, 1.0]])
    values, valid = sample_depth(points, depth)
    np.testing.assert_allclose(values, [3.0, 0, 2.0, 7.0, 9.0, 0, 5.0, 0])
    assert valid.tolist() == [True, False, True, True, True, False, True, False]
    values, valid = sample_depth(points, depth, mode="nearest")
    assert valid.tolist() == [True, True, True, True, True, False, True, False]
    assert values[1] == 3.0 or values[1] == 0  # rounds to (2, 0) or (2, 1) -> 3 or the hole
    # batched torch with different depth maps per item
    maps = torch.from_numpy(np.stack([depth, 2 * depth]))
    pts = torch.from_numpy(np.stack([points[:3], points[:3]]))
    values, valid = sample_depth(pts, maps)
    np.testing.assert_allclose(values.numpy(), [[3.0, 0, 2.0], [6.0, 0, 4.0]])
    with pytest.raises(ValueError, match="mode"):
        sample_depth(points, depth, mode="cubic")


def test_sample_depth_reads_a_float32_map_in_place_and_gives_float64_values():
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.5, 4.0, (48, 64)).astype(np.float32)
    depth[10:20, 5:30] = 0  # a hole
    points = rng.uniform(-2, 66, (200, 2))
    expected = [sample_depth(points, depth.astype(np.float64), mode=m) for m in ("nearest", "bilinear")]
    read_only = depth.copy()
    read_only.flags.writeable = False
    variants = (depth, read_only, depth.astype(">f4"), np.asfortranarray(depth), depth.astype(np.longdouble))
    for variant in variants:  # shared, then copied (torch has no long double)
        for mode, (values, valid) in zip(("nearest", "bilinear"), expected, strict=True):
            got, got_valid = sample_depth(points, variant, mode=mode)
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, values)
            np.testing.assert_array_equal(got_valid, valid)
    millimetres = np.round(depth * 1000).astype(np.uint16)  # integer maps, numpy or torch, as floats
    np.testing.assert_array_equal(sample_depth(points, millimetres, mode="nearest")[0],
                                  sample_depth(points, millimetres.astype(np.float64), mode="nearest")[0])
    values, _ = sample_depth(torch.from_numpy(points), torch.from_numpy(millimetres), mode="nearest")
    np.testing.assert_array_equal(values.numpy(), sample_depth(points, millimetres, mode="nearest")[0])
    # a float32 map with float64 torch points: the values come in the points' dtype
    values, _ = sample_depth(torch.from_numpy(points), torch.from_numpy(depth), mode="nearest")
    assert values.dtype == torch.float64
    np.testing.assert_array_equal(values.numpy(), expected[0][0])


def test_read_only_arrays_go_in_without_a_warning():
    """poselib returns read-only arrays; torch warns (once per process) when it shares one."""
    code = (
        "import numpy as np\n"
        "from featmatch_core.geometry.depth import invert_transform, sample_depth\n"
        "T = np.eye(4); T[:3, 3] = [1, 2, 3]; T.flags.writeable = False\n"
        "assert np.allclose(invert_transform(T)[:3, 3], [-1, -2, -3])\n"
        "d = np.ones((4, 5), np.float32); d.flags.writeable = False\n"
        "p = np.array([[1.0, 2.0]]); p.flags.writeable = False\n"
        "assert sample_depth(p, d)[0][0] == 1.0\n"
    )
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr[-2000:]


def test_numpy_wrapper_names_arguments_as_python_does():
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    points = np.array([[320.0, 240.0], [820.0, 740.0]])
    np.testing.assert_allclose(image_to_camera(points, K=K), [[0, 0], [1, 1]])
    np.testing.assert_allclose(image_to_camera(K=K, points=points), [[0, 0], [1, 1]])
    with pytest.raises(TypeError, match="positional"):
        image_to_camera(points, K, K)
    with pytest.raises(TypeError, match="multiple values"):
        image_to_camera(points, points=points)
    with pytest.raises(TypeError, match="K"):
        image_to_camera(points)

    @numpy_compat()
    def dtype_of_first(a, b, c=None):
        return a.dtype

    # the first tensor in the signature's order sets the dtype of numpy arguments, whatever
    # order the keywords come in (as Signature.bind orders them)
    single, double = torch.ones(2), torch.ones(2, dtype=torch.float64)
    assert dtype_of_first(np.ones(2), c=single, b=double) == dtype_of_first(np.ones(2), double, single) == torch.float64
    with pytest.raises(TypeError, match="unexpected keyword"):
        dtype_of_first(np.ones(2), b=double, d=single)


def test_reproject_plane():
    K = np.array([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    depth0 = np.full((80, 100), 4.0)
    depth0[:10] = 0  # no depth at the top
    T = pose(np.eye(3), [0.5, 0.0, 0.0])
    points0 = np.array([[50.0, 40.0], [10.0, 30.0], [20.0, 5.0]])
    points1, z1, valid = reproject(points0, depth0, K, K, T)
    np.testing.assert_allclose(points1[:2], [[50 + 100 * 0.5 / 4, 40], [10 + 12.5, 30]])
    np.testing.assert_allclose(z1[:2], [4.0, 4.0])
    assert valid.tolist() == [True, True, False]


# ---------------------------------------------------------------- ground-truth labels


def test_gt_matches_from_homography():
    rng = np.random.default_rng(0)
    kpts0 = rng.uniform(0, 600, (60, 2))
    warped = warp_points(kpts0, H_TEST)
    perm = rng.permutation(60)
    kpts1 = warped[perm] + rng.normal(0, 0.3, (60, 2))
    kpts1[0] = warped[perm[0]] + [4.0, 0.0]  # between pos_th and neg_th -> ignore
    far = warped[perm[1]] + [40.0, 0.0]
    kpts1[1] = far  # its true partner in image 0 now has nothing near -> -1 ...
    kpts1 = np.concatenate([kpts1, [[5000.0, 5000.0]]])  # ... and a point outside everything
    out = gt_matches_from_homography(kpts0, kpts1, H_TEST)
    m0, m1 = out["gt_matches0"], out["gt_matches1"]
    assert m0.dtype == np.int64 and m0.shape == (60,) and m1.shape == (61,)
    inverse = np.argsort(perm)  # kpts0[i] <-> kpts1[inverse[i]]
    special = {perm[0], perm[1]}
    for i in range(60):
        if i not in special:
            assert m0[i] == inverse[i]
            assert m1[inverse[i]] == i
    assert m0[perm[0]] == IGNORE and m1[0] == IGNORE
    # kpts0[perm[1]] now has no keypoint of image 1 within 5 px (the nearest is 33 px away)
    assert np.linalg.norm(kpts1 - warped[perm[1]], axis=1).min() > 5
    assert m0[perm[1]] == UNMATCHED
    assert m1[60] == UNMATCHED
    assert out["gt_assignment"].sum() == (m0 >= 0).sum()
    assert out["reproj_error"].shape == (60, 61)
    # float32 gives the same errors (no |a|^2 - 2ab + |b|^2 cancellation) and labels
    out32 = gt_matches_from_homography(torch.from_numpy(kpts0).float(), torch.from_numpy(kpts1).float(),
                                       torch.from_numpy(H_TEST).float())
    np.testing.assert_allclose(out32["reproj_error"].numpy(), out["reproj_error"], rtol=1e-4, atol=1e-2)
    np.testing.assert_array_equal(out32["gt_matches0"].numpy(), m0)

    # batched torch with padding masks gives the same labels, and padding is ignored
    pad0 = torch.from_numpy(np.concatenate([kpts0, np.zeros((5, 2))]))
    pad1 = torch.from_numpy(kpts1)
    mask0 = torch.ones(65, dtype=torch.bool)
    mask0[60:] = False
    batch = gt_matches_from_homography(pad0[None].repeat(2, 1, 1), pad1[None].repeat(2, 1, 1),
                                       torch.from_numpy(H_TEST)[None].repeat(2, 1, 1), mask0=mask0[None].repeat(2, 1))
    assert batch["gt_matches0"].shape == (2, 65)
    assert (batch["gt_matches0"][:, 60:] == IGNORE).all()
    np.testing.assert_array_equal(batch["gt_matches0"][1, :60].numpy(), m0)
    np.testing.assert_array_equal(batch["gt_matches1"][0].numpy(), m1)


def test_gt_matches_empty_inputs():
    out = gt_matches_from_homography(np.zeros((0, 2)), np.random.rand(5, 2) * 100, np.eye(3))
    assert out["gt_matches0"].shape == (0,)
    assert (out["gt_matches1"] == UNMATCHED).all()
    out = gt_matches_from_homography(np.random.rand(4, 2) * 100, np.zeros((0, 2)), np.eye(3))
    assert (out["gt_matches0"] == UNMATCHED).all() and out["gt_matches1"].shape == (0,)


class OccluderScene:
    """Camera 0 at the origin; a background plane z = 10 and a square |x|, |y| <= 1 at z = 5 in front of it.
    Camera 1 is moved by 1.5 along x and turned by 3 degrees: from there the square hides a strip of
    background that camera 0 sees. Depth maps are ray-cast analytically; each has a rectangular hole."""

    width, height = 160, 120
    K = np.array([[100.0, 0, 79.5], [0, 100, 59.5], [0, 0, 1]])
    plane_z, square_z, square_half = 10.0, 5.0, 1.0

    def __init__(self):
        R1 = rotation([0, 1, 0], -3)
        self.C1 = np.array([1.5, 0.0, 0.0])
        self.T_0to1 = pose(R1, -R1 @ self.C1)
        self.poses = {0: np.eye(4), 1: self.T_0to1}
        self.depth = {i: self.render(i) for i in (0, 1)}
        self.hole = {0: (120, 140, 10, 30), 1: (20, 40, 80, 100)}  # u0, u1, v0, v1
        for i, (u0, u1, v0, v1) in self.hole.items():
            self.depth[i][v0:v1 + 1, u0:u1 + 1] = 0

    def cast(self, i, pixels):
        """Depth in camera i and the 3D point (camera-0 frame) of the first surface hit."""
        T = self.poses[i]
        R, t = T[:3, :3], T[:3, 3]
        center = -R.T @ t
        rays = np.c_[image_to_camera(pixels, self.K), np.ones(len(pixels))]  # z = 1 in camera i
        dirs = rays @ R  # R^T d
        s_plane = (self.plane_z - center[2]) / dirs[:, 2]
        s_square = (self.square_z - center[2]) / dirs[:, 2]
        hit = center + s_square[:, None] * dirs
        on_square = (np.abs(hit[:, 0]) <= self.square_half) & (np.abs(hit[:, 1]) <= self.square_half)
        s = np.where(on_square & (s_square > 0), s_square, s_plane)
        return s, center + s[:, None] * dirs, on_square

    def render(self, i):
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        s, _, _ = self.cast(i, np.stack([u.ravel(), v.ravel()], -1))
        return s.reshape(self.height, self.width)

    def near_hole(self, i, pixels, margin=2.0):
        u0, u1, v0, v1 = self.hole[i]
        return ((pixels[:, 0] > u0 - margin) & (pixels[:, 0] < u1 + margin)
                & (pixels[:, 1] > v0 - margin) & (pixels[:, 1] < v1 + margin))

    def in_hole(self, i, pixels):
        return self.near_hole(i, pixels, margin=-1.0)

    def near_depth_edge(self, i, pixels, radius=2.0):
        """Whether the square's outline passes within ``radius`` px (sampled on a small grid)."""
        _, _, centre = self.cast(i, pixels)
        near = np.zeros(len(pixels), dtype=bool)
        for du in np.linspace(-radius, radius, 5):
            for dv in np.linspace(-radius, radius, 5):
                near |= self.cast(i, pixels + [du, dv])[2] != centre
        return near


def test_gt_matches_from_depth_with_occluder():
    scene = OccluderScene()
    K, T = scene.K, scene.T_0to1
    rng = np.random.default_rng(0)
    u, v = np.meshgrid(np.arange(3.3, 157, 4.0), np.arange(3.7, 117, 4.0))
    kpts0 = np.stack([u.ravel(), v.ravel()], -1)
    _, X, _ = scene.cast(0, kpts0)
    proj, z1 = project(transform_points(T, X), K)
    depth1_true, _, _ = scene.cast(1, proj)
    x, y = proj[:, 0], proj[:, 1]
    inside = (x > 2) & (x < scene.width - 3) & (y > 2) & (y < scene.height - 3)
    clearly_out = (x < -3.5) | (x > scene.width + 2.5) | (y < -3.5) | (y > scene.height + 2.5)
    occluded = inside & (depth1_true < 0.95 * z1)
    visible = inside & ~occluded
    # keep the expectations crisp: drop keypoints within 2 px of a depth edge, a hole or the border
    keep = ((inside | clearly_out) & ~scene.near_depth_edge(0, kpts0) & ~(inside & scene.near_depth_edge(1, proj))
            & (~scene.near_hole(0, kpts0) | scene.in_hole(0, kpts0))
            & (~scene.near_hole(1, proj) | scene.in_hole(1, proj)))
    kpts0, X, proj, visible, occluded, inside = (a[keep] for a in (kpts0, X, proj, visible, occluded, inside))
    no_depth0 = scene.in_hole(0, kpts0)
    no_depth1 = ~no_depth0 & inside & scene.in_hole(1, proj)
    visible &= ~no_depth0 & ~no_depth1
    occluded &= ~no_depth0 & ~no_depth1
    assert occluded.sum() >= 10 and visible.sum() >= 200 and no_depth0.sum() >= 5 and no_depth1.sum() >= 5
    assert (~inside & ~no_depth0).sum() >= 10

    # image 1: the visible projections (slightly noisy, shuffled), plus keypoints right where the
    # occluded background points project (they lie on the square there), plus far distractors
    vis_idx = np.flatnonzero(visible)
    occ_idx = np.flatnonzero(occluded)
    kpts1 = np.concatenate([proj[vis_idx] + rng.normal(0, 0.3, (len(vis_idx), 2)), proj[occ_idx]])
    order = rng.permutation(len(kpts1))
    kpts1 = kpts1[order]
    partner = np.full(len(kpts0), -5)
    source = np.concatenate([vis_idx, np.full(len(occ_idx), -1)])[order]
    partner[source[source >= 0]] = np.flatnonzero(source >= 0)

    out = gt_matches_from_depth(kpts0, kpts1, scene.depth[0], scene.depth[1], K, K, T)
    m0, m1 = out["gt_matches0"], out["gt_matches1"]
    np.testing.assert_array_equal(m0[vis_idx], partner[vis_idx])  # true correspondences, right index
    np.testing.assert_array_equal(m1[partner[vis_idx]], vis_idx)
    assert (m0[occluded] == UNMATCHED).all()  # behind the occluder in view 1
    assert (m0[~inside & ~no_depth0] == UNMATCHED).all()  # leaves image 1
    assert (m0[no_depth0] == IGNORE).all() and (m0[no_depth1] == IGNORE).all()  # no depth -> ignore
    # without the depth test the occluded points would be positives: a keypoint sits on their projection
    occluded_err = np.linalg.norm(out["proj_0to1"][occ_idx][:, None] - kpts1[None], axis=-1).min(1)
    assert (occluded_err < 1e-6).all()
    assert not out["visible0"][occluded].any()

    # the same through the batched torch path, with padding
    n0, n1 = len(kpts0), len(kpts1)
    k0 = torch.zeros(2, n0 + 3, 2, dtype=torch.float64)
    k0[:, :n0] = torch.from_numpy(kpts0)
    mask0 = torch.zeros(2, n0 + 3, dtype=torch.bool)
    mask0[:, :n0] = True
    k1 = torch.from_numpy(kpts1)[None].repeat(2, 1, 1)

    def rep(a):
        return torch.from_numpy(a)[None].repeat(2, *([1] * a.ndim))

    batch = gt_matches_from_depth(k0, k1, rep(scene.depth[0]), rep(scene.depth[1]), rep(K), rep(K), rep(T),
                                  mask0=mask0)
    np.testing.assert_array_equal(batch["gt_matches0"][1, :n0].numpy(), m0)
    assert (batch["gt_matches0"][:, n0:] == IGNORE).all()
    np.testing.assert_array_equal(batch["gt_matches1"][0].numpy(), m1)
    assert batch["reproj_error"].shape == (2, n0 + 3, n1)


def test_depth_labels_with_no_keypoints_in_one_image():
    """An image without keypoints (texture-less frame) gives empty labels, not a reshape error."""
    K, T, depth = torch.eye(3)[None], torch.eye(4)[None], torch.ones(1, 5, 6)
    kpts1 = torch.tensor([[[1.0, 1.0], [4.0, 3.0]]])
    out = gt_matches_from_depth(torch.zeros(1, 0, 2), kpts1, depth, depth, K, K, T)
    assert out["gt_matches0"].shape == (1, 0)
    assert out["gt_matches1"].tolist() == [[-1, -1]]  # visible, but nothing to match in image 0
    values, valid = sample_depth(torch.zeros(2, 0, 2), torch.ones(2, 5, 6))
    assert values.shape == valid.shape == (2, 0)
