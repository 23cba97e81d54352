"""Robust homography estimation from point matches (OpenCV back end)."""

from __future__ import annotations

from typing import Dict

import cv2
import numpy as np

OPENCV_METHODS = {
    "ransac": cv2.RANSAC,
    "usac_default": cv2.USAC_DEFAULT,
    "usac_magsac": cv2.USAC_MAGSAC,
    "usac_accurate": cv2.USAC_ACCURATE,
}


def opencv_homography(points0: np.ndarray, points1: np.ndarray, threshold: float = 3.0,
                      method: str = "usac_magsac", confidence: float = 0.9999,
                      max_iters: int = 10000) -> Dict[str, object]:
    """H with ``points1 ~ H points0``; fewer than 4 matches or a degenerate set is a failure."""
    if method not in OPENCV_METHODS:
        raise ValueError(f"unknown OpenCV homography method '{method}', expected {sorted(OPENCV_METHODS)}")
    points0 = np.asarray(points0, dtype=np.float64).reshape(-1, 2)
    points1 = np.asarray(points1, dtype=np.float64).reshape(-1, 2)
    failure = {"model": np.eye(3), "inliers": np.zeros(len(points0), dtype=bool), "success": False}
    if len(points0) < 4:
        return failure
    H, mask = cv2.findHomography(points0, points1, OPENCV_METHODS[method], threshold,
                                 maxIters=max_iters, confidence=confidence)
    if H is None or not np.isfinite(H).all():
        return failure
    return {"model": H, "inliers": mask.ravel().astype(bool), "success": True}
