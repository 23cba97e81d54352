"""Robust homography from point AND line-segment correspondences (LO-RANSAC, numpy).

Neither OpenCV nor PoseLib (2.0.5: ``estimate_homography`` takes points only) nor pycolmap
estimates a homography from lines, so this module does it::

    estimator = get_estimator("homography", {"name": "point_line", "ransac_th": 3.0})
    result = estimator({"m_kpts0": p0, "m_kpts1": p1, "m_lines0": l0, "m_lines1": l1})
    result["model"], result["inliers"], result["line_inliers"], result["success"]

``m_lines0`` / ``m_lines1``: (L, 2, 2) matched segments ``[[x0, y0], [x1, y1]]`` in pixels;
the points are optional (a lines-only estimate is fine), either may be empty.

Every correspondence (point or line) is one *element* and gives two linear constraints on
``H_0to1``, each of the form ``l^T H x = 0`` with ``l`` a line of image 1 and ``x`` a point
of image 0:

- point ``x0 <-> x1 = (u, v)``: the lines ``x = u`` and ``y = v`` through x1 contain ``H x0``;
- line ``(a0, b0) <-> (a1, b1)``: the infinite line through a1, b1 contains ``H a0`` and
  ``H b0`` (the endpoints of the segments need not correspond, only the lines do).

Lines of image 1 are scaled to a unit normal, so every row's residual is a distance in
image 1, for points and lines alike. A minimal sample is four elements (8 rows, the
null vector of the 8x9 system by SVD), solved in Hartley-normalised coordinates (one
similarity per image computed from all points and segment endpoints).

Inlier test, in pixels (``ransac_th``): a point's reprojection error ``||H x0 - x1||``; a
line's error is the larger of the two directions of the mean perpendicular distance of a
segment's endpoints, transferred by H (or H^-1), to the other segment's infinite line.
The score is MSAC's (truncated squared error). Iterations adapt to the best inlier ratio
(``confidence``, at most ``max_iters``); each new best model is refined by local
optimisation (iterated least squares on its inliers, ``lo_iters`` rounds, as LO-RANSAC),
and the final model is re-fitted on all its inliers. Sampling is seeded (``seed``).

Degenerate input is a failure, not an exception: fewer than four usable elements (non-finite
or zero-length segments are ignored), or a constraint system whose null space has more than
one dimension (e.g. all lines through one point, all parallel, all points collinear with no
other constraint). Minimal samples that are rank-deficient or give a singular H are skipped.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np

from ..config import ConfigError
from . import as_points, required_iterations
from .homography import HomographyEstimator

logger = logging.getLogger(__name__)

SAMPLE_SIZE = 4
BATCH = 64  # minimal samples solved and scored together (one batched SVD)
RANK_TOL = 1e-9  # relative singular value below which a constraint system is rank-deficient
MIN_SEGMENT_LENGTH = 1e-6  # pixels; shorter segments define no line


def as_segments(value: Any, key: str) -> np.ndarray:
    """(L, 2, 2) float64 segments from numpy / torch / lists (empty -> (0, 2, 2))."""
    if value is None:
        return np.zeros((0, 2, 2))
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 2, 2)
    if array.ndim != 3 or array.shape[1:] != (2, 2):
        raise ValueError(f"'{key}' must have shape (L, 2, 2) (segment endpoints), got {array.shape}")
    return array


def hartley_similarity(points: np.ndarray) -> np.ndarray:
    """3x3 similarity moving the centroid to the origin with RMS distance sqrt(2)."""
    mean = points.mean(0)
    rms = math.sqrt(max(float(((points - mean) ** 2).sum(1).mean()), 1e-24))
    s = math.sqrt(2.0) / rms
    return np.array([[s, 0.0, -s * mean[0]], [0.0, s, -s * mean[1]], [0.0, 0.0, 1.0]])


def homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones(points.shape[:-1] + (1,))], -1)


def unit_lines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Homogeneous lines through a and b (..., 2), scaled to a unit normal (a . x = signed distance)."""
    line = np.cross(homogeneous(a), homogeneous(b))
    return line / np.linalg.norm(line[..., :2], axis=-1, keepdims=True)


def constraint_rows(p0: np.ndarray, p1: np.ndarray, l0: np.ndarray, l1: np.ndarray) -> np.ndarray:
    """(N, 2, 9) DLT rows, two per element (points first, then lines), from normalised coordinates.

    Each row is ``kron(l, x)`` for the constraint ``l^T H x = 0`` (h = H.ravel()).
    """
    ones = np.ones(len(p0))
    zeros = np.zeros(len(p0))
    point_lines = np.stack([np.stack([-ones, zeros, p1[:, 0]], -1), np.stack([zeros, -ones, p1[:, 1]], -1)], 1)
    point_points = np.repeat(homogeneous(p0)[:, None], 2, axis=1)
    seg_lines = np.repeat(unit_lines(l1[:, 0], l1[:, 1])[:, None], 2, axis=1)
    seg_points = homogeneous(l0)
    lines = np.concatenate([point_lines, seg_lines], 0)
    points = np.concatenate([point_points, seg_points], 0)
    return (lines[..., :, None] * points[..., None, :]).reshape(len(lines), 2, 9)


