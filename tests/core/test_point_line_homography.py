"""The point+line LO-RANSAC homography: recovery from lines, points and mixes with outliers, degenerate input."""

import time

import numpy as np
import pytest

from featmatch_core.config import ConfigError
from featmatch_core.estimators import get_estimator
from featmatch_core.estimators import required_iterations
from featmatch_core.estimators.point_line_homography import constraint_rows, element_errors
from featmatch_core.geometry.homography import corner_error, warp_points

SIZE = (640, 480)
H_TRUE = np.array([[0.9, 0.08, 25.0], [-0.05, 1.05, -12.0], [2e-4, -1e-4, 1.0]])


def random_homography(rng: np.random.Generator) -> np.ndarray:
    """Corners of the image moved by up to 20 % of its size (a typical HPatches viewpoint change)."""
    import cv2

    corners = np.array([[0, 0], [SIZE[0], 0], [SIZE[0], SIZE[1]], [0, SIZE[1]]], np.float32)
    moved = corners + rng.uniform(-0.2, 0.2, (4, 2)).astype(np.float32) * np.array(SIZE, np.float32)
    return cv2.getPerspectiveTransform(corners, moved).astype(np.float64)


def segments_scene(H, num, rng, outlier_ratio=0.0, noise=0.5):
    """Segments of image 0 and their images under H, with endpoints slid along the line in image 1
    (line correspondences, not endpoint correspondences) and perpendicular noise."""
    start = rng.uniform([20, 20], [SIZE[0] - 20, SIZE[1] - 20], (num, 2))
    angle = rng.uniform(0, np.pi, num)
    length = rng.uniform(40, 150, num)
    lines0 = np.stack([start, start + length[:, None] * np.c_[np.cos(angle), np.sin(angle)]], 1)
    ends = warp_points(lines0.reshape(-1, 2), H).reshape(num, 2, 2)
    direction = ends[:, 1] - ends[:, 0]
    t = np.stack([rng.uniform(-0.2, 0.2, num), rng.uniform(0.8, 1.2, num)], 1)
    lines1 = ends[:, :1] + t[..., None] * direction[:, None]
    normal = np.c_[-direction[:, 1], direction[:, 0]] / np.linalg.norm(direction, axis=1, keepdims=True)
    lines1 = lines1 + rng.normal(0, noise, (num, 2, 1)) * normal[:, None]
    outliers = rng.random(num) < outlier_ratio
    lines1[outliers] = rng.uniform([0, 0], SIZE, (outliers.sum(), 2, 2))
    return lines0, lines1, ~outliers


def points_scene(H, num, rng, outlier_ratio=0.0, noise=0.5):
    points0 = rng.uniform([0, 0], SIZE, (num, 2))
    points1 = warp_points(points0, H) + rng.normal(0, noise, (num, 2))
    outliers = rng.random(num) < outlier_ratio
    points1[outliers] = rng.uniform([0, 0], SIZE, (outliers.sum(), 2))
    return points0, points1, ~outliers


def estimate(data, **conf):
    return get_estimator("homography", {"name": "point_line", "ransac_th": 3.0, **conf})(data)


def test_constraints_vanish_at_the_true_homography():
    rng = np.random.default_rng(0)
    l0, l1, _ = segments_scene(H_TRUE, 5, rng, noise=0.0)
    p0, p1, _ = points_scene(H_TRUE, 5, rng, noise=0.0)
    rows = constraint_rows(p0, p1, l0, l1)
    assert rows.shape == (10, 2, 9)
    h = H_TRUE.ravel() / np.linalg.norm(H_TRUE)
    np.testing.assert_allclose(rows @ h, 0.0, atol=1e-9)
    errors = element_errors(H_TRUE, p0, p1, l0, l1)
    assert errors.shape == (1, 10) and errors.max() < 1e-8
    # a line 2 px off in image 1 (both endpoints shifted along its normal) has error ~2 px one way
    shifted = l1.copy()
    d = shifted[0, 1] - shifted[0, 0]
    shifted[0] += 2.0 * np.array([-d[1], d[0]]) / np.linalg.norm(d)
    assert element_errors(H_TRUE, p0, p1, l0, shifted)[0, 5] == pytest.approx(2.0, rel=0.1)


def test_recovers_from_lines_alone():
    rng = np.random.default_rng(1)
    lines0, lines1, _ = segments_scene(H_TRUE, 60, rng)
    result = estimate({"m_lines0": lines0, "m_lines1": lines1})
    assert result["success"] and result["inliers"].shape == (0,)
    assert corner_error(result["model"], H_TRUE, SIZE) < 1.5
    assert result["line_inliers"].mean() > 0.95


