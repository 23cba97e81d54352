"""The frame path's stages one by one (plain data in, plain data out), the warning counts, and the
stages run out of order as a pipelined worker would (extraction of frame n+1 before frame n is
tracked)."""

import cv2
import numpy as np
import pytest

from featmatch_core.estimators import get_estimator
from featmatch_core.geometry.epipolar import relative_pose_error
from lightglue_ros import conversions as cv
from lightglue_ros import stages as S
from featmatch_core.datasets import room as synthetic
from lightglue_ros.frame_matcher import FrameMatcher
from lightglue_ros.problems import Problems, Throttle

TYPES = cv.rosbags_types()
SEC = 10**9


# ---- prepare ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "stamp, last, gap, action, reason",
    [
        (5 * SEC, None, 5.0, "use", None),  # the first frame
        (0, 4 * SEC, 5.0, "skip", "time_jump"),  # zero stamp
        (0, None, 5.0, "skip", "time_jump"),  # zero stamp, even first
        (4 * SEC, 4 * SEC, 5.0, "skip", "duplicate_stamp"),
        (4 * SEC - 1, 4 * SEC, 5.0, "reset", "time_jump"),  # back by 1 ns: a loop
        (10 * SEC, 4 * SEC, 5.0, "reset", "time_jump"),  # 6 s ahead, max 5
        (9 * SEC, 4 * SEC, 5.0, "use", None),  # exactly the gap
        (1000 * SEC, 4 * SEC, 0.0, "use", None),  # 0: no limit
    ],
)
def test_check_stamp(stamp, last, gap, action, reason):
    check = S.check_stamp(stamp, last, gap)
    assert (check.action, check.reason) == (action, reason)
    assert bool(check.message) == (reason is not None)


def _info(d=(0.0,) * 5, k=(300.0, 0, 160, 0, 300, 120, 0, 0, 1)):
    info = cv.make_camera_info(TYPES, cv.make_header(TYPES, 0, "c"), 320, 240, np.reshape(k, (3, 3)))
    info.d = np.asarray(d, np.float64)
    return info


def test_calibration_is_checked_once_per_change():
    cache = S.CalibrationCache()
    first = cache.lookup(_info(d=(0.01, 0, 0)))
    assert first.changed and "padded" in first.problem and first.calibration.D.tolist() == [0.01, 0, 0, 0, 0]
    again = cache.lookup(_info(d=(0.01, 0, 0)))  # a new message with the same content
    assert not again.changed and again.calibration is first.calibration
    refused = cache.lookup(_info(k=(np.inf, 0, 160, 0, 300, 120, 0, 0, 1)))
    assert refused.changed and refused.calibration is None and "K is not finite" in refused.problem
    good = cache.lookup(_info())
    assert good.changed and good.problem == "" and good.calibration.D is None
    none = cache.lookup(None)
    assert none.changed and none.calibration is None and none.problem == ""


def test_decode_image_and_depth_reject_with_a_reason():
    header = cv.make_header(TYPES, 1, "c")
    msg = cv.numpy_to_image(TYPES, np.zeros((4, 6), np.uint8), "mono8", header)
    msg.encoding = "weird"
    with pytest.raises(S.Rejected) as err:
        S.decode_image(msg)
    assert err.value.reason == "bad_encoding" and "unsupported image encoding 'weird'" in err.value.message
    depth = cv.numpy_to_image(TYPES, np.ones((4, 6), np.float32), "32FC1", header)
    assert S.decode_depth(depth, (4, 6)).shape == (4, 6)
    with pytest.raises(S.Rejected, match=r"depth \(4, 6\) and image \(8, 6\) differ in size") as err:
        S.decode_depth(depth, (8, 6))
    assert err.value.reason == "bad_depth"


