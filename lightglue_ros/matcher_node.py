"""``matcher_node``: the thin rclpy shell around ``frame_matcher.FrameMatcher`` (ROS 2 Humble+).

    ros2 run lightglue_ros matcher_node --ros-args --params-file config/matcher.yaml
    ros2 launch lightglue_ros matcher.launch.py

Subscribes (QoS ``qos``: sensor_data = best effort, or reliable; depth ``qos_depth``):
``image`` (sensor_msgs/Image), ``camera_info`` (sensor_msgs/CameraInfo, latest one used; none:
uncalibrated mode), ``depth`` (sensor_msgs/Image, only with ``use_depth``; synchronised with
``image`` by message_filters' ApproximateTimeSynchronizer, ``sync_slop``).

Publishes: ``matches`` (PointCloud2), ``line_matches`` (PointCloud2, only with
``matcher: gluestick``), ``matches_info`` (DiagnosticArray: reference stamp and
frame, model, counts), ``relative_pose`` (PoseWithCovarianceStamped), ``odometry``
(nav_msgs/Odometry), ``debug_image`` (only while subscribed and ``publish_debug_image``),
``/diagnostics`` (every ``diagnostics_period`` s), and ``odom_frame -> camera`` on /tf with
``publish_tf``. See ``frame_matcher`` for the meaning of every field.

Processing model: the subscription callbacks only hand the message to a ``FrameWorker`` and
return; the worker thread processes the newest frame, dropping (and counting) older ones when
busy. The model is loaded once, in the constructor. Parameters come from
``lightglue_ros.params`` (descriptors with ranges; model, device, QoS and queues are
read-only); thresholds and policies can be changed at run time (``ros2 param set``), a model
change is refused with its reason.

rclpy is imported here and in ``stereo_matcher_node`` only; the logic is ROS-free.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from typing import Any

import message_filters
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from tf2_ros import TransformBroadcaster

from . import params as P
from .conversions import RclpyTypes
from .frame_matcher import (
    FrameMatcher,
    FramePipeline,
    FrameResult,
    FrameWorker,
    PreparedFrame,
    cpu_threads,
    set_cpu_threads,
    startup_objects_frozen,
)
from .messages import diagnostics_message, frame_messages
from .problems import Throttle, with_held_count


class RosLog:
    """The logging interface the ROS-free core uses, on an rclpy logger.

    Warnings that repeat (the same text up to its numbers, e.g. every frame of a camera with an
    unsupported encoding) are logged at most once per ``throttle_s`` seconds, with the count of
    those left out; the first one is always logged (``problems.Throttle``).
    """

    def __init__(self, logger: Any, throttle_s: float = 5.0) -> None:
        self._logger = logger
        self._throttle = Throttle(throttle_s)

    def debug(self, msg: str, *args: Any) -> None:
        self._logger.debug(msg % args if args else msg)

    def info(self, msg: str, *args: Any) -> None:
        self._logger.info(msg % args if args else msg)

    def warning(self, msg: str, *args: Any) -> None:
        text = msg % args if args else msg
        held = self._throttle.admit(Throttle.key_of(text))
        if held is not None:
            self._logger.warning(with_held_count(text, held))

    def error(self, msg: str, *args: Any) -> None:
        self._logger.error(msg % args if args else msg)

    def exception(self, msg: str, *args: Any) -> None:
        self._logger.error((msg % args if args else msg) + "\n" + traceback.format_exc())


def descriptor(param: P.Param) -> ParameterDescriptor:
    """ROS parameter descriptor of a schema entry: description, range, read-only for start-up values."""
    desc = ParameterDescriptor(description=param.help(), read_only=not param.runtime)
    bounds = param.declared_range()
    if bounds is not None and param.type is float:
        low, high = float(bounds[0]), float(bounds[1])
        desc.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
    elif bounds is not None and param.type is int:
        desc.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]), step=1)]
    if param.choices:
        desc.additional_constraints = "one of: " + ", ".join(param.choices)
    return desc


def declare_parameters(node: Node, schema_node: str) -> dict[str, Any]:
    """Declare every parameter of the schema (values from the parameter file / command line)."""
    values = {}
    for param in P.params_for(schema_node):
        node.declare_parameter(param.name, param.default, descriptor(param))
        values[param.name] = node.get_parameter(param.name).value
    return P.validate(schema_node, values)


def subscription_qos(values: dict[str, Any]) -> QoSProfile:
    """Subscription QoS: rclpy's sensor-data profile (best effort, volatile) or reliable, with our depth."""
    if values["qos"] == "sensor_data":
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=values["qos_depth"],
            reliability=qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
        )
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=values["qos_depth"],
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


