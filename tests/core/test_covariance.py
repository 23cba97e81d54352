"""Pose covariances from residuals: Jacobians against finite differences, and the predicted
covariance against the spread of real estimates on noisy matches (Monte Carlo)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from featmatch_core.estimators import get_estimator
from featmatch_core.geometry.covariance import (
    compose_covariance,
    covariance_from_residuals,
    covariance_of_inverse,
    epipolar_jacobian,
    reprojection_jacobian,
)

K = np.array([[400.0, 0, 320], [0, 400, 240], [0, 0, 1]])


def _pose(rotvec, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rotation.from_rotvec(rotvec).as_matrix(), t
    return T


def _perturbed(T, delta):
    """``exp(delta) T``: X1' = exp([phi]x) X1 + rho."""
    P = _pose(delta[3:], delta[:3])
    return P @ T


def _delta_between(T_est, T_true):
    """The ``delta`` with ``T_est = exp(delta) T_true``."""
    D = T_est @ np.linalg.inv(T_true)
    return np.concatenate([D[:3, 3], Rotation.from_matrix(D[:3, :3]).as_rotvec()])


def _scene(num=120, seed=0):
    rng = np.random.default_rng(seed)
    T = _pose([0.02, -0.05, 0.01], [0.3, 0.05, 0.1])
    pixels = rng.uniform([0, 0], [640, 480], (num, 2))
    X0 = np.column_stack([(pixels - K[:2, 2]) / K[0, 0], np.ones(num)]) * rng.uniform(2, 6, (num, 1))
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    return T, X0, pixels, (X1 @ K.T)[:, :2] / X1[:, 2:]


def _numeric(residual_of, T, step=1e-6):
    columns = []
    for k in range(6):
        delta = np.zeros(6)
        delta[k] = step
        columns.append((residual_of(_perturbed(T, delta)) - residual_of(_perturbed(T, -delta))) / (2 * step))
    return np.stack(columns, -1)


def test_jacobians_match_finite_differences():
    T, X0, pts0, pts1 = _scene()
    noisy1 = pts1 + np.random.default_rng(1).normal(0, 0.5, pts1.shape)
    r, J = reprojection_jacobian(X0, noisy1, T, K)
    assert r.shape == (len(X0), 2) and J.shape == (len(X0), 2, 6)
    np.testing.assert_allclose(r, pts1 - noisy1, atol=1e-9)
    np.testing.assert_allclose(J, _numeric(lambda P: reprojection_jacobian(X0, noisy1, P, K)[0], T), atol=1e-4)
    unit = T.copy()
    unit[:3, 3] /= np.linalg.norm(unit[:3, 3])
    r, J = epipolar_jacobian(pts0, noisy1, unit, K, K)
    np.testing.assert_allclose(J, _numeric(lambda P: epipolar_jacobian(pts0, noisy1, P, K, K)[0], unit), atol=1e-4)
    assert np.abs(J @ np.r_[unit[:3, 3], 0, 0, 0]).max() < 1e-9  # the scale is not seen
    assert np.linalg.matrix_rank(J.T @ J) == 5


@pytest.mark.parametrize("model", ["absolute_pose", "relative_pose"])
def test_predicted_covariance_matches_the_spread_of_estimates(model):
    """On 0.7 px of noise, the normalised squared error of real estimates (poselib) against the
    covariance each predicts averages the degrees of freedom: 6 for PnP, 5 for a relative
    pose (the scale is not estimated)."""
    T, X0, pts0, pts1 = _scene()
    rng = np.random.default_rng(2)
    estimator = get_estimator(model, {"name": "poselib", "ransac_th": 4.0})
    unit = T.copy()
    unit[:3, 3] /= np.linalg.norm(unit[:3, 3])
    nees = []
    for _ in range(150):
        noisy1 = pts1 + rng.normal(0, 0.7, pts1.shape)
        if model == "absolute_pose":
            T_est = estimator({"m_points3d0": X0, "m_kpts1": noisy1, "camera1": K})["model"]
            covariance = covariance_from_residuals(*reprojection_jacobian(X0, noisy1, T_est, K)[::-1])
            error = _delta_between(T_est, T)
        else:
            noisy0 = pts0 + rng.normal(0, 0.7, pts0.shape)
            T_est = estimator({"m_kpts0": noisy0, "m_kpts1": noisy1, "camera0": K, "camera1": K})["model"]
            covariance = covariance_from_residuals(*epipolar_jacobian(noisy0, noisy1, T_est, K, K)[::-1])
            error = _delta_between(T_est, unit)
        nees.append(error @ np.linalg.pinv(covariance, hermitian=True) @ error)
    dof = 6 if model == "absolute_pose" else 5
    assert np.mean(nees) == pytest.approx(dof, rel=0.3)


def _sampled(T, covariance, num, rng):
    """Poses ``exp(delta) T`` with delta ~ N(0, covariance), ROS convention (position in the
    parent frame, rotation about the parent's axes)."""
    deltas = rng.multivariate_normal(np.zeros(6), covariance, num)
    out = np.repeat(T[None], num, 0)
    out[:, :3, :3] = Rotation.from_rotvec(deltas[:, 3:]).as_matrix() @ T[:3, :3]
    out[:, :3, 3] += deltas[:, :3]
    return out


def _ros_deltas(samples, T):
    position = samples[:, :3, 3] - T[:3, 3]
    rotation = Rotation.from_matrix(samples[:, :3, :3] @ T[:3, :3].T).as_rotvec()
    return np.hstack([position, rotation])


def test_composition_and_inversion_carry_the_covariance():
    rng = np.random.default_rng(3)
    T_a, T_b = _pose([0.3, -0.2, 0.5], [1.0, 2.0, 0.5]), _pose([-0.1, 0.4, 0.2], [0.5, -0.3, 2.0])
    A = rng.normal(size=(6, 6))
    cov_a = 1e-4 * (A @ A.T + np.eye(6))
    B = rng.normal(size=(6, 6))
    cov_b = 1e-4 * (B @ B.T + np.eye(6))
    num = 40000
    composed = _sampled(T_a, cov_a, num, rng) @ _sampled(T_b, cov_b, num, rng)
    empirical = np.cov(_ros_deltas(composed, T_a @ T_b).T)
    predicted = compose_covariance(T_a, cov_a, T_b, cov_b)
    np.testing.assert_allclose(empirical, predicted, atol=0.05 * np.abs(predicted).max())
    # delta on the left of T_0to1, in camera 1 -> ROS covariance of inv(T_0to1)
    perturbed = np.stack([_perturbed(T_b, d) for d in rng.multivariate_normal(np.zeros(6), cov_b, 20000)])
    empirical = np.cov(_ros_deltas(np.linalg.inv(perturbed), np.linalg.inv(T_b)).T)
    predicted = covariance_of_inverse(cov_b, T_b)
    np.testing.assert_allclose(empirical, predicted, atol=0.05 * np.abs(predicted).max())


def test_covariance_from_residuals_checks_its_input():
    with pytest.raises(ValueError, match="3 Jacobian rows for 4 residuals"):
        covariance_from_residuals(np.zeros((3, 6)), np.zeros(4))
