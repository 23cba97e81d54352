"""The rclpy shells.

- With rclpy installed (a ROS 2 machine): the real node runs, fed by real publishers.
- Without it (CI, here): the same shells run against a minimal stand-in of the rclpy API they
  use, which checks their wiring (parameters and descriptors, topics, QoS, worker, runtime
  parameter rules, debug image only when subscribed, diagnostics), not rclpy itself.
"""

import ast
import collections
import importlib
import os
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from lightglue_ros import conversions as cv
from lightglue_ros import params as P
from featmatch_core.datasets import room as synthetic

ROOT = Path(__file__).resolve().parents[2]
TYPES = cv.rosbags_types()
W, H = 320, 240
ROS_MODULES = {
    "rclpy",
    "rcl_interfaces",
    "sensor_msgs",
    "geometry_msgs",
    "nav_msgs",
    "std_msgs",
    "diagnostic_msgs",
    "tf2_ros",
    "message_filters",
    "cv_bridge",
    "builtin_interfaces",
    "launch",
    "launch_ros",
}


def test_core_modules_never_import_ros():
    for path in (ROOT / "lightglue_ros").glob("*.py"):
        if path.stem in ("matcher_node", "stereo_matcher_node"):
            continue
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        imported |= {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        }
        assert not imported & ROS_MODULES, (path.name, imported & ROS_MODULES)


def test_launch_files_declare_the_arguments():
    for name, remaps in (
        ("matcher", {"image", "camera_info", "depth"}),
        ("stereo_matcher", {"left_image", "right_image", "left_camera_info", "right_camera_info"}),
    ):
        tree = ast.parse((ROOT / "launch" / f"{name}.launch.py").read_text())
        text = (ROOT / "launch" / f"{name}.launch.py").read_text()
        declared = {
            node.args[0].value
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "DeclareLaunchArgument"
            and isinstance(node.args[0], ast.Constant)
        }
        declared |= set(remaps) if "TOPICS.items()" in text else set()
        assert {"namespace", "config", "extractor", "matcher", "device", "use_sim_time"} | remaps <= declared, (
            declared
        )
        assert f'"{name}_node"' in text and f'"{name}.yaml"' in text and "generate_launch_description" in text


def test_launch_model_choices_are_the_parameter_choices():
    """The launch files list the extractor/matcher/device choices by hand (they import no project
    code); they must be exactly the parameters' choices, or a valid value is refused at launch."""
    schema = {p.name: tuple(p.choices) for p in P.SCHEMA}
    for name in ("matcher", "stereo_matcher"):
        tree = ast.parse((ROOT / "launch" / f"{name}.launch.py").read_text())
        assigned = next(
            node.value for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MODEL_ARGUMENTS"
        )
        choices = ast.literal_eval(assigned)
        assert set(choices) == {"extractor", "matcher", "device"}
        for param, values in choices.items():
            assert values == schema[param], (name, param, values, schema[param])


# ---- a stand-in for the parts of the rclpy API the shells use --------------------------------------
class _Param:
    def __init__(self, name, value):
        self.name, self.value = name, value


class _Publisher:
    def __init__(self, msg_type, topic):
        self.msg_type, self.topic, self.messages, self.subscribers = msg_type, topic, [], 0

    def publish(self, msg):
        self.messages.append(msg)

    def get_subscription_count(self):
        return self.subscribers


class _Logger:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda msg: self.lines.append((level, msg))


class _Node:
    overrides: dict = {}

    def __init__(self, name):
        self.name, self.params, self.descriptors = name, {}, {}
        self.publishers, self.subscriptions, self.timers, self.param_callbacks = {}, {}, [], []
        self.logger = _Logger()
        self.destroyed = False

    def declare_parameter(self, name, value, descriptor=None):
        new = self.overrides.get(name, value)
        if type(new) is not type(value):
            raise TypeError(f"parameter {name}: {type(new).__name__} for a {type(value).__name__}")
        self.params[name], self.descriptors[name] = new, descriptor
        return _Param(name, new)

    def get_parameter(self, name):
        return _Param(name, self.params[name])

    def set_parameters(self, parameters):
        for p in parameters:
            if self.descriptors[p.name].read_only:
                return types.SimpleNamespace(successful=False, reason="read-only")
        for callback in self.param_callbacks:
            result = callback(parameters)
            if not result.successful:
                return result
        self.params.update({p.name: p.value for p in parameters})
        return types.SimpleNamespace(successful=True, reason="")

    def create_publisher(self, msg_type, topic, qos):
        self.publishers[topic] = _Publisher(msg_type, topic)
        return self.publishers[topic]

    def create_subscription(self, msg_type, topic, callback, qos):
        self.subscriptions[topic] = (msg_type, callback, qos)

    def create_timer(self, period, callback):
        self.timers.append((period, callback))

    def add_on_set_parameters_callback(self, callback):
        self.param_callbacks.append(callback)

    def get_logger(self):
        return self.logger

    def get_clock(self):
        return types.SimpleNamespace(now=lambda: types.SimpleNamespace(nanoseconds=time.time_ns()))

    def get_fully_qualified_name(self):
        return "/" + self.name

    def destroy_node(self):
        self.destroyed = True


