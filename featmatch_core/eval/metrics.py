"""Evaluation metrics (definitions follow SuperGlue / Glue Factory unless stated otherwise).

- ``pose_auc``: area under the cumulative error curve (recall vs error) up to each
  threshold, normalised by the threshold; failures (inf / NaN errors) count in the
  denominator and never reach the curve. Not rounded (Glue Factory rounds to 4 decimals).
- ``mAA``: mean over thresholds of the accuracy ``fraction(error < th)``.
- precision of matches against a homography, epipolar geometry or ground-truth labels.
- ``summarize``: one dict of means, AUCs, medians and mAA from per-pair dicts.

Typical per-pair errors: HPatches ``corner_error`` (pixels, ``geometry.homography.corner_error``,
inf on estimator failure); relative pose ``pose_error = max(R error, t error)`` in degrees
(``geometry.epipolar.relative_pose_error``, inf on failure).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..geometry.depth import image_to_camera
from ..geometry.epipolar import (
    essential_from_pose,
    fundamental_from_pose,
    sampson_error,
    sym_epipolar_distance,
)
from ..geometry.homography import sym_transfer_error
from ..geometry.utils import ArrayLike, numpy_compat, to_numpy

HOMOGRAPHY_AUC_THRESHOLDS: tuple[float, ...] = (1.0, 3.0, 5.0)  # pixels (corner error)
POSE_AUC_THRESHOLDS: tuple[float, ...] = (5.0, 10.0, 20.0)  # degrees
MAA_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in range(1, 11))  # degrees
NORMALIZED_EPIPOLAR_THRESHOLDS: tuple[float, ...] = (1e-4, 5e-4, 1e-3)  # SuperGlue / Glue Factory
NAMED_THRESHOLDS = {"homography": HOMOGRAPHY_AUC_THRESHOLDS, "pose": POSE_AUC_THRESHOLDS}

Thresholds = float | Sequence[float]


def _errors(errors: Iterable[float]) -> np.ndarray:
    """Flat float64 errors with NaN turned into inf (a failure)."""
    if isinstance(errors, torch.Tensor):
        errors = to_numpy(errors)
    elif not isinstance(errors, np.ndarray):
        errors = [to_numpy(e) for e in errors]
    array = np.asarray(errors, dtype=np.float64).ravel()
    return np.where(np.isnan(array), np.inf, array)


def pose_auc(errors: Iterable[float], thresholds: Sequence[float]) -> list[float]:
    """Cumulative-error AUC at each threshold (SuperGlue's ``pose_auc``, Glue Factory's ``cal_error_auc``).

    Sort the N errors, take the recall curve ``r(e) = #{errors <= e} / N`` (a step at each
    error, linearly interpolated between consecutive errors as the trapezoid rule does,
    starting at (0, 0)) and integrate it from 0 to ``t``, divided by ``t``. An error exactly
    equal to ``t`` does not count. Infinite (and NaN) errors are failures: they stay in N but
    never enter the curve. Empty input: NaN for every threshold.
    """
    errors = np.sort(_errors(errors))
    thresholds = [float(t) for t in thresholds]
    if any(t <= 0 for t in thresholds):
        raise ValueError(f"AUC thresholds must be > 0, got {thresholds}")
    if len(errors) == 0:
        return [math.nan] * len(thresholds)
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last = int(np.searchsorted(errors, t))  # errors[:last] < t (errors[0] = 0 always counts)
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        aucs.append(float(np.sum((e[1:] - e[:-1]) * (r[1:] + r[:-1]) / 2) / t))
    return aucs


def auc_at(errors: Iterable[float], thresholds: str | Sequence[float] = "pose",
           prefix: str = "auc") -> dict[str, float]:
    """``{f"{prefix}@{t:g}": AUC}``; ``thresholds`` is a list or 'homography' (1, 3, 5 px) / 'pose' (5, 10, 20 deg)."""
    if isinstance(thresholds, str):
        if thresholds not in NAMED_THRESHOLDS:
            raise ValueError(f"unknown threshold set '{thresholds}', expected {sorted(NAMED_THRESHOLDS)} or a list")
        thresholds = NAMED_THRESHOLDS[thresholds]
    return {f"{prefix}@{t:g}": v for t, v in zip(thresholds, pose_auc(errors, thresholds), strict=False)}


def mAA(errors: Iterable[float], thresholds: Sequence[float] = MAA_THRESHOLDS) -> float:
    """Mean average accuracy: ``mean_t fraction(error < t)`` over ``thresholds`` (1..10 deg by default).

    This is the Image Matching Challenge definition, applied to one error per pair (for
    relative pose use ``max(R error, t error)`` so that both must be below t). It is not
    Glue Factory's ``*_mAA`` summary, which is the mean of the AUCs at the reported AUC
    thresholds (e.g. mean of AUC@5/10/20); ``summarize`` reports that as ``{key}_auc_mean``.
    Failures (inf / NaN) count as inaccurate. Empty input: NaN.
    """
    errors = _errors(errors)
    if len(errors) == 0:
        return math.nan
    return float(np.mean([(errors < t).mean() for t in thresholds]))


def _per_threshold(errors: torch.Tensor, th: Thresholds):
    """Precision (error < th) for a scalar or each threshold; 0 for no matches."""
    def one(t):
        return float((errors < t).double().mean()) if errors.numel() else 0.0
    if isinstance(th, numbers.Real):
        return one(float(th))
    return [one(float(t)) for t in th]


@numpy_compat(int_args=("gt_matches0", "matches0"))
def matches_precision(gt_matches0: ArrayLike, matches0: ArrayLike) -> ArrayLike:
    """Fraction of predicted matches that are correct (Glue Factory's ``matcher_metrics`` precision).

    ``matches0`` (N,) or (B, N): index in image 1 or -1; ``gt_matches0`` the labels of
    ``geometry.gt_matches`` (index, -1 unmatchable, -2 ignore). Predicted matches of points
    labelled -2 are left out; with no (counted) prediction the precision is 0.
    Returns a scalar for (N,), (B,) for batches (numpy in -> numpy out).
    """
    counted = (matches0 > -1) & (gt_matches0 >= -1)
    correct = (matches0 == gt_matches0) & counted
    return correct.sum(-1).double() / counted.sum(-1).clamp(min=1).double()


@numpy_compat(int_args=("gt_matches0", "matches0"))
def matches_recall(gt_matches0: ArrayLike, matches0: ArrayLike) -> ArrayLike:
    """Fraction of ground-truth positives that are predicted (0 when there is none)."""
    positives = gt_matches0 > -1
    correct = (matches0 == gt_matches0) & positives
    return correct.sum(-1).double() / positives.sum(-1).clamp(min=1).double()


def homography_match_precision(points0: ArrayLike, points1: ArrayLike, H: ArrayLike,
                               th: Thresholds = (1.0, 3.0)) -> float | list[float]:
    """Fraction of matches (K, 2)-(K, 2) whose symmetric transfer error under ``H_0to1`` is below ``th``.

    The error is ``geometry.homography.sym_transfer_error`` (mean of the two one-way pixel
    distances), as Glue Factory's HPatches ``prec@1px`` / ``prec@3px``. Scalar ``th`` ->
    float, list -> list; 0 for no matches.
    """
    errors = torch.as_tensor(to_numpy(sym_transfer_error(to_numpy(points0), to_numpy(points1), to_numpy(H))))
    return _per_threshold(errors, th)


def epipolar_errors(points0: ArrayLike, points1: ArrayLike, geometry: ArrayLike | tuple[ArrayLike, ...],
                    unit: str = "pixel") -> np.ndarray:
    """Per-match epipolar errors (K,) used by ``epipolar_precision``.

    ``geometry``: a pixel fundamental matrix F, or ``(K0, K1, T_0to1)``.
    ``unit="pixel"``: Sampson distance in pixels (not squared), from F or from F built from
    (K0, K1, T_0to1). ``unit="normalized"``: SuperGlue / Glue Factory's squared symmetric
    epipolar distance of K-normalised points under ``E = [t]x R`` (needs (K0, K1, T_0to1));
    their thresholds are 1e-4 / 5e-4 / 1e-3.
    """
    p0 = np.asarray(to_numpy(points0), dtype=np.float64).reshape(-1, 2)
    p1 = np.asarray(to_numpy(points1), dtype=np.float64).reshape(-1, 2)
    posed = isinstance(geometry, (tuple, list))
    if posed:
        if len(geometry) != 3:
            raise ValueError("geometry must be F (3x3) or a tuple (K0, K1, T_0to1)")
        K0, K1, T = (np.asarray(to_numpy(g), dtype=np.float64) for g in geometry)
    if unit == "pixel":
        F = fundamental_from_pose(K0, K1, T) if posed else np.asarray(to_numpy(geometry), dtype=np.float64)
        return sampson_error(p0, p1, F)
    if unit == "normalized":
        if not posed:
            raise ValueError("unit='normalized' needs geometry=(K0, K1, T_0to1), not a fundamental matrix")
        return sym_epipolar_distance(image_to_camera(p0, K0), image_to_camera(p1, K1), essential_from_pose(T),
                                     squared=True)
    raise ValueError(f"unit must be 'pixel' or 'normalized', got '{unit}'")


def epipolar_precision(points0: ArrayLike, points1: ArrayLike, geometry: ArrayLike | tuple[ArrayLike, ...],
                       th: Thresholds, unit: str = "pixel") -> float | list[float]:
    """Fraction of matches with epipolar error below ``th`` (see ``epipolar_errors`` for units).

    Pixel unit: Sampson distance in pixels, e.g. th=(1, 3). Normalised unit (Glue Factory's
    ``epi_prec@1e-4`` etc.): squared symmetric epipolar distance, th=(1e-4, 5e-4, 1e-3).
    Scalar ``th`` -> float, list -> list; 0 for no matches.
    """
    return _per_threshold(torch.as_tensor(epipolar_errors(points0, points1, geometry, unit)), th)


def _scalar(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        return float(value)
    return None


DEFAULT_AUC_KEYS: dict[str, Sequence[float]] = {"corner_error": HOMOGRAPHY_AUC_THRESHOLDS,
                                                "pose_error": POSE_AUC_THRESHOLDS}
DEFAULT_MAA_KEYS: tuple[str, ...] = ("pose_error",)


def summarize(per_pair: Sequence[Mapping[str, Any]], auc_keys: Mapping[str, Sequence[float]] | None = None,
              maa_keys: Sequence[str] | None = None) -> dict[str, float]:
    """One summary dict from per-pair result dicts.

    - ``num_pairs``.
    - Keys in ``auc_keys`` (error name -> thresholds; default corner_error at 1/3/5 px and
      pose_error at 5/10/20 deg): ``{key}_auc@{t}`` (``pose_auc``), ``{key}_auc_mean`` (mean
      of those AUCs, Glue Factory's ``*_mAA``), ``{key}_median``; inf errors are failures.
      Such a key must be present in every pair (a missing error would silently shrink N).
    - Keys in ``maa_keys`` (default pose_error) that are present: ``{key}_mAA`` (``mAA``, 1..10).
    - Every other scalar numeric field (bools count as 0/1): its mean over the pairs that
      have it (NaN propagates). Non-scalar fields (arrays, strings) are ignored.
    """
    auc_keys = DEFAULT_AUC_KEYS if auc_keys is None else auc_keys
    maa_keys = DEFAULT_MAA_KEYS if maa_keys is None else maa_keys
    summary: dict[str, float] = {"num_pairs": float(len(per_pair))}
    values: dict[str, list[float]] = {}
    for pair in per_pair:
        for key, value in pair.items():
            scalar = _scalar(value)
            if scalar is not None:
                values.setdefault(key, []).append(scalar)
    for key, vals in values.items():
        if key in auc_keys:
            if len(vals) != len(per_pair):
                raise ValueError(f"summarize: '{key}' is missing (or not a number) in "
                                 f"{len(per_pair) - len(vals)} of {len(per_pair)} pairs")
            aucs = auc_at(vals, auc_keys[key], prefix=f"{key}_auc")
            summary.update(aucs)
            summary[f"{key}_auc_mean"] = float(np.mean(list(aucs.values())))
            summary[f"{key}_median"] = float(np.median(_errors(vals)))
        else:
            summary[key] = float(np.mean(vals))
        if key in maa_keys:
            summary[f"{key}_mAA"] = mAA(vals)
    return summary
