"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from featmatch_core.eval.metrics import (
    auc_at,
    epipolar_errors,
    epipolar_precision,
    homography_match_precision,
    mAA,
    matches_precision,
    matches_recall,
    pose_auc,
    summarize,
)


def test_pose_auc_by_hand():
    # recall curve through (0,0) (1,.25) (2,.5) (3,.75), flat to 4; the inf is a failure
    errors = [3.0, 1.0, math.inf, 2.0]
    # up to 2: .125 + .375 ... but the error equal to 2 is not counted: (0,0) (1,.25) (2,.25) -> .375 / 2
    # up to 4: .125 + .375 + .625 + .75 = 1.875 -> / 4
    assert pose_auc(errors, [2, 4]) == pytest.approx([0.1875, 0.46875])
    # one error at 0.5, threshold 1: .5 * .5 * 1 + .5 * 1 = .75
    assert pose_auc([0.5], [1]) == pytest.approx([0.75])
    assert pose_auc([0.0, 0.0], [5]) == pytest.approx([1.0])
    assert pose_auc([math.inf, math.nan], [5, 10]) == [0.0, 0.0]
    assert all(math.isnan(v) for v in pose_auc([], [5]))
    assert pose_auc(np.array([1.0, 2.0, 3.0, np.inf]), [4]) == pytest.approx([0.46875])
    assert pose_auc(torch.tensor([1.0, 2.0, 3.0, float("inf")]), [4]) == pytest.approx([0.46875])
    with pytest.raises(ValueError):
        pose_auc([1.0], [0])


def test_auc_at_names():
    out = auc_at([0.5, 2.0, 100.0], "homography", prefix="H")
    assert list(out) == ["H@1", "H@3", "H@5"]
    assert out["H@1"] == pytest.approx(pose_auc([0.5, 2.0, 100.0], [1])[0])
    assert list(auc_at([1.0], "pose")) == ["auc@5", "auc@10", "auc@20"]
    assert list(auc_at([1.0], [0.5, 2])) == ["auc@0.5", "auc@2"]
    with pytest.raises(ValueError, match="threshold set"):
        auc_at([1.0], "degrees")


def test_mAA_by_hand():
    # accuracy(error < t): t = 1..5 -> 1/4, t = 6..10 -> 2/4 (10 is not < 10) -> mean 0.375
    assert mAA([0.5, 5.5, math.inf, 10.0]) == pytest.approx(0.375)
    assert mAA([0.0]) == 1.0 and math.isnan(mAA([]))
    assert mAA([2.5], thresholds=[1, 2, 3, 4]) == pytest.approx(0.5)


def test_matches_precision_and_recall():
    gt = np.array([1, -1, -2, 3, 2])
    pred = np.array([1, 0, 4, -1, 0])
    # counted predictions: 0 (right), 1 (gt -1: wrong), 4 (wrong); index 2 is ignored, 3 not predicted
    assert matches_precision(gt, pred) == pytest.approx(1 / 3)
    assert matches_recall(gt, pred) == pytest.approx(1 / 3)  # positives 0, 3, 4 -> only 0 found
    assert matches_precision(gt, np.full(5, -1)) == 0.0
    batched = matches_precision(torch.from_numpy(np.stack([gt, gt])), torch.from_numpy(np.stack([pred, gt])))
    assert isinstance(batched, torch.Tensor)
    np.testing.assert_allclose(batched.numpy(), [1 / 3, 1.0])


def test_homography_match_precision():
    H = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    points0 = np.zeros((4, 2))
    points1 = points0 + [3, 4] + np.array([[0, 0], [0.5, 0], [2, 0], [10, 0]])
    assert homography_match_precision(points0, points1, H, th=1) == pytest.approx(0.5)
    assert homography_match_precision(points0, points1, H) == pytest.approx([0.5, 0.75])  # 1 and 3 px
    assert homography_match_precision(np.zeros((0, 2)), np.zeros((0, 2)), H, th=[1, 3]) == [0.0, 0.0]


def test_epipolar_precision_units():
    # rectified stereo, f = 100: x1^T F x0 = y0 - y1; Sampson distance |dy| / sqrt(2)
    K = np.array([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]])
    T = np.eye(4)
    T[0, 3] = -1.0  # camera 1 one unit to the right: X1 = X0 - (1, 0, 0)
    points0 = np.array([[50.0, 50.0], [60.0, 40.0], [20.0, 70.0]])
    points1 = points0 + np.array([[-10, 0.0], [-10, 2.0], [-10, 5.0]])
    np.testing.assert_allclose(epipolar_errors(points0, points1, (K, K, T)), [0, 2 / np.sqrt(2), 5 / np.sqrt(2)],
                               atol=1e-9)
    assert epipolar_precision(points0, points1, (K, K, T), th=[1, 3]) == pytest.approx([1 / 3, 2 / 3])
    # the same with a fundamental matrix given directly (any scale)
    F = np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]]) * 7
    assert epipolar_precision(points0, points1, F, th=3) == pytest.approx(2 / 3)
    # normalised: squared symmetric distance, (dy / f)^2 * 2 -> 0, 8e-4, 5e-3
    normalized = epipolar_errors(points0, points1, (K, K, T), unit="normalized")
    np.testing.assert_allclose(normalized, [0, 8e-4, 5e-3], atol=1e-12)
    assert epipolar_precision(points0, points1, (K, K, T), th=[1e-4, 5e-4, 1e-3], unit="normalized") == \
        pytest.approx([1 / 3, 1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="normalized"):
        epipolar_errors(points0, points1, F, unit="normalized")


def test_summarize():
    per_pair = [
        {"corner_error": 0.5, "pose_error": 2.0, "num_matches": 100, "success": True, "name": "a",
         "matches": np.zeros((3, 2))},
        {"corner_error": 2.0, "pose_error": math.inf, "num_matches": 50, "success": False, "name": "b"},
        {"corner_error": math.inf, "pose_error": 7.0, "num_matches": np.int64(0), "success": np.bool_(False),
         "prec@1px": torch.tensor(0.5)},
    ]
    out = summarize(per_pair)
    assert out["num_pairs"] == 3
    assert out["num_matches"] == pytest.approx(50.0)
    assert out["success"] == pytest.approx(1 / 3)
    assert out["prec@1px"] == pytest.approx(0.5)  # mean over the pairs that have it
    assert "name" not in out and "matches" not in out
    assert out["corner_error_auc@1"] == pytest.approx(pose_auc([0.5, 2.0, math.inf], [1])[0])
    assert out["corner_error_auc@5"] == pytest.approx(pose_auc([0.5, 2.0, math.inf], [5])[0])
    assert out["pose_error_auc@10"] == pytest.approx(pose_auc([2.0, math.inf, 7.0], [10])[0])
    assert out["pose_error_auc_mean"] == pytest.approx(np.mean(pose_auc([2.0, math.inf, 7.0], [5, 10, 20])))
    assert out["corner_error_median"] == 2.0
    assert out["pose_error_mAA"] == pytest.approx(mAA([2.0, math.inf, 7.0]))
    assert "corner_error" not in out  # no mean of errors that contain inf
    custom = summarize(per_pair, auc_keys={"num_matches": [60, 200]}, maa_keys=())
    assert set(custom) >= {"num_matches_auc@60", "num_matches_auc@200", "corner_error", "pose_error"}
    with pytest.raises(ValueError, match="missing"):
        summarize(per_pair + [{"num_matches": 3}])