class _Kw:
    def __init__(self, **kwargs):
        self.floating_point_range, self.integer_range, self.additional_constraints = [], [], ""
        self.__dict__.update(kwargs)


class _Subscriber:
    def __init__(self, node, msg_type, topic, qos_profile=None):
        node.subscriptions[topic] = (msg_type, None, qos_profile)
        self.topic = topic


class _Synchronizer:
    def __init__(self, subscribers, queue_size, slop):
        self.topics, self.queue_size, self.slop, self.callbacks = (
            [s.topic for s in subscribers],
            queue_size,
            slop,
            [],
        )

    def registerCallback(self, callback):  # noqa: N802 (message_filters' name)
        self.callbacks.append(callback)


class _Broadcaster:
    def __init__(self, node):
        self.sent = []
        node.tf_broadcaster = self

    def sendTransform(self, transform):  # noqa: N802 (tf2_ros' name)
        self.sent.append(transform)


def _fake_ros_modules():
    token = type("MsgType", (), {})
    mods = {
        "rclpy": types.SimpleNamespace(
            init=lambda args=None: None,
            ok=lambda: False,
            shutdown=lambda: None,
            try_shutdown=lambda: None,
            spin=lambda node: None,
        ),
        "rclpy.node": types.SimpleNamespace(Node=_Node),
        "rclpy.logging": types.SimpleNamespace(get_logger=lambda name: _Logger()),
        "rclpy.executors": types.SimpleNamespace(
            ExternalShutdownException=type("ExternalShutdownException", (Exception,), {})
        ),
        "rclpy.qos": types.SimpleNamespace(
            QoSProfile=_Kw,
            qos_profile_sensor_data=types.SimpleNamespace(reliability="BEST_EFFORT", durability="VOLATILE"),
            HistoryPolicy=types.SimpleNamespace(KEEP_LAST="KEEP_LAST"),
            ReliabilityPolicy=types.SimpleNamespace(RELIABLE="RELIABLE"),
            DurabilityPolicy=types.SimpleNamespace(VOLATILE="VOLATILE"),
        ),
        "rcl_interfaces": types.SimpleNamespace(),
        "rcl_interfaces.msg": types.SimpleNamespace(
            ParameterDescriptor=_Kw, FloatingPointRange=_Kw, IntegerRange=_Kw, SetParametersResult=_Kw
        ),
        "tf2_ros": types.SimpleNamespace(TransformBroadcaster=_Broadcaster),
        "message_filters": types.SimpleNamespace(
            Subscriber=_Subscriber, ApproximateTimeSynchronizer=_Synchronizer
        ),
    }
    for package, names in (
        ("sensor_msgs", ("Image", "CameraInfo", "PointCloud2")),
        ("geometry_msgs", ("PoseWithCovarianceStamped",)),
        ("nav_msgs", ("Odometry",)),
        ("diagnostic_msgs", ("DiagnosticArray",)),
    ):
        mods[package] = types.SimpleNamespace()
        mods[f"{package}.msg"] = types.SimpleNamespace(**{n: type(n, (token,), {}) for n in names})
    return mods