def test_recovers_from_points_alone():
    rng = np.random.default_rng(2)
    points0, points1, truth = points_scene(H_TRUE, 200, rng, outlier_ratio=0.3)
    result = estimate({"m_kpts0": points0, "m_kpts1": points1})
    assert result["success"] and result["line_inliers"].shape == (0,)
    assert corner_error(result["model"], H_TRUE, SIZE) < 1.0
    assert (result["inliers"] == truth).mean() > 0.97


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_recovers_from_a_mix_with_40_percent_outliers(seed):
    rng = np.random.default_rng(seed)
    H = random_homography(rng)
    points0, points1, point_truth = points_scene(H, 40, rng, outlier_ratio=0.4)
    lines0, lines1, line_truth = segments_scene(H, 40, rng, outlier_ratio=0.4)
    data = {"m_kpts0": points0, "m_kpts1": points1, "m_lines0": lines0, "m_lines1": lines1}
    result = estimate(data, seed=seed)
    assert result["success"]
    assert corner_error(result["model"], H, SIZE) < 2.0
    assert (result["inliers"] == point_truth).mean() > 0.9
    assert (result["line_inliers"] == line_truth).mean() > 0.9
    again = estimate(data, seed=seed)  # seeded: the same result
    np.testing.assert_array_equal(again["model"], result["model"])


def test_lines_rescue_too_few_points():
    """Three points cannot fix H; with six lines they can (and the points count as inliers)."""
    rng = np.random.default_rng(6)
    points0, points1, _ = points_scene(H_TRUE, 3, rng)
    lines0, lines1, _ = segments_scene(H_TRUE, 6, rng)
    assert not get_estimator("homography", {"name": "opencv"})({"m_kpts0": points0, "m_kpts1": points1})["success"]
    result = estimate({"m_kpts0": points0, "m_kpts1": points1, "m_lines0": lines0, "m_lines1": lines1})
    assert result["success"] and result["inliers"].all()
    assert corner_error(result["model"], H_TRUE, SIZE) < 3.0


def _concurrent_lines(num, centre, rng):
    angle = rng.uniform(0, np.pi, num)
    d = np.c_[np.cos(angle), np.sin(angle)]
    return np.stack([centre + 20 * d, centre + 120 * d], 1)


def _parallel_lines(num, rng):
    offsets = rng.uniform(0, 400, num)
    return np.stack([np.c_[np.full(num, 10.0), offsets], np.c_[np.full(num, 300.0), offsets]], 1)


def test_degenerate_line_sets_are_failures():
    rng = np.random.default_rng(7)
    cases = {
        "concurrent": (_concurrent_lines(20, [300.0, 200.0], rng), None),
        "parallel": (_parallel_lines(20, rng), None),
        "three lines": (segments_scene(H_TRUE, 3, rng)[0], None),
        "zero length": (np.repeat(rng.uniform(0, 400, (10, 1, 2)), 2, axis=1), None),
        "nan": (np.full((10, 2, 2), np.nan), None),
        "empty": (np.zeros((0, 2, 2)), None),
    }
    for name, (lines0, _) in cases.items():
        lines1 = warp_points(lines0.reshape(-1, 2), H_TRUE).reshape(lines0.shape) if len(lines0) else lines0
        result = estimate({"m_lines0": lines0, "m_lines1": lines1})
        assert result["success"] is False, name
        np.testing.assert_array_equal(result["model"], np.eye(3))
        assert result["line_inliers"].shape == (len(lines0),) and not result["line_inliers"].any(), name


def test_bad_shapes_and_config_raise():
    with pytest.raises(ValueError, match="m_lines0"):
        estimate({"m_lines0": np.zeros((3, 4)), "m_lines1": np.zeros((3, 2, 2))})
    with pytest.raises(ValueError, match="differ in length"):
        estimate({"m_lines0": np.zeros((3, 2, 2)), "m_lines1": np.zeros((2, 2, 2))})
    with pytest.raises(ConfigError, match="lo_iter"):
        get_estimator("homography", {"name": "point_line", "lo_iter": 3})


def test_adaptive_iterations_stop_early_on_clean_data():
    assert required_iterations(1.0, 0.9999, 4) == 1.0 and required_iterations(0.0, 0.9999, 4) == np.inf
    assert required_iterations(0.5, 0.99, 4) == pytest.approx(np.log(0.01) / np.log(1 - 0.5 ** 4))
    rng = np.random.default_rng(8)
    points0, points1, _ = points_scene(H_TRUE, 500, rng)
    start = time.perf_counter()
    result = estimate({"m_kpts0": points0, "m_kpts1": points1}, max_iters=100000)
    assert result["success"] and time.perf_counter() - start < 2.0


