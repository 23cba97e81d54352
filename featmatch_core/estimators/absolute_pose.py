"""Robust absolute pose (PnP): camera 1's pose from 3D points known in camera 0's frame.

The use is two-view: with a depth image of image 0, a match lifts to a 3D point of camera 0
and the pose of camera 1 comes from those points and their pixels in image 1. Unlike the
essential matrix it is metric, and it stays well posed where the essential matrix is not: a
planar scene (a wall, a floor, a table top) and a rotation without translation.

Input ``m_points3d0`` (K, 3) in camera 0's frame, ``m_kpts1`` (K, 2) pixels of image 1,
``camera1`` its 3x3 K. The model is the 4x4 ``T_0to1`` (``X1 = R X0 + t``), metric;
``ransac_th`` is the reprojection error in image 1, in pixels, for every back end:

- opencv: solvePnPRansac (P3P samples; EPnP on the inliers), then solvePnPRefineLM on the
  inliers; inliers recounted with the refined pose.
- poselib: estimate_absolute_pose (LO-RANSAC + non-linear refinement), PINHOLE camera from K.
- pycolmap: estimate_and_refine_absolute_pose (LO-RANSAC + refinement), PINHOLE camera from K.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np

from . import BaseEstimator, as_matrix
from .homography import poselib_ransac_options, pycolmap_ransac_options
from .relative_pose import pinhole_dict, pose_matrix


def reprojection_errors(points3d0: np.ndarray, points1: np.ndarray, T_0to1: np.ndarray, K1: np.ndarray) -> np.ndarray:
    """Pixel distance between ``points1`` and the projections of ``points3d0`` by ``T_0to1`` and
    ``K1``; infinite for points that land behind camera 1."""
    X1 = points3d0 @ T_0to1[:3, :3].T + T_0to1[:3, 3]
    in_front = X1[:, 2] > 1e-9
    projected = X1[:, :2] / np.where(in_front, X1[:, 2], 1.0)[:, None] @ K1[:2, :2].T + K1[:2, 2]
    return np.where(in_front, np.linalg.norm(projected - points1, axis=1), np.inf)


class AbsolutePoseEstimator(BaseEstimator):
    kind = "absolute_pose"
    min_points = 4  # a P3P sample and one point to choose among its solutions
    sample_size = 3  # P3P
    model_shape = (4, 4)
    point_inputs = (("m_points3d0", 3), ("m_kpts1", 2))
    default_conf: ClassVar[dict[str, Any]] = {**BaseEstimator.default_conf, "ransac_th": 2.0}

    def _prepare(self, data):
        if "camera1" not in data:
            raise KeyError(f"absolute_pose estimator needs 'camera1' (3x3 K) in its input, got keys {sorted(data)}")
        K1 = as_matrix(data["camera1"], "camera1")
        if K1[0, 0] <= 0 or K1[1, 1] <= 0 or abs(np.linalg.det(K1)) < 1e-12:
            raise ValueError(f"'camera1' is not a valid intrinsics matrix: {K1}")
        return {"K1": K1}

    def _finalize(self, model):
        R = model[:3, :3]
        if not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
            return None
        return model


class OpenCVAbsolutePose(AbsolutePoseEstimator):
    """cv2.solvePnPRansac + cv2.solvePnPRefineLM on the inliers."""

    default_conf: ClassVar[dict[str, Any]] = {**AbsolutePoseEstimator.default_conf, "name": "opencv"}
    backend_errors = AbsolutePoseEstimator.backend_errors + (cv2.error,)

    def _estimate(self, points3d0, points1, extra):
        K1 = extra["K1"]
        found, rvec, tvec, inliers = cv2.solvePnPRansac(
            points3d0, points1, K1, None, iterationsCount=self.ransac_limits(extra)[1],
            reprojectionError=float(self.conf.ransac_th), confidence=float(self.conf.confidence),
            flags=cv2.SOLVEPNP_AP3P)
        if not found or inliers is None or len(inliers) < self.min_points:
            return None
        index = inliers.ravel()
        rvec, tvec = cv2.solvePnPRefineLM(points3d0[index], points1[index], K1, None, rvec, tvec)
        T = pose_matrix(cv2.Rodrigues(rvec)[0], tvec)
        return T, reprojection_errors(points3d0, points1, T, K1) <= self.conf.ransac_th


class PoselibAbsolutePose(AbsolutePoseEstimator):
    """poselib.estimate_absolute_pose (LO-RANSAC + non-linear refinement)."""

    default_conf: ClassVar[dict[str, Any]] = {**AbsolutePoseEstimator.default_conf, "name": "poselib"}

    def _estimate(self, points3d0, points1, extra):
        import poselib

        pose, info = poselib.estimate_absolute_pose(
            points1, points3d0, pinhole_dict(extra["K1"]),
            poselib_ransac_options(self.conf, "max_reproj_error", self.ransac_limits(extra)), {})
        if not info.get("num_inliers"):
            return None
        return pose_matrix(pose.R, pose.t), info.get("inliers")


class PycolmapAbsolutePose(AbsolutePoseEstimator):
    """pycolmap.estimate_and_refine_absolute_pose (LO-RANSAC + refinement)."""

    default_conf: ClassVar[dict[str, Any]] = {**AbsolutePoseEstimator.default_conf, "name": "pycolmap"}

    def _estimate(self, points3d0, points1, extra):
        import pycolmap

        options = pycolmap.AbsolutePoseEstimationOptions()
        options.ransac = pycolmap_ransac_options(self.conf, self.ransac_limits(extra))
        result = pycolmap.estimate_and_refine_absolute_pose(
            points1, points3d0, pycolmap.Camera(pinhole_dict(extra["K1"])), options)
        if result is None:
            return None
        pose = result["cam_from_world"]
        return pose_matrix(pose.rotation.matrix(), pose.translation), result["inlier_mask"]
