"""The ROS-free streaming core of the nodes and of the bag replay: message objects in, message
objects out.

- ``FrameWorker``: one thread doing the heavy work on the newest frame. ``submit`` never
  blocks; when the queue (``queue_size``, 1 by default) is full the OLDEST waiting frame is
  dropped and counted, so the worker always moves on to the newest one.
- ``FrameMatcher`` (monocular): ``process(image, camera_info, depth)`` extracts the frame once
  (``featmatch_core.FeatureStream``), matches it against the reference frame (the previous
  frame, or the current keyframe), estimates the relative pose and returns a ``FrameResult``
  holding the messages the node publishes:

  * ``matches`` (``sensor_msgs/PointCloud2``, stamped and framed like the CURRENT image): one
    point per match with fields x, y, z, u0, v0, u1, v1, score, idx0, idx1, inlier. (u0, v0)
    are pixels of the reference frame, (u1, v1) of the current frame, idx0/idx1 keypoint
    indices in each. x, y, z: the triangulated point in the current optical frame when a
    pose was found (metric with depth, else in units of the unit-norm baseline), otherwise
    the bearing (x/z, y/z, 1) with calibration, or 0.
  * ``matches_info`` (``diagnostic_msgs/DiagnosticArray``, same stamp): the companion of
    ``matches``: ``reference_stamp`` (sec.nanosec) and ``reference_frame_id`` of frame 0, the
    model, keypoint / match / inlier counts, LightGlue's stop layer, the estimator outcome.
  * ``relative_pose`` (``geometry_msgs/PoseWithCovarianceStamped``): the pose of the current
    optical frame in the reference optical frame (``inv(T_0to1)``), header = current stamp and
    the reference image's frame_id. Monocular: the translation has unit norm unless a depth
    image gave it a metric scale (``matches_info`` ``metric_scale``). The covariance is a rough
    isotropic guess from the inlier count.
  * ``odometry`` (``nav_msgs/Odometry``) chaining the relative poses: ``odom_frame`` (REP 105;
    the first camera pose, turned so that x is forward and z up as REP 103 wants) to the
    camera optical frame; ``transform`` the same as a ``TransformStamped`` for tf.
  * ``line_matches`` (``sensor_msgs/PointCloud2``, same stamp and frame as ``matches``), only
    from a matcher with lines (GlueStick): one point per line match with fields x, y, z,
    u0_s, v0_s, u0_e, v0_e (segment start/end in the reference frame), u1_s, v1_s, u1_e, v1_e
    (current frame), score, idx0, idx1 (line indices). x, y, z: the bearing of the current
    segment's midpoint with calibration, else 0.
  * ``debug_image()``: the drawn matches (and matched segments), only computed when asked for.

  Bad input never raises: an unreadable image is counted and skipped, a missing camera_info
  means uncalibrated mode (fundamental matrix or homography, no pose, one warning), a stamp
  going backwards (a bag loop) resets the reference frame and the odometry, too few matches
  give an empty pose and a WARN.
- ``StereoMatcher``: left/right pair -> matches and a triangulated ``PointCloud2`` (xyz, left
  optical frame) with the calibrated baseline.

``diagnostics()`` returns plain data (level, message, values); ``conversions`` turns it into
``diagnostic_msgs``.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

import featmatch_core
from featmatch_core.estimators import get_estimator
from featmatch_core.geometry.depth import invert_transform
from featmatch_core.geometry.triangulation import triangulate_dlt
from featmatch_core.models.pipeline import FeatureStream, Frame, Pipeline
from featmatch_core.viz import draw_matches

from . import conversions as cv
from . import params as P

logger = logging.getLogger("lightglue_ros")

# optical frame (x right, y down, z forward) -> REP 103 body (x forward, y left, z up)
# glibc keeps freed heap pages of its per-thread arenas; with extraction and matching spread
# over torch/OpenCV threads the resident size of a long run then creeps up in steps (measured:
# +190 MB over 2000 castle frames, flat at +0 with a trim every 100 frames). Hand them back.
TRIM_HEAP_EVERY = 100


def trim_heap() -> bool:
    """Return free heap memory to the OS (glibc ``malloc_trim``); False where unavailable."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM is False:
        return False
    _MALLOC_TRIM(0)
    return True


