"""First-order covariance of an estimated pose from its residuals: ``sigma^2 (J^T J)^+``.

Convention: a pose ``T_0to1`` (``X1 = R X0 + t``) is perturbed on the left, in camera 1:
``X1' = exp([phi]x) X1 + rho`` with ``delta = (rho, phi)``, translation first as ROS orders a
pose's covariance. A covariance of ``delta`` becomes the covariance that ROS publishes for the
inverse pose (camera 1 in camera 0: position in camera 0, rotation about camera 0's axes)
through ``covariance_of_inverse``.

The residual noise ``sigma^2`` is estimated from the residuals themselves (their sum of
squares over the degrees of freedom left), so a noisier image or a worse model widens the
covariance. Numpy in, numpy out.
"""

from __future__ import annotations

import numpy as np

# Numpy here, beside the torch helpers of ``epipolar`` (``skew``, ``essential_from_pose``,
# ``fundamental_from_pose``), on purpose: this runs on every tracked frame, and calling those
# through their numpy wrapper took a pose's covariance from 0.33-0.45 to 0.56-1.0 ms (790 inliers).

_GENERATORS = np.array([
    [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
    [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
    [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
], dtype=np.float64)  # the cross-product matrices of the unit vectors: [e_k]x


def _cross_matrix(v: np.ndarray) -> np.ndarray:
    return np.tensordot(np.asarray(v, np.float64), _GENERATORS, axes=(-1, 0))


def reprojection_jacobian(
    points3d0: np.ndarray, points1: np.ndarray, T_0to1: np.ndarray, K1: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (N, 2) ``project(X1) - x1`` in pixels and their Jacobian (N, 2, 6) with
    respect to ``delta``, for 3D points of camera 0 seen at pixels ``points1`` of camera 1."""
    X1 = np.asarray(points3d0, np.float64) @ T_0to1[:3, :3].T + T_0to1[:3, 3]
    x, y, z = X1.T
    fx, fy, cx, cy = K1[0, 0], K1[1, 1], K1[0, 2], K1[1, 2]
    residuals = np.column_stack([fx * x / z + cx, fy * y / z + cy]) - points1
    # d pixel / d X1 times d X1 / d delta = [I, -[X1]x], written out in the normalised
    # coordinates (xn, yn) = (x, y) / z
    xn, yn, inv_z = x / z, y / z, 1.0 / z
    jacobian = np.zeros((len(X1), 2, 6))
    jacobian[:, 0, 0], jacobian[:, 0, 2] = fx * inv_z, -fx * xn * inv_z
    jacobian[:, 0, 3], jacobian[:, 0, 4], jacobian[:, 0, 5] = -fx * xn * yn, fx * (1 + xn**2), -fx * yn
    jacobian[:, 1, 1], jacobian[:, 1, 2] = fy * inv_z, -fy * yn * inv_z
    jacobian[:, 1, 3], jacobian[:, 1, 4], jacobian[:, 1, 5] = -fy * (1 + yn**2), fy * xn * yn, fy * xn
    return residuals, jacobian


def epipolar_jacobian(
    points0: np.ndarray, points1: np.ndarray, T_0to1: np.ndarray, K0: np.ndarray, K1: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Signed Sampson distances (N,) in pixels of the matches to the pose's epipolar geometry and
    their Jacobian (N, 6) with respect to ``delta``.

    Under ``delta`` the essential matrix ``E = [t]x R`` moves by ``[rho]x R + [phi]x E`` (first
    order), so each column is the derivative of ``e / sqrt(a)`` (``e = x1^T F x0``, ``a`` the
    squared norms of the two epipolar lines' normals) along one such ``dF``. The residual does
    not change with the length of t: the Jacobian has rank 5 at most, and its null space is the
    translation's direction (the scale of a two-view pose)."""
    R, t = T_0to1[:3, :3], T_0to1[:3, 3]
    K0_inv, K1_inv = np.linalg.inv(K0), np.linalg.inv(K1)
    E = _cross_matrix(t) @ R
    F = K1_inv.T @ E @ K0_inv
    dF = K1_inv.T @ np.concatenate([_GENERATORS @ R, _GENERATORS @ E]) @ K0_inv  # (6, 3, 3)
    x0 = np.column_stack([points0, np.ones(len(points0))])
    x1 = np.column_stack([points1, np.ones(len(points1))])
    line1, line0 = F @ x0.T, F.T @ x1.T  # (3, N): F x0 (lines in image 1), F^T x1 (lines in image 0)
    e = (x1.T * line1).sum(0)
    a = line1[0] ** 2 + line1[1] ** 2 + line0[0] ** 2 + line0[1] ** 2
    d_line1, d_line0 = dF @ x0.T, dF.transpose(0, 2, 1) @ x1.T  # (6, 3, N)
    d_e = (x1.T * d_line1).sum(1)  # (6, N)
    d_a = 2 * ((line1[:2] * d_line1[:, :2]).sum(1) + (line0[:2] * d_line0[:, :2]).sum(1))
    root = np.sqrt(np.maximum(a, 1e-300))
    return e / root, (d_e / root - e / (2 * root**3) * d_a).T


def covariance_from_residuals(jacobian: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """``sigma^2 (J^T J)^+`` (P, P) for a Jacobian (M, P) of residuals (M,) (or (N, 2, P) of
    (N, 2)); ``sigma^2`` is their sum of squares over M minus the rank of ``J``. Directions that
    the residuals do not see (the scale of a two-view pose) get no variance: add it from what
    sets them."""
    jacobian = np.asarray(jacobian, np.float64)
    J = jacobian.reshape(-1, jacobian.shape[-1])
    r = np.asarray(residuals, np.float64).reshape(-1)
    if len(J) != len(r):
        raise ValueError(f"covariance_from_residuals: {len(J)} Jacobian rows for {len(r)} residuals")
    # one eigendecomposition for both the rank and the pseudo-inverse (numpy's matrix_rank and
    # pinv would take one each), with their tolerance: size x eps x the largest eigenvalue
    values, vectors = np.linalg.eigh(J.T @ J)
    kept = np.abs(values) > len(values) * np.finfo(np.float64).eps * max(np.abs(values).max(initial=0.0), 1e-300)
    sigma2 = float(r @ r) / max(len(r) - int(kept.sum()), 1)
    return sigma2 * (vectors[:, kept] / values[kept]) @ vectors[:, kept].T


def covariance_of_inverse(covariance: np.ndarray, T_0to1: np.ndarray) -> np.ndarray:
    """The covariance (6, 6) of ``inv(T_0to1)`` (camera 1 in camera 0: its position in camera
    0 and its rotation about camera 0's axes, as ROS's PoseWithCovariance has it) from that of
    ``delta``: inverting the pose turns ``delta`` by ``R^T`` (and flips its sign)."""
    R_inv = T_0to1[:3, :3].T
    B = np.zeros((6, 6))
    B[:3, :3] = B[3:, 3:] = R_inv
    return B @ covariance @ B.T


def compose_covariance(
    T_a: np.ndarray, covariance_a: np.ndarray, T_b: np.ndarray, covariance_b: np.ndarray
) -> np.ndarray:
    """The covariance of ``T_a @ T_b`` from the independent covariances of ``T_a`` (in its
    parent frame) and ``T_b`` (in ``T_a``'s child frame), all as ROS has them (position in the
    parent frame, rotation about the parent's axes)."""
    R_a = T_a[:3, :3]
    J_a = np.eye(6)
    J_a[:3, 3:] = -_cross_matrix(R_a @ T_b[:3, 3])  # a turn of T_a swings T_b's offset
    J_b = np.zeros((6, 6))
    J_b[:3, :3] = J_b[3:, 3:] = R_a
    return J_a @ covariance_a @ J_a.T + J_b @ covariance_b @ J_b.T
