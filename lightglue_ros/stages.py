"""The stages a frame goes through, as small functions over plain data (numpy, dataclasses).

    decode_image / check_stamp / CalibrationCache / decode_depth    (prepare: cheap, in order)
    -> extract (the matcher's FeatureStream)                          (heavy, no per-stream state)
    -> match -> undistort -> estimate_relative_pose -> scale_and_structure
    -> next_reference (keyframe decision) -> Odometry.chain           (track: in order, stateful)

``FrameMatcher`` and ``StereoMatcher`` (``frame_matcher``) are these stages in sequence; the
ROS messages are built from their result in one place (``messages``). Extraction needs only the
decoded image, so frame n+1 can be extracted while frame n is matched and estimated: the
stages before and after it are the only ones that read or change the stream's state.

A stage that finds bad input raises ``Rejected(reason, message)`` (reasons: ``problems``); the
caller counts it and skips the frame, or the part of it (a depth image), and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import cv2
import numpy as np

from featmatch_core.estimators import get_estimator
from featmatch_core.geometry.covariance import (
    compose_covariance,
    covariance_from_residuals,
    covariance_of_inverse,
    epipolar_jacobian,
    reprojection_jacobian,
)
from featmatch_core.geometry.depth import image_to_camera, invert_transform, sample_depth
from featmatch_core.geometry.epipolar import fundamental_from_pose, sampson_error
from featmatch_core.geometry.homography import poses_from_homography, rotation_from_bearings, warp_points
from featmatch_core.geometry.triangulation import triangulate_dlt

from . import conversions as cv
from . import problems

# optical frame (x right, y down, z forward) -> REP 103 body (x forward, y left, z up)
T_BODY_OPTICAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


class Rejected(Exception):
    """Input a stage cannot use; ``reason`` is one of ``problems.REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------
# prepare: decode, stamps, calibration, depth
# ---------------------------------------------------------------------------------------
@dataclass
class DecodedImage:
    matcher: np.ndarray  # what the extractor takes: gray or RGB, uint8 / uint16 / float32
    display: np.ndarray  # uint8 gray or RGB, for the debug image


def decode_image(msg: Any) -> DecodedImage:
    """``sensor_msgs/Image`` -> the matcher's and the display's arrays; ``Rejected`` if unusable."""
    try:
        array = cv.image_to_numpy(msg)
        return DecodedImage(cv.to_matcher_image(array, msg.encoding), cv.to_display(array, msg.encoding))
    except (cv.ImageConversionError, ValueError, TypeError, AttributeError, cv2.error) as err:
        raise Rejected(problems.BAD_ENCODING, f"bad image: {err}") from None


