"""Compare a reconstruction with ground-truth poses: camera centres after a similarity alignment.

A reconstruction is known up to a similarity (scale, rotation, translation), so the estimated
camera centres are aligned to the true ones with Umeyama's least-squares Sim(3) first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def umeyama_sim3(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R, translation t minimising ``sum |dst - (s R src + t)|^2`` (points (N, 3), N >= 3)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"need two (N, 3) point sets with N >= 3, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    a, b = src - mu_src, dst - mu_dst
    cov = b.T @ a / len(src)
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # a reflection is not a rotation
        D[2, 2] = -1
    R = U @ D @ Vt
    var_src = (a**2).sum() / len(src)
    scale = float(np.trace(np.diag(S) @ D) / var_src) if var_src > 0 else 1.0
    return scale, R, mu_dst - scale * R @ mu_src


def camera_centres(reconstruction: Any) -> dict[str, np.ndarray]:
    """World positions of the registered images of a pycolmap reconstruction, by image name."""
    return {reconstruction.images[i].name: np.asarray(reconstruction.images[i].projection_center())
            for i in reconstruction.reg_image_ids()}


def centres_from_poses(T_cam_world: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Camera centres ``-R^T t`` of ``X_cam = R X_world + t`` poses."""
    return {name: -T[:3, :3].T @ T[:3, 3] for name, T in T_cam_world.items()}


def position_errors(estimated: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per-image distance between aligned estimated centres and true centres (units of ``truth``)."""
    names = sorted(set(estimated) & set(truth))
    if len(names) < 3:
        raise ValueError(f"need at least 3 registered images with ground truth to align, got {len(names)}")
    src = np.stack([estimated[n] for n in names])
    dst = np.stack([truth[n] for n in names])
    scale, R, t = umeyama_sim3(src, dst)
    errors = np.linalg.norm((scale * src @ R.T + t) - dst, axis=1)
    return {"names": names, "errors": errors, "mean": float(errors.mean()), "median": float(np.median(errors)),
            "max": float(errors.max()), "scale": scale}