# ---- geometry -----------------------------------------------------------------------------------
def test_estimate_scale_and_keyframe_stages_on_exact_matches():
    """Exact projections of known points: the pose, the metric scale from depth, the decisions."""
    rng = np.random.default_rng(0)
    K = np.array([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]])
    X0 = np.column_stack([rng.uniform(-1, 1, 200), rng.uniform(-0.8, 0.8, 200), rng.uniform(2, 4, 200)])
    T = np.eye(4)
    T[:3, 3] = [-0.2, 0.0, 0.05]  # camera 0 -> camera 1
    X1 = X0 + T[:3, 3]
    pts0 = (X0 @ K.T)[:, :2] / X0[:, 2:]
    pts1 = (X1 @ K.T)[:, :2] / X1[:, 2:]
    estimator = get_estimator("relative_pose", {"name": "poselib", "ransac_th": 1.0})
    uncalibrated = get_estimator("fundamental", {"ransac_th": 1.0})
    too_few = S.estimate_relative_pose(pts0[:10], pts1[:10], K, estimator, uncalibrated, min_matches=15)
    assert too_few.too_few and too_few.T_0to1 is None and too_few.problem == "too few matches (10 < min_matches 15)"
    estimate = S.estimate_relative_pose(pts0, pts1, K, estimator, uncalibrated, min_matches=15)
    assert estimate.model_fit and estimate.inliers.sum() == 200
    np.testing.assert_allclose(estimate.T_0to1[:3, 3], T[:3, 3] / np.linalg.norm(T[:3, 3]), atol=1e-4)
    # the reference frame's depth gives the metric scale
    depth = np.zeros((240, 320), np.float32)
    u, v = np.round(pts0).astype(int).T
    depth[v, u] = X0[:, 2]
    lifted = S.lift_with_depth(pts0, pts0, K, depth)
    assert lifted.valid.all()
    np.testing.assert_allclose(lifted.xyz0[:, 2], X0[:, 2], rtol=1e-6)
    structure = S.scale_and_structure(estimate, pts0, pts1, K, lifted)
    assert structure.metric and structure.scale == pytest.approx(np.linalg.norm(T[:3, 3]), rel=0.02)
    np.testing.assert_allclose(structure.xyz, X1, rtol=0.03, atol=0.03)  # in the current frame
    bearings = S.scale_and_structure(S.PoseEstimate(estimate.inliers), pts0, pts1, K, None)
    np.testing.assert_allclose(bearings.xyz[:, :2], X1[:, :2] / X1[:, 2:], atol=1e-9)
    # keyframe decisions
    flow = S.median_flow(pts0, pts1, estimate.inliers)
    assert flow > 5
    assert S.keyframe_after_pose("previous", 200, flow, 80, 1000.0)
    assert not S.keyframe_after_pose("keyframe", 200, flow, 80, 1000.0)
    assert S.keyframe_after_pose("keyframe", 50, flow, 80, 1000.0)  # few inliers
    assert S.keyframe_after_pose("keyframe", 200, flow, 80, flow / 2)  # too far
    assert S.keyframe_after_failure(0, 3, calibrated=True) == S.FailureVerdict(1, False, False)
    assert S.keyframe_after_failure(2, 3, calibrated=True) == S.FailureVerdict(0, True, True)
    assert S.keyframe_after_failure(2, 3, calibrated=False) == S.FailureVerdict(0, True, False)
    # odometry: the motion chains onto the reference's pose and covariance
    covariance = np.diag([1e-4] * 3 + [1e-6] * 3)
    motion = S.motion_from_pose(structure.T_0to1, 0.1, covariance)
    np.testing.assert_allclose(motion.T_ref_cur[:3, 3], -T[:3, 3], atol=0.01)
    np.testing.assert_allclose(motion.linear, -T[:3, 3] / 0.1, atol=0.1)  # camera frame, per second
    np.testing.assert_allclose(motion.covariance, covariance, atol=1e-12)  # isotropic: turning keeps it
    odometry = S.Odometry()
    start = odometry.T_odom_cam.copy(), odometry.covariance.copy()
    odometry.chain(*start, motion)
    once = odometry.T_odom_cam.copy(), odometry.covariance.copy()
    odometry.chain(*start, motion)  # the same reference again (a keyframe): nothing adds up
    np.testing.assert_allclose(odometry.covariance, once[1])
    odometry.chain(*once, motion)  # the last frame as the reference
    np.testing.assert_allclose(odometry.T_odom_cam[:3, 3], S.T_BODY_OPTICAL[:3, :3] @ (-2 * T[:3, 3]), atol=0.02)
    np.testing.assert_allclose(odometry.covariance[3:, 3:], 2e-6 * np.eye(3), atol=1e-15)
    # the first motion's turn uncertainty swings the second motion's offset: more than 2x
    position_variance = np.trace(odometry.covariance[:3, :3])
    assert 6e-4 < position_variance < 6e-4 + 2e-6 * np.linalg.norm(T[:3, 3]) ** 2 + 1e-12


