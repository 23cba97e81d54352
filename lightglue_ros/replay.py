"""Replay a rosbag through the node's own core (``FrameMatcher``) without ROS, and evaluate it.

    python -m lightglue_ros.replay BAG [--conf sift+nn] [--params config/matcher.yaml] [-p name=value ...]
        [--image-topic T] [--camera-info-topic T] [--depth-topic T|none] [--gt-topic T | --gt-tum FILE]
        [--rate max|realtime] [--loop N] [--out OUT_BAG] [--out-dir DIR] [model.key=value ...]

Reads rosbag2 (sqlite3, MCAP) and ROS 1 bags through ``rosbags.highlevel.AnyReader``. Topics
are found by type when not given (the one ``sensor_msgs/Image`` whose name has no 'depth', the
``CameraInfo`` beside it, a depth image beside it, a ground-truth ``PoseStamped`` /
``Odometry`` / ``TransformStamped`` topic whose name says ground truth). Ground truth is the
pose of the camera optical frame in a fixed frame (``T_world_cam``).

``--rate max`` processes every frame as fast as possible; ``--rate realtime`` feeds frames
at the bag's pace (``--speed`` times faster) to the same worker as the node, dropping frames
the worker cannot keep up with (and counting them).

Outputs (``--out-dir``, default ``outputs/replay/<bag>_<model>``):

- ``out_bag/`` (or ``--out``): the topics the live node publishes (``/matches``,
  ``/matches_info``, ``/relative_pose``, ``/odometry``, ``/diagnostics``, ``/debug_image`` with
  ``--debug-images``) plus ``/ground_truth/pose``, written under a temporary name and renamed
  when complete; ``evo_ape bag2 out_bag /ground_truth/pose /odometry -as`` compares them;
- ``trajectory.tum``, ``groundtruth.tum`` (``t x y z qx qy qz qw``);
- ``summary.json`` and the printed report: relative-pose AUC@5/10/20 deg (error = max of the
  rotation and translation-direction angles, failures count), matches / inliers per pair,
  latency p50/p95/p99, throughput, dropped frames, memory (RSS) at start and end;
- ``trajectory.png`` (top view, aligned to the ground truth), ``latency.png``, ``matches.png``.
"""

from __future__ import annotations

import argparse
import bisect
import io
import queue
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from featmatch_core.eval.metrics import pose_auc
from featmatch_core.files import atomic_write_bytes, save_json
from featmatch_core.geometry.epipolar import relative_pose_error
from featmatch_core.models.cuda_graphs import capture_counts

from . import conversions as cv
from . import params as P
from .frame_matcher import (
    FrameMatcher,
    FramePipeline,
    FrameResult,
    FrameWorker,
    PreparedFrame,
    startup_objects_frozen,
    thread_budget,
)
from .make_bag import BAG_VERSION, finish_bag, storage_plugin, temp_bag_path
from .messages import diagnostics_message, frame_messages

IMAGE = "sensor_msgs/msg/Image"
INFO = "sensor_msgs/msg/CameraInfo"
GT_TYPES = (
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/TransformStamped",
)
AUC_THRESHOLDS = (5.0, 10.0, 20.0)
DEMO_BAG = Path("outputs") / "demo" / "room_bag"
DEMO_FRAMES = 60
# SIFT + the bundled LightGlue weights (offline: the official ones are not fetched), the node's
# defaults otherwise: 1024 keypoints, pipelined, precision auto
DEMO_CONF = "sift+lightglue"


class ReplayError(RuntimeError):
    """A bag that cannot be replayed as asked (missing topic, unreadable bag)."""


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


