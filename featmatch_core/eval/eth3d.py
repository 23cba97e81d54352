"""ETH3D point and line matching benchmark (Glue Factory's ``eval/eth3d.py``, from SOLD2 / GlueStick).

    python -m featmatch_core.eval.eth3d --conf superpoint+lsd+gluestick [data.root=...]
        [eval.estimator=opencv|poselib|pycolmap] [eval.ransac_th=1.0 | -1 to sweep]

Ground truth from the depth maps and poses (cached with the predictions, so re-evaluation
reads no image): keypoint labels by :func:`~featmatch_core.geometry.gt_matches.gt_matches_from_depth`
(positive within ``pos_th`` = 3 px both ways, unmatchable beyond ``neg_th`` = 5 px, as Glue
Factory's depth matcher), segment labels by
:func:`~featmatch_core.geometry.lines.gt_line_matches_from_depth` (50 samples, 5 px, overlap
0.2, visibility 0.5). Labelled -2 (unknown) features are left out.

Metrics, as Glue Factory reports them: ``point_AP`` / ``line_AP`` (percent): average precision
of the matches of ALL pairs ranked by their matching score, the true matches being those
whose predicted partner is the ground-truth one, recall relative to the number of ground-truth
positives of all pairs. Beside them: per-pair mean match precision / recall, counts, times,
and (not in Glue Factory) the relative pose error of the point matches with ``eval.estimator``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ..datasets.eth3d import ETH3D
from ..geometry.gt_matches import IGNORE, gt_matches_from_depth
from ..geometry.lines import gt_line_matches_from_depth
from . import runner
from .line_metrics import average_precision
from .megadepth1500 import POSE_SWEEP
from .metrics import POSE_AUC_THRESHOLDS, matches_precision, matches_recall
from .two_view import evaluate_pose_pair

EVAL_CONF = {
    "estimator": "opencv",
    "ransac_th": 1.0,
    "pos_th": 3.0,  # pixels, keypoint ground truth
    "neg_th": 5.0,
    "line_npts": 50,  # segment ground truth (Glue Factory's depth matcher)
    "line_dist_th": 5.0,
    "line_overlap_th": 0.2,
    "line_min_visibility_th": 0.5,
}


def dense_matches(matches: np.ndarray, scores: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) matches + (K,) scores -> matches0 (num,) with -1 for unmatched, and scores0 (num,)."""
    matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
    matches0 = np.full(num, -1, dtype=np.int64)
    scores0 = np.zeros(num, dtype=np.float64)
    matches0[matches[:, 0]] = matches[:, 1]
    scores0[matches[:, 0]] = np.asarray(scores, dtype=np.float64).reshape(-1)
    return matches0, scores0


def ranked_matches(gt_matches0: np.ndarray, matches0: np.ndarray, scores0: np.ndarray, prefix: str
                   ) -> dict[str, Any]:
    """One pair's share of the AP (Glue Factory's ``get_tp_fp_pts``): scores and correctness of the
    predicted matches of features with a known label, and the number of ground-truth positives."""
    known = gt_matches0 != IGNORE
    predicted = known & (matches0 > -1)
    return {
        f"_{prefix}_scores": scores0[predicted],
        f"_{prefix}_correct": matches0[predicted] == gt_matches0[predicted],
        f"_{prefix}_positives": int((gt_matches0[known] > -1).sum()),
        f"{prefix}_correct": float(np.sum(matches0[predicted] == gt_matches0[predicted])),  # within pos_th
        f"{prefix}_precision": float(matches_precision(gt_matches0, matches0)),
        f"{prefix}_recall": float(matches_recall(gt_matches0, matches0)),
    }


def evaluate_eth3d_pair(gt: Mapping[str, Any], pred: Mapping[str, Any], conf: DictConfig,
                        ransac_th: float) -> dict[str, Any]:
    """Pose error and counts (as MegaDepth), plus the point (and line) AP material from depth."""
    result = evaluate_pose_pair(gt, pred, conf, ransac_th)
    if "load_error" in pred:
        return result
    if "depth0" not in gt or "depth1" not in gt:
        return {**result, "depth_missing": 1.0}
    depth0, depth1 = np.asarray(gt["depth0"]), np.asarray(gt["depth1"])
    K0, K1, T = (np.asarray(gt[k], dtype=np.float64) for k in ("K0", "K1", "T_0to1"))
    kp0 = np.asarray(pred["keypoints0"], dtype=np.float64).reshape(-1, 2)
    kp1 = np.asarray(pred["keypoints1"], dtype=np.float64).reshape(-1, 2)
    gt_matches0 = np.asarray(gt_matches_from_depth(kp0, kp1, depth0, depth1, K0, K1, T, pos_th=float(conf.pos_th),
                                                   neg_th=float(conf.neg_th))["gt_matches0"])
    matches0, scores0 = dense_matches(pred["matches"], pred["scores"], len(kp0))
    result.update(depth_missing=0.0, **ranked_matches(gt_matches0, matches0, scores0, "point"))
    if "lines0" in pred and "lines1" in pred:
        lines0 = np.asarray(pred["lines0"], dtype=np.float64).reshape(-1, 2, 2)
        lines1 = np.asarray(pred["lines1"], dtype=np.float64).reshape(-1, 2, 2)
        gt_line_matches0 = np.asarray(gt_line_matches_from_depth(
            lines0, lines1, depth0, depth1, K0, K1, T, npts=int(conf.line_npts), dist_th=float(conf.line_dist_th),
            overlap_th=float(conf.line_overlap_th), min_visibility_th=float(conf.line_min_visibility_th),
        )["gt_line_matches0"])
        line_matches0, line_scores0 = dense_matches(pred["line_matches"], pred["line_match_scores"], len(lines0))
        result.update(num_lines=(len(lines0) + len(lines1)) / 2, num_line_matches=float(len(pred["line_matches"])),
                      **ranked_matches(gt_line_matches0, line_matches0, line_scores0, "line"))
    return result


def aggregate_ap(per_pair: list[dict[str, Any]]) -> dict[str, float]:
    """``point_AP`` (and ``line_AP`` when some pair has lines), in percent, over all pairs."""
    out: dict[str, float] = {}
    for prefix in ("point", "line"):
        pairs = [p for p in per_pair if f"_{prefix}_scores" in p]
        if not pairs:
            continue
        scores = np.concatenate([p[f"_{prefix}_scores"] for p in pairs])
        correct = np.concatenate([p[f"_{prefix}_correct"] for p in pairs])
        positives = sum(p[f"_{prefix}_positives"] for p in pairs)
        out[f"{prefix}_AP"] = 100.0 * float(average_precision(scores, correct, positives))
        out[f"{prefix}_gt_positives"] = float(positives)
    return out


BENCHMARK = runner.Benchmark(
    name="eth3d",
    data_conf={},
    eval_conf=EVAL_CONF,
    make_dataset=lambda conf: ETH3D(conf),
    evaluate_pair=evaluate_eth3d_pair,
    auc_keys={"pose_error": POSE_AUC_THRESHOLDS},
    sweep=POSE_SWEEP,
    main_key="pose_error_auc_mean",
    table_keys=("point_AP", "line_AP", "point_precision", "point_recall", "line_precision", "line_recall",
                "pose_error_auc@5", "pose_error_auc@10", "pose_error_auc@20", "num_keypoints", "num_matches",
                "num_lines", "num_line_matches", "time_ms", "num_pairs"),
    aggregate=aggregate_ap,
    cached_maps=("depth0", "depth1"),
)


def main(argv: Sequence[str] | None = None) -> int:
    return runner.cli(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