def decode_depth(msg: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    """Depth image -> float32 metres of the image's size; ``Rejected`` (bad_depth) otherwise."""
    try:
        depth = cv.depth_to_metres(cv.image_to_numpy(msg), msg.encoding)
    except (cv.ImageConversionError, ValueError, TypeError, AttributeError) as err:
        raise Rejected(problems.BAD_DEPTH, f"depth image ignored: {err}") from None
    if depth.shape != tuple(image_shape[:2]):
        raise Rejected(
            problems.BAD_DEPTH, f"depth {depth.shape} and image {tuple(image_shape[:2])} differ in size: depth ignored"
        )
    return depth


@dataclass(frozen=True)
class StampCheck:
    """``use`` the frame, ``skip`` it, or ``reset`` the tracking and then use it as a first frame."""

    action: Literal["use", "skip", "reset"]
    reason: str | None = None
    message: str = ""


def check_stamp(stamp_ns: int, last_ns: int | None, max_gap_s: float) -> StampCheck:
    """Time checks against the previous frame's stamp.

    A zero stamp (a driver that does not stamp) cannot be put in order: skipped. The same stamp
    again: skipped. Time going back (a bag loop, a restarted clock) or moving on by more than
    ``max_gap_s`` (0: no limit): the reference frame and the odometry are restarted, because
    neither a pose nor a velocity can be chained across the jump.
    """
    if stamp_ns == 0:
        return StampCheck("skip", problems.TIME_JUMP, "zero stamp: the frame cannot be put in time order, skipped")
    if last_ns is None:
        return StampCheck("use")
    if stamp_ns == last_ns:
        return StampCheck("skip", problems.DUPLICATE_STAMP, "duplicate stamp, skipped")
    if stamp_ns < last_ns:
        return StampCheck(
            "reset",
            problems.TIME_JUMP,
            f"time went back ({last_ns / 1e9:.3f} -> {stamp_ns / 1e9:.3f} s): resetting the reference and the odometry",
        )
    gap_s = (stamp_ns - last_ns) / 1e9
    if max_gap_s > 0 and gap_s > max_gap_s:
        return StampCheck(
            "reset",
            problems.TIME_JUMP,
            f"time jumped {gap_s:.3f} s ahead (max_time_gap {max_gap_s:g} s): resetting the reference and the odometry",
        )
    return StampCheck("use")


@dataclass
class CalibrationLookup:
    calibration: cv.Calibration | None  # None: uncalibrated (no camera_info, K zero, or refused)
    problem: str = ""  # why it was refused or repaired; empty when fine
    changed: bool = False  # another camera_info than the previous frame's


class CalibrationCache:
    """Checks a camera_info once per change (drivers resend the same one with every frame)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._lookup = CalibrationLookup(None)

    @staticmethod
    def _key_of(msg: Any) -> tuple:
        if msg is None:
            return (None,)
        return (
            str(msg.distortion_model),
            np.asarray(msg.d, np.float64).tobytes(),
            np.asarray(msg.k, np.float64).tobytes(),
        )

    def lookup(self, msg: Any) -> CalibrationLookup:
        key = self._key_of(msg)
        if key == self._key:
            return CalibrationLookup(self._lookup.calibration, self._lookup.problem, changed=False)
        self._key = key
        try:
            calibration = cv.calibration_from_camera_info(msg)
            self._lookup = CalibrationLookup(calibration, calibration.note if calibration else "", True)
        except (cv.CalibrationError, ValueError, TypeError, AttributeError) as err:
            self._lookup = CalibrationLookup(None, f"camera_info refused ({err}): uncalibrated until a valid one", True)
        return self._lookup


# ---------------------------------------------------------------------------------------
# geometry: estimate, scale
# ---------------------------------------------------------------------------------------
def triangulate(x0: np.ndarray, x1: np.ndarray, T_0to1: np.ndarray) -> np.ndarray:
    """Points (K, 3) in camera 0 from normalised coordinates (K, 2) of both views; NaN behind a camera."""
    if not len(x0):
        return np.zeros((0, 3))
    X = np.full((len(x0), 3), np.nan)
    finite = np.isfinite(x0).all(1) & np.isfinite(x1).all(1)  # a NaN row would fail the whole batch
    if finite.any():
        P0 = np.hstack([np.eye(3), np.zeros((3, 1))])
        X[finite] = triangulate_dlt(x0[finite].astype(np.float64), x1[finite].astype(np.float64), P0, T_0to1[:3, :4])
    z1 = X @ T_0to1[:3, :3].T[:, 2] + T_0to1[2, 3]
    bad = ~np.isfinite(X).all(1) | (X[:, 2] <= 0) | (z1 <= 0)
    X[bad] = np.nan
    return X


def rotation_angle_deg(R: np.ndarray) -> float:
    return float(np.rad2deg(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


@dataclass
class PoseEstimate:
    inliers: np.ndarray  # (n,) bool
    T_0to1: np.ndarray | None = None  # calibrated and good enough: unit-norm translation, or metric
    model_fit: bool | None = None  # None: not attempted (too few matches)
    problem: str = ""  # why there is no pose; empty with a pose (or an uncalibrated model fit)
    too_few: bool = False  # the problem is a count below min_matches
    # "pnp", "essential", "planar" (a homography's decomposition), "rotation" (a homography with no
    # translation), or the uncalibrated model's kind
    model: str = ""
    twin: PoseEstimate | None = None  # planar: the other pose the plane allows, when the matches cannot tell them apart
    choice: str = ""  # planar: what chose between the twins (see ``planar_pose``)

    @property
    def metric(self) -> bool:
        """T_0to1 is metric: PnP on the reference frame's depth."""
        return self.model == "pnp"


@dataclass
class DepthPoints:
    """The reference frame's matched points lifted with its depth image."""

    xyz0: np.ndarray  # (n, 3) in the reference camera, metres; NaN where the depth is missing
    valid: np.ndarray  # (n,) bool: a positive, finite depth at the match's pixel


def bearings(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """The rays (x/z, y/z, 1) (N, 3) of undistorted pixels (N, 2)."""
    return np.hstack([image_to_camera(points, K), np.ones((len(points), 1))])


def lift_with_depth(und0: np.ndarray, pts0: np.ndarray, K: np.ndarray, depth: np.ndarray) -> DepthPoints:
    """3D points of the reference's matches: the depth at the raw pixel ``pts0`` (nearest; the
    depth image is registered to the raw image) along the undistorted ray of ``und0``."""
    measured = sample_depth(pts0, depth, mode="nearest")[0]
    valid = np.isfinite(measured) & (measured > 0)
    return DepthPoints(np.where(valid[:, None], bearings(und0, K) * measured[:, None], np.nan), valid)


@dataclass(frozen=True)
class PoseEstimators:
    """The robust estimators of a node's pose stage, configured from its parameters."""

    essential: Any  # relative_pose
    uncalibrated: Any  # the 'uncalibrated_model' (fundamental or homography)
    absolute: Any  # PnP on the reference's depth; None without 'pose_from_depth'
    homography: Any  # the plane check, its threshold the transfer one; None without 'planar_homography'


def pose_estimators(params: dict[str, Any]) -> PoseEstimators:
    """The estimators the node parameters ask for (``estimator``, ``ransac_*``, ``pose_from_depth``,
    ``planar_homography``, ``uncalibrated_model``)."""
    conf = {
        "name": params["estimator"],
        "ransac_th": params["ransac_threshold"],
        "confidence": params["ransac_confidence"],
        "min_iters": params["ransac_min_iterations"],
    }
    transfer = {**conf, "ransac_th": conf["ransac_th"] * TRANSFER_TH_FACTOR}
    return PoseEstimators(
        get_estimator("relative_pose", conf),
        get_estimator(params["uncalibrated_model"], conf),
        get_estimator("absolute_pose", conf) if params["pose_from_depth"] else None,
        get_estimator("homography", transfer) if params["planar_homography"] else None,
    )


def estimate_relative_pose(
    und0: np.ndarray,
    und1: np.ndarray,
    K: np.ndarray | None,
    estimator: Any,
    uncalibrated: Any,
    min_matches: int,
    ref_points: DepthPoints | None = None,
    absolute: Any = None,
    homography: Any = None,
) -> PoseEstimate:
    """Relative pose (calibrated) or a fundamental matrix / homography (uncalibrated) of
    undistorted matches; at least ``min_matches`` matches and inliers for a pose. With the
    reference's depth (``ref_points``) and a PnP estimator (``absolute``) the pose comes from
    PnP when enough matches have depth and PnP finds one; else from the essential matrix, or,
    given a homography estimator, from the homography when the scene is planar
    (``planar_pose``)."""
    n = len(und0)
    if n < min_matches:
        return PoseEstimate(
            np.zeros(n, bool), problem=f"too few matches ({n} < min_matches {min_matches})", too_few=True
        )
    if K is not None and ref_points is not None and absolute is not None:
        from_depth = pose_from_depth(und0, und1, K, ref_points, absolute, min_matches)
        if from_depth is not None:
            return from_depth
    if K is not None:
        est = estimator({"m_kpts0": und0, "m_kpts1": und1, "camera0": K, "camera1": K})
    else:
        est = uncalibrated({"m_kpts0": und0, "m_kpts1": und1})
    fitted = fitted_model(est, "essential" if K is not None else uncalibrated.kind, K is not None, min_matches)
    if K is not None and homography is not None:
        # tried after a failed essential matrix too: a plane is where that one fails
        return planar_pose(und0, und1, K, homography, fitted, min_matches, estimator.conf.ransac_th) or fitted
    return fitted


def fitted_model(est: dict[str, Any], model: str, calibrated: bool, min_matches: int) -> PoseEstimate:
    """An estimator's result as a ``PoseEstimate``: a pose (calibrated) when it succeeded with
    at least ``min_matches`` inliers, else why not."""
    inliers = np.asarray(est["inliers"], bool).reshape(-1)
    num_inliers = int(inliers.sum())
    if not est["success"]:
        return PoseEstimate(inliers, model_fit=False, problem="estimation failed", model=model)
    if num_inliers < min_matches:
        problem = f"too few inliers ({num_inliers} < min_matches {min_matches})"
        return PoseEstimate(inliers, model_fit=True, problem=problem, too_few=True, model=model)
    T_0to1 = np.asarray(est["model"], dtype=np.float64) if calibrated else None
    return PoseEstimate(inliers, T_0to1, model_fit=True, model=model)


# a transfer error (2D, both images' noise) against a Sampson distance (1D): the same share of
# true matches passes at sqrt(chi2_2(95 %) / chi2_1(95 %)) times the threshold (ORB-SLAM's rule)
TRANSFER_TH_FACTOR = float(np.sqrt(5.99 / 3.84))
ROTATION_INLIER_RATIO = 0.95  # of the homography's inliers: its 5 more degrees of freedom buy nothing
ROTATION_TRANSLATION_VARIANCE = 1.0  # per axis, m^2 (a unit^2 monocular): a rotation's translation is unseen
PLANAR_INLIER_RATIO = 0.8  # COLMAP's max_H_inlier_ratio: above it, a two-view geometry is planar or panoramic
PLANE_NEAR_MISS = 0.8  # a bounded plane search that found this share of the inliers needed searches on
PLANAR_MARGIN = 0.02  # a twin wins on the matches by more than this share of the plane's matches (and 5)


def planar_pose(
    und0: np.ndarray,
    und1: np.ndarray,
    K: np.ndarray,
    homography: Any,
    essential: PoseEstimate,
    min_matches: int,
    epipolar_th: float,
) -> PoseEstimate | None:
    """The pose from a homography when it explains at least ``PLANAR_INLIER_RATIO`` of the
    essential matrix's inliers, else None (keep the essential matrix). ``homography`` should
    threshold its transfer errors at ``TRANSFER_TH_FACTOR`` times ``epipolar_th``, the
    essential matrix's Sampson threshold, for the counts to compare.

    When a rotation alone (``rotation_fit``) explains nearly as many matches as the homography
    (``ROTATION_INLIER_RATIO`` of them), the translation is too small against the scene's depth
    to be seen (COLMAP's "panoramic"): the pose is that rotation, with zero translation (model
    ``rotation``), not a unit translation in the direction the essential matrix guessed, a
    step in a random direction.

    On a plane the essential matrix is ill-posed: the two poses that the plane allows (the
    twins of ``poses_from_homography``) explain every match on it alike, and RANSAC returns
    either, or a blend, from frame to frame (on the README's room, about half of the frames
    past the 20th are the wrong twin, 15 to 30 deg off). The homography's decomposition gives
    both. There is no ambiguity when only one of them has the points in front of both cameras,
    or when one fits more matches by more than ``PLANAR_MARGIN``, as points off the plane make
    it: the essential matrix, which fits those too, is then well posed and kept (None), or, if
    it failed, that pose is (``choice``: ``visibility``, ``matches``). Else the one closer to
    the essential matrix's pose is kept (``essential``), the other as ``twin`` for a motion
    prior (``prefer_motion``). Inliers: the matches within the Sampson threshold of the pose."""
    enough = max(min_matches, PLANAR_INLIER_RATIO * essential.inliers.sum())
    est = plane_search(und0, und1, homography, enough)
    on_plane = np.asarray(est["inliers"], bool).reshape(-1)
    if not est["success"] or on_plane.sum() < enough:
        return None
    turn = rotation_fit(und0, und1, K, on_plane, homography.conf.ransac_th)
    if turn.inliers.sum() >= max(enough, ROTATION_INLIER_RATIO * on_plane.sum()):
        return turn
    candidates = poses_from_homography(est["model"], K, K, und0[on_plane], und1[on_plane])
    if candidates and not candidates[0][0][:3, 3].any():
        return None  # a rotation by OpenCV's tolerance that the rotation's own fit does not confirm
    if not candidates or (len(candidates) == 1 and essential.T_0to1 is not None):
        # no twin: the essential matrix's own cheirality test rules it out as well, and its pose
        # also fits the matches off the plane
        return None
    poses_T = np.stack([T_0to1 for T_0to1, _ in candidates])
    errors = sampson_error(und0[None], und1[None], fundamental_from_pose(K, K, poses_T))  # all at once
    poses = [
        PoseEstimate(inliers, T_0to1, model_fit=True, model="planar")
        for T_0to1, inliers in zip(poses_T, np.nan_to_num(errors, nan=np.inf) <= epipolar_th, strict=True)
        if inliers.sum() >= min_matches
    ]
    if len(poses) <= 1:
        return replace(poses[0], choice="visibility" if len(candidates) == 1 else "matches") if poses else None
    poses.sort(key=lambda pose: -int(pose.inliers.sum()))
    best, second = poses[0], poses[1]
    if best.inliers.sum() - second.inliers.sum() > max(5, PLANAR_MARGIN * on_plane.sum()):
        # matches off the plane tell the twins apart: the essential matrix, which fits them too,
        # is well posed
        return None if essential.T_0to1 is not None else replace(best, choice="matches")
    if essential.T_0to1 is not None:
        best, second = sorted((best, second), key=lambda pose: pose_distance(pose.T_0to1, essential.T_0to1))
    return replace(best, choice="essential", twin=second)


def plane_search(und0: np.ndarray, und1: np.ndarray, homography: Any, enough: float) -> dict[str, Any]:
    """The homography with the most inliers, as far as it matters: one with fewer than
    ``enough`` is of no use, so RANSAC first stops after the trials that would find one with
    that many (``min_inlier_ratio``: a few dozen where the essential matrix fits most matches),
    not at max_iters on a scene with relief that has no such plane. Noise makes some
    all-inlier samples fit the plane poorly, so a near miss (``PLANE_NEAR_MISS`` of ``enough``)
    is searched again to the stopping rule's end."""
    data = {"m_kpts0": und0, "m_kpts1": und1}
    est = homography(data, min_inlier_ratio=enough / max(len(und0), 1))
    found = int(np.asarray(est["inliers"], bool).sum()) if est["success"] else 0
    if PLANE_NEAR_MISS * enough <= found < enough:
        est = homography(data)
    return est


def rotation_fit(
    und0: np.ndarray, und1: np.ndarray, K: np.ndarray, fit_to: np.ndarray, threshold: float
) -> PoseEstimate:
    """The rotation that best maps the bearings of the matches ``fit_to``
    (``rotation_from_bearings``), with the matches it transfers to within ``threshold`` pixels
    as inliers."""
    T_0to1 = np.eye(4)
    T_0to1[:3, :3] = rotation_from_bearings(bearings(und0[fit_to], K), bearings(und1[fit_to], K))
    transferred = warp_points(und0, K @ T_0to1[:3, :3] @ np.linalg.inv(K))
    inliers = np.linalg.norm(transferred - und1, axis=1) <= threshold
    return PoseEstimate(inliers, T_0to1, model_fit=True, model="rotation")


def motion_direction(T_0to1: np.ndarray) -> np.ndarray:
    """Unit direction of the camera's motion (its new centre, ``-R^T t``) in the old camera's frame."""
    centre = -T_0to1[:3, :3].T @ T_0to1[:3, 3]
    return centre / max(float(np.linalg.norm(centre)), 1e-12)


def pose_distance(T_a: np.ndarray, T_b: np.ndarray) -> float:
    """Rotation angle between two poses plus the angle between their motion directions, degrees."""
    cos = float(np.clip(motion_direction(T_a) @ motion_direction(T_b), -1.0, 1.0))
    return rotation_angle_deg(T_a[:3, :3].T @ T_b[:3, :3]) + float(np.rad2deg(np.arccos(cos)))


def prefer_motion(estimate: PoseEstimate, last_direction: np.ndarray | None) -> PoseEstimate:
    """A planar pose or its twin, whichever moves the camera closer to ``last_direction`` (the
    last pose's ``motion_direction``): a camera's motion changes little between frames, the
    twin's is off by the angle between the motion and the plane's normal."""
    twin = estimate.twin
    if twin is None or last_direction is None:
        return estimate
    kept = estimate
    if motion_direction(twin.T_0to1) @ last_direction > motion_direction(estimate.T_0to1) @ last_direction:
        kept = twin
    return replace(kept, choice="motion", twin=None)


def pose_from_depth(
    und0: np.ndarray, und1: np.ndarray, K: np.ndarray, ref_points: DepthPoints, absolute: Any, min_matches: int
) -> PoseEstimate | None:
    """The metric pose by PnP on the matches with depth, or None when fewer than ``min_matches``
    of them have depth, or PnP fails or keeps fewer inliers. Inliers: PnP's among the matches
    with depth; the others pass on their Sampson distance to the pose's epipolar geometry."""
    valid = ref_points.valid
    if valid.sum() < min_matches:
        return None
    est = absolute({"m_points3d0": ref_points.xyz0[valid], "m_kpts1": und1[valid], "camera1": K})
    if not est["success"] or est["inliers"].sum() < min_matches:
        return None
    T_0to1 = np.asarray(est["model"], dtype=np.float64)
    inliers = np.zeros(len(und0), bool)
    inliers[valid] = est["inliers"]
    if not valid.all():
        F = fundamental_from_pose(K, K, T_0to1)
        inliers[~valid] = sampson_error(und0[~valid], und1[~valid], F) <= absolute.conf.ransac_th
    return PoseEstimate(inliers, T_0to1, model_fit=True, model="pnp")


@dataclass
class Structure:
    xyz: np.ndarray  # (n, 3) per match in the current optical frame (triangulated, from depth, bearing, or 0)
    T_0to1: np.ndarray | None  # the pose with the translation scaled
    scale: float = 1.0
    metric: bool = False  # the scale comes from the reference frame's depth
    speed_scaled: bool = False  # no depth scale: the translation got the last metric speed (``scale_by_speed``)
    scale_std: float = 1.0  # relative standard deviation of the translation's length (1: a unit or guessed length)


def scale_by_speed(structure: Structure, speed_m_s: float, dt_s: float) -> Structure:
    """A unit-norm pose in a stream whose odometry is metric (an earlier frame was scaled by
    depth) but whose own scale is unknown (its reference has no depth, or too few inliers with
    depth): the translation gets the last metric speed over ``dt_s`` instead of 1 m, and the
    points are rescaled with it. The rotation and the direction stay as estimated."""
    if structure.T_0to1 is None or structure.metric or not structure.T_0to1[:3, 3].any():
        return structure  # no pose, a metric one, or a rotation: no translation to scale
    factor = speed_m_s * max(dt_s, 0.0) / max(float(np.linalg.norm(structure.T_0to1[:3, 3])), 1e-12)
    T_0to1 = structure.T_0to1.copy()
    T_0to1[:3, 3] *= factor
    # xyz = scale * (R X0 + t): scaling the translation and the points together scales xyz
    return Structure(structure.xyz * factor, T_0to1, structure.scale * factor, False, speed_scaled=True, scale_std=1.0)


def scale_and_structure(
    estimate: PoseEstimate,
    und0: np.ndarray,
    und1: np.ndarray,
    K: np.ndarray | None,
    ref_points: DepthPoints | None,
) -> Structure:
    """Triangulate the matches; with the reference frame's depth, the metric scale (median ratio
    of measured to triangulated depth over at least 5 inliers), unless the pose is metric
    already (PnP), and the points that have depth placed by it. Without a pose: the bearings
    (x/z, y/z, 1) of the current frame's points with calibration, else zeros; the same with a
    rotation, which has no baseline to triangulate or scale."""
    n = len(und0)
    if estimate.T_0to1 is None or estimate.model == "rotation":
        xyz = bearings(und1, K) if K is not None and n else np.zeros((n, 3))
        return Structure(xyz, None if estimate.T_0to1 is None else estimate.T_0to1.copy())
    T_0to1 = estimate.T_0to1.copy()
    if estimate.metric and ref_points is not None:
        # measured beats triangulated (and a rotation has no baseline): triangulate the rest only
        X0, missing = ref_points.xyz0.copy(), ~ref_points.valid
        if missing.any():
            X0[missing] = triangulate(image_to_camera(und0[missing], K), image_to_camera(und1[missing], K), T_0to1)
        return Structure(X0 @ T_0to1[:3, :3].T + T_0to1[:3, 3], T_0to1, 1.0, True, scale_std=0.0)
    X0 = triangulate(image_to_camera(und0, K), image_to_camera(und1, K), T_0to1)
    scale, metric, scale_std = 1.0, False, 1.0
    if ref_points is not None:
        measured = ref_points.xyz0[:, 2]
        ok = estimate.inliers & np.isfinite(X0[:, 2]) & ref_points.valid
        if ok.sum() >= 5:
            ratios = measured[ok] / X0[ok, 2]
            scale, metric = float(np.median(ratios)), True
            scale_std = median_standard_error(ratios) / max(abs(scale), 1e-12)
    T_0to1[:3, 3] *= scale
    xyz = (X0 * scale) @ T_0to1[:3, :3].T + T_0to1[:3, 3]
    return Structure(xyz, T_0to1, scale, metric, scale_std=scale_std)


def median_standard_error(values: np.ndarray) -> float:
    """Standard error of the median of ``values``, from their median absolute deviation: a
    robust sigma (1.4826 MAD) times sqrt(pi / 2) / sqrt(n)."""
    spread = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return 1.2533 * spread / np.sqrt(len(values))


def pose_covariance(
    estimate: PoseEstimate,
    structure: Structure,
    und0: np.ndarray,
    und1: np.ndarray,
    K: np.ndarray,
    ref_points: DepthPoints | None,
) -> np.ndarray:
    """Covariance (6, 6) of the scaled pose ``structure.T_0to1`` (``delta`` of
    ``featmatch_core.geometry.covariance``: on the left, in the current camera) from its
    inliers' residuals. PnP: the reprojection errors of the lifted points (6 degrees of
    freedom). A two-view pose (essential, planar): the Sampson distances, which see the
    rotation and the translation's direction (5), scaled with the translation, plus its length
    with the relative standard deviation ``structure.scale_std`` along it (1 for a unit or a
    guessed length, the spread of the depth ratios for a depth-scaled one). A rotation: the
    transfer errors for the rotation (3), and ``ROTATION_TRANSLATION_VARIANCE`` for the
    translation it does not see."""
    T_0to1, inliers = structure.T_0to1, estimate.inliers
    if estimate.model == "rotation":
        # the transfer errors of the turn: points at infinity, of which only the rotation moves any
        residuals, jacobian = reprojection_jacobian(bearings(und0[inliers], K), und1[inliers], T_0to1, K)
        covariance = np.zeros((6, 6))
        covariance[3:, 3:] = covariance_from_residuals(jacobian[..., 3:], residuals)
        covariance[:3, :3] = np.eye(3) * ROTATION_TRANSLATION_VARIANCE
        return covariance
    if estimate.model == "pnp":
        use = inliers & ref_points.valid
        residuals, jacobian = reprojection_jacobian(ref_points.xyz0[use], und1[use], T_0to1, K)
        return covariance_from_residuals(jacobian, residuals)
    residuals, jacobian = epipolar_jacobian(und0[inliers], und1[inliers], estimate.T_0to1, K, K)
    covariance = covariance_from_residuals(jacobian, residuals)
    length = float(np.linalg.norm(T_0to1[:3, 3])) / max(float(np.linalg.norm(estimate.T_0to1[:3, 3])), 1e-12)
    covariance[:3] *= length
    covariance[:, :3] *= length
    covariance[:3, :3] += structure.scale_std**2 * np.outer(T_0to1[:3, 3], T_0to1[:3, 3])
    return covariance


# ---------------------------------------------------------------------------------------
# keyframe decision and odometry
# ---------------------------------------------------------------------------------------
def median_flow(pts0: np.ndarray, pts1: np.ndarray, inliers: np.ndarray) -> float:
    """Median displacement of the inliers, pixels (0 without inliers)."""
    if not inliers.any():
        return 0.0
    return float(np.median(np.linalg.norm(pts1[inliers] - pts0[inliers], axis=1)))


def keyframe_after_pose(policy: str, num_inliers: int, flow_px: float, min_inliers: int, max_flow_px: float) -> bool:
    """With a pose: does the current frame become the reference? Always with 'previous'; with
    'keyframe' when the keyframe is losing its grip (few inliers) or is too far (large flow)."""
    return policy == "previous" or num_inliers < min_inliers or flow_px > max_flow_px


@dataclass(frozen=True)
class FailureVerdict:
    failures: int  # consecutive frames without a pose, after this one
    new_reference: bool
    tracking_lost: bool  # the reference is replaced because it cannot be tracked any more


def keyframe_after_failure(failures: int, max_failures: int, calibrated: bool) -> FailureVerdict:
    """Without a pose: uncalibrated, each frame becomes the next reference (there is no pose to
    wait for); calibrated, the reference is kept until ``max_failures`` frames in a row failed."""
    if not calibrated:
        return FailureVerdict(0, True, False)
    failures += 1
    if failures >= max_failures:
        return FailureVerdict(0, True, True)
    return FailureVerdict(failures, False, False)


@dataclass
class Motion:
    """What a pose between the reference and the current frame says for the messages."""

    T_ref_cur: np.ndarray  # pose of the current optical frame in the reference optical frame
    covariance: np.ndarray  # (6, 6) of T_ref_cur as ROS has it: position (m or unit baseline), rotation (rad)
    linear: np.ndarray  # twist of the camera in its own (current) frame, per second
    angular: np.ndarray


def motion_from_pose(T_0to1: np.ndarray, dt_s: float, covariance: np.ndarray) -> Motion:
    """Pose, covariance and twist of the current frame relative to the reference, from the
    scaled ``T_0to1`` and its covariance (``pose_covariance``)."""
    T_ref_cur = invert_transform(T_0to1)
    dt_s = max(dt_s, 1e-9)
    rvec = cv2.Rodrigues(T_ref_cur[:3, :3])[0].ravel()
    R_cur_ref = T_0to1[:3, :3]
    return Motion(
        T_ref_cur,
        covariance_of_inverse(covariance, T_0to1),
        R_cur_ref @ T_ref_cur[:3, 3] / dt_s,
        R_cur_ref @ rvec / dt_s,
    )


@dataclass
class Odometry:
    """The chained relative poses: the camera optical frame in ``odom`` (REP 105: the first
    camera pose, turned so that x is forward and z up as REP 103 wants), and its covariance (6,
    6; position in ``odom``, rotation about its axes)."""

    T_odom_cam: np.ndarray = field(default_factory=lambda: T_BODY_OPTICAL.copy())
    covariance: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))

    def chain(self, T_odom_ref: np.ndarray, covariance_ref: np.ndarray, motion: Motion) -> None:
        """The reference's pose and covariance (as the odometry had them when it became the
        reference) composed with the motion since: matching a keyframe again does not add up."""
        self.T_odom_cam = T_odom_ref @ motion.T_ref_cur
        self.covariance = compose_covariance(T_odom_ref, covariance_ref, motion.T_ref_cur, motion.covariance)


