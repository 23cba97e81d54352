"""ROS 2 front end of featmatch_core. Nothing here is imported by featmatch_core.

Layout (only the two ``*_node`` modules import rclpy; everything else runs without ROS):

- ``conversions``: Image / CameraInfo / PointCloud2 / poses / diagnostics <-> numpy, through a
  message factory (``RosbagsTypes`` for bags and tests, ``RclpyTypes`` in the nodes), so the
  same code builds rclpy and rosbags messages by their ROS field names;
- ``params``: the one parameter schema (descriptors, ranges, runtime vs start-up) behind
  ``declare_parameter``, ``config/*.yaml`` and the replay's ``--params``;
- ``stages``: the frame path as small functions over plain data (decode, time checks,
  calibration, depth, estimate, scale, keyframe decision, odometry, stereo triangulation);
- ``frame_matcher``: the streaming core (``FrameMatcher``: prepare -> extract -> track,
  ``StereoMatcher``), plain ``FrameResult``s, and the ``FrameWorker`` (newest frame wins,
  drops counted), driving ``featmatch_core.FeatureStream``;
- ``messages``: the one place where results become ROS messages (nodes and replay);
- ``problems``: warnings counted per reason for /diagnostics, rate-limited in the log;
- ``matcher_node``, ``stereo_matcher_node``: thin rclpy shells (subscriptions, publishers,
  parameters, timers, tf);
- ``make_bag``, ``replay``, ``faults`` (a bag with bad frames injected): rosbags-based tools
  (``python -m lightglue_ros.<tool>``);
- ``synthetic``: a generated scene with exact poses and depth (the demo and the tests).

Design notes:

- The metadata of a ``matches`` cloud (the reference frame's stamp and frame_id, the model,
  counts) goes on ``matches_info``, a ``diagnostic_msgs/DiagnosticArray`` with the same stamp:
  a standard message with a header and key/values, so no custom message package is needed.
- The nodes' default robust estimator is poselib: featmatch_core's OpenCV relative-pose back
  end keeps very few inliers on the small motions between consecutive video frames.
- Monocular translation is unit-norm; with an aligned depth image (``use_depth``) the pose
  comes from PnP on the reference frame's depth (``pose_from_depth``): metric, and well posed
  on a planar scene and a pure rotation, where the essential matrix is not. Where too few
  matches have depth it falls back to the essential matrix scaled by the median of measured /
  triangulated depth. Without a PnP pose, a planar scene's pose comes from a homography
  (``planar_homography``): of the two poses a plane allows, the one the last motion supports;
  a turn on the spot gives a rotation with zero translation.
"""