@dataclass
class Item:
    image: Any
    info: Any
    depth: Any
    received_ns: int


class MatcherNodeBase(Node):
    """What both nodes share: parameters, the core (model loaded once), the worker, diagnostics."""

    schema = "matcher"

    def __init__(self, name: str, types: Any = None) -> None:
        super().__init__(name)
        self.closing = False
        self.types = types or RclpyTypes()
        self.log = RosLog(self.get_logger())
        self.values = declare_parameters(self, self.schema)
        self.core = self.make_core(self.values)  # loads the model, once
        # latency and frame age on the node's clock: sim time with use_sim_time
        self.core.clock_ns = self.now_ns
        self.outputs: dict[str, Any] = {}  # output topic -> publisher, filled by wire()
        self.log.info(f"model {self.core.model_name} on {self.core.pipeline.device} ({self.values['precision']})")
        self.worker = self.make_worker(self.values)
        self.core.worker = self.worker
        self.pub_debug = self.create_publisher(Image, "debug_image", 1)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.wire(self.values, subscription_qos(self.values))
        self.create_timer(self.values["diagnostics_period"], self._publish_diagnostics)
        # registered after the declarations: only later changes go through it
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def make_core(self, values: dict[str, Any]) -> Any:
        raise NotImplementedError

    def make_worker(self, values: dict[str, Any]) -> FrameWorker | FramePipeline:
        return FrameWorker(self._process, queue_size=values["queue_size"], log=self.log)

    def now_ns(self) -> int:
        return int(self.get_clock().now().nanoseconds)

    def wire(self, values: dict[str, Any], qos: QoSProfile) -> None:
        raise NotImplementedError

    def _process(self, item: Any) -> None:
        raise NotImplementedError

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        """Runtime changes: thresholds and policies yes, model / device / QoS no (with the reason)."""
        names = {p.name for p in P.params_for(self.schema)}
        changes = {p.name: p.value for p in parameters if p.name in names}  # others (use_sim_time...) pass
        ok, reason = self.core.set_params(changes) if changes else (True, "")
        if ok and changes:
            self.log.info(f"parameters changed: {changes}")
        return SetParametersResult(successful=ok, reason=reason)

    def _publish_diagnostics(self) -> None:
        message = diagnostics_message(
            self.types, self.core.diagnostics(), self.now_ns(), hardware_id=self.get_fully_qualified_name()
        )
        self.pub_diag.publish(message)

    def _publish_frame(self, result: FrameResult, want_debug: bool) -> None:
        """The messages of a processed frame on their publishers (none for a skipped frame)."""
        if result.skipped is not None or self.closing:
            return
        messages = frame_messages(self.types, result)
        for topic, msg in messages.topics().items():
            publisher = self.outputs.get(topic)
            if publisher is not None:
                publisher.publish(msg)
        if self.core.params.get("publish_tf") and messages.transform is not None:
            self.tf.sendTransform(messages.transform)
        if want_debug:
            image = messages.debug_image()
            if image is not None:
                self.pub_debug.publish(image)

    def _want_debug(self) -> bool:
        return bool(self.core.params["publish_debug_image"]) and self.pub_debug.get_subscription_count() > 0

    def destroy_node(self) -> None:
        # a frame still being processed (longer than the join timeout on a slow CPU) must not
        # publish on publishers that are being destroyed
        self.closing = True
        self.worker.stop(drain=False, timeout=5.0)
        super().destroy_node()