def _plane_scene(T, num=300, outliers=0.2, noise=0.3, seed=1):
    """Points on one wall 2 m away seen from two cameras ``T`` apart, the reference's depth image,
    and which matches are outliers."""
    rng = np.random.default_rng(seed)
    K = np.array([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]])
    X0 = np.column_stack([rng.uniform(-1, 1, num), rng.uniform(-0.7, 0.7, num), np.full(num, 2.0)])
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    pts0 = (X0 @ K.T)[:, :2] / X0[:, 2:]
    pts1 = (X1 @ K.T)[:, :2] / X1[:, 2:] + rng.normal(0, noise, (num, 2))
    wrong = rng.random(num) < outliers
    pts1[wrong] = rng.uniform([0, 0], [320, 240], (wrong.sum(), 2))
    depth = np.full((240, 320), 2.0, np.float32)  # the wall
    return K, X0, X1, pts0, pts1, depth, wrong


def _pose(degrees, t):
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.deg2rad(degrees) * np.array([0.3, 1.0, 0.1]) / np.linalg.norm([0.3, 1.0, 0.1]))[0]
    T[:3, 3] = t
    return T


@pytest.mark.parametrize("motion", ["sideways", "pure rotation"])
def test_the_pose_from_depth_is_metric_on_a_plane_and_without_translation(motion):
    """A wall fills the view (the essential matrix is degenerate there) or the camera only turns
    (it has no translation to find): PnP on the reference's depth gives the metric pose, and the
    structure takes the measured points."""
    T = _pose(2.0, [0.1, 0.02, 0.03] if motion == "sideways" else [0.0, 0.0, 0.0])
    K, X0, X1, pts0, pts1, depth, wrong = _plane_scene(T)
    estimator = get_estimator("relative_pose", {"name": "poselib"})
    absolute = get_estimator("absolute_pose", {"name": "poselib", "ransac_th": 1.0})
    lifted = S.lift_with_depth(pts0, pts0, K, depth)
    estimate = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15, lifted, absolute)
    assert estimate.model == "pnp" and estimate.metric
    # 0.3 px of noise on a 300 px focal: a turn and a sideways shift of the same image motion
    # are told apart by perspective alone, hence 0.1 deg and 4 mm, traded against each other
    rotation_error = S.rotation_angle_deg(estimate.T_0to1[:3, :3] @ T[:3, :3].T)
    assert rotation_error < 0.25
    assert np.linalg.norm(estimate.T_0to1[:3, 3] - T[:3, 3]) < 0.01  # metres
    assert (estimate.inliers == ~wrong).mean() > 0.98
    structure = S.scale_and_structure(estimate, pts0, pts1, K, lifted)
    assert structure.metric and structure.scale == 1.0
    np.testing.assert_allclose(structure.xyz, X1, atol=0.01)  # from depth, even with no baseline


