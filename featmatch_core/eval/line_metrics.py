"""Line-match metrics against ground-truth labels, and the score-ranked average precision that
Glue Factory reports for ETH3D (points and lines alike).

Labels are those of :mod:`featmatch_core.geometry.lines` (``gt_line_matches0``: index of the
true match, -1 unmatchable, -2 ignore); predictions are ``line_matches0`` (index or -1).
"""

from __future__ import annotations

import numpy as np

from ..geometry.utils import ArrayLike, to_numpy
from .metrics import matches_precision, matches_recall


def line_match_precision(gt_line_matches0: ArrayLike, line_matches0: ArrayLike) -> ArrayLike:
    """Fraction of predicted line matches that are correct; predictions of segments labelled -2
    are left out, 0 without a counted prediction. (L,) -> scalar, (B, L) -> (B,).
    The same definition as for points (:func:`~featmatch_core.eval.metrics.matches_precision`)."""
    return matches_precision(gt_line_matches0, line_matches0)


def line_match_recall(gt_line_matches0: ArrayLike, line_matches0: ArrayLike) -> ArrayLike:
    """Fraction of ground-truth line matches that are predicted (0 without any). (L,) -> scalar,
    (B, L) -> (B,); as :func:`~featmatch_core.eval.metrics.matches_recall` for points."""
    return matches_recall(gt_line_matches0, line_matches0)


def precision_recall_curve(scores: ArrayLike, is_correct: ArrayLike, num_positives: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision (K,) after each of the K predictions ranked by decreasing score.

    ``recall[k]`` = correct among the first k+1 / ``max(num_positives, 1)``, ``precision[k]`` =
    correct among the first k+1 / (k+1) (Glue Factory's ``aggregate_pr_results``). Equal scores
    keep their input order (stable sort; Glue Factory's order of ties is unspecified).
    """
    scores = np.asarray(to_numpy(scores), dtype=np.float64).reshape(-1)
    correct = np.asarray(to_numpy(is_correct)).reshape(-1).astype(bool)
    if scores.shape != correct.shape:
        raise ValueError(f"scores {scores.shape} and is_correct {correct.shape} must have the same length")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (NaN/Inf cannot be ranked)")
    num_positives = int(num_positives)
    if num_positives < 0 or int(correct.sum()) > max(num_positives, 0):
        raise ValueError(f"num_positives ({num_positives}) must be >= 0 and at least the number of correct "
                         f"predictions ({int(correct.sum())})")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    recall = tp / max(num_positives, 1)
    precision = tp / np.arange(1, len(tp) + 1)
    return recall, precision


def average_precision(scores: ArrayLike, is_correct: ArrayLike, num_positives: int) -> float:
    """Score-ranked average precision in [0, 1] (Glue Factory's ``AP``; it reports 100 x this).

    Args:
        scores: (K,) matching scores of the K predicted matches (all pairs of a benchmark
            concatenated, features labelled -2 left out, as ``get_tp_fp_pts`` does).
        is_correct: (K,) bool, the prediction is the ground-truth partner.
        num_positives: number of ground-truth positives (features with a true match), the
            recall denominator; predictions may miss them, never exceed them.

    Definition (VOC-style, all points): rank by decreasing score, take the precision/recall
    curve (``precision_recall_curve``), make precision monotone (each value replaced by the
    largest precision at any higher recall), then sum ``(r_i - r_{i-1}) * p_i`` over the
    points where recall increases, starting from recall 0. Recall beyond the last prediction
    adds nothing (precision 0 there). No prediction, or no positive: 0.
    """
    recall, precision = precision_recall_curve(scores, is_correct, num_positives)
    if len(recall) == 0:
        return 0.0
    r = np.concatenate([[0.0], recall])
    p = np.concatenate([precision, [0.0]])
    envelope = np.maximum.accumulate(p[::-1])[::-1][:-1]  # best precision at this recall or beyond
    return float(np.sum((r[1:] - r[:-1]) * envelope))