class MatcherNode(MatcherNodeBase):
    schema = "matcher"

    def __init__(self, name: str = "matcher", types: Any = None) -> None:
        self.camera_info = None
        super().__init__(name, types)

    def make_core(self, values: dict[str, Any]) -> FrameMatcher:
        return FrameMatcher(values, log=self.log)

    def make_worker(self, values: dict[str, Any]) -> FrameWorker | FramePipeline:
        """Pipelined: extraction on one thread, tracking and publishing on another, and with
        ``match_ahead`` the matching on a third (``FramePipeline``)."""
        # this process is the node's: the thread counts are set once, for good
        if set_cpu_threads(values["pipelined"], self.core.pipeline.device) is not None:
            torch_threads, cv_threads = cpu_threads(values["pipelined"])
            self.log.info(f"CPU threads: torch {torch_threads}, OpenCV {cv_threads}")
        if not values["pipelined"]:
            return super().make_worker(values)
        stages = self.core.pipeline_stages(self._front, self.core.match_ahead, self._back)
        return FramePipeline(*stages, queue_size=values["queue_size"], log=self.log,
                             device=self.core.pipeline.device)  # on CUDA: a stream per stage

    def wire(self, values: dict[str, Any], qos: QoSProfile) -> None:
        self.pub_matches = self.create_publisher(PointCloud2, "matches", 10)
        self.outputs = {
            "matches": self.pub_matches,
            "matches_info": self.create_publisher(DiagnosticArray, "matches_info", 10),
            "relative_pose": self.create_publisher(PoseWithCovarianceStamped, "relative_pose", 10),
            "odometry": self.create_publisher(Odometry, "odometry", 10),
        }
        # a matcher without lines never publishes there: no topic for it in the graph
        if values["matcher"] in P.LINE_MATCHERS:
            self.outputs["line_matches"] = self.create_publisher(PointCloud2, "line_matches", 10)
        self.tf = TransformBroadcaster(self)  # always created: 'publish_tf' can be switched on at run time
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos)
        if values["use_depth"]:
            self._subs = [
                message_filters.Subscriber(self, Image, "image", qos_profile=qos),
                message_filters.Subscriber(self, Image, "depth", qos_profile=qos),
            ]
            self._sync = message_filters.ApproximateTimeSynchronizer(
                self._subs, queue_size=values["qos_depth"], slop=values["sync_slop"]
            )
            self._sync.registerCallback(self._on_image)
        else:
            self.create_subscription(Image, "image", self._on_image, qos)

    # ---- callbacks: never block ---------------------------------------------------------------
    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.camera_info = msg

    def _on_image(self, msg: Image, depth: Image | None = None) -> None:
        self.worker.submit(Item(msg, self.camera_info, depth, self.now_ns()))

    # ---- the worker threads ---------------------------------------------------------------------
    def _front(self, item: Item) -> PreparedFrame:
        return self.core.prepare_and_extract(item.image, item.info, item.depth, received_ns=item.received_ns)

    def _back(self, frame: PreparedFrame) -> None:
        want_debug = self._want_debug()
        self._publish_frame(self.core.finish(frame, want_debug), want_debug)

    def _process(self, item: Item) -> None:
        want_debug = self._want_debug()
        result = self.core.process(
            item.image, item.info, item.depth, received_ns=item.received_ns, want_debug=want_debug
        )
        self._publish_frame(result, want_debug)


def run(node_class: type, args: list[str] | None = None) -> int:
    """rclpy.init, the node, spin until Ctrl-C / SIGTERM / external shutdown, clean up.

    A node that cannot start (bad parameters, parameter overrides rclpy refuses for their type
    or range, a model / weights / device problem) is reported in one line, exit status 1: no
    traceback, which stays available at debug level (``--ros-args --log-level debug``).
    """
    rclpy.init(args=args)
    node = None
    logger = get_logger(getattr(node_class, "schema", node_class.__name__))
    try:
        try:
            node = node_class()
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except Exception as err:  # noqa: BLE001 (start-up failures of any kind)
            what = "bad parameters" if isinstance(err, P.ParamError) else "cannot start"
            logger.debug(traceback.format_exc())
            logger.fatal(f"{node_class.__name__}: {what}: {type(err).__name__}: {err}")
            return 1
        with startup_objects_frozen():  # no full garbage collection of the model in mid-stream
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # a second Ctrl-C while the frame in flight finishes must not end in a traceback;
        # try_shutdown: the signal handler may have shut the context down meanwhile
        for cleanup in (node.destroy_node if node is not None else None, rclpy.try_shutdown):
            try:
                if cleanup is not None:
                    cleanup()
            except KeyboardInterrupt:
                pass
    return 0


def main(args: list[str] | None = None) -> int:
    return run(MatcherNode, args)


if __name__ == "__main__":
    sys.exit(main())