def test_the_pose_falls_back_to_the_essential_matrix_where_depth_is_missing():
    T = _pose(3.0, [0.3, 0.0, 0.05])
    rng = np.random.default_rng(2)
    K, X0, X1, pts0, pts1, _, wrong = _plane_scene(T, seed=2)
    X0[:, 2] = rng.uniform(2, 4, len(X0))  # a scene with relief, for the essential matrix
    X0[:, :2] *= X0[:, 2:] / 2
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    pts1 = np.where(wrong[:, None], pts1, (X1 @ K.T)[:, :2] / X1[:, 2:])
    estimator = get_estimator("relative_pose", {"name": "poselib"})
    absolute = get_estimator("absolute_pose", {"name": "poselib", "ransac_th": 1.0})
    depth = np.zeros((240, 320), np.float32)
    u, v = np.round(pts0).astype(int).T
    half = np.arange(len(pts0)) % 2 == 0  # every other match has depth
    depth[v[half], u[half]] = X0[half, 2]
    lifted = S.lift_with_depth(pts0, pts0, K, depth)
    assert (lifted.valid == half).all() and np.isnan(lifted.xyz0[~half]).all()
    estimate = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15, lifted, absolute)
    assert estimate.model == "pnp"
    # the matches without depth are judged by their epipolar distance to the PnP pose
    assert (estimate.inliers[~half] == ~wrong[~half]).mean() > 0.97
    # fewer matches with depth than min_matches: the essential matrix, scaled by the depth
    sparse = np.zeros_like(depth)
    sparse[v[:12], u[:12]] = X0[:12, 2]
    few = S.lift_with_depth(pts0, pts0, K, sparse)
    estimate = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15, few, absolute)
    assert estimate.model == "essential" and not estimate.metric
    assert np.linalg.norm(estimate.T_0to1[:3, 3]) == pytest.approx(1.0)
    structure = S.scale_and_structure(estimate, pts0, pts1, K, few)
    assert structure.metric and structure.scale == pytest.approx(np.linalg.norm(T[:3, 3]), rel=0.05)


def test_triangulation_skips_a_non_finite_match_instead_of_failing_the_frame():
    T = _pose(2.0, [0.2, 0.0, 0.05])
    K, X0, X1, pts0, pts1, _, _ = _plane_scene(T, num=20, outliers=0.0, noise=0.0)
    x0 = (pts0 - K[:2, 2]) / K[0, 0]
    x1 = (pts1 - K[:2, 2]) / K[0, 0]
    x1[3] = np.nan  # one bad match made the batched eigendecomposition raise for all
    X = S.triangulate(x0, x1, T)
    assert np.isnan(X[3]).all()
    np.testing.assert_allclose(np.delete(X, 3, 0), np.delete(X0, 3, 0), atol=1e-6)


def _pose_error(T_gt, T):
    return max(relative_pose_error(T_gt, T[:3, :3], T[:3, 3]))


def test_on_a_plane_the_pose_comes_from_the_homography_and_the_last_motion_picks_the_twin():
    """A wall fills the view, no depth: the homography gives the true pose and its twin, which
    explain the matches alike; the essential matrix's pose, then the last motion, choose."""
    T = _pose(2.0, [0.1, 0.02, -0.1])
    K, X0, X1, pts0, pts1, _, wrong = _plane_scene(T)
    estimator = get_estimator("relative_pose", {"name": "poselib"})
    homography = get_estimator("homography", {"name": "poselib", "ransac_th": S.TRANSFER_TH_FACTOR})
    essential = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15)
    planar = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15, homography=homography)
    assert essential.model == "essential" and planar.model == "planar" and planar.choice == "essential"
    assert (planar.inliers == ~wrong).mean() > 0.98
    errors = [_pose_error(T, planar.T_0to1), _pose_error(T, planar.twin.T_0to1)]
    assert min(errors) < 1.0 and max(errors) > 10.0  # degrees: the truth and its twin
    # the essential matrix lands on (near) one twin; the one nearer to it is kept
    assert S.pose_distance(planar.T_0to1, essential.T_0to1) < S.pose_distance(planar.twin.T_0to1, essential.T_0to1)
    assert S.prefer_motion(planar, None) is planar  # no motion yet
    for direction, error in ((S.motion_direction(T), min(errors)), (-S.motion_direction(T), max(errors))):
        chosen = S.prefer_motion(planar, direction)
        assert chosen.choice == "motion" and chosen.twin is None
        assert _pose_error(T, chosen.T_0to1) == pytest.approx(error)