# ---- reading the bag ---------------------------------------------------------------------------
def open_reader(path: Path):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if not path.exists():
        raise ReplayError(f"bag not found: {path}")
    paths = sorted(path.glob("*.bag")) if path.is_dir() and any(path.glob("*.bag")) else [path]
    try:
        reader = AnyReader(paths, default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        reader.open()
    except Exception as err:  # rosbags raises several error types for damaged bags
        raise ReplayError(f"cannot read bag {path}: {type(err).__name__}: {err}") from None
    return reader


def topic_table(reader) -> str:
    rows = [f"  {c.topic}  [{c.msgtype}]  {c.msgcount} msgs" for c in reader.connections]
    return "\n".join(rows) if rows else "  (no topics)"


def _topics_of(reader, msgtypes: Sequence[str]) -> list[str]:
    return sorted({c.topic for c in reader.connections if c.msgtype in msgtypes})


def _namespace(topic: str) -> str:
    return topic.rsplit("/", 1)[0]


def resolve_topics(reader, args: argparse.Namespace) -> dict[str, str | None]:
    present = {c.topic: c.msgtype for c in reader.connections}

    def need(topic: str, types: Sequence[str], what: str) -> str:
        if topic not in present:
            raise ReplayError(f"{what} topic '{topic}' is not in the bag; topics present:\n{topic_table(reader)}")
        if present[topic] not in types:
            raise ReplayError(f"{what} topic '{topic}' is {present[topic]}, expected {' or '.join(types)}")
        return topic

    images = [t for t in _topics_of(reader, [IMAGE]) if "depth" not in t.lower()]
    if args.image_topic:
        image = need(args.image_topic, [IMAGE], "image")
    elif len(images) == 1:
        image = images[0]
    else:
        raise ReplayError(
            ("no image topic" if not images else f"several image topics ({', '.join(images)})")
            + f": choose one with --image-topic; topics present:\n{topic_table(reader)}"
        )
    ns = _namespace(image)
    infos = _topics_of(reader, [INFO])
    if args.camera_info_topic in ("none", ""):
        info = None
    elif args.camera_info_topic:
        info = need(args.camera_info_topic, [INFO], "camera_info")
    else:
        beside = [t for t in infos if _namespace(t) == ns]
        info = beside[0] if beside else (infos[0] if len(infos) == 1 else None)
    depths = [t for t in _topics_of(reader, [IMAGE]) if "depth" in t.lower() and t.startswith(ns + "/")]
    if args.depth_topic in ("none", ""):
        depth = None
    elif args.depth_topic and args.depth_topic != "auto":
        depth = need(args.depth_topic, [IMAGE], "depth")
    else:
        depth = depths[0] if len(depths) == 1 else None
    gts = [
        t for t in _topics_of(reader, GT_TYPES) if any(k in t.lower() for k in ("ground_truth", "groundtruth", "gt"))
    ]
    if args.gt_tum or args.gt_topic in ("none",):
        gt = None
    elif args.gt_topic:
        gt = need(args.gt_topic, GT_TYPES, "ground-truth")
    else:
        gt = gts[0] if len(gts) == 1 else None
    return {"image": image, "camera_info": info, "depth": depth, "gt": gt}


def read_stamped(reader, topic: str | None) -> list[tuple[int, Any]]:
    """All messages of a (small) topic as (header stamp ns, message), by stamp."""
    if topic is None:
        return []
    conns = [c for c in reader.connections if c.topic == topic]
    out = [
        (cv.header_ns(msg), msg)
        for c, _, raw in reader.messages(connections=conns)
        for msg in [reader.deserialize(raw, c.msgtype)]
    ]
    return sorted(out, key=lambda x: x[0])


def read_tum(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    stamps, poses = [], []
    for line in Path(path).read_text().splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) != 8:
            raise ReplayError(f"{path}: TUM lines are 't tx ty tz qx qy qz qw', got {len(tokens)} fields")
        T = np.eye(4)
        T[:3, 3] = [float(v) for v in tokens[1:4]]
        T[:3, :3] = cv.quaternion_to_rotation([float(v) for v in tokens[4:8]])
        stamps.append(int(round(float(tokens[0]) * 1e9)))
        poses.append(T)
    return np.array(stamps, dtype=np.int64), poses


class GroundTruth:
    """T_world_cam by stamp, nearest within ``max_dt`` seconds."""

    def __init__(self, stamps: np.ndarray, poses: list[np.ndarray], max_dt: float) -> None:
        order = np.argsort(stamps)
        self.stamps = np.asarray(stamps, dtype=np.int64)[order]
        self.poses = [poses[i] for i in order]
        self.max_dt_ns = int(max_dt * 1e9)

    def __len__(self) -> int:
        return len(self.stamps)

    def at(self, stamp_ns: int) -> np.ndarray | None:
        if not len(self.stamps):
            return None
        i = int(np.searchsorted(self.stamps, stamp_ns))
        best = min((j for j in (i - 1, i) if 0 <= j < len(self.stamps)), key=lambda j: abs(self.stamps[j] - stamp_ns))
        return self.poses[best] if abs(int(self.stamps[best]) - stamp_ns) <= self.max_dt_ns else None


@dataclass
class Item:
    image: Any
    info: Any = None
    depth: Any = None
    received_ns: int | None = None
    loop: int = 0
    bag_ns: int = 0  # the image's time in the bag (paces --rate realtime; header stamps may be bad)


def bag_errors() -> tuple[type[BaseException], ...]:
    import sqlite3
    import struct

    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Reader1Error
    from rosbags.rosbag2 import ReaderError as Reader2Error
    from rosbags.serde import SerdeError

    return (
        AnyReaderError,
        Reader1Error,
        Reader2Error,
        SerdeError,
        sqlite3.DatabaseError,
        struct.error,
        EOFError,
        OverflowError,  # rosbags' MCAP reader seeking to a length read from zeroed bytes
    )


def checked(items: Iterator[Item], bag: Path, reader) -> Iterator[Item]:
    """``items``, with a damaged bag found while reading turned into a ReplayError."""
    try:
        yield from items
    except bag_errors() as err:
        raise ReplayError(
            f"bag {bag} is damaged ({type(err).__name__}: {err}); topics present:\n{topic_table(reader)}"
        ) from None


def frames(reader, topics: dict[str, str | None], infos: list[tuple[int, Any]], slop_ns: int) -> Iterator[Item]:
    """Images with their camera_info (latest at or before the stamp) and depth (same stamp +- slop)."""
    wanted = {topics["image"], topics["depth"]} - {None}
    conns = [c for c in reader.connections if c.topic in wanted]
    info_stamps = [s for s, _ in infos]
    pending: list[tuple[int, Any]] = []
    depths: dict[int, Any] = {}

    def info_for(stamp: int) -> Any:
        if not infos:
            return None
        i = bisect.bisect_right(info_stamps, stamp) - 1
        return infos[max(i, 0)][1]

    def depth_for(stamp: int) -> Any:
        if not depths:
            return None
        best = min(depths, key=lambda s: abs(s - stamp))
        return depths[best] if abs(best - stamp) <= slop_ns else None

    def release(now: int | None) -> Iterator[Item]:
        while pending and (
            now is None
            or topics["depth"] is None
            or depth_for(pending[0][0]) is not None
            or now - pending[0][0] > slop_ns
        ):
            stamp, msg, bag_ns = pending.pop(0)
            yield Item(msg, info_for(stamp), depth_for(stamp) if topics["depth"] else None, bag_ns=bag_ns)
            for s in [s for s in depths if s < stamp - slop_ns]:
                del depths[s]

    for conn, bag_ns, raw in reader.messages(connections=conns):
        msg = reader.deserialize(raw, conn.msgtype)
        stamp = cv.header_ns(msg)
        if conn.topic == topics["image"]:
            pending.append((stamp, msg, bag_ns))
        else:
            depths[stamp] = msg
        yield from release(stamp)
    yield from release(None)


# ---- output bag -----------------------------------------------------------------------------------
OUT_TOPICS = {
    "matches": "sensor_msgs/msg/PointCloud2",
    "line_matches": "sensor_msgs/msg/PointCloud2",
    "matches_info": "diagnostic_msgs/msg/DiagnosticArray",
    "relative_pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
    "odometry": "nav_msgs/msg/Odometry",
    "debug_image": "sensor_msgs/msg/Image",
    "diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
    "ground_truth/pose": "geometry_msgs/msg/PoseStamped",
}


class OutputBag:
    def __init__(self, path: Path, storage: str, namespace: str, overwrite: bool) -> None:
        from rosbags.rosbag2 import Writer

        self.path, self.overwrite = Path(path), overwrite
        if self.path.exists() and not overwrite:
            raise ReplayError(f"{self.path} exists (use --overwrite)")
        self.tmp = temp_bag_path(self.path)
        self.types = cv.rosbags_types()
        self.ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.writer = Writer(self.tmp, version=BAG_VERSION, storage_plugin=storage_plugin(storage))
        self.writer.open()
        self.conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def topic(self, key: str) -> str:
        return f"/{key}" if key in ("diagnostics", "ground_truth/pose") else f"{self.ns}/{key}"

    def write(self, key: str, stamp_ns: int, msg: Any) -> None:
        if msg is None:
            return
        msgtype = OUT_TOPICS[key]
        if key not in self.conns:
            self.conns[key] = self.writer.add_connection(self.topic(key), msgtype, typestore=self.types.typestore)
        self.writer.write(self.conns[key], int(stamp_ns), self.types.typestore.serialize_cdr(msg, msgtype))
        self.counts[self.topic(key)] = self.counts.get(self.topic(key), 0) + 1

    def close(self) -> None:
        self.writer.close()
        finish_bag(self.tmp, self.path, self.overwrite)

    def abort(self) -> None:
        import shutil

        try:
            self.writer.close()
        except Exception:  # already broken; the temporary bag is removed anyway
            pass
        shutil.rmtree(self.tmp.parent, ignore_errors=True)


# ---- evaluation ----------------------------------------------------------------------------------
def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """s, R, t minimising ||dst - (s R src + t)|| (points (N, 3))."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    U, D, Vt = np.linalg.svd(xd.T @ xs / len(src))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    var = (xs**2).sum() / len(src)
    s = float(np.trace(np.diag(D) @ S) / var) if with_scale and var > 0 else 1.0
    return s, R, mu_d - s * R @ mu_s


def evaluate(
    records: list[dict[str, Any]], gt: GroundTruth | None, min_baseline: float = 0.0
) -> tuple[dict[str, Any], list[dict]]:
    pairs = []
    for rec in records:
        if "ref_stamp_ns" not in rec:
            continue
        pair = {
            "stamp_ns": rec["stamp_ns"],
            "matches": rec["matches"],
            "inliers": rec["inliers"],
            "success": bool(rec.get("success")),
            "pose_model": rec.get("pose_model", ""),
            "planar_choice": rec.get("planar_choice", ""),
        }
        if gt is not None:
            T0, T1 = gt.at(rec["ref_stamp_ns"]), gt.at(rec["stamp_ns"])
            if T0 is not None and T1 is not None:
                T_gt = np.linalg.inv(T1) @ T0  # camera 0 -> camera 1
                if "T_0to1" in rec:
                    # below min_baseline the translation direction is unobservable: rotation only
                    e_R, e_t = relative_pose_error(
                        T_gt, rec["T_0to1"][:3, :3], rec["T_0to1"][:3, 3], ignore_gt_t_thr=min_baseline
                    )
                    pair.update(rotation_error=float(e_R), translation_error=float(e_t))
                    pair["pose_error"] = max(pair["rotation_error"], pair["translation_error"])
                else:
                    pair["pose_error"] = float("inf")
        pairs.append(pair)
    summary: dict[str, Any] = {"pairs": len(pairs)}
    if pairs:
        summary["matches_mean"] = float(np.mean([p["matches"] for p in pairs]))
        summary["inliers_mean"] = float(np.mean([p["inliers"] for p in pairs]))
        summary["pose_success_rate"] = float(np.mean([p["success"] for p in pairs]))
        models = [p["pose_model"] for p in pairs if p["success"] and p["pose_model"]]
        summary["pose_models"] = {model: models.count(model) for model in sorted(set(models))}
    errors = [p["pose_error"] for p in pairs if "pose_error" in p]
    summary["pairs_with_gt"] = len(errors)
    if errors:
        for t, auc in zip(AUC_THRESHOLDS, pose_auc(errors, AUC_THRESHOLDS), strict=True):
            summary[f"pose_auc@{t:g}"] = auc
        finite = [e for e in errors if np.isfinite(e)]
        summary["pose_error_median"] = float(np.median(errors))
        summary["rotation_error_median"] = (
            float(np.median([p["rotation_error"] for p in pairs if "rotation_error" in p])) if finite else float("inf")
        )
    return summary, pairs


def trajectory_from_records(
    records: list[dict[str, Any]], gt: GroundTruth | None, gt_scale: bool
) -> list[tuple[int, np.ndarray]]:
    """(stamp, T_odom_cam) per frame: the matcher's odometry, or re-chained with GT step lengths."""
    if not gt_scale or gt is None:
        return [(r["stamp_ns"], r["T_odom_cam"]) for r in records if "T_odom_cam" in r]
    poses: dict[int, np.ndarray] = {}
    out, last = [], None
    for r in records:
        if "T_odom_cam" not in r:
            continue
        if r.get("first") or last is None:
            T = r["T_odom_cam"]
        elif "T_0to1" in r and r["ref_stamp_ns"] in poses:
            T01 = r["T_0to1"].copy()
            g0, g1 = gt.at(r["ref_stamp_ns"]), gt.at(r["stamp_ns"])
            if g0 is not None and g1 is not None and np.linalg.norm(T01[:3, 3]) > 0:
                T01[:3, 3] *= np.linalg.norm((np.linalg.inv(g1) @ g0)[:3, 3]) / np.linalg.norm(T01[:3, 3])
            T = poses[r["ref_stamp_ns"]] @ np.linalg.inv(T01)
        else:
            T = last
        poses[r["stamp_ns"]] = last = T
        out.append((r["stamp_ns"], T))
    return out


def tum_lines(traj: list[tuple[int, np.ndarray]]) -> str:
    lines = []
    for stamp, T in traj:
        q = cv.rotation_to_quaternion(T[:3, :3])
        lines.append(f"{stamp / 1e9:.9f} " + " ".join(f"{v:.9f}" for v in (*T[:3, 3], *q)))
    return "\n".join(lines) + "\n"


def aligned_trajectory(
    traj: list[tuple[int, np.ndarray]], gt: GroundTruth | None
) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Estimated positions Sim(3)-aligned to the ground truth, GT positions, ATE RMSE (m)."""
    est = np.array([T[:3, 3] for _, T in traj]) if traj else np.zeros((0, 3))
    if gt is None or len(traj) < 3:
        return est, None, None
    pairs = [(T[:3, 3], g[:3, 3]) for s, T in traj if (g := gt.at(s)) is not None]
    if len(pairs) < 3:
        return est, None, None
    src, dst = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    s, R, t = umeyama(src, dst)
    aligned = (s * (R @ src.T)).T + t
    ate = float(np.sqrt(np.mean(np.sum((aligned - dst) ** 2, 1))))
    return aligned, dst, ate


def save_plots(
    out_dir: Path, records: list[dict[str, Any]], traj, gt: GroundTruth | None, summary: dict[str, Any]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> Path:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return atomic_write_bytes(out_dir / name, buf.getvalue())

    paths = []
    aligned, gt_xyz, ate = aligned_trajectory(traj, gt)
    fig, ax = plt.subplots(figsize=(6, 5))
    if gt_xyz is not None:
        # top view in the ground-truth frame: the two axes with the largest spread
        axes = np.argsort(gt_xyz.std(0))[::-1][:2]
        ax.plot(gt_xyz[:, axes[0]], gt_xyz[:, axes[1]], "k-", label="ground truth")
        ax.plot(
            aligned[:, axes[0]],
            aligned[:, axes[1]],
            "r.-",
            ms=3,
            label=f"estimate (Sim3-aligned, ATE {ate:.3f})",
        )
        ax.set_xlabel("xyz"[axes[0]] + " [m]")
        ax.set_ylabel("xyz"[axes[1]] + " [m]")
    elif len(aligned):
        ax.plot(aligned[:, 0], aligned[:, 1], "r.-", ms=3, label="estimate (odom x, y)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("trajectory")
    paths.append(save(fig, "trajectory.png"))

    idx = np.arange(len(records))
    lat = np.array([r.get("latency_ms", np.nan) for r in records])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(idx, lat, ".-", ms=3, lw=0.8, label="latency")
    for key, style in (("latency_p50_ms", "g--"), ("latency_p95_ms", "r--")):
        if key in summary and np.isfinite(summary[key]):
            ax.axhline(summary[key], color=style[0], ls="--", lw=1, label=f"{key[8:11]} {summary[key]:.0f} ms")
    ax.set_xlabel("frame")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)
    ax.set_title("per-frame latency")
    paths.append(save(fig, "latency.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(idx, [r.get("matches", np.nan) for r in records], ".-", ms=3, lw=0.8, label="matches")
    ax.plot(idx, [r.get("inliers", np.nan) for r in records], ".-", ms=3, lw=0.8, label="inliers")
    ax.set_xlabel("frame")
    ax.legend(fontsize=8)
    ax.set_title("matches over time")
    paths.append(save(fig, "matches.png"))
    return paths


# ---- the replay ------------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None


def node_values(args: argparse.Namespace) -> dict[str, Any]:
    values = P.read_yaml(args.params, "matcher") if args.params else P.defaults("matcher")
    if args.conf:
        if "+" not in args.conf:
            raise ReplayError(f"--conf takes <extractor>+<matcher>, e.g. sift+nn or sift+lightglue, got '{args.conf}'")
        extractor, matcher = args.conf.split("+", 1)
        values.update(extractor=extractor, matcher=matcher)
    values.update(P.parse_assignments(args.param or []))
    if args.overrides:
        values["model_overrides"] = " ".join([values.get("model_overrides", ""), *args.overrides]).strip()
    return P.validate("matcher", values)


def run(args: argparse.Namespace) -> ReplayResult:
    """Replay the bag through ``FrameMatcher``, write the output bag, evaluate, save the outputs."""
    values = node_values(args)
    bag = Path(args.bag)
    reader = open_reader(bag)
    try:
        inputs = read_inputs(reader, args)
        model = P.pipeline_name(values)
        out_dir = Path(args.out_dir or Path("outputs") / "replay" / f"{bag.name}_{model}")
        out_dir.mkdir(parents=True, exist_ok=True)
        print(describe_replay(bag, inputs, model, args), flush=True)
        matcher = FrameMatcher(values)  # the model is loaded once, here (the matcher warmed up)
        sizes = [(int(info.height), int(info.width)) for _, info in inputs.infos[:1]]
        if sizes and min(sizes[0]) > 0:  # the extractor too, at the camera's size: no set-up in the first frames
            matcher.warm_up_extractor(*sizes[0])
        rss_start = rss_mb()
        captures_before = capture_counts()  # the warm-up's are done by now
        out_bag = (
            None
            if args.no_bag
            else OutputBag(args.out or out_dir / "out_bag", args.storage, args.namespace, args.overwrite)
        )
        sink = ResultSink(matcher, out_bag, bool(args.debug_images))
        try:
            slop_ns = int(values["sync_slop"] * 1e9)

            def items() -> Iterator[Item]:  # one pass over the bag
                return checked(frames(reader, inputs.topics, inputs.infos, slop_ns), bag, reader)

            with thread_budget(values["pipelined"], matcher.pipeline.device), startup_objects_frozen():
                played = play(items, matcher, sink, args, values["queue_size"], inputs.num_images * args.loop)
            if out_bag is not None:
                sink.finish(inputs.gt)
                out_bag.close()
        except BaseException:
            if out_bag is not None:
                out_bag.abort()  # nothing half-written is left behind
            raise
        rss_end = rss_mb()
    finally:
        reader.close()
    summary, pairs, traj = summarise(sink.records, inputs.gt, matcher, played, args, model)
    summary.update(bag=str(bag), rss_start_mb=rss_start, rss_end_mb=rss_end,
                   **captures_while_streaming(sink.records, captures_before, capture_counts()))
    if out_bag is not None:
        summary["out_bag"] = str(out_bag.path)
        summary["out_topics"] = out_bag.counts
    save_outputs(out_dir, summary, pairs, sink.records, traj, inputs.gt, not args.no_plots)
    return ReplayResult(summary, sink.records, pairs, out_dir)


@dataclass
class ReplayInputs:
    topics: dict[str, str | None]
    infos: list[tuple[int, Any]]
    gt: GroundTruth | None
    num_images: int


def read_inputs(reader, args: argparse.Namespace) -> ReplayInputs:
    """The topics to replay, every camera_info and the ground truth (a topic or a TUM file)."""
    topics = resolve_topics(reader, args)
    gt = None
    if args.gt_tum:
        gt = GroundTruth(*read_tum(args.gt_tum), args.gt_max_dt)
    elif topics["gt"]:
        gt_msgs = read_stamped(reader, topics["gt"])
        gt = GroundTruth(
            np.array([s for s, _ in gt_msgs], dtype=np.int64), [cv.pose_from_msg(m) for _, m in gt_msgs], args.gt_max_dt
        )
    num_images = sum(c.msgcount for c in reader.connections if c.topic == topics["image"])
    return ReplayInputs(topics, read_stamped(reader, topics["camera_info"]), gt, num_images)


def describe_replay(bag: Path, inputs: ReplayInputs, model: str, args: argparse.Namespace) -> str:
    topics, gt = inputs.topics, inputs.gt
    return (
        f"replaying {bag} ({inputs.num_images} images on {topics['image']}"
        + (f", camera_info {topics['camera_info']}" if topics["camera_info"] else ", no camera_info")
        + (f", depth {topics['depth']}" if topics["depth"] else "")
        + (f", ground truth {topics['gt'] or args.gt_tum} ({len(gt)} poses)" if gt is not None else "")
        + f") with {model}, rate {args.rate}"
        + (f", {args.loop} loops" if args.loop > 1 else "")
    )


class ResultSink:
    """Records each processed frame and writes its messages to the output bag.

    Always called from the thread that opened the bag: rosbags' sqlite3 writer may only be used
    from the thread that created it, so with ``--rate realtime`` the worker hands its results
    over (``handover``) and this thread writes them (``drain``).
    """

    DIAGNOSTICS_EVERY = 10  # frames between /diagnostics messages in the output bag

    def __init__(self, matcher: FrameMatcher, out_bag: OutputBag | None, want_debug: bool) -> None:
        self.matcher, self.out_bag, self.want_debug = matcher, out_bag, want_debug
        self.records: list[dict[str, Any]] = []
        self._handed_over: queue.SimpleQueue = queue.SimpleQueue()

    def process(self, item: Item) -> FrameResult:
        return self.matcher.process(
            item.image, item.info, item.depth, received_ns=item.received_ns, want_debug=self.want_debug
        )

    def handover(self, item: Item) -> None:
        """The worker thread's handler: process, and leave the writing to the bag's thread."""
        self._handed_over.put((item, self.process(item)))

    # the stages of a ``FramePipeline`` (extract, [match ahead,] track: each on a thread)
    def front(self, item: Item) -> tuple[Item, PreparedFrame]:
        return item, self.matcher.prepare_and_extract(item.image, item.info, item.depth, item.received_ns)

    def middle(self, prepared: tuple[Item, PreparedFrame]) -> tuple[Item, PreparedFrame]:
        item, frame = prepared
        return item, self.matcher.match_ahead(frame)

    def back(self, prepared: tuple[Item, PreparedFrame]) -> None:
        item, frame = prepared
        self._handed_over.put((item, self.matcher.finish(frame, self.want_debug)))

    def drain(self) -> None:
        while True:
            try:
                item, result = self._handed_over.get_nowait()
            except queue.Empty:
                return
            self.add(item, result)

    def add(self, item: Item, result: FrameResult) -> None:
        if result.skipped:
            return  # counted by the matcher, published nowhere (as the node)
        record = {**result.record, "loop": item.loop, "rss_mb": rss_mb(), "done_ns": time.time_ns(),
                  "graph_captures": captures_that_cost()}
        self.records.append(record)
        if self.out_bag is None:
            return
        start = time.perf_counter()
        messages = frame_messages(self.out_bag.types, result)
        for topic, msg in messages.topics().items():
            self.out_bag.write(topic, result.stamp_ns, msg)
        if self.want_debug:
            self.out_bag.write("debug_image", result.stamp_ns, messages.debug_image())
        if len(self.records) % self.DIAGNOSTICS_EVERY == 1:
            self.write_diagnostics(result.stamp_ns)
        record["publish_ms"] = (time.perf_counter() - start) * 1e3

    def write_diagnostics(self, stamp_ns: int) -> None:
        types = self.out_bag.types
        self.out_bag.write("diagnostics", stamp_ns, diagnostics_message(types, self.matcher.diagnostics(), stamp_ns))

    def finish(self, gt: GroundTruth | None) -> None:
        """The ground truth (for evo) and the final diagnostics."""
        types = self.out_bag.types
        for stamp, T in zip(gt.stamps, gt.poses, strict=True) if gt is not None else ():
            self.out_bag.write(
                "ground_truth/pose", int(stamp), cv.pose_stamped(types, cv.make_header(types, int(stamp), "world"), T)
            )
        if self.records:
            self.write_diagnostics(self.records[-1]["stamp_ns"])


@dataclass
class Played:
    frames_read: int
    wall_s: float


def play(
    items: Callable[[], Iterator[Item]],
    matcher: FrameMatcher,
    sink: ResultSink,
    args: argparse.Namespace,
    queue_size: int,
    total: int,
) -> Played:
    """Feed the frames as the node does: pipelined (``FramePipeline``: extraction one frame ahead
    of tracking) or not (one ``FrameWorker``). ``max``: as fast as they go, each frame arriving
    when the pipeline can start it at once (none dropped; its latency is then the pipeline's
    own, without time spent waiting for room); ``realtime``: at the bag's pace (``--speed``), dropping what the
    worker cannot keep up with. Not pipelined, ``max`` runs everything on this thread."""
    if args.max_frames:
        total = min(total, args.max_frames)
    progress = tqdm(total=total, desc="replay", unit="frame", disable=args.quiet or None)
    pipelined = matcher.params["pipelined"]
    realtime = args.rate == "realtime"
    if pipelined:
        stages = matcher.pipeline_stages(sink.front, sink.middle, sink.back)
        worker: FrameWorker | FramePipeline | None = FramePipeline(*stages, queue_size=queue_size,
                                                                   device=matcher.pipeline.device)
    else:
        worker = FrameWorker(sink.handover, queue_size=queue_size) if realtime else None
    matcher.worker = worker
    wall_start = time.perf_counter()
    count = 0
    try:
        for loop in range(args.loop):
            pace = Pacer(args.speed)
            for item in items():
                if args.max_frames and count >= args.max_frames:
                    break
                item.loop = loop
                if worker is None:
                    item.received_ns = time.time_ns()
                    sink.add(item, sink.process(item))
                else:
                    if realtime:
                        pace.wait_for(item.bag_ns)
                    else:  # as fast as it goes: the next frame "arrives" when it can start at once
                        worker.wait_ready()
                    item.received_ns = time.time_ns()
                    worker.submit(item, block=not realtime)
                    sink.drain()
                count += 1
                progress.update(1)
    finally:
        if worker is not None:
            worker.stop(drain=True, timeout=None)
            sink.drain()
        progress.close()
    return Played(count, time.perf_counter() - wall_start)


class Pacer:
    """Sleeps so that bag times (ns) are reached at ``speed`` times their pace from the first one."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.t0_bag: int | None = None
        self.t0_wall = 0.0

    def wait_for(self, bag_ns: int) -> None:
        if self.t0_bag is None:
            self.t0_bag, self.t0_wall = bag_ns, time.perf_counter()
        delay = (bag_ns - self.t0_bag) / 1e9 / self.speed - (time.perf_counter() - self.t0_wall)
        if delay > 0:
            time.sleep(delay)


def summarise(
    records: list[dict[str, Any]],
    gt: GroundTruth | None,
    matcher: FrameMatcher,
    played: Played,
    args: argparse.Namespace,
    model: str,
) -> tuple[dict[str, Any], list[dict], list[tuple[int, np.ndarray]]]:
    """Pose AUC, counts (processed, dropped, skipped, warnings by reason), latency, memory, ATE."""
    diag = matcher.diagnostics()["values"]
    summary, pairs = evaluate(records, gt, args.min_baseline)
    # the trajectory (TUM file, ATE, plot) of the first pass only: each loop restarts the odometry
    traj = trajectory_from_records([r for r in records if r["loop"] == 0], gt, args.gt_scale)
    _, _, ate = aligned_trajectory(traj, gt)
    summary.update(
        {
            "model": model,
            "rate": args.rate,
            "storage": args.storage,
            "loops": args.loop,
            "frames_read": played.frames_read,
            "frames_processed": len(records),
            "frames_dropped": diag["frames_dropped"],
            "frames_skipped": diag["frames_skipped"],
            "resets": diag["resets"],
            "stages": 1 + bool(matcher.params["pipelined"]) + matcher.matches_ahead,
            "frames_rematched": diag["frames_rematched"],
            "worker_errors": diag["worker_errors"],
            "warnings": {k.removeprefix("warnings_"): v for k, v in matcher.problems.values().items()},
            "wall_s": played.wall_s,
            "throughput_fps": len(records) / played.wall_s if played.wall_s > 0 else float("nan"),
            "rss_after_first_loop_mb": next((r["rss_mb"] for r in records if r["loop"] == 1), None),
            # the largest RSS seen in each pass over the bag: a leak grows it loop after loop
            "rss_by_loop_mb": [max(r["rss_mb"] for r in records if r["loop"] == loop)
                               for loop in sorted({r["loop"] for r in records})],
            "min_baseline_m": args.min_baseline,
            "device": diag["device"],
            "image_size": _image_size(records, matcher),
            "ate_rmse_m": ate,
            "trajectory_scale": (
                "ground truth step lengths"
                if args.gt_scale and gt is not None
                else "metric (depth)"
                if any(r.get("metric_scale") for r in records)
                else "unit steps (monocular)"
            ),
        }
    )
    for name in ("latency", "processing"):
        values = np.array([r[f"{name}_ms"] for r in records if f"{name}_ms" in r])
        for q in (50, 95, 99):
            summary[f"{name}_p{q}_ms"] = float(np.percentile(values, q)) if len(values) else float("nan")
    return summary, pairs, traj


def captures_that_cost(counts: dict[str, int] | None = None) -> int:
    """CUDA-graph captures made or failed (a refusal costs nothing) in ``counts``, by default
    the process's so far (``capture_counts``)."""
    counts = capture_counts() if counts is None else counts
    return counts["made"] + counts["failed"]


def captures_while_streaming(records: list[dict[str, Any]], before: dict[str, int],
                             after: dict[str, int]) -> dict[str, Any]:
    """CUDA-graph captures after the warm-up (a point-set size, or an image size, met first while
    streaming): how many graphs were made, failed or refused (``capture_counts`` at the start
    and the end), after which frames (by position in ``records``; with pipelined stages a
    capture lands on a frame near the one that needed it), and the latency p99 of the other
    frames, to tell capture spikes from the rest. ``records[i]["graph_captures"]`` is
    :func:`captures_that_cost` when frame i was done."""
    start = captures_that_cost(before)
    counts = [start] + [r.get("graph_captures", start) for r in records]
    frames = [i for i in range(len(records)) if counts[i + 1] > counts[i]]
    spiked = set(frames)
    others = [r["latency_ms"] for i, r in enumerate(records) if "latency_ms" in r and i not in spiked]
    return {
        "graph_captures_streaming": {key: after[key] - before[key] for key in after},
        "graph_capture_frames": frames,
        "latency_p99_without_capture_frames_ms": float(np.percentile(others, 99)) if others else float("nan"),
    }


def save_outputs(
    out_dir: Path,
    summary: dict[str, Any],
    pairs: list[dict],
    records: list[dict[str, Any]],
    traj: list[tuple[int, np.ndarray]],
    gt: GroundTruth | None,
    plots: bool,
) -> None:
    atomic_write_bytes(out_dir / "trajectory.tum", tum_lines(traj).encode())
    if gt is not None:
        gt_traj = [(int(s), T) for s, T in zip(gt.stamps, gt.poses, strict=True)]
        atomic_write_bytes(out_dir / "groundtruth.tum", tum_lines(gt_traj).encode())
    if plots:
        summary["plots"] = [str(p) for p in save_plots(out_dir, records, traj, gt, summary)]
    save_json(out_dir / "summary.json", _jsonable(summary))
    save_json(out_dir / "pairs.json", _jsonable(pairs))


def _image_size(records: list[dict[str, Any]], matcher: FrameMatcher) -> str:
    ref = matcher.reference
    return f"{ref.image.shape[1]}x{ref.image.shape[0]}" if ref is not None else "?"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else str(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def report(summary: dict[str, Any]) -> str:
    def f(key: str, fmt: str = "{:.1f}") -> str:
        value = summary.get(key)
        return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else fmt.format(value)

    lines = [
        f"model {summary['model']} on {summary['device']}, images {summary['image_size']}, rate {summary['rate']}",
        f"frames: {summary['frames_read']} read, {summary['frames_processed']} processed, "
        f"{summary['frames_dropped']} dropped, {summary['frames_skipped']} skipped, "
        f"{summary['resets']} resets; {summary['stages']} stage(s)"
        + (f", {summary['frames_rematched']} matched again" if summary["stages"] == 3 else ""),
        "warnings: " + (", ".join(f"{k} {v}" for k, v in summary.get("warnings", {}).items() if v) or "none"),
    ]
    if summary.get("pairs_with_gt"):
        lines.append(
            f"relative pose AUC  @5: {f('pose_auc@5', '{:.1%}')}  @10: {f('pose_auc@10', '{:.1%}')}  "
            f"@20: {f('pose_auc@20', '{:.1%}')}  ({summary['pairs_with_gt']} pairs with ground truth, "
            f"median error {f('pose_error_median', '{:.2f}')} deg)"
        )
    else:
        lines.append("relative pose AUC: no ground truth")
    lines += [
        f"per pair: {f('matches_mean')} matches, {f('inliers_mean')} inliers, "
        f"pose found {f('pose_success_rate', '{:.0%}')}"
        + "".join(f", {count} by {model}" for model, count in summary.get("pose_models", {}).items()),
        f"latency ms: p50 {f('latency_p50_ms')}  p95 {f('latency_p95_ms')}  p99 {f('latency_p99_ms')}"
        f"   (processing p50 {f('processing_p50_ms')})",
        f"throughput: {f('throughput_fps', '{:.2f}')} frames/s",
        *([f"CUDA graphs captured while streaming: {_capture_summary(summary['graph_captures_streaming'])}, "
           f"after frames {_frame_list(summary['graph_capture_frames'])}; latency p99 of the other frames "
           f"{f('latency_p99_without_capture_frames_ms')} ms"]
          if any((summary.get("graph_captures_streaming") or {}).values()) else []),
        f"trajectory: ATE {f('ate_rmse_m', '{:.3f}')} m after Sim(3) alignment ({summary['trajectory_scale']})",
        f"memory (RSS): {f('rss_start_mb', '{:.0f}')} MB at start (model loaded), "
        f"{f('rss_after_first_loop_mb', '{:.0f}')} MB after the first loop, "
        f"{f('rss_end_mb', '{:.0f}')} MB at end"
        + (f"; largest per loop: {' '.join(f'{v:.0f}' for v in summary['rss_by_loop_mb'])} MB"
           if len(summary.get("rss_by_loop_mb") or []) > 1 else ""),
    ]
    return "\n".join(lines)


def _capture_summary(counts: dict[str, int]) -> str:
    return f"{counts['made']} made, {counts['failed']} failed, {counts['refused']} refused"


def _frame_list(frames: list[int], most: int = 12) -> str:
    shown = ", ".join(str(i) for i in frames[:most])
    return shown + (f" and {len(frames) - most} more" if len(frames) > most else "")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lightglue_ros.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bag", type=Path, nargs="?", help="rosbag2 directory (sqlite3 / MCAP) or ROS 1 .bag")
    parser.add_argument(
        "--demo",
        type=int,
        nargs="?",
        const=DEMO_FRAMES,
        metavar="N",
        help=f"make a bag of N (default {DEMO_FRAMES}) frames of a generated room scene (known poses, depth, "
        f"640x480) under {DEMO_BAG} and replay it: no ROS, no downloads; without --conf it runs {DEMO_CONF} "
        "on the LightGlue weights bundled with the package",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="featmatch_core model overrides key=value, relative to the "
        "model section (e.g. matcher.weights=null for an untrained LightGlue)",
    )
    parser.add_argument(
        "--conf", default=None, help="pipeline <extractor>+<matcher> (default: the parameter file's, sift+nn)"
    )
    parser.add_argument("--params", type=Path, default=None, help="node parameter file (config/matcher.yaml)")
    parser.add_argument("-p", "--param", action="append", metavar="NAME=VALUE", help="node parameter (repeatable)")
    parser.add_argument("--image-topic")
    parser.add_argument("--camera-info-topic", help="'none' for uncalibrated")
    parser.add_argument("--depth-topic", default="auto", help="depth image topic, 'auto' (beside the image) or 'none'")
    gt = parser.add_mutually_exclusive_group()
    gt.add_argument("--gt-topic", help="ground-truth pose topic (T_world_cam) or 'none'")
    gt.add_argument("--gt-tum", type=Path, help="ground-truth trajectory file (TUM format)")
    parser.add_argument("--gt-max-dt", type=float, default=0.02, help="ground-truth stamp tolerance, s")
    parser.add_argument(
        "--min-baseline",
        type=float,
        default=0.0,
        help="pairs with a shorter true baseline (m) are scored on rotation only (unobservable translation)",
    )
    parser.add_argument(
        "--gt-scale",
        action="store_true",
        help="trajectory with ground-truth step lengths (monocular without depth)",
    )
    parser.add_argument("--rate", choices=("max", "realtime"), default="max")
    parser.add_argument("--speed", type=float, default=1.0, help="realtime: playback speed factor")
    parser.add_argument("--loop", type=int, default=1, help="replay the bag N times (memory soak)")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="output bag (default OUT_DIR/out_bag)")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="output bag storage")
    parser.add_argument("--namespace", default="", help="namespace of the output topics (as the node's)")
    parser.add_argument("--no-bag", action="store_true", help="write no output bag")
    parser.add_argument("--debug-images", action="store_true", help="also write debug_image")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_intermixed_args(argv)
    if args.bag is not None and "=" in str(args.bag):
        args.overrides.insert(0, str(args.bag))
        args.bag = None
    if args.bag is None and args.demo is None:
        parser.error("give a BAG, or --demo")
    if args.loop < 1:
        parser.error("--loop must be >= 1")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"unexpected arguments {bad}: model overrides are key=value")
    return args


def make_demo_bag(num_frames: int) -> Path:
    """The generated room scene as a bag (rebuilt each time: it is small and fully determined)."""
    from .make_bag import synthetic_frames, write_bag

    counts = write_bag(
        synthetic_frames(num_frames, 640, 480, 10.0, seed=0, step=0.06),
        DEMO_BAG,
        overwrite=True,
        total=num_frames,
    )
    print(f"made {DEMO_BAG}: " + ", ".join(f"{t} ({n})" for t, n in counts.items()), flush=True)
    return DEMO_BAG


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.demo is not None:
            args.bag = make_demo_bag(args.demo)
            args.overwrite = True
            if args.conf is None:  # the learned matcher shipped with the package: no download
                from featmatch_core import weights

                args.conf, weights.OFFLINE = DEMO_CONF, True
        result = run(args)
    except (ReplayError, P.ParamError, FileExistsError) as err:
        print(f"replay: error: {err}", file=sys.stderr)
        return 2
    print(report(result.summary))
    print(
        f"outputs in {result.out_dir}: "
        + ", ".join(sorted(p.name for p in result.out_dir.iterdir() if not p.name.startswith(".")))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