_MALLOC_TRIM: Any = None

T_BODY_OPTICAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


# ---------------------------------------------------------------------------------------
# statistics and the worker
# ---------------------------------------------------------------------------------------
class LatencyStats:
    """Percentiles over the last ``window`` values (milliseconds)."""

    def __init__(self, window: int = 500) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=int(window))
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self.values.append(float(value))

    def percentiles(self, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float]:
        with self._lock:
            values = np.array(self.values, dtype=np.float64)
        if not len(values):
            return {f"p{q:g}": float("nan") for q in qs}
        return {f"p{q:g}": float(np.percentile(values, q)) for q in qs}


class FrameWorker:
    """Runs ``handler(item)`` on a thread; ``submit`` never blocks and keeps the newest items.

    Counters: ``received`` (submitted), ``processed`` (handler returned or raised),
    ``dropped`` (pushed out of a full queue, never processed), ``errors`` (handler raised).
    """

    def __init__(
        self,
        handler: Callable[[Any], Any],
        queue_size: int = 1,
        name: str = "lightglue_worker",
        log: logging.Logger | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.handler = handler
        self.queue_size = int(queue_size)
        self.log = log or logger
        self.received = self.processed = self.dropped = self.errors = 0
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """Queue ``item``; False if an older waiting item had to be dropped for it."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("FrameWorker is stopped")
            self.received += 1
            dropped = False
            while len(self._items) >= self.queue_size:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append(item)
            self._cond.notify_all()
        return not dropped

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if not self._items:
                    return
                item = self._items.popleft()
                self._busy = True
            try:
                self.handler(item)
            except Exception:  # the worker must survive anything a frame does
                self.errors += 1
                self.log.exception("frame processing failed")
            finally:
                with self._cond:
                    self._busy = False
                    self.processed += 1
                    self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._items) + int(self._busy)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout)

    def stop(self, drain: bool = True, timeout: float | None = 10.0) -> None:
        with self._cond:
            if not drain:
                self.dropped += len(self._items)
                self._items.clear()
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def counters(self) -> dict[str, int]:
        with self._cond:
            return {
                "frames_in": self.received,
                "frames_processed": self.processed,
                "frames_dropped": self.dropped,
                "worker_errors": self.errors,
                "queued": len(self._items),
            }


# ---------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------
def triangulate(x0: np.ndarray, x1: np.ndarray, T_0to1: np.ndarray) -> np.ndarray:
    """Points (K, 3) in camera 0 from normalised coordinates (K, 2) of both views; NaN behind a camera."""
    if not len(x0):
        return np.zeros((0, 3))
    P0 = np.hstack([np.eye(3), np.zeros((3, 1))])
    X = triangulate_dlt(x0.astype(np.float64), x1.astype(np.float64), P0, T_0to1[:3, :4])
    z1 = X @ T_0to1[:3, :3].T[:, 2] + T_0to1[2, 3]
    bad = ~np.isfinite(X).all(1) | (X[:, 2] <= 0) | (z1 <= 0)
    X[bad] = np.nan
    return X


def normalise(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    return (points - K[:2, 2]) / np.diag(K)[:2]


def sample_depth_nearest(depth: np.ndarray, points: np.ndarray) -> np.ndarray:
    h, w = depth.shape
    xy = np.round(points).astype(np.int64)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    out = np.zeros(len(points), np.float32)
    out[ok] = depth[xy[ok, 1], xy[ok, 0]]
    return out


def rotation_angle_deg(R: np.ndarray) -> float:
    return float(np.rad2deg(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


# ---------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------
@dataclass
class Reference:
    """The frame new frames are matched against (features extracted once)."""

    frame: Frame
    stamp_ns: int
    frame_id: str
    image: np.ndarray  # uint8 gray / RGB, for the debug image
    depth: np.ndarray | None
    T_odom_cam: np.ndarray


@dataclass
class FrameResult:
    stamp_ns: int
    record: dict[str, Any] = field(default_factory=dict)  # plain per-frame facts (replay, tests)
    matches: Any = None
    matches_info: Any = None
    relative_pose: Any = None
    odometry: Any = None
    transform: Any = None
    cloud: Any = None  # stereo: triangulated xyz
    line_matches: Any = None  # matchers with lines (GlueStick): one point per line match
    skipped: str | None = None  # why the frame was not processed
    _debug: Callable[[], Any] | None = None

    def debug_image(self) -> Any:
        return self._debug() if self._debug is not None else None


def _describe_pipeline(pipe: Pipeline) -> str:
    return f"{pipe.conf.extractor.name}+{pipe.conf.matcher.name}"


class _MatcherCore:
    """Pipeline, runtime parameters, counters and diagnostics shared by both matchers."""

    node = "matcher"

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        types: cv.MessageTypes | None = None,
        pipeline: Pipeline | None = None,
        log: logging.Logger | Any | None = None,
    ) -> None:
        self.params = P.validate(self.node, values)
        self.types = types or cv.rosbags_types()
        self.log = log or logger
        # the model is loaded here, once, never in a callback
        self._owns_pipeline = pipeline is None
        self.pipeline = pipeline or featmatch_core.load(
            P.pipeline_name(self.params), P.model_overrides(self.params)
        )
        self.model_name = (
            P.pipeline_name(self.params) if pipeline is None else _describe_pipeline(self.pipeline)
        )
        self.stream = FeatureStream(self.pipeline)
        self.latency = LatencyStats(self.params["latency_window"])
        self.processing = LatencyStats(self.params["latency_window"])
        self.counts = collections.Counter()
        self._frames_timed = 0
        self.last: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._dirty = True
        self._warned: set[str] = set()
        self.worker: FrameWorker | None = None  # set by the owner, for the diagnostics counters

    # ---- parameters ----------------------------------------------------------------------
    def set_params(self, changes: Mapping[str, Any]) -> tuple[bool, str]:
        """Validate and stage runtime changes (applied before the next frame). Model changes are refused."""
        reasons = [
            r for name, value in changes.items() if (r := P.runtime_change_error(self.node, name, value))
        ]
        if reasons:
            return False, "; ".join(reasons)
        with self._lock:
            self.params = P.validate(self.node, dict(changes), base=self.params)
            self._dirty = True
        return True, ""

    def _apply_params(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            params = dict(self.params)
        matcher_conf = self.pipeline.matcher.conf
        for param, key in P.MATCHER_CONF_KEYS.get(params["matcher"], {}).items():
            if key in matcher_conf:
                matcher_conf[key] = params[param]
        self._configure(params)

    def _configure(self, params: dict[str, Any]) -> None:
        pass

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(message)

    # ---- diagnostics --------------------------------------------------------------------------
    def _device_values(self) -> dict[str, Any]:
        device = self.pipeline.device
        values: dict[str, Any] = {
            "device": str(device),
            "model": self.model_name,
            "precision": self.pipeline.conf.precision,
        }
        if device.type == "cuda":
            values["gpu_memory_mb"] = torch.cuda.memory_allocated(device) / 2**20
            values["gpu_memory_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            values["gpu_memory_mb"] = 0.0
        return values

    def diagnostics(self) -> dict[str, Any]:
        """Plain data for /diagnostics: ``{"name", "level", "message", "values"}``."""
        counters = (
            self.worker.counters()
            if self.worker is not None
            else {
                "frames_in": self.counts["frames"],
                "frames_processed": self.counts["frames"],
                "frames_dropped": 0,
                "worker_errors": 0,
                "queued": 0,
            }
        )
        lat = {f"latency_{k}_ms": v for k, v in self.latency.percentiles().items()}
        proc = {f"processing_{k}_ms": v for k, v in self.processing.percentiles((50, 95)).items()}
        last = self.last
        level, message = last.get("level", "OK"), last.get("message", "waiting for frames")
        if counters["frames_in"] == 0:
            level, message = "OK", "waiting for frames"
        values = {
            **counters,
            "frames_skipped": self.counts["skipped"],
            "resets": self.counts["resets"],
            **lat,
            **proc,
            **self._device_values(),
        }
        for key in ("keypoints0", "keypoints1", "matches", "inliers", "stop_layer", "calibrated"):
            if key in last:
                values[key] = last[key]
        return {"name": f"lightglue_ros: {self.node}", "level": level, "message": message, "values": values}

    def diagnostic_array(self, stamp_ns: int, hardware_id: str = "") -> Any:
        d = self.diagnostics()
        status = cv.diagnostic_status(
            self.types, d["name"], d["level"], d["message"], d["values"], hardware_id
        )
        return cv.diagnostic_array(self.types, cv.make_header(self.types, stamp_ns, ""), [status])

    def _timing(self, result: FrameResult, start: float, received_ns: int | None) -> None:
        total_ms = (time.perf_counter() - start) * 1e3
        latency_ms = (time.time_ns() - received_ns) / 1e6 if received_ns is not None else total_ms
        result.record["processing_ms"] = total_ms
        result.record["latency_ms"] = latency_ms
        self.processing.add(total_ms)
        self.latency.add(latency_ms)
        self._frames_timed += 1
        if self._frames_timed % TRIM_HEAP_EVERY == 0:
            trim_heap()

    def _extract(self, image: np.ndarray, stamp: int) -> Frame:
        """Extract once; the 'resize' parameter shrinks large images but never enlarges small ones."""
        resize = int(self.params["resize"]) if self._owns_pipeline else None
        if resize is not None:
            self.pipeline.extractor.conf.resize = resize if 0 < resize < max(image.shape[:2]) else None
        return self.stream.extract(image, stamp)

    def _read_image(self, msg: Any, result: FrameResult) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            array = cv.image_to_numpy(msg)
        except (cv.ImageConversionError, ValueError, TypeError, AttributeError) as err:
            self.counts["skipped"] += 1
            result.skipped = f"bad image: {err}"
            self.log.warning(f"skipping frame at {result.stamp_ns / 1e9:.6f}: {err}")
            return None
        return cv.to_matcher_image(array, msg.encoding), cv.to_display(array, msg.encoding)


# ---------------------------------------------------------------------------------------
# monocular
# ---------------------------------------------------------------------------------------
class FrameMatcher(_MatcherCore):
    """Streaming monocular matcher + relative pose + odometry (see the module docstring)."""

    node = "matcher"
    max_failures = 3  # consecutive failed frames before the reference is replaced

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        types: cv.MessageTypes | None = None,
        pipeline: Pipeline | None = None,
        log: Any = None,
    ) -> None:
        super().__init__(values, types, pipeline, log)
        self.reference: Reference | None = None
        self.last_stamp_ns: int | None = None
        self.T_odom_cam = T_BODY_OPTICAL.copy()
        self.odom_cov = np.zeros(6)
        self.failures = 0
        self.estimator = None

    def _configure(self, params: dict[str, Any]) -> None:
        conf = {
            "name": params["estimator"],
            "ransac_th": params["ransac_threshold"],
            "confidence": params["ransac_confidence"],
        }
        self.estimator = get_estimator("relative_pose", conf)
        self.uncalibrated = get_estimator(params["uncalibrated_model"], conf)

    def reset(self) -> None:
        """Forget the reference frame and restart the odometry (a bag loop, a jump back in time)."""
        self.reference = None
        self.last_stamp_ns = None
        self.T_odom_cam = T_BODY_OPTICAL.copy()
        self.odom_cov = np.zeros(6)
        self.failures = 0

    # ---- the per-frame work --------------------------------------------------------------
    def process(
        self,
        image_msg: Any,
        camera_info: Any = None,
        depth_msg: Any = None,
        received_ns: int | None = None,
        want_debug: bool = False,
    ) -> FrameResult:
        start = time.perf_counter()
        self._apply_params()
        params = self.params
        self.counts["frames"] += 1
        stamp = cv.header_ns(image_msg)
        frame_id = str(image_msg.header.frame_id)
        result = FrameResult(stamp)
        if self.last_stamp_ns is not None and stamp < self.last_stamp_ns:
            self.log.info(
                f"time went back ({self.last_stamp_ns / 1e9:.3f} -> {stamp / 1e9:.3f} s): "
                "resetting the reference frame and the odometry"
            )
            self.counts["resets"] += 1
            self.reset()
            result.record["reset"] = True
        elif self.last_stamp_ns is not None and stamp == self.last_stamp_ns:
            self.counts["skipped"] += 1
            result.skipped = "duplicate stamp"
            return result
        images = self._read_image(image_msg, result)
        if images is None:
            return result
        matcher_input, display = images
        K = cv.camera_info_to_K(camera_info)
        if K is None:
            self._warn_once(
                "uncalibrated",
                "no (valid) camera_info: uncalibrated mode, fitting a "
                f"{params['uncalibrated_model']} and publishing no pose",
            )
        dist = cv.camera_info_distortion(camera_info) if K is not None else None
        depth = None
        if depth_msg is not None:
            try:
                depth = cv.depth_to_metres(cv.image_to_numpy(depth_msg), depth_msg.encoding)
                if depth.shape != matcher_input.shape[:2]:
                    self._warn_once(
                        "depth_size",
                        f"depth {depth.shape} and image {matcher_input.shape[:2]} "
                        "differ in size: depth ignored",
                    )
                    depth = None
            except (cv.ImageConversionError, ValueError) as err:
                self._warn_once("depth", f"depth image ignored: {err}")
        self.last_stamp_ns = stamp

        t0 = time.perf_counter()
        frame = self._extract(matcher_input, stamp)
        extract_ms = (time.perf_counter() - t0) * 1e3
        record = result.record
        record.update(
            stamp_ns=stamp, keypoints1=frame.num_keypoints, extract_ms=extract_ms, calibrated=K is not None
        )
        header = cv.make_header(self.types, stamp, frame_id)
        child = params["camera_frame"] or frame_id
        ref = self.reference
        if ref is None:
            self.reference = Reference(frame, stamp, frame_id, display, depth, self.T_odom_cam.copy())
            record.update(first=True, level="OK", message="first frame")
            self._publish_odometry(result, header, child, np.zeros(3), np.zeros(3))
            self.last = {
                "level": "OK",
                "message": "first frame (reference)",
                "keypoints1": frame.num_keypoints,
                "calibrated": K is not None,
            }
            self._timing(result, start, received_ns)
            return result

        t0 = time.perf_counter()
        pred = self.stream.match(ref.frame, frame)
        match_ms = (time.perf_counter() - t0) * 1e3
        pts0, pts1 = pred.points0.astype(np.float64), pred.points1.astype(np.float64)
        n = len(pred.matches)
        record.update(
            ref_stamp_ns=ref.stamp_ns,
            keypoints0=len(pred.keypoints0),
            matches=n,
            match_ms=match_ms,
            stop_layer=pred.info.get("stop_layer", -1),
        )
        t0 = time.perf_counter()
        inliers = np.zeros(n, bool)
        T_0to1 = None
        message = ""
        if n < params["min_matches"]:
            message = f"too few matches ({n} < min_matches {params['min_matches']})"
        else:
            if dist is not None:
                und0 = cv2.undistortPoints(pts0.reshape(-1, 1, 2), K, dist, P=K).reshape(-1, 2)
                und1 = cv2.undistortPoints(pts1.reshape(-1, 1, 2), K, dist, P=K).reshape(-1, 2)
            else:
                und0, und1 = pts0, pts1
            if K is not None:
                est = self.estimator({"m_kpts0": und0, "m_kpts1": und1, "camera0": K, "camera1": K})
            else:
                est = self.uncalibrated({"m_kpts0": und0, "m_kpts1": und1})
            inliers = est["inliers"]
            ninl = int(inliers.sum())
            if not est["success"]:
                message = "estimation failed"
            elif ninl < params["min_matches"]:
                message = f"too few inliers ({ninl} < min_matches {params['min_matches']})"
            elif K is not None:
                T_0to1 = np.asarray(est["model"], dtype=np.float64)
            record["model_fit"] = bool(est["success"])
        estimate_ms = (time.perf_counter() - t0) * 1e3
        ninl = int(inliers.sum())
        record.update(inliers=ninl, estimate_ms=estimate_ms, success=T_0to1 is not None)

        # scale from the reference frame's depth: triangulated (unit baseline) vs measured depth
        scale, metric = 1.0, False
        xyz = np.zeros((n, 3))
        if T_0to1 is not None:
            x0, x1 = normalise(und0, K), normalise(und1, K)
            X0 = triangulate(x0, x1, T_0to1)
            if ref.depth is not None:
                measured = sample_depth_nearest(ref.depth, pts0)
                ok = inliers & np.isfinite(X0[:, 2]) & (measured > 0)
                if ok.sum() >= 5:
                    scale, metric = float(np.median(measured[ok] / X0[ok, 2])), True
            T_0to1[:3, 3] *= scale
            xyz = (X0 * scale) @ T_0to1[:3, :3].T + T_0to1[:3, 3]
            record["T_0to1"] = T_0to1.copy()
        elif K is not None and n:
            xyz = np.hstack([normalise(pts1, K), np.ones((n, 1))])
        record.update(scale=scale, metric_scale=metric)

        # too few matches to be trusted: the published cloud is empty (matches_info still counts them)
        shown = slice(None) if n >= params["min_matches"] else slice(0, 0)
        result.matches = cv.matches_to_pointcloud2(
            self.types,
            header,
            pred.keypoints0,
            pred.keypoints1,
            pred.matches[shown],
            pred.scores[shown],
            xyz=xyz[shown],
            inliers=inliers[shown],
        )
        result.line_matches = self._line_matches(pred, header, K, shown)
        record["line_matches"] = len(pred.line_matches) if pred.lines0 is not None else -1
        level = "OK" if T_0to1 is not None or (K is None and not message) else "WARN"
        if not message:
            message = (
                "ok"
                if T_0to1 is not None
                else f"uncalibrated: {params['uncalibrated_model']} fitted, no pose"
            )
        record.update(level=level, message=message)

        if T_0to1 is not None:
            self.failures = 0
            T_ref_cur = invert_transform(T_0to1)
            f = float(np.mean(np.diag(K)[:2]))
            var_rot = (params["ransac_threshold"] / f) ** 2 / max(ninl, 1)
            var_t = var_rot * max(scale, 1e-9) ** 2
            cov = np.diag([var_t] * 3 + [var_rot] * 3)
            result.relative_pose = cv.pose_with_covariance_stamped(
                self.types, cv.make_header(self.types, stamp, ref.frame_id), T_ref_cur, cov
            )
            self.T_odom_cam = ref.T_odom_cam @ T_ref_cur
            self.odom_cov = self.odom_cov + np.diag(cov)
            dt = max((stamp - ref.stamp_ns) / 1e9, 1e-9)
            rvec = cv2.Rodrigues(T_ref_cur[:3, :3])[0].ravel()
            # twist of the camera in its own (current) frame
            linear = T_0to1[:3, :3] @ T_ref_cur[:3, 3] / dt
            angular = T_0to1[:3, :3] @ rvec / dt
            self._publish_odometry(result, header, child, linear, angular)
            flow = float(np.median(np.linalg.norm(pts1[inliers] - pts0[inliers], axis=1))) if ninl else 0.0
            record["median_flow_px"] = flow
            new_reference = (
                params["keyframe_policy"] == "previous"
                or ninl < params["keyframe_min_inliers"]
                or flow > params["keyframe_max_flow"]
            )
        else:
            self.failures += 1
            if K is None and not message.startswith("too few"):
                self.failures = 0
            new_reference = self.failures >= self.max_failures or K is None
            if new_reference and K is not None:
                self.log.warning(
                    f"{self.failures} frames without a pose: the current frame becomes the "
                    "reference (the odometry assumes no motion across the gap)"
                )
                self.counts["tracking_lost"] += 1
                self.failures = 0
            self._publish_odometry(result, header, child, np.zeros(3), np.zeros(3))
        record["new_reference"] = bool(new_reference)
        if new_reference:
            self.reference = Reference(frame, stamp, frame_id, display, depth, self.T_odom_cam.copy())

        info_values = {
            "reference_stamp": f"{ref.stamp_ns // 10**9}.{ref.stamp_ns % 10**9:09d}",
            "reference_frame_id": ref.frame_id,
            "model": self.model_name,
            "keypoints0": record["keypoints0"],
            "keypoints1": record["keypoints1"],
            "matches": n,
            "inliers": ninl,
            "stop_layer": record["stop_layer"],
            "line_matches": record["line_matches"],
            "pose": T_0to1 is not None,
            "metric_scale": metric,
            "scale": scale,
            "keyframe_policy": params["keyframe_policy"],
        }
        status = cv.diagnostic_status(self.types, "lightglue_ros: matches", level, message, info_values)
        result.matches_info = cv.diagnostic_array(self.types, header, [status])
        if want_debug:
            ref_image, kp0, kp1, m, s = ref.image, pred.keypoints0, pred.keypoints1, pred.matches, pred.scores
            title = f"{n} matches, {ninl} inliers" + ("" if T_0to1 is not None else f" ({message})")

            lines = {"lines0": pred.lines0, "lines1": pred.lines1, "line_matches": pred.line_matches}
            if pred.lines0 is not None:
                title += f", {len(pred.line_matches)} line matches"

            def debug() -> Any:
                canvas = draw_matches(ref_image, display, kp0, kp1, m, scores=s, title=title, **lines)
                return cv.numpy_to_image(self.types, canvas, "bgr8", header)

            result._debug = debug
        self.last = {
            "level": level,
            "message": message,
            "keypoints0": record["keypoints0"],
            "keypoints1": record["keypoints1"],
            "matches": n,
            "inliers": ninl,
            "stop_layer": record["stop_layer"],
            "calibrated": K is not None,
        }
        self._timing(result, start, received_ns)
        return result

    def _line_matches(self, pred: Any, header: Any, K: np.ndarray | None, shown: slice) -> Any:
        """The ``line_matches`` cloud of a matcher with lines (GlueStick), else None. x, y, z: the
        bearing (x/z, y/z, 1) of the current segment's midpoint with calibration, else 0."""
        if pred.lines0 is None or pred.lines1 is None:
            return None
        matches = pred.line_matches[shown]
        xyz = None
        if K is not None and len(matches):
            mid = pred.lines1[matches[:, 1]].mean(axis=1).astype(np.float64)
            xyz = np.hstack([normalise(mid, K), np.ones((len(mid), 1))])
        return cv.line_matches_to_pointcloud2(
            self.types, header, pred.lines0, pred.lines1, matches, pred.line_match_scores[shown], xyz=xyz
        )

    def _publish_odometry(
        self, result: FrameResult, header: Any, child: str, linear: np.ndarray, angular: np.ndarray
    ) -> None:
        odom_header = cv.make_header(self.types, cv.stamp_to_ns(header.stamp), self.params["odom_frame"])
        cov = np.zeros((6, 6))
        cov[np.diag_indices(6)] = self.odom_cov
        result.odometry = cv.odometry(
            self.types, odom_header, child, self.T_odom_cam, cov.reshape(-1), linear, angular
        )
        result.transform = cv.transform_stamped(self.types, odom_header, child, self.T_odom_cam)
        result.record["T_odom_cam"] = self.T_odom_cam.copy()


# ---------------------------------------------------------------------------------------
# stereo
# ---------------------------------------------------------------------------------------
class StereoMatcher(_MatcherCore):
    """Rectified stereo: match left to right, triangulate with the calibrated baseline."""

    node = "stereo_matcher"

    def process(
        self,
        left_msg: Any,
        right_msg: Any,
        left_info: Any = None,
        right_info: Any = None,
        received_ns: int | None = None,
        want_debug: bool = False,
    ) -> FrameResult:
        start = time.perf_counter()
        self._apply_params()
        params = self.params
        self.counts["frames"] += 1
        stamp = cv.header_ns(left_msg)
        frame_id = str(left_msg.header.frame_id)
        result = FrameResult(stamp)
        left = self._read_image(left_msg, result)
        right = self._read_image(right_msg, result) if left is not None else None
        if left is None or right is None:
            return result
        if left[0].shape[:2] != right[0].shape[:2]:
            self.counts["skipped"] += 1
            result.skipped = f"left {left[0].shape[:2]} and right {right[0].shape[:2]} differ in size"
            self.log.warning(result.skipped)
            return result
        t0 = time.perf_counter()
        f_left = self._extract(left[0], stamp)
        f_right = self._extract(right[0], stamp)
        pred = self.stream.match(f_left, f_right)
        match_ms = (time.perf_counter() - t0) * 1e3
        header = cv.make_header(self.types, stamp, frame_id)
        pts0, pts1 = pred.points0.astype(np.float64), pred.points1.astype(np.float64)
        n = len(pred.matches)
        record = result.record
        record.update(
            stamp_ns=stamp,
            keypoints0=len(pred.keypoints0),
            keypoints1=len(pred.keypoints1),
            matches=n,
            match_ms=match_ms,
            stop_layer=pred.info.get("stop_layer", -1),
        )

        K = None
        if left_info is not None:
            Pl = np.asarray(left_info.p, dtype=np.float64).reshape(3, 4)
            K = Pl[:, :3] if Pl[0, 0] > 0 else cv.camera_info_to_K(left_info)
        baseline = params["baseline"] or (cv.stereo_baseline(right_info) if right_info is not None else None)
        keep = np.zeros(n, bool)
        xyz = np.full((n, 3), np.nan)
        message, level = "ok", "OK"
        if K is None or not baseline:
            level, message = (
                "WARN",
                "no calibration (camera_info with K and the right P, or 'baseline'): no 3D",
            )
            self._warn_once("stereo_calib", message)
        elif n < params["min_matches"]:
            level, message = "WARN", f"too few matches ({n} < min_matches {params['min_matches']})"
        else:
            disparity = pts0[:, 0] - pts1[:, 0]
            row_err = np.abs(pts0[:, 1] - pts1[:, 1])
            with np.errstate(divide="ignore", invalid="ignore"):
                z = K[0, 0] * baseline / disparity
            keep = (
                (row_err <= params["max_row_error"])
                & (disparity >= max(params["min_disparity"], 1e-6))
                & (z <= params["max_depth"])
            )
            xyz[keep, 2] = z[keep]
            xyz[keep, 0] = (pts0[keep, 0] - K[0, 2]) * z[keep] / K[0, 0]
            xyz[keep, 1] = (pts0[keep, 1] - K[1, 2]) * z[keep] / K[1, 1]
            record.update(
                median_row_error_px=float(np.median(row_err)) if n else float("nan"),
                median_depth_m=float(np.median(z[keep])) if keep.any() else float("nan"),
            )
            # self-check: the relative pose of the two views must be the calibrated pure x translation
            est = get_estimator("relative_pose", {"ransac_th": 1.0})(
                {"m_kpts0": pts0, "m_kpts1": pts1, "camera0": K, "camera1": K}
            )
            if est["success"]:
                T = est["model"]
                t_dir = T[:3, 3] / np.linalg.norm(T[:3, 3])
                record["rotation_check_deg"] = rotation_angle_deg(T[:3, :3])
                record["baseline_direction_error_deg"] = float(
                    np.rad2deg(np.arccos(np.clip(-t_dir[0], -1, 1)))
                )
            if keep.sum() < params["min_matches"]:
                level, message = (
                    "WARN",
                    f"few stereo points ({int(keep.sum())}) pass the rectification checks",
                )
        record.update(
            points=int(keep.sum()),
            baseline_m=float(baseline or 0.0),
            inliers=int(keep.sum()),
            level=level,
            message=message,
        )
        result.matches = cv.matches_to_pointcloud2(
            self.types,
            header,
            pred.keypoints0,
            pred.keypoints1,
            pred.matches,
            pred.scores,
            xyz=np.nan_to_num(xyz),
            inliers=keep,
        )
        result.cloud = cv.xyz_to_pointcloud2(self.types, header, xyz[keep])
        if want_debug:
            canvas_args = (left[1], right[1], pred.keypoints0, pred.keypoints1, pred.matches[keep])

            def debug() -> Any:
                canvas = draw_matches(*canvas_args, title=f"{int(keep.sum())} stereo points of {n} matches")
                return cv.numpy_to_image(self.types, canvas, "bgr8", header)

            result._debug = debug
        self.last = {
            "level": level,
            "message": message,
            "keypoints0": record["keypoints0"],
            "keypoints1": record["keypoints1"],
            "matches": n,
            "inliers": int(keep.sum()),
            "stop_layer": record["stop_layer"],
            "calibrated": K is not None,
        }
        self._timing(result, start, received_ns)
        return result