def test_matches_off_the_plane_or_relief_keep_the_essential_matrix():
    """Points off the plane tell the twins apart, so the essential matrix is well posed and kept;
    the twin they choose is the pose only when the essential matrix failed."""
    T = _pose(2.0, [0.1, 0.02, -0.1])
    K, X0, X1, pts0, pts1, _, wrong = _plane_scene(T)
    estimator = get_estimator("relative_pose", {"name": "poselib"})
    homography = get_estimator("homography", {"name": "poselib", "ransac_th": S.TRANSFER_TH_FACTOR})

    def matches_of(X0):
        X1 = X0 @ T[:3, :3].T + T[:3, 3]
        pts0 = (X0 @ K.T)[:, :2] / X0[:, 2:]
        return pts0, np.where(wrong[:, None], pts1, (X1 @ K.T)[:, :2] / X1[:, 2:])

    box = np.arange(len(X0)) % 10 == 0  # a tenth of the points on a box 0.8 m in front of the wall
    on_box = X0.copy()
    on_box[box] *= 1.2 / 2.0
    estimate = S.estimate_relative_pose(*matches_of(on_box), K, estimator, None, 15, homography=homography)
    assert estimate.model == "essential" and _pose_error(T, estimate.T_0to1) < 1.0
    failed = S.PoseEstimate(np.zeros(len(X0), bool), model_fit=False, problem="estimation failed", model="essential")
    planar = S.planar_pose(*matches_of(on_box), K, homography, failed, 15, 1.0)
    assert planar.model == "planar" and planar.choice == "matches" and planar.twin is None
    assert _pose_error(T, planar.T_0to1) < 1.0
    relief = X0 * np.random.default_rng(3).uniform(0.75, 2.0, (len(X0), 1))  # depths 1.5 to 4 m
    estimate = S.estimate_relative_pose(*matches_of(relief), K, estimator, None, 15, homography=homography)
    assert estimate.model == "essential" and _pose_error(T, estimate.T_0to1) < 1.0


def test_the_plane_check_searches_only_for_a_homography_that_could_win(monkeypatch):
    """The homography must explain PLANAR_INLIER_RATIO of the essential matrix's inliers to
    count: its RANSAC is told that share, so a scene with relief costs it a few dozen trials,
    not max_iters; after a failed essential matrix, min_matches inliers are enough."""
    T = _pose(2.0, [0.1, 0.02, -0.1])
    K, X0, _, _, _, _, _ = _plane_scene(T, outliers=0.0)
    relief = X0 * np.random.default_rng(3).uniform(0.75, 2.0, (len(X0), 1))
    X1 = relief @ T[:3, :3].T + T[:3, 3]
    pts0, pts1 = (relief @ K.T)[:, :2] / relief[:, 2:], (X1 @ K.T)[:, :2] / X1[:, 2:]
    estimator = get_estimator("relative_pose", {"name": "poselib"})
    homography = get_estimator("homography", {"name": "poselib", "ransac_th": S.TRANSFER_TH_FACTOR})
    ratios = []
    call = type(homography).__call__

    def spy(self, data, min_inlier_ratio=None):
        ratios.append(min_inlier_ratio)
        return call(self, data, min_inlier_ratio)

    monkeypatch.setattr(type(homography), "__call__", spy)
    estimate = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15, homography=homography)
    assert estimate.model == "essential" and _pose_error(T, estimate.T_0to1) < 1.0
    assert ratios == [pytest.approx(S.PLANAR_INLIER_RATIO * estimate.inliers.sum() / len(pts0))]
    assert homography.trial_limit(ratios[0]) < 60
    failed = S.PoseEstimate(np.zeros(len(pts0), bool), model_fit=False, problem="estimation failed", model="essential")
    S.planar_pose(pts0, pts1, K, homography, failed, 15, 1.0)
    assert ratios[1] == pytest.approx(15 / len(pts0))


