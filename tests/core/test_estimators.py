"""Robust estimators: one interface, pixel thresholds everywhere, failures as values."""

import cv2
import numpy as np
import pytest
import torch

from featmatch_core.config import ConfigError
from featmatch_core.estimators import REGISTRY, get_estimator
from featmatch_core.estimators.homography import opencv_homography
from featmatch_core.geometry.epipolar import fundamental_from_pose, relative_pose_error, sampson_error
from featmatch_core.geometry.homography import corner_error, warp_points

H_TRUE = np.array([[0.9, 0.08, 25.0], [-0.05, 1.05, -12.0], [2e-4, -1e-4, 1.0]])


def rotation(axis, degrees):
    axis = np.asarray(axis, dtype=np.float64)
    return cv2.Rodrigues(axis / np.linalg.norm(axis) * np.deg2rad(degrees))[0]


def corrupt(points1, rng, outlier_ratio, size=(640, 480)):
    outliers = rng.random(len(points1)) < outlier_ratio
    points1 = points1.copy()
    points1[outliers] = rng.uniform([0, 0], size, (outliers.sum(), 2))
    return points1, ~outliers


def homography_scene(num=300, outlier_ratio=0.3, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    points0 = rng.uniform([0, 0], [640, 480], (num, 2))
    points1 = warp_points(points0, H_TRUE) + rng.normal(0, noise, (num, 2))
    points0 = points0 + rng.normal(0, noise, (num, 2))
    points1, inliers = corrupt(points1, rng, outlier_ratio)
    return points0, points1, inliers


def pose_scene(num=300, outlier_ratio=0.3, noise=0.5, seed=0):
    """A random 3D point cloud seen by two cameras with different K and a known T_0to1."""
    rng = np.random.default_rng(seed)
    K0 = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    K1 = np.array([[600.0, 0, 330], [0, 610, 250], [0, 0, 1]])
    R = rotation([0.2, 1, 0.1], 12)
    t = np.array([-1.0, 0.1, 0.2])
    X0 = np.c_[rng.uniform(-2, 2, num), rng.uniform(-1.5, 1.5, num), rng.uniform(4, 8, num)]
    X1 = X0 @ R.T + t
    x0 = X0 @ K0.T
    x1 = X1 @ K1.T
    points0 = x0[:, :2] / x0[:, 2:] + rng.normal(0, noise, (num, 2))
    points1 = x1[:, :2] / x1[:, 2:] + rng.normal(0, noise, (num, 2))
    points1, inliers = corrupt(points1, rng, outlier_ratio)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return {"m_kpts0": points0, "m_kpts1": points1, "camera0": K0, "camera1": K1}, T, inliers


def check_inliers(found, truth, recall=0.9, false_rate=0.05):
    assert (found & truth).sum() >= recall * truth.sum()
    assert (found & ~truth).sum() <= false_rate * (~truth).sum() + 1


@pytest.mark.parametrize("name", ["opencv", "poselib", "pycolmap"])
def test_homography_estimators(name):
    points0, points1, truth = homography_scene()
    result = get_estimator("homography", {"name": name})({"m_kpts0": points0, "m_kpts1": points1})
    assert result["success"] is True
    assert result["model"].shape == (3, 3) and result["model"][2, 2] == pytest.approx(1.0)
    assert corner_error(result["model"], H_TRUE, (640, 480)) < 2.0
    assert result["inliers"].dtype == bool and result["inliers"].shape == (300,)
    check_inliers(result["inliers"], truth)


def test_dlt_homography_on_clean_matches():
    points0, points1, _ = homography_scene(outlier_ratio=0.0, noise=0.2)
    result = get_estimator("homography", {"name": "dlt"})({"m_kpts0": torch.from_numpy(points0),
                                                          "m_kpts1": torch.from_numpy(points1)})
    assert result["success"] and corner_error(result["model"], H_TRUE, (640, 480)) < 1.0
    assert result["inliers"].mean() > 0.95


@pytest.mark.parametrize("name", ["opencv", "poselib", "pycolmap"])
def test_relative_pose_estimators(name):
    data, T, truth = pose_scene()
    result = get_estimator("relative_pose", {"name": name})(data)
    assert result["success"] is True
    model = result["model"]
    assert model.shape == (4, 4) and np.linalg.norm(model[:3, 3]) == pytest.approx(1.0)
    np.testing.assert_allclose(model[3], [0, 0, 0, 1])
    err_R, err_t = relative_pose_error(T, model[:3, :3], model[:3, 3])
    assert err_R < 1.0 and err_t < 3.0
    check_inliers(result["inliers"], truth)
    # torch inputs and (1, 3, 3)-free K as torch as well
    torch_data = {k: torch.from_numpy(v) for k, v in data.items()}
    assert get_estimator("relative_pose", {"name": name})(torch_data)["success"]


@pytest.mark.parametrize("name", ["opencv", "poselib", "pycolmap"])
def test_ransac_threshold_is_in_pixels_for_every_backend(name):
    """A 3 px threshold on 0.5 px noise keeps nearly all true matches and rejects the outliers.
    (A threshold left in normalised units would accept everything; one not converted the
    other way would reject everything.)"""
    data, _, truth = pose_scene(seed=3)
    loose = get_estimator("relative_pose", {"name": name, "ransac_th": 3.0})(data)
    check_inliers(loose["inliers"], truth, recall=0.97, false_rate=0.05)
    tight = get_estimator("relative_pose", {"name": name, "ransac_th": 0.2})(data)
    assert tight["inliers"].sum() < 0.8 * loose["inliers"].sum()


@pytest.mark.parametrize("name", ["opencv", "poselib", "pycolmap"])
def test_fundamental_estimators(name):
    data, T, truth = pose_scene(seed=1)
    result = get_estimator("fundamental", {"name": name})({"m_kpts0": data["m_kpts0"], "m_kpts1": data["m_kpts1"]})
    assert result["success"] and result["model"].shape == (3, 3)
    assert np.linalg.norm(result["model"]) == pytest.approx(1.0)
    clean, _, _ = pose_scene(seed=1, noise=0.0, outlier_ratio=0.0)
    err = sampson_error(clean["m_kpts0"], clean["m_kpts1"], result["model"])
    assert np.median(err) < 0.5
    F_true = fundamental_from_pose(clean["camera0"], clean["camera1"], T)
    assert np.median(sampson_error(clean["m_kpts0"], clean["m_kpts1"], F_true)) < 1e-6
    check_inliers(result["inliers"], truth, recall=0.7)


def absolute_pose_scene(outlier_ratio=0.3, noise=0.5, seed=0, planar=False):
    """pose_scene's cameras and motion, with camera 0's 3D points (a wall 6 m away if ``planar``)."""
    data, T, _ = pose_scene(num=300, outlier_ratio=0.0, noise=0.0, seed=seed)
    rng = np.random.default_rng(seed + 100)
    X0 = np.c_[rng.uniform(-2, 2, 300), rng.uniform(-1.5, 1.5, 300),
               np.full(300, 6.0) if planar else rng.uniform(4, 8, 300)]
    x1 = (X0 @ T[:3, :3].T + T[:3, 3]) @ data["camera1"].T
    points1, inliers = corrupt(x1[:, :2] / x1[:, 2:] + rng.normal(0, noise, (300, 2)), rng, outlier_ratio)
    return {"m_points3d0": X0, "m_kpts1": points1, "camera1": data["camera1"]}, T, inliers


@pytest.mark.parametrize("planar", [False, True])
@pytest.mark.parametrize("name", ["opencv", "poselib", "pycolmap"])
def test_absolute_pose_estimators(name, planar):
    """A metric pose (no unit-norm translation) from 3D points of camera 0, on a wall too."""
    data, T, truth = absolute_pose_scene(planar=planar)
    result = get_estimator("absolute_pose", {"name": name})(data)
    assert result["success"] is True
    model = result["model"]
    assert model.shape == (4, 4)
    np.testing.assert_allclose(model[3], [0, 0, 0, 1])
    err_R, _ = relative_pose_error(T, model[:3, :3], model[:3, 3])
    assert err_R < 0.3
    assert np.linalg.norm(model[:3, 3] - T[:3, 3]) < 0.03  # metres, of a 1.02 m motion
    check_inliers(result["inliers"], truth)
    torch_data = {k: torch.from_numpy(v) for k, v in data.items()}
    assert get_estimator("absolute_pose", {"name": name})(torch_data)["success"]


@pytest.mark.parametrize("name", ["opencv", "poselib", "pycolmap"])
def test_absolute_pose_threshold_is_the_reprojection_error_in_pixels(name):
    data, T, truth = absolute_pose_scene(seed=3)
    loose = get_estimator("absolute_pose", {"name": name, "ransac_th": 3.0})(data)
    check_inliers(loose["inliers"], truth, recall=0.97, false_rate=0.05)
    tight = get_estimator("absolute_pose", {"name": name, "ransac_th": 0.2})(data)
    assert tight["inliers"].sum() < 0.8 * loose["inliers"].sum()


def test_absolute_pose_needs_camera1_and_3d_points():
    data, _, _ = absolute_pose_scene()
    estimator = get_estimator("absolute_pose", {"name": "poselib"})
    with pytest.raises(KeyError, match="camera1"):
        estimator({k: v for k, v in data.items() if k != "camera1"})
    with pytest.raises(KeyError, match="m_points3d0"):
        estimator({"m_kpts0": data["m_kpts1"], "m_kpts1": data["m_kpts1"], "camera1": data["camera1"]})
    with pytest.raises(ValueError, match=r"'m_points3d0' must have shape \(K, 3\)"):
        estimator({**data, "m_points3d0": data["m_points3d0"][:, :2]})
    with pytest.raises(ValueError, match="m_points3d0 and m_kpts1 differ in length"):
        estimator({**data, "m_kpts1": data["m_kpts1"][:-1]})


def test_absolute_pose_ignores_points_without_depth():
    """Matches whose 3D point is missing (NaN: no depth at the pixel) are outliers; the rest
    give the pose."""
    data, T, truth = absolute_pose_scene(outlier_ratio=0.0)
    data["m_points3d0"][:40] = np.nan
    result = get_estimator("absolute_pose", {"name": "poselib"})(data)
    assert result["success"] and not result["inliers"][:40].any() and result["inliers"][40:].mean() > 0.95
    assert np.linalg.norm(result["model"][:3, 3] - T[:3, 3]) < 0.03


def test_reprojection_errors_are_pixels_and_infinite_behind_the_camera():
    from featmatch_core.estimators.absolute_pose import reprojection_errors

    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    points3d = np.array([[0.0, 0, 2], [0.2, -0.1, 4], [0, 0, -1]])
    errors = reprojection_errors(points3d, np.array([[323.0, 244], [345, 227.5], [320, 240]]), np.eye(4), K)
    np.testing.assert_allclose(errors[:2], [5.0, 0.0])
    assert errors[2] == np.inf


DEGENERATE = {
    "three": (np.array([[0.0, 0], [10, 0], [0, 10]]), np.array([[1.0, 1], [11, 1], [1, 11]])),
    "identical": (np.tile([[100.0, 50.0]], (30, 1)), np.tile([[120.0, 40.0]], (30, 1))),
    "empty": (np.zeros((0, 2)), np.zeros((0, 2))),
    "collinear": (np.c_[np.arange(30.0), 2 * np.arange(30.0)], np.c_[np.arange(30.0), 3 * np.arange(30.0) + 1]),
    "nan": (np.full((20, 2), np.nan), np.full((20, 2), np.nan)),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("kind,name", [(kind, name) for kind in REGISTRY for name in REGISTRY[kind]])
def test_degenerate_input_is_a_failure_not_an_exception(kind, name, case):
    points0, points1 = DEGENERATE[case]
    data = {"m_kpts0": points0, "m_kpts1": points1, "camera0": np.eye(3) * [500, 500, 1],
            "camera1": np.eye(3) * [500, 500, 1]}
    if kind == "absolute_pose":  # the same points, lifted 5 m in front of camera 0
        data["m_points3d0"] = np.c_[points0, np.full(len(points0), 5.0)]
    result = get_estimator(kind, {"name": name})(data)
    assert result["success"] is False
    size = 4 if kind in ("relative_pose", "absolute_pose") else 3
    np.testing.assert_array_equal(result["model"], np.eye(size))
    assert result["inliers"].shape == (len(points0),) and not result["inliers"].any()


def test_distinct_points_are_counted_exactly_on_grids_and_repeats():
    from featmatch_core.estimators import num_distinct

    grid = np.stack(np.meshgrid(np.arange(40.0), np.arange(30.0)), -1).reshape(-1, 2)  # pixel centres
    assert num_distinct(grid) == 1200
    assert num_distinct(np.concatenate([grid, grid[::-1], grid[:7]])) == 1200
    assert num_distinct(np.c_[grid, grid[:, :1] * 0.5]) == 1200  # 3D points on a plane
    repeated = np.repeat(np.array([[1.0, 2.0], [3.0, 5.0], [1.0, 2.0 + 1e-9]]), 50, axis=0)
    assert num_distinct(repeated) == 3


def test_nonfinite_matches_are_outliers_and_the_rest_is_used():
    points0, points1, _ = homography_scene(outlier_ratio=0.0)
    points0[:5] = np.nan
    points1[5:8] = np.inf
    result = get_estimator("homography", {"name": "opencv"})({"m_kpts0": points0, "m_kpts1": points1})
    assert result["success"] and not result["inliers"][:8].any() and result["inliers"][8:].mean() > 0.95


def test_backend_errors_and_garbage_become_failures(monkeypatch):
    points0, points1, _ = homography_scene()
    data = {"m_kpts0": points0, "m_kpts1": points1}

    def raises(*args, **kwargs):
        raise cv2.error("boom")

    monkeypatch.setattr(cv2, "findHomography", raises)
    assert get_estimator("homography", {"name": "opencv"})(data)["success"] is False
    import poselib

    monkeypatch.setattr(poselib, "estimate_homography",
                        lambda *a, **k: (np.full((3, 3), np.nan), {"inliers": [True] * len(points0)}))
    assert get_estimator("homography", {"name": "poselib"})(data)["success"] is False
    import pycolmap

    monkeypatch.setattr(pycolmap, "estimate_fundamental_matrix", lambda *a, **k: None)
    assert get_estimator("fundamental", {"name": "pycolmap"})(data)["success"] is False


def test_config_is_strict():
    with pytest.raises(ConfigError, match="ransac_thr"):
        get_estimator("homography", {"name": "opencv", "ransac_thr": 2.0})
    with pytest.raises(ConfigError, match="method"):
        get_estimator("homography", {"name": "poselib", "method": "ransac"})  # poselib has no method
    with pytest.raises(ConfigError, match="magsacc"):
        get_estimator("relative_pose", {"name": "opencv", "method": "magsacc"})
    with pytest.raises(ConfigError, match="unknown relative_pose estimator"):
        get_estimator("relative_pose", {"name": "colmap"})
    with pytest.raises(ConfigError, match="kind"):
        get_estimator("essential", {"name": "opencv"})
    with pytest.raises(ConfigError, match="ransac_th"):
        get_estimator("fundamental", {"name": "poselib", "ransac_th": 0})
    with pytest.raises(ConfigError, match="ransac_th"):
        get_estimator("fundamental", {"name": "poselib", "ransac_th": "one"})
    estimator = get_estimator("relative_pose", {"name": "pycolmap", "ransac_th": 2, "refine": False})
    assert estimator.conf.ransac_th == 2 and estimator.conf.refine is False
    assert get_estimator("homography").conf.name == "opencv"


def test_relative_pose_needs_cameras():
    data, _, _ = pose_scene()
    del data["camera1"]
    with pytest.raises(KeyError, match="camera1"):
        get_estimator("relative_pose", {"name": "poselib"})(data)


def test_opencv_homography_shorthand_keeps_its_contract():
    points0, points1, _ = homography_scene()
    result = opencv_homography(points0, points1, threshold=3.0)
    assert set(result) == {"model", "inliers", "success"} and result["success"]
    assert corner_error(result["model"], H_TRUE, (640, 480)) < 2.0
    assert opencv_homography(points0[:3], points1[:3])["success"] is False
    with pytest.raises(ValueError, match="method"):
        opencv_homography(points0, points1, method="nope")


def test_min_iters_is_the_floor_of_poselib_iterations(monkeypatch):
    """``min_iters`` (1000 for evaluation, 100 in the live node) reaches poselib, capped by max_iters."""
    import poselib

    data, _, _ = pose_scene()
    seen = []
    real = poselib.estimate_relative_pose

    def spy(points0, points1, cam0, cam1, ransac, bundle):
        pose, info = real(points0, points1, cam0, cam1, ransac, bundle)
        seen.append((ransac["min_iterations"], info["iterations"]))
        return pose, info

    monkeypatch.setattr(poselib, "estimate_relative_pose", spy)
    assert get_estimator("relative_pose", {"name": "poselib"})(data)["success"]
    assert get_estimator("relative_pose", {"name": "poselib", "min_iters": 20})(data)["success"]
    assert get_estimator("relative_pose", {"name": "poselib", "min_iters": 500, "max_iters": 50})(data)["success"]
    (floor0, iters0), (floor1, iters1), (floor2, iters2) = seen
    assert floor0 == 1000 and iters0 >= 1000
    assert floor1 == 20 and iters1 < 1000  # a 70 %-inlier scene stops long before 1000
    assert floor2 == 50 and iters2 <= 50
    with pytest.raises(ConfigError, match="min_iters"):
        get_estimator("relative_pose", {"name": "poselib", "min_iters": -1})


def test_trial_limit_is_the_trials_that_find_a_model_with_that_share_of_inliers():
    estimator = get_estimator("homography", {"name": "poselib", "max_iters": 5000, "confidence": 0.999})
    assert estimator.trial_limit(None) == 5000
    assert estimator.trial_limit(0.0) == 5000  # no model is ever certain to be drawn
    assert estimator.trial_limit(1.0) == 3  # one sample, times the margin
    expected = int(np.ceil(3 * np.log(1 - 0.999) / np.log(1 - 0.8**4)))  # 4-point samples
    assert estimator.trial_limit(0.8) == expected == 40
    assert estimator.trial_limit(1e-3) == 5000  # capped by max_iters
    five_point = get_estimator("relative_pose", {"name": "poselib", "confidence": 0.999})
    assert five_point.trial_limit(0.8) == int(np.ceil(3 * np.log(1 - 0.999) / np.log(1 - 0.8**5)))
    seven_point = get_estimator("fundamental", {"name": "opencv", "max_iters": 700})
    # a share so small that 1 - ratio^7 rounds to 1, or no share at all: the configured maximum
    assert seven_point.trial_limit(8 / 10000) == seven_point.trial_limit(float("nan")) == 700
    data, _, _ = pose_scene(outlier_ratio=0.1)
    assert seven_point({"m_kpts0": data["m_kpts0"], "m_kpts1": data["m_kpts1"]}, min_inlier_ratio=1e-4)["success"]


def test_min_inlier_ratio_stops_a_search_for_a_plane_the_scene_has_not(monkeypatch):
    """A 3D scene has no homography with 80 % inliers: poselib stops after trial_limit(0.8)
    trials instead of running to max_iters; a plane with that many inliers is still found."""
    import poselib

    data, _, _ = pose_scene(outlier_ratio=0.05)
    seen = []
    real = poselib.estimate_homography

    def spy(points0, points1, ransac):
        H, info = real(points0, points1, ransac)
        seen.append((ransac["max_iterations"], info["iterations"]))
        return H, info

    monkeypatch.setattr(poselib, "estimate_homography", spy)
    estimator = get_estimator("homography", {"name": "poselib", "min_iters": 10})
    points = {"m_kpts0": data["m_kpts0"], "m_kpts1": data["m_kpts1"]}
    unbounded, bounded = estimator(points), estimator(points, min_inlier_ratio=0.8)
    (limit0, iters0), (limit1, iters1) = seen
    assert limit0 == 10000 and iters0 > 1000  # the plane with the most inliers of a 3D cloud is rare
    assert limit1 == estimator.trial_limit(0.8) < 100 and iters1 <= limit1
    assert bounded["inliers"].mean() < 0.8 and unbounded["inliers"].mean() < 0.8  # no plane either way
    points0, points1, truth = homography_scene(outlier_ratio=0.15)
    found = estimator({"m_kpts0": points0, "m_kpts1": points1}, min_inlier_ratio=0.8)
    assert found["success"] and corner_error(found["model"], H_TRUE, (640, 480)) < 2.0
    check_inliers(found["inliers"], truth)


@pytest.mark.parametrize("name", ["opencv", "pycolmap", "point_line"])
def test_every_homography_backend_takes_the_trial_limit(monkeypatch, name):
    points0, points1, _ = homography_scene(outlier_ratio=0.15)
    estimator = get_estimator("homography", {"name": name, "min_iters": 10})
    limit = estimator.trial_limit(0.8)
    seen = []
    if name == "opencv":
        real = cv2.findHomography

        def spy(*args, **kwargs):
            seen.append(kwargs["maxIters"])
            return real(*args, **kwargs)

        monkeypatch.setattr(cv2, "findHomography", spy)
    elif name == "pycolmap":
        import pycolmap

        real = pycolmap.estimate_homography_matrix

        def spy(points0, points1, options):
            seen.append(options.max_num_trials)
            return real(points0, points1, options)

        monkeypatch.setattr(pycolmap, "estimate_homography_matrix", spy)
    else:
        real = type(estimator)._ransac

        def spy(self, p0, p1, l0, l1, limits):
            seen.append(limits[1])  # (min_iters, max_iters)
            return real(self, p0, p1, l0, l1, limits)

        monkeypatch.setattr(type(estimator), "_ransac", spy)
    result = estimator({"m_kpts0": points0, "m_kpts1": points1}, min_inlier_ratio=0.8)
    estimator({"m_kpts0": points0, "m_kpts1": points1})
    assert seen == [limit, 10000]
    assert result["success"] and corner_error(result["model"], H_TRUE, (640, 480)) < 2.0
