"""Homography helpers: point transfer and the corner error used by HPatches metrics."""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def warp_points(points: ArrayLike, H: ArrayLike) -> ArrayLike:
    """Map (..., N, 2) pixel coordinates with (..., 3, 3) homographies ``x' ~ H x``."""
    if isinstance(points, torch.Tensor):
        H = torch.as_tensor(H, dtype=points.dtype, device=points.device)
        homog = torch.cat([points, torch.ones_like(points[..., :1])], -1)
        warped = homog @ H.transpose(-1, -2)
        return warped[..., :2] / warped[..., 2:]
    points = np.asarray(points, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    homog = np.concatenate([points, np.ones_like(points[..., :1])], -1)
    warped = homog @ np.swapaxes(H, -1, -2)
    return warped[..., :2] / warped[..., 2:]


def image_corners(size: Tuple[int, int]) -> np.ndarray:
    """Corners of a (W, H) image, pixel-centre convention as the HPatches evaluation uses."""
    w, h = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def corner_error(H_est: ArrayLike, H_gt: ArrayLike, size: Tuple[int, int]) -> float:
    """Mean distance between the four image corners warped by the estimate and the truth."""
    corners = image_corners(size)
    est = warp_points(corners, np.asarray(H_est, dtype=np.float64))
    gt = warp_points(corners, np.asarray(H_gt, dtype=np.float64))
    return float(np.linalg.norm(est - gt, axis=-1).mean())