@pytest.mark.parametrize(("bounded", "searched_again"), [(50, False), (85, True), (100, False)])
def test_a_near_miss_of_the_bounded_plane_search_is_searched_to_the_end(bounded, searched_again):
    """Noise makes some all-inlier samples fit a plane poorly: a bounded search that found
    PLANE_NEAR_MISS of the inliers needed or more, but not all, runs again without the bound."""

    class Homography:
        calls: list = []

        def __call__(self, data, min_inlier_ratio=None):
            self.calls.append(min_inlier_ratio)
            found = bounded if min_inlier_ratio is not None else 120
            return {"success": True, "model": np.eye(3), "inliers": np.arange(200) < found}

    homography = Homography()
    points = np.zeros((200, 2))
    est = S.plane_search(points, points, homography, enough=100)
    assert homography.calls[0] == pytest.approx(0.5)
    assert len(homography.calls) == (2 if searched_again else 1)
    assert est["inliers"].sum() == (120 if searched_again else bounded)


def test_a_turn_on_the_spot_gives_a_rotation_without_translation():
    """A pure rotation: the essential matrix would give a unit translation in a direction the
    matches do not fix; the homography has no translation, so the pose is the fitted rotation,
    its structure the bearings, and nothing scales or swings its translation."""
    rng = np.random.default_rng(5)
    T = _pose(3.0, [0.0, 0.0, 0.0])
    K, X0, _, pts0, _, _, _ = _plane_scene(T, outliers=0.0)
    X0 *= rng.uniform(1.0, 3.0, (len(X0), 1))  # relief: a rotation does not care
    X1 = X0 @ T[:3, :3].T
    pts1 = (X1 @ K.T)[:, :2] / X1[:, 2:] + rng.normal(0, 0.5, pts0.shape)
    estimator = get_estimator("relative_pose", {"name": "poselib"})
    homography = get_estimator("homography", {"name": "poselib", "ransac_th": S.TRANSFER_TH_FACTOR})
    estimate = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15, homography=homography)
    assert estimate.model == "rotation" and not estimate.T_0to1[:3, 3].any()
    assert S.rotation_angle_deg(estimate.T_0to1[:3, :3] @ T[:3, :3].T) < 0.05
    assert estimate.inliers.mean() > 0.7
    structure = S.scale_and_structure(estimate, pts0, pts1, K, None)
    assert structure.T_0to1 is not None and not structure.metric
    np.testing.assert_allclose(structure.xyz[:, :2], (pts1 - K[:2, 2]) / K[0, 0], atol=1e-9)  # bearings
    assert S.scale_by_speed(structure, 0.5, 0.1) is structure
    covariance = S.pose_covariance(estimate, structure, pts0, pts1, K, None)
    np.testing.assert_allclose(covariance[:3, :3], S.ROTATION_TRANSLATION_VARIANCE * np.eye(3))
    rotation_std = np.sqrt(np.diag(covariance[3:, 3:]))  # 0.5 px over ~250 matches on a 300 px focal
    assert np.all((rotation_std > 1e-5) & (rotation_std < 1e-3))
    assert not covariance[:3, 3:].any()


