"""Robust two-view estimators behind one interface; a failure is a value, not an exception.

    estimator = get_estimator("relative_pose", {"name": "poselib", "ransac_th": 1.0})
    result = estimator({"m_kpts0": pts0, "m_kpts1": pts1, "camera0": K0, "camera1": K1})
    result["model"], result["inliers"], result["success"]

Kinds and back ends (``conf.name``):

- ``homography``: ``opencv`` (``method``: usac_magsac by default; ransac, usac_default,
  usac_accurate, ...),
  ``poselib``, ``pycolmap``, ``dlt`` (non-robust weighted DLT on all points, a baseline),
  ``point_line`` (LO-RANSAC on points and line segments ``m_lines0``/``m_lines1`` (L, 2, 2);
  also returns ``line_inliers``; see ``point_line_homography``).
  Model: 3x3 ``H_0to1`` with H[2, 2] = 1.
- ``relative_pose``: ``opencv`` (findEssentialMat + recoverPose on K-normalised points;
  ``method`` usac_default by default, ``ransac`` reproduces SuperGlue / Glue Factory),
  ``poselib`` (estimate_relative_pose, PINHOLE cameras from K), ``pycolmap``
  (estimate_relative_pose, LO-RANSAC with the tangent Sampson error, optionally refined).
  Needs ``camera0`` / ``camera1`` (3x3 K). Model: 4x4 ``T_0to1`` (``X1 = R X0 + t``) with
  unit-norm t.
- ``fundamental``: ``opencv`` (``method`` usac_default by default), ``poselib``, ``pycolmap``. Model: 3x3 F with
  ``x1^T F x0 = 0``, scaled to unit Frobenius norm.
- ``absolute_pose``: ``opencv`` (solvePnPRansac, P3P samples, then Levenberg-Marquardt on the
  inliers), ``poselib`` (estimate_absolute_pose), ``pycolmap`` (estimate_and_refine_absolute_pose).
  Input: 3D points ``m_points3d0`` (K, 3) in camera 0's frame (from a depth image, say) and
  their pixels ``m_kpts1`` (K, 2) in image 1, ``camera1`` (3x3 K). Model: 4x4 metric ``T_0to1``;
  ``ransac_th`` is the reprojection error in image 1.

Common configuration: ``ransac_th`` is in PIXELS for every back end: the homography
reprojection error in image 1, and for epipolar models a point-to-epipolar-line /
Sampson distance. Back ends that work on normalised coordinates get it converted
(OpenCV essential matrix: ``ransac_th / mean(fx0, fy0, fx1, fy1)``); poselib and pycolmap take
pixel thresholds together with the cameras. ``confidence`` is the RANSAC success probability,
``max_iters`` the maximum number of iterations; poselib and pycolmap also run at least
``min(min_iters, max_iters)`` (default 1000, poselib's own: stable evaluation figures; the live
node runs 10, since the stopping rule ends well-conditioned frames much earlier). ``seed``
fixes the random sampling of poselib and pycolmap (OpenCV uses its global RNG,
``cv2.setRNGSeed``). A call may pass ``min_inlier_ratio`` when only a model with that share of
the matches as inliers is of use: it then draws at most the trials that find one
(``BaseEstimator.trial_limit``), whatever the back end. Configs are validated with
``merge_strict``: a misspelt key raises ``ConfigError``.

Input: ``m_kpts0`` / ``m_kpts1`` (K, 2) pixels, numpy or torch. Matches with non-finite
coordinates are ignored (reported as outliers). Fewer than the minimal number of distinct
matches, all points (nearly) collinear, a back end that raises or returns nothing / NaN /
an invalid model, or fewer inliers than the minimal sample: ``success`` False, an
identity model (3x3, or 4x4 for relative pose) and all-False inliers.
"""

from __future__ import annotations

import logging
import math
from importlib import import_module
from typing import Any, ClassVar

import numpy as np

from ..config import ConfigError, ConfLike, merge_strict, to_container

logger = logging.getLogger(__name__)

REGISTRY: dict[str, dict[str, str]] = {
    "homography": {
        "opencv": "featmatch_core.estimators.homography:OpenCVHomography",
        "poselib": "featmatch_core.estimators.homography:PoselibHomography",
        "pycolmap": "featmatch_core.estimators.homography:PycolmapHomography",
        "dlt": "featmatch_core.estimators.homography:DLTHomography",
        "point_line": "featmatch_core.estimators.point_line_homography:PointLineHomography",
    },
    "relative_pose": {
        "opencv": "featmatch_core.estimators.relative_pose:OpenCVRelativePose",
        "poselib": "featmatch_core.estimators.relative_pose:PoselibRelativePose",
        "pycolmap": "featmatch_core.estimators.relative_pose:PycolmapRelativePose",
    },
    "fundamental": {
        "opencv": "featmatch_core.estimators.relative_pose:OpenCVFundamental",
        "poselib": "featmatch_core.estimators.relative_pose:PoselibFundamental",
        "pycolmap": "featmatch_core.estimators.relative_pose:PycolmapFundamental",
    },
    "absolute_pose": {
        "opencv": "featmatch_core.estimators.absolute_pose:OpenCVAbsolutePose",
        "poselib": "featmatch_core.estimators.absolute_pose:PoselibAbsolutePose",
        "pycolmap": "featmatch_core.estimators.absolute_pose:PycolmapAbsolutePose",
    },
}
DEFAULT_NAME = "opencv"


