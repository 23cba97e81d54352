"""Per-pair evaluation from cached predictions: homography pairs and calibrated pose pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ..estimators import get_estimator
from ..geometry.epipolar import relative_pose_error
from ..geometry.homography import corner_error
from ..geometry.lines import gt_line_matches_from_homography
from .metrics import epipolar_precision, homography_match_precision, matches_precision, matches_recall

# Counted as a failure (infinite error) rather than crashing the run.
FAILED = float("inf")


def _matched_points(pred: Mapping[str, Any]):
    matches = np.asarray(pred["matches"], dtype=np.int64).reshape(-1, 2)
    kp0 = np.asarray(pred["keypoints0"], dtype=np.float64).reshape(-1, 2)
    kp1 = np.asarray(pred["keypoints1"], dtype=np.float64).reshape(-1, 2)
    return kp0, kp1, kp0[matches[:, 0]], kp1[matches[:, 1]]


def _counts(pred: Mapping[str, Any], kp0: np.ndarray, kp1: np.ndarray, m0: np.ndarray) -> dict[str, Any]:
    counts = {"num_keypoints": (len(kp0) + len(kp1)) / 2, "num_matches": float(len(m0)),
              "time_ms": float(pred.get("time_ms", np.nan)), "match_ms": float(pred.get("match_ms", np.nan))}
    if "stop_layer" in pred:  # layers LightGlue ran (adaptive depth)
        counts["stop_layer"] = float(pred["stop_layer"])
    return counts


def _failed_load(keys: dict[str, float]) -> dict[str, Any]:
    return {**keys, "load_failed": 1.0, "num_keypoints": 0.0, "num_matches": 0.0, "num_inliers": 0.0,
            "inlier_ratio": 0.0}


def _matched_lines(pred: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(lines0, lines1, matched lines0, matched lines1) of a prediction with lines, else None."""
    if "lines0" not in pred or "lines1" not in pred:
        return None
    lines0 = np.asarray(pred["lines0"], dtype=np.float64).reshape(-1, 2, 2)
    lines1 = np.asarray(pred["lines1"], dtype=np.float64).reshape(-1, 2, 2)
    matches = np.asarray(pred.get("line_matches", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
    return lines0, lines1, lines0[matches[:, 0]], lines1[matches[:, 1]]


def homography_estimator_name(conf: DictConfig, with_lines: bool) -> str:
    """``eval.estimator``, or ``eval.line_estimator`` (default point_line) for predictions with lines
    when it is set ('' or 'none' keeps ``eval.estimator``)."""
    line_estimator = conf.get("line_estimator", "point_line") or "none"
    if with_lines and line_estimator != "none":
        return str(line_estimator)
    return str(conf.estimator)


def line_metrics_homography(gt: Mapping[str, Any], pred: Mapping[str, Any], lines) -> dict[str, float]:
    """Line match precision / recall against labels from the GT homography, and counts."""
    lines0, lines1, ml0, _ = lines
    matches = np.asarray(pred.get("line_matches", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
    out = {"num_lines": (len(lines0) + len(lines1)) / 2, "num_line_matches": float(len(ml0))}
    if len(lines0) == 0 or len(lines1) == 0:
        return {**out, "line_precision": 0.0, "line_recall": 0.0}
    sizes = {f"size{i}": np.asarray(gt[f"image_size{i}"], dtype=np.float64)
             for i in (0, 1) if gt.get(f"image_size{i}") is not None}
    labels = gt_line_matches_from_homography(lines0, lines1, np.asarray(gt["H_0to1"], dtype=np.float64), **sizes)
    gt_matches0 = np.asarray(labels["gt_line_matches0"])
    matches0 = np.full(len(lines0), -1, dtype=np.int64)
    matches0[matches[:, 0]] = matches[:, 1]
    return {**out, "line_precision": float(matches_precision(gt_matches0, matches0)),
            "line_recall": float(matches_recall(gt_matches0, matches0))}


def evaluate_homography_pair(gt: Mapping[str, Any], pred: Mapping[str, Any], conf: DictConfig,
                             ransac_th: float) -> dict[str, Any]:
    """Corner error of the robust and the DLT estimate, precision at 1/3 px, counts.

    With line segments in the prediction (a matcher with lines), the robust estimate uses the
    point+line estimator (see ``homography_estimator_name``) and line match precision / recall
    and counts are reported beside the point metrics.
    """
    if "load_error" in pred:
        return _failed_load({"corner_error": FAILED, "corner_error_dlt": FAILED, "correct@3px": 0.0})
    H_gt = np.asarray(gt["H_0to1"])
    size0 = tuple(int(v) for v in gt["image_size0"])
    kp0, kp1, m0, m1 = _matched_points(pred)
    data = {"m_kpts0": m0, "m_kpts1": m1}
    lines = _matched_lines(pred)
    name = homography_estimator_name(conf, lines is not None)
    extra: dict[str, float] = {}
    if lines is not None:
        extra = line_metrics_homography(gt, pred, lines)
        if name == "point_line":
            data.update(m_lines0=lines[2], m_lines1=lines[3])
    est = get_estimator("homography", {"name": name, "ransac_th": float(ransac_th)})(data)
    if "line_inliers" in est:
        extra["num_line_inliers"] = float(np.sum(est["line_inliers"])) if est["success"] else 0.0
    dlt = get_estimator("homography", {"name": "dlt"})(data)
    precision = homography_match_precision(m0, m1, H_gt, th=(1.0, 3.0)) if len(m0) else (0.0, 0.0)
    inliers = int(np.sum(est["inliers"])) if est["success"] else 0
    return {
        **_counts(pred, kp0, kp1, m0),
        "corner_error": corner_error(est["model"], H_gt, size0) if est["success"] else FAILED,
        "corner_error_dlt": corner_error(dlt["model"], H_gt, size0) if dlt["success"] else FAILED,
        "precision@1px": float(precision[0]),
        "precision@3px": float(precision[1]),
        "correct@3px": float(round(precision[1] * len(m0))),  # matches within 3 px of the GT
        "num_inliers": float(inliers),
        "inlier_ratio": inliers / len(m0) if len(m0) else 0.0,
        "load_failed": 0.0,
        "estimator": name,  # the one used (results are tagged with it)
        **extra,
    }


def evaluate_pose_pair(gt: Mapping[str, Any], pred: Mapping[str, Any], conf: DictConfig,
                       ransac_th: float) -> dict[str, Any]:
    """Relative pose error = max(rotation, translation-direction angle), epipolar precision, counts."""
    if "load_error" in pred:
        return _failed_load({"pose_error": FAILED, "rotation_error": FAILED, "translation_error": FAILED})
    K0, K1, T_gt = (np.asarray(gt[k]) for k in ("K0", "K1", "T_0to1"))
    kp0, kp1, m0, m1 = _matched_points(pred)
    est = get_estimator("relative_pose", {"name": conf.estimator, "ransac_th": float(ransac_th)})(
        {"m_kpts0": m0, "m_kpts1": m1, "camera0": K0, "camera1": K1})
    if est["success"]:
        T = np.asarray(est["model"])
        err_R, err_t = relative_pose_error(T_gt, T[:3, :3], T[:3, 3])
        err_R, err_t = float(err_R), float(err_t)
    else:
        err_R = err_t = FAILED
    inliers = int(np.sum(est["inliers"])) if est["success"] else 0
    precision = (epipolar_precision(m0, m1, (K0, K1, T_gt), th=1e-4, unit="normalized")
                 if len(m0) else 0.0)
    return {
        **_counts(pred, kp0, kp1, m0),
        "pose_error": max(err_R, err_t),
        "rotation_error": err_R,
        "translation_error": err_t,
        "epipolar_precision@1e-4": float(np.asarray(precision).reshape(-1)[0]),
        "num_inliers": float(inliers),
        "inlier_ratio": inliers / len(m0) if len(m0) else 0.0,
        "load_failed": 0.0,
    }