def test_scale_by_speed_gives_a_unit_pose_the_last_metric_speed():
    T = np.eye(4)
    T[:3, 3] = [0.6, 0.0, 0.8]  # unit norm
    xyz = np.array([[0.1, 0.2, 2.0], [-0.3, 0.1, 3.0]])
    unit = S.Structure(xyz, T, 1.0, False)
    scaled = S.scale_by_speed(unit, speed_m_s=0.5, dt_s=0.1)  # 5 cm
    assert scaled.speed_scaled and not scaled.metric
    np.testing.assert_allclose(scaled.T_0to1[:3, 3], [0.03, 0.0, 0.04])
    np.testing.assert_allclose(scaled.xyz, xyz * 0.05)
    assert unit.T_0to1[0, 3] == 0.6  # not modified in place
    metric = S.Structure(xyz, T, 0.3, True)
    assert S.scale_by_speed(metric, 0.5, 0.1) is metric
    no_pose = S.Structure(xyz, None)
    assert S.scale_by_speed(no_pose, 0.5, 0.1) is no_pose
    assert scaled.scale_std == 1.0  # a guessed length is as uncertain as it is long


def _along(covariance, direction):
    direction = direction / np.linalg.norm(direction)
    return float(direction @ covariance @ direction)


def test_pose_covariance_of_each_model_and_scale():
    """First-order covariances from the inliers' residuals. A two-view pose sees only the
    translation's direction: along it, the variance is that of its length, all of it when the
    length is unit or guessed, the depth ratios' spread when the depth scaled it. PnP sees all."""
    rng = np.random.default_rng(4)
    T = _pose(2.0, [0.2, 0.03, 0.05])
    K, X0, X1, pts0, pts1, _, wrong = _plane_scene(T, outliers=0.0, noise=0.5)
    X0 *= rng.uniform(0.75, 2.0, (len(X0), 1))  # relief, for the essential matrix
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    pts1 = (X1 @ K.T)[:, :2] / X1[:, 2:] + rng.normal(0, 0.5, pts0.shape)
    depth = np.zeros((240, 320), np.float32)
    u, v = np.round(pts0).astype(int).T
    depth[v, u] = X0[:, 2] * rng.normal(1.0, 0.01, len(X0))  # 1 % depth noise
    lifted = S.lift_with_depth(pts0, pts0, K, depth)
    estimator = get_estimator("relative_pose", {"name": "poselib"})
    absolute = get_estimator("absolute_pose", {"name": "poselib", "ransac_th": 2.0})
    unit = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15)
    for ref_points, scale_std in ((None, 1.0), (lifted, None)):
        structure = S.scale_and_structure(unit, pts0, pts1, K, ref_points)
        covariance = S.pose_covariance(unit, structure, pts0, pts1, K, ref_points)
        t = structure.T_0to1[:3, 3]
        if scale_std is None:  # scaled by depth: the standard error of the ratios' median
            assert structure.metric and 0.0005 < structure.scale_std < 0.005
        assert _along(covariance[:3, :3], t) == pytest.approx(structure.scale_std**2 * t @ t, rel=1e-6)
        across = np.cross(t, [0.0, 1.0, 0.0])
        assert 0 < _along(covariance[:3, :3], across) < 1e-3 * (t @ t)  # the direction is well seen
        assert np.all(np.linalg.eigvalsh(covariance[3:, 3:]) > 0)
        np.testing.assert_allclose(covariance, covariance.T)
        # published: the camera's position in the reference frame, -R^T t, the same along it
        motion = S.motion_from_pose(structure.T_0to1, 0.1, covariance)
        assert _along(motion.covariance[:3, :3], motion.T_ref_cur[:3, 3]) == pytest.approx(
            structure.scale_std**2 * t @ t, rel=1e-3)
    pnp = S.estimate_relative_pose(pts0, pts1, K, estimator, None, 15, lifted, absolute)
    structure = S.scale_and_structure(pnp, pts0, pts1, K, lifted)
    covariance = S.pose_covariance(pnp, structure, pts0, pts1, K, lifted)
    assert pnp.model == "pnp" and np.all(np.linalg.eigvalsh(covariance) > 0)
    assert _along(covariance[:3, :3], structure.T_0to1[:3, 3]) < 1e-4  # metres^2: a few millimetres


