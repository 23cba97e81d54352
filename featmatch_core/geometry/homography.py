"""Homographies: point transfer, corner error (HPatches), a differentiable weighted DLT and the
symmetric transfer error.

Convention: ``H_0to1`` maps pixels of image 0 to image 1, ``x1 ~ H x0``, pixel centres at
integer coordinates (OpenCV). Every function takes numpy or torch and batches over leading
dimensions: points (..., N, 2), homographies (..., 3, 3).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .utils import ArrayLike, numpy_compat, to_homogeneous, to_numpy


def warp_points(points: ArrayLike, H: ArrayLike) -> ArrayLike:
    """Map (..., N, 2) pixel coordinates with (..., 3, 3) homographies ``x' ~ H x``.

    numpy in -> float64 numpy out; torch in -> torch out (dtype/device of ``points``).
    """
    if isinstance(points, torch.Tensor):
        H = torch.as_tensor(H, dtype=points.dtype, device=points.device)
        homog = torch.cat([points, torch.ones_like(points[..., :1])], -1)
        warped = homog @ H.transpose(-1, -2)
        return warped[..., :2] / warped[..., 2:]
    points = np.asarray(points, dtype=np.float64)
    H = np.asarray(to_numpy(H), dtype=np.float64)
    homog = np.concatenate([points, np.ones_like(points[..., :1])], -1)
    warped = homog @ np.swapaxes(H, -1, -2)
    return warped[..., :2] / warped[..., 2:]


def image_corners(size: tuple[int, int]) -> np.ndarray:
    """Corners of a (W, H) image, pixel-centre convention as the HPatches evaluation uses."""
    w, h = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def corner_error(H_est: ArrayLike, H_gt: ArrayLike, size: tuple[int, int]) -> float:
    """Mean distance between the four image corners warped by the estimate and the truth.

    ``size`` is (W, H) of image 0; the result is in pixels of image 1.
    """
    corners = image_corners(size)
    est = warp_points(corners, np.asarray(to_numpy(H_est), dtype=np.float64))
    gt = warp_points(corners, np.asarray(to_numpy(H_gt), dtype=np.float64))
    return float(np.linalg.norm(est - gt, axis=-1).mean())


def normalization_transform(points: torch.Tensor, weights: torch.Tensor | None = None,
                            eps: float = 1e-12) -> torch.Tensor:
    """Hartley normalisation (..., 3, 3): weighted centroid to the origin, RMS distance sqrt(2).

    With weights, the centroid and spread are weighted, so zero-weight outliers do not
    affect the conditioning. Smooth in the inputs (RMS rather than mean distance).
    """
    if weights is None:
        weights = torch.ones_like(points[..., 0])
    wsum = weights.sum(-1, keepdim=True).clamp(min=eps)
    mean = (weights[..., None] * points).sum(-2) / wsum
    sq = ((points - mean[..., None, :]) ** 2).sum(-1)
    rms = ((weights * sq).sum(-1, keepdim=True) / wsum).clamp(min=eps).sqrt()
    scale = (2.0 ** 0.5) / rms[..., 0]
    T = torch.zeros(points.shape[:-2] + (3, 3), dtype=points.dtype, device=points.device)
    T[..., 0, 0] = scale
    T[..., 1, 1] = scale
    T[..., 0, 2] = -scale * mean[..., 0]
    T[..., 1, 2] = -scale * mean[..., 1]
    T[..., 2, 2] = 1.0
    return T


def homography_dlt(points0: ArrayLike, points1: ArrayLike, weights: ArrayLike | None = None) -> torch.Tensor:
    """Weighted, differentiable, normalised DLT: ``H`` with ``points1 ~ H points0``.

    Args:
        points0, points1: (N, 2) or (B, N, 2), N >= 4 (numpy is accepted and becomes torch).
        weights: optional (N,) or (B, N) non-negative weights; a zero weight removes a point.

    Returns:
        (3, 3) or (B, 3, 3) torch tensor in the dtype of ``points0``, scaled so that
        H[2, 2] = 1 (Frobenius norm 1 when H[2, 2] is ~0).

    The points are Hartley-normalised (weighted), the 2N x 9 DLT system A is weighted per
    point, and h minimises sum_i w_i ||A_i h||^2 over ||h|| = 1: the eigenvector of the
    smallest eigenvalue of the 9x9 normal matrix A^T W A (the same vector as the last right
    singular vector of sqrt(W) A). The symmetric eigendecomposition is used instead of the SVD
    of sqrt(W) A because sqrt has an infinite derivative at w = 0, which would turn the
    gradients of zero-weight points into NaN. Computed in float64 internally. With fewer than
    4 points of positive weight or a degenerate configuration the result is arbitrary (but
    no exception is raised): check residuals, or use the robust estimators.
    """
    p0 = torch.as_tensor(points0)
    dtype = p0.dtype if p0.is_floating_point() else torch.float32
    p0 = p0.to(torch.float64)
    p1 = torch.as_tensor(points1, device=p0.device).to(torch.float64)
    unbatched = p0.dim() == 2
    if unbatched:
        p0, p1 = p0[None], p1[None]
    if weights is None:
        w = torch.ones_like(p0[..., 0])
    else:
        w = torch.as_tensor(weights, device=p0.device).to(torch.float64)
        w = w[None] if unbatched else w
        w = w.expand(p0.shape[:-1])
    T0 = normalization_transform(p0, w)
    T1 = normalization_transform(p1, w)
    n0 = to_homogeneous(p0) @ T0.transpose(-1, -2)
    n1 = to_homogeneous(p1) @ T1.transpose(-1, -2)
    x, y = n0[..., 0], n0[..., 1]
    u, v = n1[..., 0], n1[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    row_u = torch.stack([-x, -y, -ones, zeros, zeros, zeros, u * x, u * y, u], -1)
    row_v = torch.stack([zeros, zeros, zeros, -x, -y, -ones, v * x, v * y, v], -1)
    M = (row_u.transpose(-1, -2) * w[..., None, :]) @ row_u + (row_v.transpose(-1, -2) * w[..., None, :]) @ row_v
    M = 0.5 * (M + M.transpose(-1, -2))
    _, vectors = torch.linalg.eigh(M)
    Hn = vectors[..., 0].reshape(vectors.shape[:-2] + (3, 3))
    # undo the normalisation: H = T1^-1 Hn T0, with T1^-1 written out (T1 is a similarity)
    s1 = T1[..., 0, 0]
    c1 = -T1[..., :2, 2] / s1[..., None]  # the centroid
    T1_inv = torch.zeros_like(T1)
    T1_inv[..., 0, 0] = 1.0 / s1
    T1_inv[..., 1, 1] = 1.0 / s1
    T1_inv[..., :2, 2] = c1
    T1_inv[..., 2, 2] = 1.0
    H = T1_inv @ Hn @ T0
    h22 = H[..., 2:3, 2:3]
    frob = torch.linalg.matrix_norm(H)[..., None, None]
    H = torch.where(h22.abs() > 1e-8 * frob, H / torch.where(h22.abs() > 0, h22, torch.ones_like(h22)), H / frob)
    H = H.to(dtype)
    return H[0] if unbatched else H


@numpy_compat()
def sym_transfer_error(points0: ArrayLike, points1: ArrayLike, H: ArrayLike) -> ArrayLike:
    """Symmetric transfer error (..., N) in pixels, as Glue Factory's ``sym_homography_error``:

    ``0.5 * (||H x0 - x1|| + ||H^-1 x1 - x0||)`` — the mean of the two one-way Euclidean
    distances (not squared).
    """
    H = H.to(points0.dtype)
    forward = warp_points(points0, H)
    backward = warp_points(points1, torch.linalg.inv(H))
    return 0.5 * ((forward - points1).norm(dim=-1) + (backward - points0).norm(dim=-1))


def poses_from_homography(
    H: np.ndarray, K0: np.ndarray, K1: np.ndarray, points0: np.ndarray, points1: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The relative poses a homography between two calibrated views of a plane allows.

    ``H`` maps pixels of image 0 to image 1; ``points0`` / ``points1`` (N, 2) are pixels of the
    plane seen in both (the homography's inliers). The decomposition (Malis and Vargas, via
    OpenCV) has four solutions; those that put every point in front of both cameras are kept:
    two in general, one when the translation is along the plane's normal. They are the planar
    twins: both explain every match on the plane exactly, so only matches off the plane, a
    third view or a motion prior can tell them apart.

    Returns ``(T_0to1, normal)`` pairs: 4x4 ``X1 = R X0 + t`` with unit-norm t, and the plane's
    unit normal in camera 0, pointing away from it. A homography of a pure rotation (within
    OpenCV's tolerance: also a translation too small against the depth) gives one pose: the
    rotation that best maps the points' bearings (``rotation_from_bearings``), with zero
    translation and a zero normal.
    """
    H = np.asarray(H, np.float64)
    if H.shape != (3, 3) or not np.isfinite(H).all():
        raise ValueError(f"poses_from_homography: H must be a finite 3x3 matrix, got shape {H.shape}")
    K0, K1 = np.asarray(K0, np.float64), np.asarray(K1, np.float64)
    # the Euclidean homography of normalised coordinates, decomposed with an identity camera
    H_norm = np.linalg.inv(K1) @ H @ K0
    _, rotations, translations, normals = cv2.decomposeHomographyMat(H_norm, np.eye(3))
    x0 = np.hstack([np.asarray(points0, np.float64), np.ones((len(points0), 1))]) @ np.linalg.inv(K0).T
    x1 = np.hstack([np.asarray(points1, np.float64), np.ones((len(points1), 1))]) @ np.linalg.inv(K1).T
    if not np.any(translations[0]):
        # a rotation (OpenCV's one solution, with no translation and no plane): nothing to filter,
        # and the rotation fitted to the points (3 degrees of freedom) beats the homography's (8)
        T = np.eye(4)
        T[:3, :3] = rotation_from_bearings(x0, x1) if len(x0) >= 2 else rotations[0]
        return [(T, np.zeros(3))]
    visible = cv2.filterHomographyDecompByVisibleRefpoints(
        rotations, normals, x0[:, None, :2].astype(np.float32), x1[:, None, :2].astype(np.float32)
    )
    poses = []
    for i in np.asarray(visible if visible is not None else [], int).reshape(-1):
        t = translations[i].reshape(3)
        norm = np.linalg.norm(t)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = rotations[i], t / norm if norm > 1e-12 else 0.0
        poses.append((T, normals[i].reshape(3)))
    return poses


def rotation_from_bearings(bearings0: np.ndarray, bearings1: np.ndarray) -> np.ndarray:
    """The rotation R (3, 3) that minimises ``sum |b1 - R b0|^2`` over the bearings (N, 3) of
    the same points from one camera centre (normalised here): Kabsch without centring, since
    the camera turns about its centre."""
    b0 = np.asarray(bearings0, np.float64)
    b1 = np.asarray(bearings1, np.float64)
    b0 = b0 / np.linalg.norm(b0, axis=1, keepdims=True)
    b1 = b1 / np.linalg.norm(b1, axis=1, keepdims=True)
    U, _, Vt = np.linalg.svd(b1.T @ b0)
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])  # a rotation, not a reflection
    return U @ flip @ Vt
