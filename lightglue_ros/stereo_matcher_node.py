"""``stereo_matcher_node``: the thin rclpy shell around ``frame_matcher.StereoMatcher`` (ROS 2 Humble+).

    ros2 launch lightglue_ros stereo_matcher.launch.py

Subscribes ``left/image``, ``right/image`` (rectified), ``left/camera_info`` and
``right/camera_info``, synchronised by message_filters' ApproximateTimeSynchronizer
(``sync_slop`` seconds, QoS ``qos``/``qos_depth``). Matches left to right, keeps matches on
the same row (``max_row_error``) with a positive disparity (``min_disparity``), triangulates
them with the calibrated baseline (from the right camera's ``P[0, 3] = -fx * B``, or the
``baseline`` parameter) and publishes:

- ``points``: sensor_msgs/PointCloud2 (x, y, z in the left optical frame, metres);
- ``matches``: sensor_msgs/PointCloud2, one point per match (u0, v0 left, u1, v1 right,
  score, idx0, idx1, inlier = kept for triangulation, x, y, z);
- ``debug_image`` while subscribed; ``/diagnostics`` with the counts and latency.

Same processing model and parameter rules as ``matcher_node``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import message_filters
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from .frame_matcher import StereoMatcher
from .matcher_node import MatcherNodeBase, run


@dataclass
class StereoItem:
    left: Any
    right: Any
    left_info: Any
    right_info: Any
    received_ns: int


class StereoMatcherNode(MatcherNodeBase):
    schema = "stereo_matcher"

    def __init__(self, name: str = "stereo_matcher", types: Any = None) -> None:
        super().__init__(name, types)

    def make_core(self, values: dict[str, Any]) -> StereoMatcher:
        return StereoMatcher(values, log=self.log)

    def wire(self, values: dict[str, Any], qos: Any) -> None:
        self.pub_points = self.create_publisher(PointCloud2, "points", 10)
        self.pub_matches = self.create_publisher(PointCloud2, "matches", 10)
        self.outputs = {"points": self.pub_points, "matches": self.pub_matches}
        self._subs = [
            message_filters.Subscriber(self, Image, "left/image", qos_profile=qos),
            message_filters.Subscriber(self, Image, "right/image", qos_profile=qos),
            message_filters.Subscriber(self, CameraInfo, "left/camera_info", qos_profile=qos),
            message_filters.Subscriber(self, CameraInfo, "right/camera_info", qos_profile=qos),
        ]
        self._sync = message_filters.ApproximateTimeSynchronizer(
            self._subs, queue_size=values["qos_depth"], slop=values["sync_slop"]
        )
        self._sync.registerCallback(self._on_pair)

    def _on_pair(self, left: Image, right: Image, left_info: CameraInfo, right_info: CameraInfo) -> None:
        self.worker.submit(StereoItem(left, right, left_info, right_info, self.now_ns()))

    def _process(self, item: StereoItem) -> None:
        want_debug = self._want_debug()
        result = self.core.process(
            item.left,
            item.right,
            item.left_info,
            item.right_info,
            received_ns=item.received_ns,
            want_debug=want_debug,
        )
        self._publish_frame(result, want_debug)


def main(args: list[str] | None = None) -> int:
    return run(StereoMatcherNode, args)


if __name__ == "__main__":
    sys.exit(main())