def test_rectified_triangulation():
    geometry = S.StereoGeometry(np.array([[400.0, 0, 200], [0, 400, 150], [0, 0, 1]]), baseline=0.1)
    pts0 = np.array([[240.0, 150], [210, 190], [300, 100], [250, 150], [260, 150]])
    pts1 = np.array([[220.0, 150], [200, 190], [301, 100], [230, 154], [259.99, 150]])
    points = S.triangulate_rectified(pts0, pts1, geometry, max_row_error=2, min_disparity=0.5, max_depth=10)
    assert points.keep.tolist() == [True, True, False, False, False]  # negative disparity, row error, 0.01 px
    np.testing.assert_allclose(points.xyz[0], [0.2, 0.0, 2.0])  # z = 400 * 0.1 / 20, x = 40 z / 400
    np.testing.assert_allclose(points.xyz[1], [0.1, 0.4, 4.0])  # disparity 10
    assert np.isnan(points.xyz[2:]).all() and points.median_depth_m == pytest.approx(3.0)
    with pytest.raises(S.Rejected, match="no calibration") as err:
        S.stereo_geometry(None, None, 0.0)
    assert err.value.reason == "bad_calibration"


# ---- warnings --------------------------------------------------------------------------------------
class _Log:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)


def test_problems_are_counted_each_time_and_logged_rate_limited():
    now = [0.0]
    log = _Log()
    problems = Problems(log, throttle_s=5.0, clock=lambda: now[0])
    for i in range(4):
        problems.warn("bad_encoding", f"frame {i}: unsupported image encoding")
        now[0] += 1.0
    problems.warn("time_jump", "zero stamp")  # another reason is not held back
    now[0] = 10.0
    problems.warn("bad_encoding", "frame 9: unsupported image encoding")
    assert log.lines == [
        "[bad_encoding] frame 0: unsupported image encoding",
        "[time_jump] zero stamp",
        "[bad_encoding] frame 9: unsupported image encoding (3 similar warning(s) not shown since the last one)",
    ]
    values = problems.values()
    assert values["warnings_bad_encoding"] == 5 and values["warnings_time_jump"] == 1
    assert values["warnings_too_few_matches"] == 0 and values["warnings_bad_calibration"] == 0
    with pytest.raises(ValueError, match="unknown problem reason 'oops'"):
        problems.warn("oops", "?")
    assert Throttle.key_of("frame at 1.25 s, 3 px") == Throttle.key_of("frame at 9.5 s, 12 px")


# ---- the stages out of order, as a pipelined worker would run them --------------------------------
def test_extraction_of_the_next_frame_may_run_before_the_current_one_is_tracked():
    frames = synthetic.sequence(4, 320, 240, step=0.1, seed=1)
    msgs = []
    for f in frames:
        header = cv.make_header(TYPES, f.stamp_ns, "cam")
        msgs.append(
            (cv.numpy_to_image(TYPES, f.image, "mono8", header), cv.make_camera_info(TYPES, header, 320, 240, f.K))
        )
    sequential = FrameMatcher({"max_keypoints": 512})
    expected = [sequential.process(*m).record for m in msgs]
    pipelined = FrameMatcher({"max_keypoints": 512})
    prepared = [pipelined.prepare(*m) for m in msgs[:2]]
    features = [pipelined.extract(p) for p in prepared]
    results = []
    for i in range(len(msgs)):
        results.append(pipelined.track(prepared[i], features[i]).record)
        if i + 2 < len(msgs):  # two frames ahead: prepared and extracted before this one was tracked
            prepared.append(pipelined.prepare(*msgs[i + 2]))
            features.append(pipelined.extract(prepared[-1]))
    for got, want in zip(results[1:], expected[1:], strict=True):
        assert got["ref_stamp_ns"] == want["ref_stamp_ns"] and got["matches"] == want["matches"]
        np.testing.assert_allclose(got["T_0to1"], want["T_0to1"], atol=1e-9)