# ---- HPatches evaluation of point+line predictions ------------------------------------------
def line_prediction(H, rng, num_points=30, num_lines=30, outlier_ratio=0.3):
    """A cached prediction as the runner stores it (keypoints, matches, scores, lines, line matches)."""
    points0, points1, _ = points_scene(H, num_points, rng, outlier_ratio=outlier_ratio)
    lines0, lines1, line_truth = segments_scene(H, num_lines, rng, outlier_ratio=outlier_ratio)
    order = rng.permutation(num_lines)  # lines1 stored in another order than lines0
    matches = np.c_[np.arange(num_lines), np.argsort(order)]
    point_matches = np.c_[np.arange(num_points), np.arange(num_points)]
    pred = {"keypoints0": points0, "keypoints1": points1, "matches": point_matches,
            "scores": np.ones(num_points), "lines0": lines0, "lines1": lines1[order],
            "line_matches": matches, "line_match_scores": np.ones(num_lines), "time_ms": 1.0}
    return pred, line_truth


def test_hpatches_pair_with_lines_uses_the_point_line_estimator_and_reports_line_metrics():
    from omegaconf import OmegaConf

    from featmatch_core.eval.two_view import evaluate_homography_pair

    rng = np.random.default_rng(9)
    H = random_homography(rng)
    pred, line_truth = line_prediction(H, rng)
    gt = {"H_0to1": H, "image_size0": np.array(SIZE), "image_size1": np.array(SIZE)}
    conf = OmegaConf.create({"estimator": "opencv", "ransac_th": 3.0, "line_estimator": "point_line"})
    result = evaluate_homography_pair(gt, pred, conf, 3.0)
    assert result["estimator"] == "point_line" and result["corner_error"] < 2.0
    assert result["num_lines"] == 30 and result["num_line_matches"] == 30
    # the outlier lines are random segments: none is correct; the true ones are, except those that
    # leave image 1 (unmatchable in the ground truth, as in Glue Factory)
    assert line_truth.mean() - 0.15 < result["line_precision"] <= line_truth.mean()
    assert result["line_recall"] > 0.9
    assert result["num_line_inliers"] == pytest.approx(line_truth.sum(), abs=2)
    points_only = evaluate_homography_pair(gt, pred, OmegaConf.merge(conf, {"line_estimator": "none"}), 3.0)
    assert points_only["estimator"] == "opencv" and "num_line_inliers" not in points_only
    assert points_only["line_precision"] == result["line_precision"]  # line metrics do not depend on it
    # too few point matches for a homography: only the lines make the pair succeed
    few = {**pred, "matches": pred["matches"][:3], "scores": pred["scores"][:3]}
    assert np.isinf(evaluate_homography_pair(gt, few, OmegaConf.merge(conf, {"line_estimator": "none"}),
                                             3.0)["corner_error"])
    assert evaluate_homography_pair(gt, few, conf, 3.0)["corner_error"] < 3.0


def test_runner_caches_lines_and_line_matches(tmp_path):
    import h5py

    from featmatch_core.eval import runner
    from featmatch_core.models.pipeline import TwoViewMatches

    rng = np.random.default_rng(10)
    pred, _ = line_prediction(H_TRUE, rng)

    class FakePipeline:
        def match(self, image0, image1):
            return TwoViewMatches(pred["keypoints0"], pred["keypoints1"], pred["matches"], pred["scores"],
                                  lines0=pred["lines0"], lines1=pred["lines1"], line_matches=pred["line_matches"],
                                  line_match_scores=pred["line_match_scores"])

    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    item = {"image0": image, "image1": image, "H_0to1": H_TRUE, "image_size0": SIZE, "image_size1": SIZE,
            "depth0": np.ones((4, 4)), "depth1": np.full((4, 4), 2.0)}
    dataset = [{"name": "seq/1_2", **item, "depth1_id": "seq/2"},
               {"name": "seq/1_3", **item, "depth1": np.full((4, 4), 3.0), "depth1_id": "seq/3"},
               {"name": "seq/2_3", **item, "depth0": np.full((4, 4), 2.0), "depth0_id": "seq/2",
                "depth1": np.full((4, 4), 3.0), "depth1_id": "seq/3"}]
    path, _ = runner.export_predictions(FakePipeline, dataset, tmp_path / "predictions.h5", "fp",
                                        maps=("depth0", "depth1"))
    with h5py.File(path, "r") as f:
        gt, cached = runner.read_prediction(f, "seq/1_2")
        assert f["seq|1_2/gt_depth0"].dtype == np.float32 and sorted(f["maps"]) == ["seq|2", "seq|3"]
        for name, d0, d1 in (("seq/1_3", 1.0, 3.0), ("seq/2_3", 2.0, 3.0)):  # maps named by id stored once
            pair_gt, _ = runner.read_prediction(f, name)
            assert (pair_gt["depth0"] == d0).all() and (pair_gt["depth1"] == d1).all()
    for key in ("lines0", "lines1", "line_matches", "line_match_scores"):
        np.testing.assert_allclose(cached[key], pred[key], rtol=1e-6)
    assert cached["lines0"].shape == (30, 2, 2) and cached["line_matches"].dtype == np.int64
    np.testing.assert_array_equal(gt["depth0"], np.ones((4, 4)))
