"""Robust homography estimation from point matches: OpenCV, poselib, pycolmap, plain DLT.

All estimators take ``ransac_th`` in pixels: the reprojection error ``||H x0 - x1||`` in
image 1 (OpenCV, poselib, pycolmap all threshold that one-way error).
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import torch

from ..config import ConfigError
from ..geometry.homography import homography_dlt, warp_points
from . import BaseEstimator

OPENCV_METHODS = {
    "ransac": cv2.RANSAC,
    "lmeds": cv2.LMEDS,
    "rho": cv2.RHO,
    "usac_default": cv2.USAC_DEFAULT,
    "usac_magsac": cv2.USAC_MAGSAC,
    "usac_accurate": cv2.USAC_ACCURATE,
    "usac_fast": cv2.USAC_FAST,
    "usac_prosac": cv2.USAC_PROSAC,
    "usac_parallel": cv2.USAC_PARALLEL,
}


def check_opencv_method(method: str, allowed=OPENCV_METHODS, owner: str = "OpenCV estimator") -> int:
    if method not in allowed:
        raise ConfigError(f"{owner}: unknown method '{method}', expected one of {sorted(allowed)}")
    return allowed[method]


class HomographyEstimator(BaseEstimator):
    kind = "homography"
    min_points = 4
    default_conf: ClassVar[dict[str, Any]] = {**BaseEstimator.default_conf, "ransac_th": 3.0}

    def _finalize(self, model: np.ndarray):
        scaled = model / np.linalg.norm(model)
        if abs(np.linalg.det(scaled)) < 1e-12:
            return None  # singular: not a homography
        return model / model[2, 2] if abs(model[2, 2]) > 1e-12 else scaled


class OpenCVHomography(HomographyEstimator):
    """cv2.findHomography; ``method`` in OPENCV_METHODS."""

    default_conf: ClassVar[dict[str, Any]] = {
        **HomographyEstimator.default_conf, "name": "opencv", "method": "usac_magsac"}
    backend_errors = HomographyEstimator.backend_errors + (cv2.error,)

    def __init__(self, conf=None):
        super().__init__(conf)
        self.method = check_opencv_method(self.conf.method, owner="opencv homography estimator")

    def _estimate(self, points0, points1, extra):
        H, mask = cv2.findHomography(points0, points1, self.method, self.conf.ransac_th,
                                     maxIters=self.ransac_limits(extra)[1], confidence=self.conf.confidence)
        if H is None or mask is None:
            return None
        return H, mask.ravel()


class PoselibHomography(HomographyEstimator):
    """poselib.estimate_homography (LO-RANSAC + non-linear refinement)."""

    default_conf: ClassVar[dict[str, Any]] = {**HomographyEstimator.default_conf, "name": "poselib"}

    def _estimate(self, points0, points1, extra):
        import poselib

        H, info = poselib.estimate_homography(
            points0, points1, poselib_ransac_options(self.conf, "max_reproj_error", self.ransac_limits(extra)))
        return H, info.get("inliers")


class PycolmapHomography(HomographyEstimator):
    """pycolmap.estimate_homography_matrix (LO-RANSAC)."""

    default_conf: ClassVar[dict[str, Any]] = {**HomographyEstimator.default_conf, "name": "pycolmap"}

    def _estimate(self, points0, points1, extra):
        import pycolmap

        result = pycolmap.estimate_homography_matrix(
            points0, points1, pycolmap_ransac_options(self.conf, self.ransac_limits(extra)))
        if result is None:
            return None
        return result["H"], result["inlier_mask"]


class DLTHomography(HomographyEstimator):
    """Normalised DLT on all matches (not robust; a baseline and a check for clean data).

    Inliers are the matches with reprojection error below ``ransac_th``; ``confidence``,
    ``max_iters`` and ``seed`` are unused.
    """

    default_conf: ClassVar[dict[str, Any]] = {**HomographyEstimator.default_conf, "name": "dlt"}

    def _estimate(self, points0, points1, extra):
        H = homography_dlt(torch.from_numpy(points0), torch.from_numpy(points1)).numpy()
        if not np.isfinite(H).all():
            return None
        error = np.linalg.norm(warp_points(points0, H) - points1, axis=-1)
        return H, error < self.conf.ransac_th


def poselib_ransac_options(conf, threshold_key: str, limits: tuple[int, int]) -> dict[str, Any]:
    """poselib RANSAC options from our common config (pixel threshold under ``threshold_key``)
    and a call's ``(min_iters, max_iters)`` (``BaseEstimator.ransac_limits``)."""
    return {
        threshold_key: float(conf.ransac_th),
        "success_prob": float(conf.confidence),
        "max_iterations": limits[1],
        "min_iterations": limits[0],
        "seed": int(conf.seed),
    }


def pycolmap_ransac_options(conf, limits: tuple[int, int]):
    """pycolmap.RANSACOptions from our common config (``max_error`` in pixels) and a call's
    ``(min_iters, max_iters)``."""
    import pycolmap

    return pycolmap.RANSACOptions(
        max_error=float(conf.ransac_th),
        confidence=float(conf.confidence),
        max_num_trials=limits[1],
        min_num_trials=limits[0],
        random_seed=int(conf.seed),
    )


def opencv_homography(points0: np.ndarray, points1: np.ndarray, threshold: float = 3.0,
                      method: str = "usac_magsac", confidence: float = 0.9999,
                      max_iters: int = 10000) -> dict[str, object]:
    """H with ``points1 ~ H points0``; fewer than 4 matches or a degenerate set is a failure.

    Shorthand for ``get_estimator("homography", {"name": "opencv", ...})``.
    """
    estimator = OpenCVHomography({"method": method, "ransac_th": float(threshold), "confidence": float(confidence),
                                  "max_iters": int(max_iters)})
    points0 = np.asarray(points0, dtype=np.float64).reshape(-1, 2)
    points1 = np.asarray(points1, dtype=np.float64).reshape(-1, 2)
    return estimator({"m_kpts0": points0, "m_kpts1": points1})