def null_vectors(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit null vector (last right singular vector) of each (..., M, 9) system, and the ratio
    of its second-smallest to largest singular value (small: the null space is not 1-D)."""
    # thin SVD for tall systems (no M x M factor); a full one only when M < 9 to get the null vector
    _, s, vh = np.linalg.svd(A, full_matrices=A.shape[-2] < 9)
    second = s[..., 7] if s.shape[-1] >= 8 else np.zeros(s.shape[:-1])
    return vh[..., -1, :], second / np.maximum(s[..., 0], 1e-300)


def transfer(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) through homographies (S, 3, 3) -> (S, N, 2); points at infinity -> inf."""
    x = homogeneous(points) @ np.swapaxes(H, -1, -2)
    w = x[..., 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = x[..., :2] / w
    return np.where(np.abs(w) > 1e-12, out, np.inf)


def element_errors(H: np.ndarray, p0: np.ndarray, p1: np.ndarray, l0: np.ndarray, l1: np.ndarray) -> np.ndarray:
    """Pixel errors (S, N_points + N_lines) of homographies H (S, 3, 3): see the module docstring."""
    H = H.reshape(-1, 3, 3)
    point_err = np.linalg.norm(transfer(H, p0) - p1, axis=-1)
    if len(l0) == 0:
        return point_err
    with np.errstate(invalid="ignore", divide="ignore"):
        H_inv = np.linalg.inv(H)
    line1, line0 = unit_lines(l1[:, 0], l1[:, 1]), unit_lines(l0[:, 0], l0[:, 1])
    ends0_in1 = transfer(H, l0.reshape(-1, 2)).reshape(len(H), -1, 2, 2)
    ends1_in0 = transfer(H_inv, l1.reshape(-1, 2)).reshape(len(H), -1, 2, 2)
    d01 = np.abs((homogeneous(ends0_in1) * line1[None, :, None]).sum(-1)).mean(-1)
    d10 = np.abs((homogeneous(ends1_in0) * line0[None, :, None]).sum(-1)).mean(-1)
    line_err = np.maximum(d01, d10)
    return np.concatenate([point_err, np.where(np.isfinite(line_err), line_err, np.inf)], -1)


def draw_samples(rng: np.random.Generator, num: int, count: int) -> np.ndarray:
    """(count, 4) indices in [0, num), distinct within each row."""
    samples = rng.integers(0, num, (count, SAMPLE_SIZE))
    while True:
        ordered = np.sort(samples, 1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(1)
        if not repeated.any():
            return samples
        samples[repeated] = rng.integers(0, num, (int(repeated.sum()), SAMPLE_SIZE))


class PointLineHomography(HomographyEstimator):
    """LO-RANSAC homography from points and line segments (see the module docstring).

    Extra configuration: ``lo_iters`` (least-squares rounds of each local optimisation, 0
    disables it), ``min_iters`` (samples drawn before the adaptive stop may end the loop).
    """

    default_conf: ClassVar[dict[str, Any]] = {
        **HomographyEstimator.default_conf, "name": "point_line", "lo_iters": 5, "min_iters": 100}

    def __init__(self, conf=None):
        super().__init__(conf)
        if self.conf.lo_iters < 0:
            raise ConfigError(f"point_line homography estimator: lo_iters must be >= 0, got {self.conf.lo_iters}")

    def failure(self, num: int, num_lines: int = 0) -> dict[str, Any]:
        return {**super().failure(num), "line_inliers": np.zeros(num_lines, dtype=bool)}

    def __call__(self, data: dict[str, Any], min_inlier_ratio: float | None = None) -> dict[str, Any]:
        points0 = as_points(data.get("m_kpts0", np.zeros((0, 2))), "m_kpts0")
        points1 = as_points(data.get("m_kpts1", np.zeros((0, 2))), "m_kpts1")
        lines0 = as_segments(data.get("m_lines0"), "m_lines0")
        lines1 = as_segments(data.get("m_lines1"), "m_lines1")
        if len(points0) != len(points1):
            raise ValueError(f"m_kpts0 and m_kpts1 differ in length: {len(points0)} vs {len(points1)}")
        if len(lines0) != len(lines1):
            raise ValueError(f"m_lines0 and m_lines1 differ in length: {len(lines0)} vs {len(lines1)}")
        failure = self.failure(len(points0), len(lines0))
        point_ok = np.isfinite(points0).all(1) & np.isfinite(points1).all(1)
        line_ok = (np.isfinite(lines0).all((1, 2)) & np.isfinite(lines1).all((1, 2))
                   & (np.linalg.norm(lines0[:, 0] - lines0[:, 1], axis=-1) > MIN_SEGMENT_LENGTH)
                   & (np.linalg.norm(lines1[:, 0] - lines1[:, 1], axis=-1) > MIN_SEGMENT_LENGTH))
        p0, p1, l0, l1 = points0[point_ok], points1[point_ok], lines0[line_ok], lines1[line_ok]
        if len(p0) + len(l0) < SAMPLE_SIZE:
            return failure
        result = self._ransac(p0, p1, l0, l1, self.ransac_limits({"trial_limit": self.trial_limit(min_inlier_ratio)}))
        if result is None:
            return failure
        model, inliers = result
        model = self._finalize(model)
        if model is None or inliers.sum() < SAMPLE_SIZE:
            return failure
        point_inliers = np.zeros(len(points0), dtype=bool)
        point_inliers[point_ok] = inliers[:len(p0)]
        line_inliers = np.zeros(len(lines0), dtype=bool)
        line_inliers[line_ok] = inliers[len(p0):]
        return {"model": model, "inliers": point_inliers, "line_inliers": line_inliers, "success": True}

    # ---- the estimation itself ------------------------------------------------------------
    def _ransac(self, p0: np.ndarray, p1: np.ndarray, l0: np.ndarray, l1: np.ndarray,
                limits: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """LO-RANSAC with ``(min_iters, max_iters)`` trials (``ransac_limits``)."""
        T0 = hartley_similarity(np.concatenate([p0, l0.reshape(-1, 2)]))
        T1 = hartley_similarity(np.concatenate([p1, l1.reshape(-1, 2)]))
        rows = constraint_rows(self._apply(T0, p0), self._apply(T1, p1), self._apply(T0, l0), self._apply(T1, l1))
        if null_vectors(rows.reshape(-1, 9))[1] < RANK_TOL:
            return None  # the constraints of ALL elements leave more than one H: degenerate input
        T1_inv = np.linalg.inv(T1)
        num = len(rows)
        # plain numbers: OmegaConf attribute access is slow in the loop
        th, confidence = float(self.conf.ransac_th), float(self.conf.confidence)
        min_iters, max_iters = limits
        rng = np.random.default_rng(int(self.conf.seed))
        best_H, best_cost, best_inliers = None, math.inf, np.zeros(num, dtype=bool)
        needed, drawn = math.inf, 0
        while drawn < max_iters and (drawn < min_iters or drawn < needed):
            count = min(BATCH, max_iters - drawn)
            samples = draw_samples(rng, num, count)
            drawn += count
            Hn, second = null_vectors(rows[samples].reshape(count, 8, 9))
            H = T1_inv @ Hn.reshape(-1, 3, 3) @ T0
            usable = (second > RANK_TOL) & self._nonsingular(Hn.reshape(-1, 3, 3))
            if not usable.any():
                continue
            H = H[usable]
            errors = element_errors(H, p0, p1, l0, l1)
            costs = np.minimum(errors, th) ** 2
            costs = costs.sum(1)
            k = int(np.argmin(costs))
            if costs[k] >= best_cost:
                continue
            candidate, cost, inliers = self._local_optimization(H[k], errors[k] < th, float(costs[k]), rows, T0,
                                                                T1_inv, p0, p1, l0, l1)
            best_H, best_cost, best_inliers = candidate, cost, inliers
            needed = required_iterations(inliers.mean(), confidence, SAMPLE_SIZE)
        if best_H is None:
            return None
        return best_H, best_inliers

    @staticmethod
    def _apply(T: np.ndarray, points: np.ndarray) -> np.ndarray:
        return points * T[0, 0] + T[:2, 2]

    @staticmethod
    def _nonsingular(Hn: np.ndarray) -> np.ndarray:
        scale = np.linalg.norm(Hn.reshape(len(Hn), -1), axis=1) ** 3
        return np.abs(np.linalg.det(Hn)) > 1e-8 * scale

    def _local_optimization(self, H: np.ndarray, inliers: np.ndarray, cost: float, rows: np.ndarray,
                            T0: np.ndarray, T1_inv: np.ndarray, p0, p1, l0, l1
                            ) -> tuple[np.ndarray, float, np.ndarray]:
        """Re-fit on the inliers by least squares while the MSAC cost decreases (LO-RANSAC)."""
        th = float(self.conf.ransac_th)
        for _ in range(int(self.conf.lo_iters)):
            if inliers.sum() <= SAMPLE_SIZE:
                break
            Hn, second = null_vectors(rows[inliers].reshape(-1, 9))
            if second < RANK_TOL or not self._nonsingular(Hn.reshape(1, 3, 3))[0]:
                break
            refined = T1_inv @ Hn.reshape(3, 3) @ T0
            errors = element_errors(refined, p0, p1, l0, l1)[0]
            new_cost = float((np.minimum(errors, th) ** 2).sum())
            if new_cost >= cost:
                break
            H, cost, inliers = refined, new_cost, errors < th
        return H, cost, inliers