# ---------------------------------------------------------------------------------------
# stereo
# ---------------------------------------------------------------------------------------
@dataclass
class StereoGeometry:
    K: np.ndarray  # left rectified camera matrix
    baseline: float  # metres


def stereo_geometry(left_info: Any, right_info: Any, baseline_param: float) -> StereoGeometry:
    """Left K (the rectified P when given) and the baseline (parameter, else the right P);
    ``Rejected`` (bad_calibration) when either is missing or unusable."""
    what = "no calibration (camera_info with K and the right P, or 'baseline'): no 3D"
    if left_info is None:
        raise Rejected(problems.BAD_CALIBRATION, what)
    P_left = np.asarray(left_info.p, dtype=np.float64).reshape(-1)
    if P_left.size == 12 and np.isfinite(P_left).all() and P_left[0] > 0 and P_left[5] > 0:
        K = P_left.reshape(3, 4)[:, :3]
    else:
        try:
            calibration = cv.calibration_from_camera_info(left_info)
        except cv.CalibrationError as err:
            raise Rejected(problems.BAD_CALIBRATION, f"left camera_info refused ({err}): no 3D") from None
        if calibration is None:
            raise Rejected(problems.BAD_CALIBRATION, what)
        K = calibration.K
    baseline = baseline_param or (cv.stereo_baseline(right_info) if right_info is not None else None)
    if not baseline:
        raise Rejected(problems.BAD_CALIBRATION, what)
    return StereoGeometry(K, float(baseline))


