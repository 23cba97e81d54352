"""The one place where a frame's result becomes ROS messages (the rclpy nodes and the replay).

``frame_messages(types, result)`` -> ``FrameMessages``, whose ``topics()`` are the node's
output topics by name (``matches``, ``line_matches``, ``matches_info``, ``relative_pose``,
``odometry``, ``points``) and ``transform`` the tf of the odometry:

* ``matches`` (``sensor_msgs/PointCloud2``, stamped and framed like the CURRENT image): one
  point per match with fields x, y, z, u0, v0, u1, v1, score, idx0, idx1, inlier. (u0, v0)
  are pixels of the reference frame (stereo: left), (u1, v1) of the current frame (right),
  idx0/idx1 keypoint indices in each. x, y, z: the triangulated point in the current optical
  frame when a pose was found (metric with depth, else in units of the unit-norm baseline),
  otherwise the bearing (x/z, y/z, 1) with calibration, or 0; stereo: the point in the left
  optical frame (metres), 0 where not triangulated.
* ``matches_info`` (``diagnostic_msgs/DiagnosticArray``, same stamp): the companion of
  ``matches``: ``reference_stamp`` (sec.nanosec) and ``reference_frame_id`` of frame 0, the
  model, keypoint / match / inlier counts, LightGlue's stop layer, the estimator outcome
  (``pose_model``: pnp, essential, planar (a homography's decomposition; ``planar_choice``
  says what chose between its two poses), rotation (no translation seen), or the
  uncalibrated model).
* ``relative_pose`` (``geometry_msgs/PoseWithCovarianceStamped``): the pose of the current
  optical frame in the reference optical frame (``inv(T_0to1)``), header = current stamp and
  the reference image's frame_id. Monocular: the translation has unit norm unless a depth
  image made it metric (``matches_info`` ``metric_scale``: PnP on it, or its scale). Once a
  stream's odometry is metric, a frame the depth cannot scale gets the last metric speed
  (``speed_scaled``), not a 1 m translation. The covariance (ROS order: position, then
  rotation about the reference's axes) is first order, from the inliers' residuals: the
  reprojection errors for PnP, the Sampson distances for a two-view pose, whose translation's
  length gets its own uncertainty along it (its whole length when unit or guessed, the spread
  of the depth ratios when scaled by depth).
* ``odometry`` (``nav_msgs/Odometry``) chaining the relative poses: ``odom_frame`` (REP 105;
  the first camera pose, turned so that x is forward and z up as REP 103 wants) to the
  camera optical frame; ``transform`` the same as a ``TransformStamped`` for tf.
* ``line_matches`` (``sensor_msgs/PointCloud2``, same stamp and frame as ``matches``), only
  from a matcher with lines (GlueStick): one point per line match with fields x, y, z,
  u0_s, v0_s, u0_e, v0_e (segment start/end in the reference frame), u1_s, v1_s, u1_e, v1_e
  (current frame), score, idx0, idx1 (line indices). x, y, z: the bearing of the current
  segment's midpoint with calibration, else 0.
* ``points`` (stereo, ``sensor_msgs/PointCloud2``): x, y, z of the triangulated matches.
* ``debug_image()``: the drawn matches (and matched segments), only drawn when called.

``diagnostics_message(types, diagnostics, stamp_ns)``: the ``/diagnostics`` array of a matcher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from featmatch_core.viz import draw_matches

from . import conversions as cv
from .frame_matcher import DebugDrawing, FrameResult, MatchCloud, OdometryState, Status

# the output topics a frame can produce, in publishing order
TOPICS = ("matches", "line_matches", "matches_info", "relative_pose", "odometry", "points")


@dataclass
class FrameMessages:
    matches: Any = None
    line_matches: Any = None
    matches_info: Any = None
    relative_pose: Any = None
    odometry: Any = None
    points: Any = None
    transform: Any = None  # odom_frame -> camera, for tf
    _debug: Callable[[], Any] | None = None

    def topics(self) -> dict[str, Any]:
        """Topic name -> message, for the messages this frame has."""
        return {name: msg for name in TOPICS if (msg := getattr(self, name)) is not None}

    def debug_image(self) -> Any:
        return self._debug() if self._debug is not None else None


def frame_messages(types: cv.MessageTypes, result: FrameResult) -> FrameMessages:
    """The messages of a processed frame; a skipped frame has none."""
    out = FrameMessages()
    if result.skipped is not None:
        return out
    header = cv.make_header(types, result.stamp_ns, result.frame_id)
    if result.cloud is not None:
        out.matches = match_cloud_message(types, header, result.cloud)
        out.line_matches = line_cloud_message(types, header, result.cloud)
    if result.info is not None:
        out.matches_info = status_array(types, header, "lightglue_ros: matches", result.info)
    if result.relative_pose is not None:
        pose = result.relative_pose
        pose_header = cv.make_header(types, result.stamp_ns, pose.frame_id)
        out.relative_pose = cv.pose_with_covariance_stamped(types, pose_header, pose.T_ref_cur, pose.covariance)
    if result.odometry is not None:
        out.odometry, out.transform = odometry_messages(types, result.stamp_ns, result.odometry)
    if result.points is not None:
        out.points = cv.xyz_to_pointcloud2(types, header, result.points)
    if result.debug is not None:
        drawing = result.debug
        out._debug = lambda: debug_image_message(types, header, drawing)
    return out


def match_cloud_message(types: cv.MessageTypes, header: Any, cloud: MatchCloud) -> Any:
    return cv.matches_to_pointcloud2(
        types,
        header,
        cloud.keypoints0,
        cloud.keypoints1,
        cloud.matches,
        cloud.scores,
        xyz=cloud.xyz,
        inliers=cloud.inliers,
    )


def line_cloud_message(types: cv.MessageTypes, header: Any, cloud: MatchCloud) -> Any:
    """The ``line_matches`` cloud of a matcher with lines (GlueStick), else None."""
    if cloud.lines0 is None or cloud.lines1 is None:
        return None
    return cv.line_matches_to_pointcloud2(
        types, header, cloud.lines0, cloud.lines1, cloud.line_matches, cloud.line_scores, xyz=cloud.line_xyz
    )


def status_array(types: cv.MessageTypes, header: Any, name: str, status: Status, hardware_id: str = "") -> Any:
    msg = cv.diagnostic_status(types, name, status.level, status.message, status.values, hardware_id)
    return cv.diagnostic_array(types, header, [msg])


def odometry_messages(types: cv.MessageTypes, stamp_ns: int, odom: OdometryState) -> tuple[Any, Any]:
    """``nav_msgs/Odometry`` (the chained pose covariance, twist in the camera frame) and its tf."""
    header = cv.make_header(types, stamp_ns, odom.odom_frame)
    odometry = cv.odometry(types, header, odom.child_frame, odom.T_odom_cam, odom.covariance, odom.linear, odom.angular)
    return odometry, cv.transform_stamped(types, header, odom.child_frame, odom.T_odom_cam)


def debug_image_message(types: cv.MessageTypes, header: Any, drawing: DebugDrawing) -> Any:
    canvas = draw_matches(
        drawing.image0,
        drawing.image1,
        drawing.keypoints0,
        drawing.keypoints1,
        drawing.matches,
        scores=drawing.scores,
        title=drawing.title,
        **drawing.lines,
    )
    return cv.numpy_to_image(types, canvas, "bgr8", header)


def diagnostics_message(
    types: cv.MessageTypes, diagnostics: dict[str, Any], stamp_ns: int, hardware_id: str = ""
) -> Any:
    """``/diagnostics`` of a matcher's ``diagnostics()`` (name, level, message, values)."""
    status = Status(diagnostics["level"], diagnostics["message"], diagnostics["values"])
    return status_array(types, cv.make_header(types, stamp_ns, ""), diagnostics["name"], status, hardware_id)
