"""Epipolar geometry and relative-pose errors.

Conventions: ``T_0to1`` is a (..., 4, 4) rigid transform mapping camera-0 points to camera 1,
``X1 = R X0 + t``. ``E = [t]x R`` satisfies ``x1^T E x0 = 0`` for normalised image points
(K^-1 x), ``F = K1^-T E K0^-1`` the same for pixels. All functions accept numpy or torch
(numpy in -> numpy out) and batch over leading dimensions.
"""

from __future__ import annotations

import torch

from .utils import ArrayLike, numpy_compat, to_homogeneous


@numpy_compat()
def skew(v: ArrayLike) -> ArrayLike:
    """Cross-product matrices (..., 3, 3) of vectors (..., 3): ``skew(a) @ b = a x b``."""
    zero = torch.zeros_like(v[..., 0])
    return torch.stack([
        torch.stack([zero, -v[..., 2], v[..., 1]], -1),
        torch.stack([v[..., 2], zero, -v[..., 0]], -1),
        torch.stack([-v[..., 1], v[..., 0], zero], -1),
    ], -2)


@numpy_compat()
def essential_from_pose(T_0to1: ArrayLike) -> ArrayLike:
    """Essential matrix ``[t]x R`` (..., 3, 3) from (..., 4, 4) (or (..., 3, 4)) ``T_0to1``."""
    return skew(T_0to1[..., :3, 3]) @ T_0to1[..., :3, :3]


@numpy_compat()
def fundamental_from_pose(K0: ArrayLike, K1: ArrayLike, T_0to1: ArrayLike) -> ArrayLike:
    """Fundamental matrix ``K1^-T [t]x R K0^-1`` (pixels of image 0 -> epipolar lines in image 1)."""
    E = essential_from_pose(T_0to1)
    K0, K1 = K0.to(E.dtype), K1.to(E.dtype)
    return torch.linalg.inv(K1).transpose(-1, -2) @ E @ torch.linalg.inv(K0)


def _epipolar_terms(points0: torch.Tensor, points1: torch.Tensor, F: torch.Tensor):
    F = F.to(points0.dtype)
    x0, x1 = to_homogeneous(points0), to_homogeneous(points1)
    Fx0 = x0 @ F.transpose(-1, -2)  # (..., N, 3): lines in image 1
    Ftx1 = x1 @ F  # (..., N, 3): lines in image 0
    residual = (x1 * Fx0).sum(-1)  # x1^T F x0
    return residual, Fx0, Ftx1


@numpy_compat()
def sampson_error(points0: ArrayLike, points1: ArrayLike, F: ArrayLike, squared: bool = False) -> ArrayLike:
    """Sampson error (..., N): first-order approximation of the geometric (reprojection) error.

    ``d^2 = (x1^T F x0)^2 / ((F x0)_1^2 + (F x0)_2^2 + (F^T x1)_1^2 + (F^T x1)_2^2)``
    approximates the smallest squared 2D displacement (summed over both images) that makes the
    pair satisfy the epipolar constraint. Returns ``d`` (``d^2`` with ``squared=True``) in the
    units of the points: pixels for a pixel F, normalised units for an E with normalised points.
    """
    residual, Fx0, Ftx1 = _epipolar_terms(points0, points1, F)
    denom = Fx0[..., 0] ** 2 + Fx0[..., 1] ** 2 + Ftx1[..., 0] ** 2 + Ftx1[..., 1] ** 2
    d2 = residual ** 2 / denom.clamp(min=torch.finfo(denom.dtype).tiny)
    return d2 if squared else d2.sqrt()


@numpy_compat()
def sym_epipolar_distance(points0: ArrayLike, points1: ArrayLike, F: ArrayLike, squared: bool = True) -> ArrayLike:
    """Symmetric epipolar distance (..., N) as SuperGlue / Glue Factory compute it.

    ``squared=True``: ``r^2 (1/|(F x0)_12|^2 + 1/|(F^T x1)_12|^2)``, the sum of the squared
    point-to-epipolar-line distances in both images (SuperGlue's ``compute_epipolar_error``;
    with E and normalised points this is the quantity thresholded at 1e-4 / 5e-4 / 1e-3).
    ``squared=False``: the mean of the two (unsquared) point-to-line distances.
    """
    residual, Fx0, Ftx1 = _epipolar_terms(points0, points1, F)
    tiny = torch.finfo(residual.dtype).tiny
    n1 = (Fx0[..., 0] ** 2 + Fx0[..., 1] ** 2).clamp(min=tiny)
    n0 = (Ftx1[..., 0] ** 2 + Ftx1[..., 1] ** 2).clamp(min=tiny)
    if squared:
        return residual ** 2 * (1.0 / n1 + 1.0 / n0)
    return 0.5 * residual.abs() * (1.0 / n1.sqrt() + 1.0 / n0.sqrt())


@numpy_compat()
def angle_error_mat(R1: ArrayLike, R2: ArrayLike) -> ArrayLike:
    """Angle in degrees (...) of the rotation ``R1^T R2``."""
    R2 = R2.to(R1.dtype)
    cos = ((R1.transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


@numpy_compat()
def angle_error_vec(v1: ArrayLike, v2: ArrayLike, eps: float = 1e-15) -> ArrayLike:
    """Angle in degrees (...) between vectors (..., D); 90 if either vector is zero."""
    v2 = v2.to(v1.dtype)
    n = (v1.norm(dim=-1) * v2.norm(dim=-1)).clamp(min=eps)
    return torch.rad2deg(torch.acos(((v1 * v2).sum(-1) / n).clamp(-1.0, 1.0)))


@numpy_compat()
def relative_pose_error(T_gt: ArrayLike, R: ArrayLike, t: ArrayLike,
                        ignore_gt_t_thr: float = 0.0) -> tuple[ArrayLike, ArrayLike]:
    """``(rotation error, translation-direction error)`` in degrees, as Glue Factory.

    The translation error is the angle between ``t`` and the true translation, folded as
    ``min(angle, 180 - angle)`` because an essential matrix does not fix the sign of t. If
    the true baseline is shorter than ``ignore_gt_t_thr`` the translation error is 0 (pure
    rotation). Note the order: Glue Factory's ``relative_pose_error`` returns (t, R); this
    one returns (R, t). Evaluation usually reports ``max`` of the two as the pose error.
    """
    R_gt, t_gt = T_gt[..., :3, :3], T_gt[..., :3, 3]
    t_err = angle_error_vec(t, t_gt)
    t_err = torch.minimum(t_err, 180.0 - t_err)
    t_err = torch.where(t_gt.norm(dim=-1) < ignore_gt_t_thr, torch.zeros_like(t_err), t_err)
    r_err = angle_error_mat(R, R_gt)
    return r_err, t_err
