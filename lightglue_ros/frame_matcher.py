"""The ROS-free streaming core of the nodes and of the bag replay: messages in, plain results out.

- ``FrameWorker``: one thread doing the heavy work on the newest frame. ``submit`` never
  blocks; when the queue (``queue_size``, 1 by default) is full the OLDEST waiting frame is
  dropped and counted, so the worker always moves on to the newest one.
- ``FrameMatcher`` (monocular): ``process(image, camera_info, depth)`` runs the stages of
  ``stages`` in three steps and returns a ``FrameResult`` of plain data (numpy, dataclasses):

  1. ``prepare``: time checks, decoding, the camera_info (checked once per change), depth;
  2. ``extract``: the frame's features, once (``featmatch_core.FeatureStream``); this step
     touches no tracking state, so it can run for the next frame while ``track`` runs;
  3. ``track``: match against the reference frame (the previous frame or the current
     keyframe), undistort, estimate the relative pose, scale it (depth), decide the next
     reference, chain the odometry.

  ``FramePipeline`` runs ``prepare`` + ``extract`` and ``track`` on two threads; with
  ``match_ahead`` a third, ``match_ahead``, matches each frame against the reference it is
  expected to get while the frame before it is tracked, and ``track`` keeps those matches
  when the guess was right.

  ``messages.frame_messages`` turns a ``FrameResult`` into the ROS messages (the nodes and the
  replay both use it); their content is described there.

  Bad input never raises: an unreadable image, a zero stamp or a duplicate stamp is counted
  and skipped; a camera_info that cannot be used (K not finite / not positive, a distortion
  vector that does not fit its model) means uncalibrated mode (fundamental matrix or
  homography, no pose) until a valid one comes, a too-short distortion vector is padded with
  zeros; time going back or jumping ahead by more than ``max_time_gap`` resets the reference
  frame and the odometry; too few matches give no pose and a WARN. Every such warning is
  counted by reason on ``/diagnostics`` (``warnings_<reason>``) and rate-limited in the log.
- ``StereoMatcher``: left/right pair -> matches and triangulated points (left optical frame)
  with the calibrated baseline, through the same decode / extract / match stages.

``diagnostics()`` returns plain data (level, message, values); ``messages.diagnostics_message``
turns it into ``diagnostic_msgs``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import functools
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

import featmatch_core
from featmatch_core.device import own_stream
from featmatch_core.estimators import get_estimator
from featmatch_core.models.pipeline import FeatureStream, Frame, Pipeline, TwoViewMatches

from . import conversions as cv
from . import params as P
from . import problems
from . import stages as S
from .problems import Problems

logger = logging.getLogger("lightglue_ros")

# glibc keeps freed heap pages of its per-thread arenas; with extraction and matching spread
# over torch/OpenCV threads the resident size of a long run then creeps up in steps (measured:
# +190 MB over 2000 castle frames, flat at +0 with a trim every 100 frames, ~10 s on a CPU).
# Hand them back, by time: a trim stalls the tracking stage 4-13 ms (measured in a replay), so
# "every 100 frames" would put a stall at exactly the 99th percentile of a fast GPU stream.
TRIM_HEAP_PERIOD_S = 10.0


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


@contextlib.contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """For the block (a node's or a replay's stream): collect, then move every object alive now
    (the model, the imported modules, what the warm-up made) out of the cyclic collector's
    reach, so that a full collection scans only what the frames made. With a LightGlue
    pipeline loaded, about 200k objects, a full collection took 47-72 ms here, a pause that
    holds every stage at once (the GIL) and lands in some frame's latency; frozen, 0.01 ms.
    The objects are unfrozen after the block (garbage among them is collected again)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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

    With a CUDA ``device`` the handler's GPU work goes to a stream of the worker's own, and the
    worker waits for it after each item (one sync per frame): what the handler returns is
    complete when another stage's stream reads it (``then(result)`` runs after that wait), and
    tensors it frees are never still in use.
    """

    def __init__(
        self,
        handler: Callable[[Any], Any],
        queue_size: int = 1,
        name: str = "lightglue_worker",
        log: logging.Logger | None = None,
        device: torch.device | None = None,
        then: Callable[[Any], Any] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.handler = handler
        self.device = device
        self.then = then
        self.queue_size = int(queue_size)
        self.log = log or logger
        self.received = self.processed = self.dropped = self.errors = 0
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._draining = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any, block: bool = False) -> bool:
        """Queue ``item``; False if an item was dropped for it.

        ``block=False`` (live input): a full queue drops its OLDEST waiting item. ``block=True``
        (a replay at full speed, the hand-over between pipeline stages): wait for room instead;
        only a worker stopped without draining meanwhile drops ``item`` itself.
        """
        with self._cond:
            if self._stopping:
                raise RuntimeError("FrameWorker is stopped")
            self.received += 1
            if block:
                self._cond.wait_for(lambda: len(self._items) < self.queue_size or self._stopping)
                if self._stopping and not self._draining:
                    self.dropped += 1
                    return False
            dropped = False
            while len(self._items) >= self.queue_size:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append(item)
            self._cond.notify_all()
        return not dropped

    def _run(self) -> None:
        with own_stream(self.device) as stream:
            while True:
                with self._cond:
                    while not self._items and not self._stopping:
                        self._cond.wait()
                    if not self._items:
                        return
                    item = self._items.popleft()
                    self._busy = True
                    self._cond.notify_all()  # room for a blocked submit
                try:
                    result = self.handler(item)
                    if stream is not None:
                        stream.synchronize()
                    if self.then is not None:
                        self.then(result)
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

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Until a new item would start at once (nothing queued or running)."""
        return self.wait_idle(timeout)

    def stop(self, drain: bool = True, timeout: float | None = 10.0) -> None:
        with self._cond:
            if not drain:
                self.dropped += len(self._items)
                self._items.clear()
            self._stopping, self._draining = True, drain
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


STAGE_NAMES = {2: ("extract", "track"), 3: ("extract", "match", "track")}