@pytest.fixture
def node_modules(monkeypatch):
    """(matcher_node, stereo_matcher_node) on the stand-in rclpy (skips nothing: rclpy is not needed)."""
    for name, module in _fake_ros_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("lightglue_ros.matcher_node", "lightglue_ros.stereo_matcher_node"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    mono = importlib.import_module("lightglue_ros.matcher_node")
    stereo = importlib.import_module("lightglue_ros.stereo_matcher_node")
    yield mono, stereo
    for name in ("lightglue_ros.matcher_node", "lightglue_ros.stereo_matcher_node"):
        sys.modules.pop(name, None)
    _Node.overrides = {}


def _wait(node, count, timeout=60):
    deadline = time.monotonic() + timeout
    while node.worker.counters()["frames_processed"] < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_matcher_node_wiring(node_modules):
    mono, _ = node_modules
    _Node.overrides = {"max_keypoints": 384, "qos_depth": 3}
    node = mono.MatcherNode(types=TYPES)
    # parameters: every schema entry declared, ranges and read-only flags in the descriptors
    assert set(node.params) == {p.name for p in P.params_for("matcher")}
    assert node.params["max_keypoints"] == 384
    d = node.descriptors["max_keypoints"]
    assert d.read_only and d.integer_range[0].from_value == 16 and d.integer_range[0].to_value == 16384
    d = node.descriptors["ransac_threshold"]
    assert not d.read_only and d.floating_point_range[0].to_value == 50.0
    assert "sift" in node.descriptors["extractor"].additional_constraints
    # topics and QoS
    assert {"matches", "matches_info", "relative_pose", "odometry", "debug_image", "/diagnostics"} <= set(
        node.publishers
    )
    msg_type, on_image, qos = node.subscriptions["image"]
    assert qos.reliability == "BEST_EFFORT" and qos.depth == 3
    _, on_info, _ = node.subscriptions["camera_info"]
    assert node.timers[0][0] == 1.0

    frames = synthetic.sequence(3, W, H, step=0.1, seed=4)
    for i, f in enumerate(frames):
        header = cv.make_header(TYPES, f.stamp_ns, "cam")
        on_info(cv.make_camera_info(TYPES, header, W, H, f.K))
        if i == 2:
            node.pub_debug.subscribers = 1  # someone watches the debug image from now on
        start = time.perf_counter()
        on_image(cv.numpy_to_image(TYPES, f.image, "mono8", header))
        assert time.perf_counter() - start < 0.05  # the callback only hands the frame over
        _wait(node, i + 1)
    pubs = node.publishers
    assert len(pubs["odometry"].messages) == 3 and len(pubs["matches"].messages) == 2
    assert len(pubs["relative_pose"].messages) == 2 and len(pubs["matches_info"].messages) == 2
    assert len(pubs["debug_image"].messages) == 1  # only while subscribed
    assert not node.tf_broadcaster.sent  # publish_tf is off by default
    node.timers[0][1]()  # the diagnostics timer
    status = pubs["/diagnostics"].messages[-1].status[0]
    values = cv.status_values(status)
    assert (
        values["frames_in"] == "3" and values["frames_processed"] == "3" and values["frames_dropped"] == "0"
    )
    assert "latency_p95_ms" in values and status.hardware_id == "/matcher"

    # runtime parameters: thresholds yes (through the callback), model no, unrelated names pass
    assert node.set_parameters([_Param("ransac_threshold", 2.0), _Param("publish_tf", True)]).successful
    result = node.param_callbacks[0]([_Param("extractor", "superpoint")])
    assert not result.successful and "start-up" in result.reason
    assert node.param_callbacks[0]([_Param("use_sim_time", True)]).successful
    assert not node.set_parameters([_Param("ransac_threshold", 500.0)]).successful
    f = synthetic.sequence(4, W, H, step=0.1, seed=4)[-1]
    on_image(cv.numpy_to_image(TYPES, f.image, "mono8", cv.make_header(TYPES, f.stamp_ns, "cam")))
    _wait(node, 4)
    assert node.core.estimator.conf.ransac_th == 2.0 and len(node.tf_broadcaster.sent) == 1
    node.destroy_node()
    assert node.destroyed


def test_matcher_node_matches_ahead_on_a_third_thread(node_modules):
    mono, _ = node_modules
    _Node.overrides = {"max_keypoints": 384, "match_ahead": "always"}
    node = mono.MatcherNode(types=TYPES)
    assert [w._thread.name for w in node.worker.workers] == ["lightglue_extract", "lightglue_match",
                                                             "lightglue_track"]
    _, on_image, _ = node.subscriptions["image"]
    _, on_info, _ = node.subscriptions["camera_info"]
    for i, f in enumerate(synthetic.sequence(4, W, H, step=0.1, seed=4)):
        header = cv.make_header(TYPES, f.stamp_ns, "cam")
        on_info(cv.make_camera_info(TYPES, header, W, H, f.K))
        on_image(cv.numpy_to_image(TYPES, f.image, "mono8", header))
        _wait(node, i + 1)
    assert len(node.publishers["relative_pose"].messages) == 3 and node.core.counts["rematched"] == 0
    node.timers[0][1]()
    values = cv.status_values(node.publishers["/diagnostics"].messages[-1].status[0])
    assert values["frames_processed"] == "4" and values["frames_rematched"] == "0"
    node.destroy_node()


def test_matcher_node_uses_its_clock_and_counts_bad_input(node_modules):
    """Latency and frame age on the node's clock (sim time with use_sim_time), and bad input
    (an unknown encoding, a camera_info OpenCV refuses) counted by reason on /diagnostics."""
    mono, _ = node_modules
    _Node.overrides = {"max_keypoints": 384}
    node = mono.MatcherNode(types=TYPES)
    sim_ns = [0]
    node.get_clock = lambda: types.SimpleNamespace(now=lambda: types.SimpleNamespace(nanoseconds=sim_ns[0]))
    _, on_image, _ = node.subscriptions["image"]
    _, on_info, _ = node.subscriptions["camera_info"]
    frames = synthetic.sequence(3, W, H, step=0.1, seed=4)
    for i, f in enumerate(frames):
        sim_ns[0] = f.stamp_ns + 250_000_000  # the sim clock stands still while the frame is processed
        header = cv.make_header(TYPES, f.stamp_ns, "cam")
        info = cv.make_camera_info(TYPES, header, W, H, f.K)
        info.d = np.array([1e-4, 0.0, 0.0])  # plumb_bob with 3 coefficients: padded, counted once
        on_info(info)
        image = cv.numpy_to_image(TYPES, f.image, "mono8", header)
        if i == 1:
            image.encoding = "nv12_unknown"
        on_image(image)
        _wait(node, i + 1)
    node.timers[0][1]()
    values = cv.status_values(node.publishers["/diagnostics"].messages[-1].status[0])
    assert values["warnings_bad_encoding"] == "1" and values["warnings_bad_calibration"] == "1"
    assert values["frames_skipped"] == "1" and values["worker_errors"] == "0"
    assert float(values["age_p50_ms"]) == pytest.approx(250.0) and float(values["latency_p50_ms"]) == 0.0
    assert len(node.publishers["relative_pose"].messages) == 1  # frame 2 against frame 0
    node.destroy_node()


def test_matcher_node_depth_sync_and_bad_parameters(node_modules):
    mono, _ = node_modules
    _Node.overrides = {"use_depth": True, "sync_slop": 0.05, "qos": "reliable"}
    node = mono.MatcherNode(types=TYPES)
    assert node._sync.topics == ["image", "depth"] and node._sync.slop == 0.05
    assert node.subscriptions["image"][2].reliability == "RELIABLE"
    node.destroy_node()
    _Node.overrides = {"device": "tpu"}
    with pytest.raises(P.ParamError, match="device"):
        mono.MatcherNode(types=TYPES)


def test_repeated_warnings_are_throttled(node_modules):
    mono, _ = node_modules
    logger = _Logger()
    log = mono.RosLog(logger, throttle_s=0.3)
    for i in range(5):  # a camera with an unsupported encoding: one warning per frame
        log.warning(f"skipping frame at {i}.25: unsupported image encoding 'yuv422'")
    log.warning("depth image ignored")  # another warning is not held back
    time.sleep(0.35)
    log.warning("skipping frame at 9.25: unsupported image encoding 'yuv422'")
    texts = [text for level, text in logger.lines if level == "warning"]
    assert len(texts) == 3 and texts[0].startswith("skipping frame at 0.25") and texts[1] == "depth image ignored"
    assert texts[2].startswith("skipping frame at 9.25") and "4 similar warning(s) not shown" in texts[2]


def test_stereo_node_wiring(node_modules):
    _, stereo = node_modules
    _Node.overrides = {"max_keypoints": 384}
    node = stereo.StereoMatcherNode(types=TYPES)
    assert set(node.params) == {p.name for p in P.params_for("stereo_matcher")}
    assert node._sync.topics == ["left/image", "right/image", "left/camera_info", "right/camera_info"]
    left, right, _, K = synthetic.stereo_pair(0.1, W, H, seed=5)
    header = cv.make_header(TYPES, 5, "left")
    infos = (
        cv.make_camera_info(TYPES, header, W, H, K),
        cv.make_camera_info(TYPES, header, W, H, K, P=np.hstack([K, [[-K[0, 0] * 0.1], [0], [0]]])),
    )
    node._sync.callbacks[0](
        cv.numpy_to_image(TYPES, left, "mono8", header),
        cv.numpy_to_image(TYPES, right, "mono8", header),
        *infos,
    )
    _wait(node, 1)
    cloud = cv.pointcloud2_to_array(node.publishers["points"].messages[0])
    assert len(cloud) > 50 and np.all(cloud["z"] > 0)
    assert node.publishers["matches"].messages[0].width >= len(cloud)
    node.destroy_node()


# ---- the real thing, on a ROS 2 machine -----------------------------------------------------------
def _real_rclpy():
    """The real rclpy and the message packages the node uses, or skip (CI has none of them)."""
    rclpy = pytest.importorskip("rclpy")
    for module in ("sensor_msgs.msg", "nav_msgs.msg", "diagnostic_msgs.msg", "tf2_ros", "message_filters"):
        pytest.importorskip(module)
    if isinstance(rclpy, types.SimpleNamespace):  # a stand-in left behind
        pytest.skip("rclpy is a stand-in")
    return rclpy


def _spin_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.mark.timeout(300)
def test_real_rclpy_matcher_node():
    """MatcherNode in a real rclpy graph: a peer node publishes synthetic frames (Image + CameraInfo,
    sensor-data QoS) and checks matches / matches_info / relative_pose / odometry / tf / debug_image /
    /diagnostics, runtime parameter rules and a bad frame being skipped."""
    rclpy = _real_rclpy()
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from tf2_msgs.msg import TFMessage

    from featmatch_core.geometry.epipolar import relative_pose_error

    sys.modules.pop("lightglue_ros.matcher_node", None)  # import it on the real rclpy, not a stand-in
    from lightglue_ros.matcher_node import MatcherNode

    namespace = f"/lightglue_test_{os.getpid()}"  # topics of their own, whatever else runs on this graph
    rclpy.init(
        args=["--ros-args", "-r", f"__ns:={namespace}", "-p", "max_keypoints:=512", "-p", "publish_tf:=true"]
    )
    executor = SingleThreadedExecutor()
    node = peer = None
    try:
        node = MatcherNode()
        peer = rclpy.create_node("lightglue_test_peer")
        got = collections.defaultdict(list)

        def keep(name):
            return lambda msg: got[name].append(msg)

        for msg_type, topic in (
            (PointCloud2, "matches"),
            (DiagnosticArray, "matches_info"),
            (PoseWithCovarianceStamped, "relative_pose"),
            (Odometry, "odometry"),
            (Image, "debug_image"),
            (DiagnosticArray, "/diagnostics"),
            (TFMessage, "/tf"),
        ):
            peer.create_subscription(msg_type, topic, keep(topic), 10)
        pub_image = peer.create_publisher(Image, "image", qos_profile_sensor_data)
        pub_info = peer.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
        executor.add_node(node)
        executor.add_node(peer)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        assert _spin_until(
            lambda: pub_image.get_subscription_count() > 0
            and pub_info.get_subscription_count() > 0
            and node.pub_matches.get_subscription_count() > 0
            and node.pub_debug.get_subscription_count() > 0
        ), "discovery"

        T = cv.RclpyTypes()
        frames = synthetic.sequence(4, W, H, step=0.1, seed=4)
        header = cv.make_header(T, frames[0].stamp_ns, "cam")
        assert _spin_until(
            lambda: pub_info.publish(cv.make_camera_info(T, header, W, H, frames[0].K)) or node.camera_info
        )
        for i, f in enumerate(frames):
            header = cv.make_header(T, f.stamp_ns, "cam")
            pub_info.publish(cv.make_camera_info(T, header, W, H, f.K))
            pub_image.publish(cv.numpy_to_image(T, f.image, "mono8", header))
            assert _spin_until(lambda i=i: node.worker.counters()["frames_processed"] > i), f"frame {i}"
        # a bad frame (unknown encoding) is skipped and counted; the node goes on
        bad = cv.numpy_to_image(T, frames[0].image, "mono8", cv.make_header(T, frames[-1].stamp_ns + 10**8, "cam"))
        bad.encoding = "yuv422_weird"
        pub_image.publish(bad)
        assert _spin_until(lambda: node.worker.counters()["frames_processed"] > len(frames))
        assert node.core.counts["skipped"] == 1

        n = len(frames) - 1  # the first frame is the reference
        assert _spin_until(lambda: len(got["matches"]) >= n and len(got["relative_pose"]) >= n, 30)
        assert _spin_until(lambda: len(got["odometry"]) >= len(frames) and len(got["matches_info"]) >= n, 30)
        # matches: the documented fields, one point per match, pixels inside the image, most inliers
        for msg in got["matches"]:
            points = cv.pointcloud2_to_array(msg)
            assert set(points.dtype.names) == {"x", "y", "z", "u0", "v0", "u1", "v1", "score", "idx0", "idx1", "inlier"}
            assert len(points) > 50 and points["inlier"].mean() > 0.5
            assert points["u0"].min() >= 0 and points["u1"].max() < W and points["v1"].max() < H
            assert msg.header.frame_id == "cam"
        # relative pose: the current camera in the reference one, as the generated motion says
        stamps = [f.stamp_ns for f in frames]
        for msg in got["relative_pose"]:
            i = stamps.index(cv.header_ns(msg))
            T_gt = frames[i].T_cam_world @ np.linalg.inv(frames[i - 1].T_cam_world)  # reference -> current
            T_0to1 = np.linalg.inv(cv.pose_from_msg(msg.pose))
            err_R, err_t = relative_pose_error(T_gt, T_0to1[:3, :3], T_0to1[:3, 3])
            assert err_R < 2.0 and err_t < 15.0, (i, err_R, err_t)
            assert np.linalg.norm(T_0to1[:3, 3]) == pytest.approx(1.0)  # monocular: unit translation
            assert msg.header.frame_id == "cam"
        info = cv.status_values(got["matches_info"][-1].status[0])
        assert info["model"] == "sift+nn" and int(info["inliers"]) > 50 and info["pose"] == "True"
        odom = got["odometry"][-1]
        assert odom.header.frame_id == "odom" and odom.child_frame_id == "cam"
        assert got["/tf"] and got["/tf"][-1].transforms[0].child_frame_id == "cam"  # publish_tf: true
        assert got["debug_image"] and got["debug_image"][-1].encoding == "bgr8"  # someone subscribes
        # /diagnostics (every second): this node's status with the counters
        ours = f"{namespace}/matcher"
        assert _spin_until(
            lambda: any(
                s.hardware_id == ours and cv.status_values(s).get("frames_processed") == str(len(frames) + 1)
                for msg in got["/diagnostics"]
                for s in msg.status
            ),
            10,
        )
        status = [s for msg in got["/diagnostics"] for s in msg.status if s.hardware_id == ours][-1]
        values = cv.status_values(status)
        assert values["frames_skipped"] == "1" and values["worker_errors"] == "0" and values["model"] == "sift+nn"

        # runtime parameters: thresholds change, the model is read-only, out-of-range values are refused
        assert node.set_parameters([Parameter("depth_confidence", value=0.9)])[0].successful
        assert node.set_parameters([Parameter("ransac_threshold", value=2.0)])[0].successful
        assert not node.set_parameters([Parameter("extractor", value="superpoint")])[0].successful
        assert not node.set_parameters([Parameter("ransac_threshold", value=500.0)])[0].successful
        result = node.set_parameters([Parameter("estimator", value="nope")])[0]
        assert not result.successful and "estimator" in result.reason
        assert node.get_parameter("extractor").value == "sift"
        assert node.core.params["ransac_threshold"] == 2.0 and node.core.params["depth_confidence"] == 0.9
    finally:
        executor.shutdown()
        for n_ in (node, peer):
            if n_ is not None:
                n_.destroy_node()
        rclpy.shutdown()
        sys.modules.pop("lightglue_ros.matcher_node", None)


@pytest.mark.timeout(300)
def test_real_rclpy_stereo_matcher_node():
    """StereoMatcherNode in a real rclpy graph: left/right images and camera infos through
    message_filters' ApproximateTimeSynchronizer, 3D points at the generated depth, a bad pair skipped."""
    rclpy = _real_rclpy()
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    for name in ("lightglue_ros.matcher_node", "lightglue_ros.stereo_matcher_node"):
        sys.modules.pop(name, None)  # import them on the real rclpy, not a stand-in
    from lightglue_ros.stereo_matcher_node import StereoMatcherNode

    namespace = f"/lightglue_stereo_test_{os.getpid()}"
    rclpy.init(args=["--ros-args", "-r", f"__ns:={namespace}", "-p", "max_keypoints:=512"])
    executor = SingleThreadedExecutor()
    node = peer = None
    try:
        node = StereoMatcherNode()
        peer = rclpy.create_node("lightglue_stereo_test_peer")
        got = collections.defaultdict(list)
        for msg_type, topic in ((PointCloud2, "points"), (PointCloud2, "matches"), (DiagnosticArray, "/diagnostics")):
            peer.create_subscription(msg_type, topic, lambda msg, topic=topic: got[topic].append(msg), 10)
        pubs = [
            peer.create_publisher(msg_type, topic, qos_profile_sensor_data)
            for msg_type, topic in (
                (Image, "left/image"),
                (Image, "right/image"),
                (CameraInfo, "left/camera_info"),
                (CameraInfo, "right/camera_info"),
            )
        ]
        executor.add_node(node)
        executor.add_node(peer)
        threading.Thread(target=executor.spin, daemon=True).start()
        assert _spin_until(
            lambda: all(p.get_subscription_count() > 0 for p in pubs)
            and node.pub_points.get_subscription_count() > 0
        ), "discovery"

        T = cv.RclpyTypes()
        baseline = 0.12
        left, right, depth, K = synthetic.stereo_pair(baseline, W, H, seed=5)
        P_right = np.hstack([K, [[-K[0, 0] * baseline], [0], [0]]])

        def publish(stamp_ns, left_encoding="mono8"):
            header = cv.make_header(T, stamp_ns, "left_optical")
            left_msg = cv.numpy_to_image(T, left, "mono8", header)
            left_msg.encoding = left_encoding
            pubs[2].publish(cv.make_camera_info(T, header, W, H, K))
            pubs[3].publish(cv.make_camera_info(T, cv.make_header(T, stamp_ns, "right_optical"), W, H, K, P=P_right))
            pubs[1].publish(cv.numpy_to_image(T, right, "mono8", cv.make_header(T, stamp_ns, "right_optical")))
            pubs[0].publish(left_msg)

        stamp = 1_700_000_000_000_000_000
        for i in range(2):
            publish(stamp + i * 10**8)
            assert _spin_until(lambda i=i: node.worker.counters()["frames_processed"] > i), f"pair {i}"
        publish(stamp + 2 * 10**8, left_encoding="yuv422_weird")  # skipped, the node goes on
        assert _spin_until(lambda: node.worker.counters()["frames_processed"] > 2), "bad pair"
        publish(stamp + 3 * 10**8)
        assert _spin_until(lambda: node.worker.counters()["frames_processed"] > 3), "pair after the bad one"
        assert node.core.counts["skipped"] == 1
        assert _spin_until(lambda: len(got["points"]) >= 3 and len(got["matches"]) >= 3, 30)

        points = cv.pointcloud2_to_array(got["points"][-1])
        assert set(points.dtype.names) == {"x", "y", "z"} and len(points) > 50
        assert got["points"][-1].header.frame_id == "left_optical"
        # depth of the points = the generated depth at their pixels (rectified pair, known baseline)
        u = np.round(points["x"] / points["z"] * K[0, 0] + K[0, 2]).astype(int).clip(0, W - 1)
        v = np.round(points["y"] / points["z"] * K[1, 1] + K[1, 2]).astype(int).clip(0, H - 1)
        truth = depth[v, u]
        ok = truth > 0
        assert ok.mean() > 0.9 and np.median(np.abs(points["z"][ok] - truth[ok]) / truth[ok]) < 0.05
        matches = cv.pointcloud2_to_array(got["matches"][-1])
        assert {"u0", "v0", "u1", "v1", "score", "inlier", "x", "y", "z"} <= set(matches.dtype.names)
        assert matches["inlier"].sum() == len(points)
        ours = f"{namespace}/stereo_matcher"
        assert _spin_until(
            lambda: any(s.hardware_id == ours for msg in got["/diagnostics"] for s in msg.status), 10
        )
    finally:
        executor.shutdown()
        for n_ in (node, peer):
            if n_ is not None:
                n_.destroy_node()
        rclpy.shutdown()
        for name in ("lightglue_ros.matcher_node", "lightglue_ros.stereo_matcher_node"):
            sys.modules.pop(name, None)