@dataclass
class StereoPoints:
    xyz: np.ndarray  # (n, 3) per match in the left optical frame; NaN where not kept
    keep: np.ndarray  # (n,) bool: on the same row, positive disparity, not too far
    median_row_error_px: float
    median_depth_m: float


def triangulate_rectified(
    pts0: np.ndarray,
    pts1: np.ndarray,
    geometry: StereoGeometry,
    max_row_error: float,
    min_disparity: float,
    max_depth: float,
) -> StereoPoints:
    """Depth from disparity, z = fx B / d, for the matches a rectified pair can explain."""
    K, n = geometry.K, len(pts0)
    disparity = pts0[:, 0] - pts1[:, 0]
    row_err = np.abs(pts0[:, 1] - pts1[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = K[0, 0] * geometry.baseline / disparity
    keep = (row_err <= max_row_error) & (disparity >= max(min_disparity, 1e-6)) & (z <= max_depth)
    xyz = np.full((n, 3), np.nan)
    xyz[keep, 2] = z[keep]
    xyz[keep, 0] = (pts0[keep, 0] - K[0, 2]) * z[keep] / K[0, 0]
    xyz[keep, 1] = (pts0[keep, 1] - K[1, 2]) * z[keep] / K[1, 1]
    return StereoPoints(
        xyz,
        keep,
        float(np.median(row_err)) if n else float("nan"),
        float(np.median(z[keep])) if keep.any() else float("nan"),
    )


def stereo_self_check(pts0: np.ndarray, pts1: np.ndarray, K: np.ndarray, estimator: Any) -> dict[str, float]:
    """The two views' relative pose must be the calibrated pure x translation: its rotation angle
    and the angle of its translation to -x (degrees); empty when no pose is found."""
    est = estimator({"m_kpts0": pts0, "m_kpts1": pts1, "camera0": K, "camera1": K})
    if not est["success"]:
        return {}
    T = est["model"]
    t_dir = T[:3, 3] / np.linalg.norm(T[:3, 3])
    return {
        "rotation_check_deg": rotation_angle_deg(T[:3, :3]),
        "baseline_direction_error_deg": float(np.rad2deg(np.arccos(np.clip(-t_dir[0], -1, 1)))),
    }