class FramePipeline:
    """``FrameWorker`` stages in a row, each on its own thread: ``front(item)`` (prepare and
    extract), optionally ``middle`` (match ahead: ``FrameMatcher.match_ahead``), and
    ``back(previous stage's output)`` (track and publish). Frame n+1 is extracted while frame
    n is matched and its pose estimated, so the throughput is set by the slowest stage, not by
    their sum. With three stages, frame n+1 is also matched while frame n's pose is estimated.

    Frames are dropped only at the entrance (``submit`` without ``block`` keeps the newest, as
    ``FrameWorker``). Each hand-over between stages is a rendezvous: an item waits until the
    next stage is idle, so every item that passed the entrance reaches the last stage, in
    order, and no stage runs more than one item ahead of the next. A frame's latency is then
    at most about one slowest-stage time per stage (plus its wait at the entrance); a queue
    between the stages would add time without adding throughput.
    """

    def __init__(
        self,
        *stages: Callable[[Any], Any],
        queue_size: int = 1,
        name: str = "lightglue",
        log: logging.Logger | None = None,
        device: torch.device | None = None,
    ) -> None:
        if len(stages) < 2:
            raise ValueError(f"a FramePipeline has at least two stages, got {len(stages)}")
        names = STAGE_NAMES.get(len(stages), tuple(f"stage{i}" for i in range(len(stages))))
        workers: list[FrameWorker] = []
        for index in reversed(range(len(stages))):  # the last first: each stage hands over to the next
            then = functools.partial(self._hand_over, workers[0]) if workers else None
            workers.insert(0, FrameWorker(stages[index], queue_size if index == 0 else 1,
                                          f"{name}_{names[index]}", log, device, then))
        self.workers = workers

    @property
    def front(self) -> FrameWorker:
        return self.workers[0]

    @property
    def back(self) -> FrameWorker:
        return self.workers[-1]

    @staticmethod
    def _hand_over(next_stage: FrameWorker, item: Any) -> None:
        next_stage.wait_idle()
        next_stage.submit(item, block=True)

    def submit(self, item: Any, block: bool = False) -> bool:
        return self.front.submit(item, block)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Until a new frame would start at once (the extraction stage is idle)."""
        return self.front.wait_idle(timeout)

    @property
    def pending(self) -> int:
        return sum(worker.pending for worker in self.workers)

    def wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self.workers:  # in order: each stage's last item then reaches the next
            if not worker.wait_idle(None if deadline is None else max(0.0, deadline - time.monotonic())):
                return False
        return True

    def stop(self, drain: bool = True, timeout: float | None = 10.0) -> None:
        """The entrance first (its frame in hand still reaches the later stages), then the rest."""
        for worker in self.workers:
            worker.stop(drain, timeout)

    def counters(self) -> dict[str, int]:
        counters = [worker.counters() for worker in self.workers]
        return {
            "frames_in": counters[0]["frames_in"],
            "frames_processed": counters[-1]["frames_processed"],
            **{key: sum(c[key] for c in counters) for key in ("frames_dropped", "worker_errors", "queued")},
        }


def cpu_threads(pipelined: bool, cores: int | None = None) -> tuple[int, int]:
    """(torch intra-op threads, OpenCV threads) for a CPU frame path on ``cores`` cores.

    Pipelined, the two stages run at once: extraction (OpenCV SIFT, or the network) and
    matching each get half of the cores. Oversubscribing costs far more than it gains: with
    torch on 2 threads and SIFT running beside it on a 2-core machine, a 1024-keypoint
    LightGlue match took 1219 ms instead of 130 ms (OpenMP threads waiting on each other).
    """
    cores = cores or os.cpu_count() or 1
    if not pipelined:
        return cores, cores
    torch_threads = max(1, cores // 2)
    return torch_threads, max(1, cores - torch_threads)


def set_cpu_threads(pipelined: bool, device: torch.device) -> tuple[int, int] | None:
    """Give torch and OpenCV the thread counts of ``cpu_threads`` when the frame path runs on
    the CPU (on CUDA the CPU does little: nothing changes). Returns the previous counts."""
    import cv2

    if device.type != "cpu":
        return None
    before = torch.get_num_threads(), cv2.getNumThreads()
    torch_threads, cv_threads = cpu_threads(pipelined)
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv_threads)
    return before


@contextlib.contextmanager
def thread_budget(pipelined: bool, device: torch.device) -> Iterator[None]:
    """``set_cpu_threads`` for the duration of a block (a replay inside a longer process)."""
    import cv2

    before = set_cpu_threads(pipelined, device)
    try:
        yield
    finally:
        if before is not None:
            torch.set_num_threads(before[0])
            cv2.setNumThreads(before[1])


# ---------------------------------------------------------------------------------------
# results: plain data, turned into messages by ``messages``
# ---------------------------------------------------------------------------------------
@dataclass
class Status:
    """A diagnostic status: level OK / WARN / ERROR, a message, key/values."""

    level: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class MatchCloud:
    """What the ``matches`` (and ``line_matches``) clouds show: one point per match."""

    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray  # (K, 2)
    scores: np.ndarray  # (K,)
    xyz: np.ndarray  # (K, 3)
    inliers: np.ndarray  # (K,) bool
    lines0: np.ndarray | None = None  # matchers with lines (GlueStick): segments (L, 2, 2)
    lines1: np.ndarray | None = None
    line_matches: np.ndarray | None = None
    line_scores: np.ndarray | None = None
    line_xyz: np.ndarray | None = None  # bearings of the current segments' midpoints


@dataclass
class RelativePose:
    frame_id: str  # the reference image's frame
    T_ref_cur: np.ndarray
    covariance: np.ndarray  # (6, 6), as ROS has it (``stages.Motion``)


@dataclass
class OdometryState:
    odom_frame: str
    child_frame: str
    T_odom_cam: np.ndarray
    covariance: np.ndarray  # (6, 6) of T_odom_cam (``stages.Odometry``)
    linear: np.ndarray
    angular: np.ndarray


@dataclass
class DebugDrawing:
    image0: np.ndarray
    image1: np.ndarray
    keypoints0: np.ndarray
    keypoints1: np.ndarray
    matches: np.ndarray
    scores: np.ndarray | None
    title: str
    lines: dict[str, Any] = field(default_factory=dict)


@dataclass
class FrameResult:
    """Everything a processed (or skipped) frame produced, as plain data."""

    stamp_ns: int
    frame_id: str = ""
    record: dict[str, Any] = field(default_factory=dict)  # plain per-frame facts (replay, tests)
    skipped: str | None = None  # why the frame was not processed
    reason: str | None = None  # its problems.REASONS key
    cloud: MatchCloud | None = None
    info: Status | None = None  # matches_info
    relative_pose: RelativePose | None = None
    odometry: OdometryState | None = None
    points: np.ndarray | None = None  # stereo: triangulated xyz (N, 3)
    debug: DebugDrawing | None = None  # only when asked for


def _describe_pipeline(pipe: Pipeline) -> str:
    return f"{pipe.conf.extractor.name}+{pipe.conf.matcher.name}"


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1e3


# ---------------------------------------------------------------------------------------
# what both matchers share
# ---------------------------------------------------------------------------------------
class _MatcherCore:
    """Pipeline, runtime parameters, counters, warnings and diagnostics shared by both matchers.

    ``clock_ns`` is the clock of ``received_ns``: wall time by default; the nodes give their
    ROS clock, so that with ``use_sim_time`` the latency and the frame age are in sim time.
    """

    node = "matcher"

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        pipeline: Pipeline | None = None,
        log: logging.Logger | Any | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.params = P.validate(self.node, values)
        self.log = log or logger
        self.clock_ns = clock_ns
        # the model is loaded here, once, never in a callback
        self._owns_pipeline = pipeline is None
        self.pipeline = pipeline or featmatch_core.load(P.pipeline_name(self.params), P.model_overrides(self.params))
        self.model_name = P.pipeline_name(self.params) if pipeline is None else _describe_pipeline(self.pipeline)
        self.stream = FeatureStream(self.pipeline)
        # kernels for every point-set size now, not during the first minutes of frames (CPU bf16)
        self.pipeline.warm_up()
        # on a GPU, the first frame of each image size warms the extractor up first: its CUDA
        # graphs (for SIFT, of every point-set bucket) are captured then, not in later frames;
        # with the camera's size given, before any frame
        self.warm_up_new_sizes = self.pipeline.device.type == "cuda"
        size = P.warm_up_size(self.params)
        if size is not None:
            self.warm_up_extractor(*size)
        # what a threshold parameter at P.MODEL_VALUE restores: the value the matcher was loaded with
        matcher_conf = self.pipeline.matcher.conf
        self._model_thresholds = {key: matcher_conf[key] for keys in P.MATCHER_CONF_KEYS.values()
                                  for key in keys.values() if key in matcher_conf}
        self.latency = LatencyStats(self.params["latency_window"])
        self.processing = LatencyStats(self.params["latency_window"])
        self.age = LatencyStats(self.params["latency_window"])  # header stamp -> result
        self.counts: collections.Counter[str] = collections.Counter()
        self.problems = Problems(self.log)
        self._last_trim = time.monotonic()  # of the heap (``trim_heap``)
        self.last: dict[str, Any] = {}
        self._lock = threading.Lock()
        # the matcher is used by one stage at a time: its CUDA graphs' buffers and its settings
        # are shared, and with ``match_ahead`` two stages may match (the middle one ahead, the
        # last one again after a wrong guess)
        self._matching = threading.Lock()
        self._dirty = True
        # generations of parameters: the last staged by ``set_params``, the last applied by
        # ``_apply_params`` (work made ahead with an older one is redone)
        self._staged = 0
        self.applied = 0
        self._warned: set[str] = set()
        self.worker: FrameWorker | None = None  # set by the owner, for the diagnostics counters

    # ---- parameters ----------------------------------------------------------------------
    def set_params(self, changes: Mapping[str, Any]) -> tuple[bool, str]:
        """Validate and stage runtime changes (applied before the next frame). Model changes are refused."""
        reasons = [r for name, value in changes.items() if (r := P.runtime_change_error(self.node, name, value))]
        if reasons:
            return False, "; ".join(reasons)
        with self._lock:
            self.params = P.validate(self.node, dict(changes), base=self.params)
            self._dirty = True
            self._staged += 1
        return True, ""

    def _apply_params(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            params, generation = dict(self.params), self._staged
        matcher_conf = self.pipeline.matcher.conf
        with self._matching:  # never in the middle of a match
            for param, key in P.MATCHER_CONF_KEYS.get(params["matcher"], {}).items():
                if key in matcher_conf:
                    value = params[param]
                    matcher_conf[key] = self._model_thresholds[key] if value == P.MODEL_VALUE else value
        self._configure(params)
        self.applied = generation

    def _configure(self, params: dict[str, Any]) -> None:
        pass

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(message)

    def _skip(self, result: FrameResult, reason: str, message: str) -> FrameResult:
        """Count a frame that cannot be processed, warn (rate-limited), and mark it skipped."""
        self.counts["skipped"] += 1
        result.skipped, result.reason = message, reason
        self.problems.warn(reason, f"skipping frame at {result.stamp_ns / 1e9:.6f}: {message}")
        return result

    # ---- stages both matchers run --------------------------------------------------------------
    def _decode(self, msg: Any, result: FrameResult) -> S.DecodedImage | None:
        try:
            return S.decode_image(msg)
        except S.Rejected as err:
            self._skip(result, err.reason, err.message)
            return None

    def _extract(self, image: np.ndarray, stamp: int) -> Frame:
        """Extract once; the 'resize' parameter shrinks large images but never enlarges small ones."""
        size = (int(image.shape[0]), int(image.shape[1]))
        if self.warm_up_new_sizes:
            self.warm_up_extractor(*size)  # once per size
        self._resize_for(size)
        return self.stream.extract(image, stamp)

    def _resize_for(self, size: tuple[int, int]) -> None:
        resize = int(self.params["resize"]) if self._owns_pipeline else None
        if resize is None:
            return
        wanted = resize if 0 < resize < max(size) else None
        conf = self.pipeline.extractor.conf
        if conf.resize != wanted:  # an OmegaConf write (~25 us, 3x a read) only on a change
            conf.resize = wanted

    def warm_up_extractor(self, height: int, width: int) -> None:
        """Warm the extractor up for the camera's images, at the size it will run them at (the
        'resize' rule applied: ``Pipeline.warm_up_extractor`` alone would warm a 640x480
        camera up at the extractor's resize, 1024x768, and the first real frames would then
        capture their own graphs). A size warmed up already is not warmed up again."""
        if (height, width) in self.pipeline.warmed_sizes:
            return
        self._resize_for((height, width))
        self.pipeline.warm_up_extractor(height, width)

    def _match(self, frame0: Frame, frame1: Frame) -> TwoViewMatches:
        with self._matching:
            return self.stream.match(frame0, frame1)

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

    def _frame_counters(self) -> dict[str, int]:
        if self.worker is not None:
            return self.worker.counters()
        frames = self.counts["frames"]
        return {"frames_in": frames, "frames_processed": frames, "frames_dropped": 0, "worker_errors": 0, "queued": 0}

    def diagnostics(self) -> dict[str, Any]:
        """Plain data for /diagnostics: ``{"name", "level", "message", "values"}``."""
        counters = self._frame_counters()
        last = self.last
        level, message = last.get("level", "OK"), last.get("message", "waiting for frames")
        if counters["frames_in"] == 0:
            level, message = "OK", "waiting for frames"
        values = {
            **counters,
            "frames_skipped": self.counts["skipped"],
            "resets": self.counts["resets"],
            "frames_rematched": self.counts["rematched"],
            **self.problems.values(),
            **{f"latency_{k}_ms": v for k, v in self.latency.percentiles().items()},
            **{f"processing_{k}_ms": v for k, v in self.processing.percentiles((50, 95)).items()},
            **{f"age_{k}_ms": v for k, v in self.age.percentiles((50, 95)).items()},
            **self._device_values(),
        }
        for key in ("keypoints0", "keypoints1", "matches", "inliers", "stop_layer", "calibrated"):
            if key in last:
                values[key] = last[key]
        return {"name": f"lightglue_ros: {self.node}", "level": level, "message": message, "values": values}

    def _timing(self, result: FrameResult, start: float, received_ns: int | None) -> None:
        """Processing time (wall), latency from receipt and age from the header stamp (``clock_ns``)."""
        total_ms = (time.perf_counter() - start) * 1e3
        now_ns = self.clock_ns()
        latency_ms = (now_ns - received_ns) / 1e6 if received_ns is not None else total_ms
        result.record.update(processing_ms=total_ms, latency_ms=latency_ms, age_ms=(now_ns - result.stamp_ns) / 1e6)
        self.processing.add(total_ms)
        self.latency.add(latency_ms)
        self.age.add(result.record["age_ms"])
        if time.monotonic() - self._last_trim >= TRIM_HEAP_PERIOD_S:
            trim_heap()
            self._last_trim = time.monotonic()


# ---------------------------------------------------------------------------------------
# monocular
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
    odom_covariance: np.ndarray  # (6, 6) of T_odom_cam


@dataclass
class Estimated:
    """A frame's matched points (pixels), the pose estimated from them (undistorted) and the
    structure (triangulation, scale from the reference's depth) that pose gives."""

    pts0: np.ndarray
    pts1: np.ndarray
    estimate: S.PoseEstimate
    estimate_ms: float
    structure: S.Structure
    # the points undistorted, and the reference's lifted with its depth: for the covariance, and
    # for a structure anew when tracking picks a planar pose's twin (``prefer_motion``)
    und0: np.ndarray
    und1: np.ndarray
    lifted: S.DepthPoints | None = None


@dataclass
class EarlyMatch:
    """A frame's matches made ahead (``match_ahead``), against the reference it was expected to
    get, and the estimation from them, running beside the stages."""

    reference: Frame
    pred: TwoViewMatches
    match_ms: float
    estimated: concurrent.futures.Future[Estimated]  # with the guessed reference's depth
    params: int  # the generation of parameters it was made with (``_MatcherCore.applied``)


@dataclass
class PreparedFrame:
    """A frame after ``prepare``: decoded, with its checked calibration and depth."""

    result: FrameResult
    image: S.DecodedImage | None = None
    calibration: cv.Calibration | None = None
    depth: np.ndarray | None = None
    features: Frame | None = None  # set by ``extract``
    started: float = field(default_factory=time.perf_counter)  # processing time counts from here
    received_ns: int | None = None
    early: EarlyMatch | None = None  # set by ``match_ahead``, used (and dropped) by ``track``

    @property
    def K(self) -> np.ndarray | None:
        return self.calibration.K if self.calibration is not None else None


class FrameMatcher(_MatcherCore):
    """Streaming monocular matcher + relative pose + odometry (see the module docstring)."""

    node = "matcher"
    max_failures = 3  # consecutive failed frames before the reference is replaced

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        pipeline: Pipeline | None = None,
        log: Any = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(values, pipeline, log, clock_ns)
        self._reset_tracking()
        self.last_stamp_ns: int | None = None
        self.calibrations = S.CalibrationCache()
        self.calibration_problem = ""
        self.estimator = None
        self.ahead_previous: PreparedFrame | None = None  # the last frame ``match_ahead`` saw
        self.last_became_reference = True  # the guess of ``match_ahead`` under 'previous'
        self._estimation_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # a pipelined matcher's stages: extract, [match ahead,] track (``FramePipeline``)
        choice = self.params["match_ahead"]
        self.matches_ahead = bool(self.params["pipelined"]) and (
            choice == "always" or (choice == "auto" and self.pipeline.device.type == "cuda"))
        self._apply_params()  # the estimators exist before any frame: one matched ahead needs them

    def _configure(self, params: dict[str, Any]) -> None:
        estimators = S.pose_estimators(params)
        self.estimator, self.uncalibrated = estimators.essential, estimators.uncalibrated
        self.absolute, self.homography = estimators.absolute, estimators.homography

    def reset(self) -> None:
        """Forget the reference frame and restart the odometry (a bag loop, a jump in time)."""
        self.last_stamp_ns = None
        self.ahead_previous = None
        self._reset_tracking()

    def _reset_tracking(self) -> None:
        self.reference: Reference | None = None
        self.odometry = S.Odometry()
        self.failures = 0
        self.metric_speed: float | None = None  # m/s of the last motion scaled by depth
        self.last_direction: np.ndarray | None = None  # of the last pose (``S.motion_direction``)

    # ---- the per-frame work: prepare -> extract -> track ------------------------------------------
    # ``prepare`` and ``extract`` (the front: in frame order, reading only the stamp and
    # calibration state) and ``track`` (the back: the tracking state) may run on two threads,
    # one frame apart (``FramePipeline``); ``process`` runs them one after the other.
    def process(
        self,
        image_msg: Any,
        camera_info: Any = None,
        depth_msg: Any = None,
        received_ns: int | None = None,
        want_debug: bool = False,
    ) -> FrameResult:
        return self.finish(self.prepare_and_extract(image_msg, camera_info, depth_msg, received_ns), want_debug)

    def prepare_and_extract(
        self, image_msg: Any, camera_info: Any = None, depth_msg: Any = None, received_ns: int | None = None
    ) -> PreparedFrame:
        """The front stage: ``prepare``, then ``extract`` unless the frame is skipped."""
        frame = self.prepare(image_msg, camera_info, depth_msg)
        frame.received_ns = received_ns
        if frame.result.skipped is None:
            frame.features = self.extract(frame)
        return frame

    def pipeline_stages(self, front: Callable[..., Any], ahead: Callable[..., Any],
                        back: Callable[..., Any]) -> tuple[Callable[..., Any], ...]:
        """The stages of this matcher's ``FramePipeline``, given the caller's wrappers of
        ``prepare_and_extract``, ``match_ahead`` and ``finish``: the middle one only when it
        matches ahead."""
        return (front, ahead, back) if self.matches_ahead else (front, back)

    def match_ahead(self, frame: PreparedFrame) -> PreparedFrame:
        """The middle stage of three (``match_ahead`` on): match an extracted frame while the
        frame before it is still in ``track``, against the reference it is expected to get
        (``_expected_reference``), and hand the pose and structure from them to the pool
        (``_estimations``). ``track`` takes all three when the guess was right and the
        parameters have not changed since, and redoes them when not: counted as ``rematched``.
        Reads the tracking state, never writes it."""
        if frame.result.skipped is not None:
            return frame
        expected = self._expected_reference()
        if expected is not None and not frame.result.record.get("reset"):  # a reset frame starts anew
            reference, depth = expected
            pred, match_ms = _timed(self._match, reference, frame.features)
            estimated = self._estimations().submit(self._estimated, frame, pred, depth)
            frame.early = EarlyMatch(reference, pred, match_ms, estimated, self.applied)
        self.ahead_previous = frame
        return frame

    def _estimations(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads for the estimations of frames matched ahead, made at first use: a frame's
        pose is estimated while the next frame is matched and the one before is tracked, so
        that neither stage waits for it (the estimators release the GIL). Two are enough: the
        rendezvous between the stages keeps at most two such frames in flight."""
        if self._estimation_pool is None:
            self._estimation_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="lightglue_estimate")
        return self._estimation_pool

    def _expected_reference(self) -> tuple[Frame, np.ndarray | None] | None:
        """The reference (features, depth) the frame after ``ahead_previous`` is expected to be
        matched with, while ``ahead_previous`` is in ``track``. 'keyframe': the keyframe of the moment (keyframes
        change rarely). 'previous': ``ahead_previous`` if the last tracked frame became the
        reference (it had a pose), else the reference of the moment: failures come in runs
        (blur, a blank wall, untrained weights), during which the reference stays. A wrong
        guess costs one match more; reads that race with ``track`` can only make a guess wrong."""
        reference, previous = self.reference, self.ahead_previous
        if reference is not None and (self.params["keyframe_policy"] == "keyframe" or not self.last_became_reference):
            return reference.frame, reference.depth
        # no reference yet (the frame in ``track`` starts the tracking), or it is to follow
        return (previous.features, previous.depth) if previous is not None else None

    def finish(self, frame: PreparedFrame, want_debug: bool = False) -> FrameResult:
        """The back stage: ``track`` a prepared and extracted frame, and time it (skipped: as is)."""
        if frame.result.skipped is None:
            self.track(frame, frame.features, want_debug)
            self._timing(frame.result, frame.started, frame.received_ns)
        return frame.result

    def prepare(self, image_msg: Any, camera_info: Any = None, depth_msg: Any = None) -> PreparedFrame:
        """Time checks, decoding, calibration and depth; a frame that cannot go on is marked skipped."""
        frame = PreparedFrame(FrameResult(cv.header_ns(image_msg), str(image_msg.header.frame_id)))
        self.counts["frames"] += 1
        if not self._check_time(frame.result):
            return frame
        frame.image = self._decode(image_msg, frame.result)
        if frame.image is None:
            return frame
        self.last_stamp_ns = frame.result.stamp_ns
        frame.calibration = self._calibration(camera_info)
        frame.depth = self._depth(depth_msg, frame.image.matcher.shape)
        frame.result.record["decode_ms"] = (time.perf_counter() - frame.started) * 1e3  # with checks, depth
        return frame

    def extract(self, frame: PreparedFrame) -> Frame:
        """The frame's features; reads no tracking state (see the module docstring)."""
        features, extract_ms = _timed(self._extract, frame.image.matcher, frame.result.stamp_ns)
        frame.result.record.update(keypoints1=features.num_keypoints, extract_ms=extract_ms)
        return features

    def track(self, frame: PreparedFrame, features: Frame, want_debug: bool = False) -> FrameResult:
        """Match against the reference, estimate, scale, decide the next reference, chain the odometry."""
        self._apply_params()  # runtime changes reach the matcher and the estimator between frames
        if frame.result.record.get("reset"):
            self._reset_tracking()  # the time jump ``prepare`` found
        result = frame.result
        result.record.update(stamp_ns=result.stamp_ns, calibrated=frame.K is not None)
        early, frame.early = frame.early, None
        result.record["queued_ms"] = (time.perf_counter() - frame.started) * 1e3 - sum(
            result.record.get(k, 0.0) for k in ("decode_ms", "extract_ms")
        ) - (early.match_ms if early is not None else 0.0)
        ref = self.reference
        if ref is None:
            return self._start_from(frame, features)
        pred, match_ms, estimated = self._matches_with(ref, frame, features, early, result)
        estimated = self._with_motion_prior(estimated, frame.K)
        estimate = estimated.estimate
        structure = self._metric_or_speed_scaled(estimated.structure, (result.stamp_ns - ref.stamp_ns) / 1e9)
        result.record.update(
            ref_stamp_ns=ref.stamp_ns,
            keypoints0=len(pred.keypoints0),
            matches=len(pred.matches),
            match_ms=match_ms,
            stop_layer=pred.info.get("stop_layer", -1),
            inliers=int(estimate.inliers.sum()),
            estimate_ms=estimated.estimate_ms,
            success=structure.T_0to1 is not None,
            scale=structure.scale,
            metric_scale=structure.metric,
            speed_scaled=structure.speed_scaled,
            pose_model=estimate.model,
            planar_choice=estimate.choice,
            line_matches=len(pred.line_matches) if pred.lines0 is not None else -1,
        )
        if estimate.model_fit is not None:
            result.record["model_fit"] = estimate.model_fit
        if estimate.too_few:
            self.problems.warn(problems.TOO_FEW_MATCHES, f"frame at {result.stamp_ns / 1e9:.6f}: {estimate.problem}")
        new_reference = self._follow(frame, ref, estimated, structure)
        status = self._match_status(frame, ref, estimate, structure)
        result.cloud = self._match_cloud(pred, estimate, structure, frame.K)
        result.info = status
        result.record.update(level=status.level, message=status.message, new_reference=new_reference)
        if want_debug:
            result.debug = self._debug_drawing(ref, frame, pred, status)
        if new_reference:
            self.reference = self._reference_of(frame, features)
        self.last_became_reference = new_reference
        self.last = {
            **{k: result.record[k] for k in ("keypoints0", "keypoints1", "matches", "inliers", "stop_layer")},
            "level": status.level,
            "message": status.message,
            "calibrated": frame.K is not None,
        }
        return result

    # ---- prepare ----------------------------------------------------------------------------------
    def _check_time(self, result: FrameResult) -> bool:
        check = S.check_stamp(result.stamp_ns, self.last_stamp_ns, self.params["max_time_gap"])
        if check.action == "skip":
            self._skip(result, check.reason, check.message)
            return False
        if check.action == "reset":
            self.problems.warn(check.reason, check.message)
            self.counts["resets"] += 1
            self.last_stamp_ns = None
            result.record["reset"] = True  # ``track`` resets the tracking state, in frame order
        return True

    def _calibration(self, camera_info: Any) -> cv.Calibration | None:
        lookup = self.calibrations.lookup(camera_info)
        if lookup.changed:
            self.calibration_problem = lookup.problem
            if lookup.problem:
                self.problems.warn(problems.BAD_CALIBRATION, lookup.problem)
        if lookup.calibration is None:
            self._warn_once(
                "uncalibrated",
                "no (valid) camera_info: uncalibrated mode, fitting a "
                f"{self.params['uncalibrated_model']} and publishing no pose",
            )
        return lookup.calibration

    def _depth(self, depth_msg: Any, image_shape: tuple[int, ...]) -> np.ndarray | None:
        if depth_msg is None:
            return None
        try:
            return S.decode_depth(depth_msg, image_shape)
        except S.Rejected as err:
            self.problems.warn(err.reason, err.message)
            return None

    # ---- track ------------------------------------------------------------------------------------
    def _matches_with(
        self, ref: Reference, frame: PreparedFrame, features: Frame, early: EarlyMatch | None, result: FrameResult
    ) -> tuple[TwoViewMatches, float, Estimated]:
        """The frame's matches to ``ref``, the pose and the structure from them: those made ahead
        when they were made against it (and with its depth: the depth of that same frame) and
        with the parameters applied now (a runtime change reaches this very frame)."""
        if early is not None and early.reference is ref.frame and early.params == self.applied:
            return early.pred, early.match_ms, early.estimated.result()
        if early is not None:
            self.counts["rematched"] += 1
            result.record["rematched"] = True
        pred, match_ms = _timed(self._match, ref.frame, features)
        return pred, match_ms, self._estimated(frame, pred, ref.depth)

    def _estimated(self, frame: PreparedFrame, pred: TwoViewMatches, ref_depth: np.ndarray | None) -> Estimated:
        """Undistort the matched points, estimate the pose (by PnP on the reference frame's depth
        where it has one, else the essential matrix or, on a plane, the homography;
        uncalibrated: the fitted model), and triangulate, scaled by that depth."""
        pts0, pts1 = pred.points0.astype(np.float64), pred.points1.astype(np.float64)
        und0, und1 = (cv.undistort_points(p, frame.calibration) if frame.calibration else p for p in (pts0, pts1))
        lifted = None
        if frame.K is not None and ref_depth is not None:
            lifted = S.lift_with_depth(und0, pts0, frame.K, ref_depth)
        estimate, estimate_ms = _timed(
            S.estimate_relative_pose, und0, und1, frame.K, self.estimator, self.uncalibrated,
            self.params["min_matches"], lifted, self.absolute, self.homography,
        )
        structure = S.scale_and_structure(estimate, und0, und1, frame.K, lifted)
        return Estimated(pts0, pts1, estimate, estimate_ms, structure, und0, und1, lifted)

    def _with_motion_prior(self, estimated: Estimated, K: np.ndarray | None) -> Estimated:
        """A planar pose that the matches could not tell from its twin: the one closer to the
        last motion (in frame order here, so a frame matched ahead gets the same choice)."""
        chosen = S.prefer_motion(estimated.estimate, self.last_direction)
        if chosen.T_0to1 is estimated.estimate.T_0to1:
            return replace(estimated, estimate=chosen)
        structure = S.scale_and_structure(chosen, estimated.und0, estimated.und1, K, estimated.lifted)
        return replace(estimated, estimate=chosen, structure=structure)

    def _metric_or_speed_scaled(self, structure: S.Structure, dt_s: float) -> S.Structure:
        """Remember the speed of a metric motion; once the odometry is metric, give a pose that
        the depth could not scale the last metric speed instead of a unit (1 m) translation."""
        if structure.T_0to1 is None:
            return structure
        if structure.metric:
            if dt_s > 0:
                self.metric_speed = float(np.linalg.norm(structure.T_0to1[:3, 3])) / dt_s
            return structure
        if self.metric_speed is None:
            return structure  # a monocular stream: unit-norm translations, as documented
        return S.scale_by_speed(structure, self.metric_speed, dt_s)

    def _reference_of(self, frame: PreparedFrame, features: Frame) -> Reference:
        result = frame.result
        return Reference(
            features,
            result.stamp_ns,
            result.frame_id,
            frame.image.display,
            frame.depth,
            self.odometry.T_odom_cam.copy(),
            self.odometry.covariance.copy(),
        )

    def _start_from(self, frame: PreparedFrame, features: Frame) -> FrameResult:
        """The first frame (or the first after a reset) becomes the reference; odometry at rest."""
        result = frame.result
        self.reference = self._reference_of(frame, features)
        self.last_became_reference = True
        result.record.update(first=True, level="OK", message="first frame")
        result.odometry = self._odometry_state(result, np.zeros(3), np.zeros(3))
        self.last = {
            "level": "OK",
            "message": "first frame (reference)",
            "keypoints1": features.num_keypoints,
            "calibrated": frame.K is not None,
        }
        return result

    def _follow(
        self,
        frame: PreparedFrame,
        ref: Reference,
        estimated: Estimated,
        structure: S.Structure,
    ) -> bool:
        """Odometry and relative pose from a pose, or the failure policy without one; returns
        whether the current frame becomes the reference."""
        result, params, estimate = frame.result, self.params, estimated.estimate
        if structure.T_0to1 is None:
            verdict = S.keyframe_after_failure(self.failures, self.max_failures, frame.K is not None)
            self.failures = verdict.failures
            if verdict.tracking_lost:
                self.counts["tracking_lost"] += 1
                self.problems.warn(
                    problems.TRACKING_LOST,
                    f"{self.max_failures} frames without a pose: the current frame becomes the "
                    "reference (the odometry assumes no motion across the gap)",
                )
            result.odometry = self._odometry_state(result, np.zeros(3), np.zeros(3))
            return verdict.new_reference
        self.failures = 0
        covariance = S.pose_covariance(estimate, structure, estimated.und0, estimated.und1, frame.K, estimated.lifted)
        motion = S.motion_from_pose(structure.T_0to1, (result.stamp_ns - ref.stamp_ns) / 1e9, covariance)
        self.odometry.chain(ref.T_odom_cam, ref.odom_covariance, motion)
        if structure.T_0to1[:3, 3].any():  # a rotation says nothing of the direction of motion
            self.last_direction = S.motion_direction(structure.T_0to1)
        result.record["T_0to1"] = structure.T_0to1.copy()
        result.relative_pose = RelativePose(ref.frame_id, motion.T_ref_cur, motion.covariance)
        result.odometry = self._odometry_state(result, motion.linear, motion.angular)
        flow = S.median_flow(estimated.pts0, estimated.pts1, estimate.inliers)
        result.record["median_flow_px"] = flow
        return S.keyframe_after_pose(
            params["keyframe_policy"],
            int(estimate.inliers.sum()),
            flow,
            params["keyframe_min_inliers"],
            params["keyframe_max_flow"],
        )

    def _odometry_state(self, result: FrameResult, linear: np.ndarray, angular: np.ndarray) -> OdometryState:
        child = self.params["camera_frame"] or result.frame_id
        result.record["T_odom_cam"] = self.odometry.T_odom_cam.copy()
        return OdometryState(
            self.params["odom_frame"],
            child,
            self.odometry.T_odom_cam.copy(),
            self.odometry.covariance.copy(),
            np.asarray(linear, np.float64),
            np.asarray(angular, np.float64),
        )

    def _match_status(
        self, frame: PreparedFrame, ref: Reference, estimate: S.PoseEstimate, structure: S.Structure
    ) -> Status:
        """The matches_info status: OK with a pose (or an uncalibrated model fit), else WARN and why."""
        record, has_pose = frame.result.record, structure.T_0to1 is not None
        level = "OK" if has_pose or (frame.K is None and not estimate.problem) else "WARN"
        message = estimate.problem or (
            "ok" if has_pose else f"uncalibrated: {self.params['uncalibrated_model']} fitted, no pose"
        )
        if frame.K is None and self.calibration_problem:
            message += f" ({self.calibration_problem})"
        values = {
            "reference_stamp": f"{ref.stamp_ns // 10**9}.{ref.stamp_ns % 10**9:09d}",
            "reference_frame_id": ref.frame_id,
            "model": self.model_name,
            **{k: record[k] for k in ("keypoints0", "keypoints1", "matches", "inliers", "stop_layer", "line_matches")},
            "pose": has_pose,
            "pose_model": record["pose_model"],
            "planar_choice": record["planar_choice"],
            "metric_scale": structure.metric,
            "speed_scaled": structure.speed_scaled,
            "scale": structure.scale,
            "keyframe_policy": self.params["keyframe_policy"],
        }
        return Status(level, message, values)

    def _match_cloud(
        self, pred: TwoViewMatches, estimate: S.PoseEstimate, structure: S.Structure, K: np.ndarray | None
    ) -> MatchCloud:
        """Too few matches to be trusted: the published cloud is empty (matches_info still counts them)."""
        shown = slice(None) if len(pred.matches) >= self.params["min_matches"] else slice(0, 0)
        cloud = MatchCloud(
            pred.keypoints0,
            pred.keypoints1,
            pred.matches[shown],
            pred.scores[shown],
            structure.xyz[shown],
            estimate.inliers[shown],
        )
        if pred.lines0 is not None and pred.lines1 is not None:
            cloud.lines0, cloud.lines1 = pred.lines0, pred.lines1
            cloud.line_matches, cloud.line_scores = pred.line_matches[shown], pred.line_match_scores[shown]
            cloud.line_xyz = self._line_bearings(pred.lines1, cloud.line_matches, K)
        return cloud

    @staticmethod
    def _line_bearings(lines1: np.ndarray, line_matches: np.ndarray, K: np.ndarray | None) -> np.ndarray | None:
        """Bearings (x/z, y/z, 1) of the current segments' midpoints with calibration, else None (0)."""
        if K is None or not len(line_matches):
            return None
        mid = lines1[line_matches[:, 1]].mean(axis=1).astype(np.float64)
        return S.bearings(mid, K)

    @staticmethod
    def _debug_drawing(ref: Reference, frame: PreparedFrame, pred: TwoViewMatches, status: Status) -> DebugDrawing:
        n, num_inliers = status.values["matches"], status.values["inliers"]
        title = f"{n} matches, {num_inliers} inliers" + ("" if status.values["pose"] else f" ({status.message})")
        lines = {}
        if pred.lines0 is not None:
            title += f", {len(pred.line_matches)} line matches"
            lines = {"lines0": pred.lines0, "lines1": pred.lines1, "line_matches": pred.line_matches}
        return DebugDrawing(
            ref.image, frame.image.display, pred.keypoints0, pred.keypoints1, pred.matches, pred.scores, title, lines
        )


# ---------------------------------------------------------------------------------------
# stereo
# ---------------------------------------------------------------------------------------
class StereoMatcher(_MatcherCore):
    """Rectified stereo: decode both, extract, match left to right, triangulate with the baseline."""

    node = "stereo_matcher"

    def _configure(self, params: dict[str, Any]) -> None:
        self.self_check = get_estimator("relative_pose", {"ransac_th": 1.0})

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
        self.counts["frames"] += 1
        result = FrameResult(cv.header_ns(left_msg), str(left_msg.header.frame_id))
        pair = self._decode_pair(left_msg, right_msg, result)
        if pair is None:
            return result
        left, right = pair
        (f_left, f_right), extract_ms = _timed(
            lambda: (self._extract(left.matcher, result.stamp_ns), self._extract(right.matcher, result.stamp_ns))
        )
        pred, match_ms = _timed(self._match, f_left, f_right)
        result.record.update(
            stamp_ns=result.stamp_ns,
            keypoints0=len(pred.keypoints0),
            keypoints1=len(pred.keypoints1),
            matches=len(pred.matches),
            extract_ms=extract_ms,
            match_ms=match_ms,
            stop_layer=pred.info.get("stop_layer", -1),
        )
        status, points = self._triangulate(pred, left_info, right_info, result.record)
        keep = points.keep if points is not None else np.zeros(len(pred.matches), bool)
        xyz = points.xyz if points is not None else np.full((len(pred.matches), 3), np.nan)
        result.cloud = MatchCloud(pred.keypoints0, pred.keypoints1, pred.matches, pred.scores, np.nan_to_num(xyz), keep)
        result.points = xyz[keep]
        result.info = status
        if want_debug:
            title = f"{int(keep.sum())} stereo points of {len(pred.matches)} matches"
            result.debug = DebugDrawing(
                left.display, right.display, pred.keypoints0, pred.keypoints1, pred.matches[keep], None, title
            )
        self.last = {
            **{k: result.record[k] for k in ("keypoints0", "keypoints1", "matches", "inliers", "stop_layer")},
            "level": status.level,
            "message": status.message,
            "calibrated": points is not None,
        }
        self._timing(result, start, received_ns)
        return result

    def _decode_pair(
        self, left_msg: Any, right_msg: Any, result: FrameResult
    ) -> tuple[S.DecodedImage, S.DecodedImage] | None:
        left = self._decode(left_msg, result)
        right = self._decode(right_msg, result) if left is not None else None
        if left is None or right is None:
            return None
        if left.matcher.shape[:2] != right.matcher.shape[:2]:
            message = f"left {left.matcher.shape[:2]} and right {right.matcher.shape[:2]} differ in size"
            self._skip(result, problems.SIZE_MISMATCH, message)
            return None
        return left, right

    def _triangulate(
        self, pred: TwoViewMatches, left_info: Any, right_info: Any, record: dict[str, Any]
    ) -> tuple[Status, S.StereoPoints | None]:
        """Calibration check, then the rectified triangulation and its self-check; WARN and why."""
        params, n = self.params, len(pred.matches)
        try:
            geometry = S.stereo_geometry(left_info, right_info, params["baseline"])
        except S.Rejected as err:
            self.problems.warn(err.reason, err.message)
            record.update(points=0, baseline_m=0.0, inliers=0, level="WARN", message=err.message)
            return Status("WARN", err.message), None
        record["baseline_m"] = geometry.baseline
        if n < params["min_matches"]:
            message = f"too few matches ({n} < min_matches {params['min_matches']})"
            self.problems.warn(problems.TOO_FEW_MATCHES, message)
            record.update(points=0, inliers=0, level="WARN", message=message)
            return Status("WARN", message), None
        pts0, pts1 = pred.points0.astype(np.float64), pred.points1.astype(np.float64)
        points = S.triangulate_rectified(
            pts0, pts1, geometry, params["max_row_error"], params["min_disparity"], params["max_depth"]
        )
        record.update(
            median_row_error_px=points.median_row_error_px,
            median_depth_m=points.median_depth_m,
            **S.stereo_self_check(pts0, pts1, geometry.K, self.self_check),
        )
        kept = int(points.keep.sum())
        level, message = "OK", "ok"
        if kept < params["min_matches"]:
            level, message = "WARN", f"few stereo points ({kept}) pass the rectification checks"
            self.problems.warn(problems.TOO_FEW_MATCHES, message)
        record.update(points=kept, inliers=kept, level=level, message=message)
        return Status(level, message), points