def as_points(value: Any, key: str, dim: int = 2) -> np.ndarray:
    """(K, dim) float64 numpy array from numpy / torch / lists."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, dim)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"'{key}' must have shape (K, {dim}), got {array.shape}")
    return array


def as_matrix(value: Any, key: str, shape: tuple[int, int] = (3, 3)) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape or not np.isfinite(array).all():
        raise ValueError(f"'{key}' must be a finite {shape[0]}x{shape[1]} matrix, got {array!r}")
    return array


# Distinct points are counted by their projections on this direction: a sort of N numbers
# instead of ``np.unique(axis=0)``'s lexicographic sort of rows (0.25 ms for 700 points, per
# side and per estimate). Its irrational, unrelated components keep points of a pixel grid or
# of any simple pattern from sharing a projection.
_DISTINCT_DIRECTION = np.array([1.0, np.sqrt(2.0) / 3.0, np.pi / 7.0])


def num_distinct(points: np.ndarray) -> int:
    """How many distinct rows ``points`` (K, 2 or 3) has."""
    return len(np.unique(points @ _DISTINCT_DIRECTION[: points.shape[1]]))


def is_degenerate(points: np.ndarray, min_points: int, rel_tol: float = 1e-9) -> bool:
    """Too few distinct points, or all of them (numerically) on one line."""
    if len(points) < min_points or num_distinct(points) < min_points:
        return True
    centered = points - points.mean(0)
    s = np.linalg.svd(centered, compute_uv=False)
    return bool(s[1] <= rel_tol * max(s[0], 1e-300))


def required_iterations(inlier_ratio: float, confidence: float, sample_size: int) -> float:
    """Samples needed to draw one all-inlier sample with probability ``confidence``."""
    good = inlier_ratio ** sample_size
    if good >= 1.0:
        return 1.0
    miss = math.log1p(-good)  # log1p: exact for the tiny share of good samples at low ratios
    if not miss < 0.0:  # no good samples (or NaN)
        return math.inf
    return math.log1p(-confidence) / miss


# poselib's and COLMAP's margin on the trials their stopping rule asks for (dyn_num_trials_mult)
TRIAL_MARGIN = 3.0


class BaseEstimator:
    """A configured estimator: ``__call__(data) -> {"model", "inliers", "success"}``.

    Subclasses set ``kind``, ``min_points``, ``sample_size``, ``default_conf`` (complete: base
    keys included) and implement ``_estimate(points0, points1, extra) -> (model, inliers) |
    None`` (``extra`` is what ``_prepare(data)`` returned, e.g. the cameras, with the call's
    ``trial_limit``: RANSAC back ends take their iteration bounds from ``ransac_limits(extra)``),
    which may raise one of ``backend_errors``; ``__call__`` turns those into ``success=False``.
    """

    kind = ""
    min_points = 4
    sample_size = 4  # matches in a minimal sample
    point_inputs: tuple[tuple[str, int], ...] = (("m_kpts0", 2), ("m_kpts1", 2))  # (key, dimension) of each side
    model_shape: tuple[int, int] = (3, 3)
    default_conf: ClassVar[dict[str, Any]] = {
        "name": "", "ransac_th": 1.0, "confidence": 0.9999, "max_iters": 10000, "min_iters": 1000, "seed": 0,
    }
    backend_errors: tuple[type[BaseException], ...] = (RuntimeError, ValueError, np.linalg.LinAlgError)

    def __init__(self, conf: ConfLike = None):
        owner = f"{self.kind} estimator '{self.default_conf.get('name')}'"
        self.conf = merge_strict(self.default_conf, conf, owner=owner)
        if self.conf.name != self.default_conf["name"]:
            raise ConfigError(f"{owner}: config names a different estimator, '{self.conf.name}'")
        if self.conf.ransac_th <= 0:
            raise ConfigError(f"{owner}: ransac_th must be > 0 pixels, got {self.conf.ransac_th}")
        if not 0 < self.conf.confidence < 1:
            raise ConfigError(f"{owner}: confidence must be in (0, 1), got {self.conf.confidence}")
        if self.conf.max_iters < 1:
            raise ConfigError(f"{owner}: max_iters must be >= 1, got {self.conf.max_iters}")
        if self.conf.min_iters < 0:
            raise ConfigError(f"{owner}: min_iters must be >= 0, got {self.conf.min_iters}")

    def failure(self, num: int) -> dict[str, Any]:
        return {"model": np.eye(self.model_shape[0]), "inliers": np.zeros(num, dtype=bool), "success": False}

    def _prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        """Check and convert non-point inputs (cameras); programming errors raise here."""
        return {}

    def _estimate(self, points0: np.ndarray, points1: np.ndarray,
                  extra: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
        raise NotImplementedError

    def _finalize(self, model: np.ndarray) -> np.ndarray | None:
        """Validate / normalise the model; None if it is not a usable model."""
        return model

    def trial_limit(self, min_inlier_ratio: float | None) -> int:
        """The most RANSAC trials worth drawing when only a model with at least
        ``min_inlier_ratio`` of the matches as inliers is of use: those that draw one all-inlier
        sample of such a model with ``confidence`` (times ``TRIAL_MARGIN``), at most ``max_iters``.
        A scene without such a model then costs a few dozen trials instead of ``max_iters``."""
        max_iters = int(self.conf.max_iters)
        if min_inlier_ratio is None or math.isnan(min_inlier_ratio):
            return max_iters
        needed = required_iterations(min(max(float(min_inlier_ratio), 0.0), 1.0), float(self.conf.confidence),
                                     self.sample_size)
        return max_iters if math.isinf(needed) else max(1, min(max_iters, math.ceil(TRIAL_MARGIN * needed)))

    def ransac_limits(self, extra: dict[str, Any]) -> tuple[int, int]:
        """``(min_iters, max_iters)`` of this call: the configured ones under its ``trial_limit``."""
        max_iters = extra.get("trial_limit", int(self.conf.max_iters))
        return min(int(self.conf.min_iters), max_iters), max_iters

    def __call__(self, data: dict[str, Any], min_inlier_ratio: float | None = None) -> dict[str, Any]:
        """``min_inlier_ratio``: only a model with at least this share of the matches as inliers
        is of use (``trial_limit``); a model with fewer may still come back."""
        for key, _ in self.point_inputs:
            if key not in data:
                raise KeyError(f"{self.kind} estimator needs '{key}' in its input, got keys {sorted(data)}")
        (key0, dim0), (key1, dim1) = self.point_inputs
        points0, points1 = as_points(data[key0], key0, dim0), as_points(data[key1], key1, dim1)
        if len(points0) != len(points1):
            raise ValueError(f"{key0} and {key1} differ in length: {len(points0)} vs {len(points1)}")
        extra = {**self._prepare(data), "trial_limit": self.trial_limit(min_inlier_ratio)}
        failure = self.failure(len(points0))
        finite = np.isfinite(points0).all(1) & np.isfinite(points1).all(1)
        p0, p1 = points0[finite], points1[finite]
        if is_degenerate(p0, self.min_points) or is_degenerate(p1, self.min_points):
            return failure
        try:
            result = self._estimate(np.ascontiguousarray(p0), np.ascontiguousarray(p1), extra)
        except self.backend_errors as err:  # the back end refused the input: a failed estimate
            logger.debug("%s estimator '%s' failed: %s", self.kind, self.conf.name, err)
            return failure
        if result is None:
            return failure
        model, inliers = result
        if model is None or inliers is None:
            return failure
        model = np.asarray(model, dtype=np.float64)
        inliers = np.asarray(inliers).astype(bool).ravel()
        if model.shape != self.model_shape or not np.isfinite(model).all() or inliers.shape != (len(p0),):
            return failure
        model = self._finalize(model)
        if model is None or inliers.sum() < self.min_points:
            return failure
        full = np.zeros(len(points0), dtype=bool)
        full[finite] = inliers
        return {"model": model, "inliers": full, "success": True}


def get_estimator_class(kind: str, name: str) -> type[BaseEstimator]:
    if kind not in REGISTRY:
        raise ConfigError(f"unknown estimator kind '{kind}', expected one of {sorted(REGISTRY)}")
    if name not in REGISTRY[kind]:
        raise ConfigError(f"unknown {kind} estimator '{name}', expected one of {sorted(REGISTRY[kind])}")
    module, cls = REGISTRY[kind][name].split(":")
    return getattr(import_module(module), cls)


def get_estimator(kind: str, conf: ConfLike = None) -> BaseEstimator:
    """The estimator of ``kind`` ('homography', 'relative_pose', 'fundamental') named by
    ``conf.name`` (default 'opencv'), configured by ``conf`` (validated strictly)."""
    conf = to_container(conf)
    name = conf.get("name") or DEFAULT_NAME
    return get_estimator_class(kind, name)({**conf, "name": name})


__all__ = ["REGISTRY", "BaseEstimator", "get_estimator", "get_estimator_class", "is_degenerate", "required_iterations"]
