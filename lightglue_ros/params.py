"""The one parameter schema of the nodes: declared with descriptors and ranges by the rclpy
nodes, written to and checked against ``config/*.yaml``, read by the bag replay.

    python -m lightglue_ros.params --write   # regenerate config/matcher.yaml, config/stereo_matcher.yaml
    python -m lightglue_ros.params --check   # exit 1 if they differ from this schema

Parameters marked ``runtime`` (thresholds, policies, outputs) can change while a node runs;
the others (the model, its device and precision, QoS, queues) are read once at start-up and a
change is refused. The default model is ``sift`` + ``nn`` because it needs no weights; LightGlue
(``matcher: lightglue``) needs its weights in the cache (see the README), or
``model_overrides: matcher.weights=null`` for random weights (tests only).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NODES = ("matcher", "stereo_matcher")
BOTH = NODES
MONO = ("matcher",)
STEREO = ("stereo_matcher",)


class ParamError(ValueError):
    """An unknown parameter or a value of the wrong type / out of range."""


@dataclass(frozen=True)
class Param:
    name: str
    default: bool | int | float | str
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    runtime: bool = False  # may change while the node runs
    nodes: tuple[str, ...] = BOTH
    special: tuple[float, ...] = ()  # values accepted outside [min, max] (MODEL_VALUE)

    @property
    def type(self) -> type:
        return type(self.default)

    def check(self, value: Any) -> str | None:
        """None if ``value`` is acceptable, else the reason."""
        expected = self.type
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (
            expected is bool
            and not isinstance(value, bool)
            or expected is not bool
            and (isinstance(value, bool) or not isinstance(value, expected))
        ):
            return f"'{self.name}' must be a {expected.__name__}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"'{self.name}' must be one of {', '.join(self.choices)}, got {value!r}"
        if value in self.special:
            return None
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            return f"'{self.name}' must be in [{self.min:g}, {self.max:g}], got {value!r}"
        return None

    def declared_range(self) -> tuple[float, float] | None:
        """The range to declare to ROS: [min, max] widened to the special values (ROS would refuse
        MODEL_VALUE otherwise; ``check`` still refuses what lies between)."""
        if self.min is None or self.max is None:
            return None
        return min((self.min, *self.special)), max((self.max, *self.special))

    def help(self) -> str:
        text = self.description
        if self.choices:
            text += f" ({' | '.join(self.choices)})"
        if self.min is not None:
            text += f" [{self.min:g}, {self.max:g}]"
        if self.special:
            text += " or " + ", ".join(f"{v:g}" for v in self.special)
        return text + (" (runtime)" if self.runtime else " (start-up only)")


# A matcher threshold parameter at this value leaves the model config's own value in place
# (e.g. the adaptive-depth thresholds calibrated for the bundled SIFT LightGlue weights).
MODEL_VALUE = -2.0
MODEL_VALUE_INT = int(MODEL_VALUE)  # the same for integer parameters

SCHEMA: tuple[Param, ...] = (
    # ---- model: read once at start-up --------------------------------------------------
    Param(
        "extractor",
        "sift",
        "feature extractor; with 'matcher' it names the pipeline "
        "(featmatch_core config '<extractor>+<matcher>')",
        choices=("sift", "superpoint", "aliked", "disk"),
    ),
    Param(
        "matcher",
        "nn",
        "matcher: nearest neighbours (no weights), LightGlue, or GlueStick (points and LSD line "
        "segments; the monocular node publishes their matches on line_matches; weights needed)",
        choices=("nn", "lightglue", "gluestick"),
    ),
    Param(
        "model_overrides",
        "",
        "extra featmatch_core model overrides, space-separated key=value "
        "relative to the model section, e.g. 'matcher.weights=/path/to/w.pth'",
    ),
    Param("max_keypoints", 1024, "maximum keypoints per frame (1024: real time on a 2-core CPU)", min=16, max=16384),
    Param(
        "resize",
        1024,
        "longest image side the extractor works at, pixels: larger images are shrunk, "
        "smaller ones are not enlarged; 0 keeps the input size",
        min=0,
        max=8192,
    ),
    Param(
        "warm_up_width",
        0,
        "with warm_up_height: the camera's image size, to warm the extractor up at start-up (its "
        "kernels, and on CUDA its graphs) instead of at the first frame of that size; 0: no "
        "start-up warm-up (on CUDA the first frame of each size still warms up)",
        min=0,
        max=16384,
    ),
    Param("warm_up_height", 0, "see warm_up_width", min=0, max=16384),
    Param("device", "auto", "compute device; auto picks CUDA when present", choices=("auto", "cuda", "cpu")),
    Param("precision", "auto", "network precision (fp16 on CUDA only; auto: fp16 on CUDA, bf16 on CPUs with "
          "native bf16 (same matches; LightGlue ~1.8x faster with AMX, 1.1-1.4x with AVX512-BF16 alone), else fp32)",
          choices=("fp32", "fp16", "bf16", "auto")),
    # ---- matcher thresholds: runtime ------------------------------------------------------
    # MODEL_VALUE (-2) keeps the model config's own value: thresholds calibrated for its weights
    Param(
        "depth_confidence",
        MODEL_VALUE,
        "LightGlue early stopping confidence; -1 disables, -2 keeps the model config's value",
        min=-2.0,
        max=1.0,
        runtime=True,
    ),
    Param(
        "width_confidence",
        MODEL_VALUE,
        "LightGlue point pruning confidence; -1 disables, -2 keeps the model config's value",
        min=-2.0,
        max=1.0,
        runtime=True,
    ),
    Param(
        "min_layers",
        3,
        "LightGlue layers run before an early exit may stop (3: real time on consecutive frames, "
        "98 % of full depth's correct matches with the bundled weights, 1.7x faster); -2 keeps the "
        "model config's value",
        min=1,
        max=64,
        special=(MODEL_VALUE,),
        runtime=True,
    ),
    Param(
        "max_layers",
        MODEL_VALUE_INT,
        "LightGlue layers run at most (a latency bound: the matches of that layer are returned; "
        "the model's layer count or more: no bound); -2 keeps the model config's value",
        min=1,
        max=64,
        special=(MODEL_VALUE,),
        runtime=True,
    ),
    Param(
        "filter_threshold",
        MODEL_VALUE,
        "LightGlue / GlueStick minimum match probability; -2 keeps the model config's value",
        min=-2.0,
        max=1.0,
        runtime=True,
    ),
    Param(
        "nn_ratio_threshold",
        0.8,
        "nearest-neighbour Lowe ratio test; 1 disables",
        min=0.05,
        max=1.0,
        runtime=True,
    ),
    # ---- geometry: runtime ------------------------------------------------------------------
    Param(
        "estimator",
        "poselib",
        "robust estimator back end (poselib: LO-RANSAC + refinement; "
        "opencv keeps few inliers on small motions)",
        choices=("poselib", "pycolmap", "opencv"),
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "uncalibrated_model",
        "fundamental",
        "model fitted without camera_info (no pose is published)",
        choices=("fundamental", "homography"),
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "pose_from_depth",
        True,
        "with depth on the reference frame, the pose by PnP on it (metric; well posed on a "
        "planar scene and a pure rotation, where the essential matrix is not) when at least "
        "min_matches matches have depth; the essential matrix otherwise. false: always the "
        "essential matrix, the depth giving only its scale",
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "planar_homography",
        True,
        "calibrated, without a PnP pose: also fit a homography; when it explains at least 80% of "
        "the essential matrix's inliers, the pose is a rotation without translation if a rotation "
        "alone explains 95% of the homography's (a turn on the spot, a camera at rest), else it "
        "comes from the homography's "
        "decomposition (a planar scene): of the two poses a plane allows, the one closer to the "
        "last motion. false: the essential matrix alone (one RANSAC less per frame)",
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "ransac_threshold",
        1.0,
        "RANSAC inlier threshold, pixels",
        min=0.1,
        max=50.0,
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "ransac_confidence",
        0.9999,
        "RANSAC success probability",
        min=0.5,
        max=0.999999,
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "ransac_min_iterations",
        10,
        "RANSAC iterations run before the stopping rule (success probability, with poselib's and "
        "pycolmap's 3x margin) may end the search; it binds only above about 87 % inliers. 10: "
        "on consecutive frames the same or better poses than 30 and 100, estimation p95 8.4-8.8 "
        "instead of 10-11 ms (~500 matches); the offline evaluation uses 1000",
        min=0,
        max=100000,
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "min_matches",
        15,
        "fewer matches (or inliers): no pose, diagnostics WARN",
        min=5,
        max=100000,
        runtime=True,
    ),
    Param(
        "keyframe_policy",
        "previous",
        "match each frame against the previous frame or the current keyframe",
        choices=("previous", "keyframe"),
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "keyframe_min_inliers",
        80,
        "keyframe policy: a frame with fewer inliers to the keyframe becomes the new keyframe",
        min=5,
        max=100000,
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "keyframe_max_flow",
        40.0,
        "keyframe policy: a frame whose median match displacement from the "
        "keyframe exceeds this (pixels) becomes the new keyframe",
        min=1.0,
        max=10000.0,
        runtime=True,
        nodes=MONO,
    ),
    Param(
        "max_time_gap",
        5.0,
        "a frame more than this many seconds after the previous one is a time jump: the "
        "reference frame and the odometry restart (as when time goes back); 0 disables",
        min=0.0,
        max=86400.0,
        runtime=True,
        nodes=MONO,
    ),
    # ---- stereo: runtime ----------------------------------------------------------------------
    Param(
        "max_row_error",
        2.0,
        "rectified stereo: maximum |v_left - v_right|, pixels",
        min=0.0,
        max=100.0,
        runtime=True,
        nodes=STEREO,
    ),
    Param(
        "min_disparity",
        0.5,
        "rectified stereo: minimum disparity, pixels",
        min=0.0,
        max=10000.0,
        runtime=True,
        nodes=STEREO,
    ),
    Param(
        "max_depth",
        50.0,
        "farthest triangulated point kept, metres",
        min=0.01,
        max=100000.0,
        runtime=True,
        nodes=STEREO,
    ),
    Param(
        "baseline",
        0.0,
        "stereo baseline in metres; 0 reads it from the right camera_info (P[0,3] = -fx B)",
        min=0.0,
        max=100.0,
        runtime=True,
        nodes=STEREO,
    ),
    # ---- scale, frames, outputs -----------------------------------------------------------------
    Param(
        "use_depth",
        False,
        "subscribe to 'depth' (aligned depth image, 32FC1 m or 16UC1 mm) and give the "
        "odometry a metric scale",
        nodes=MONO,
    ),
    Param("odom_frame", "odom", "fixed frame of the odometry (REP 105)", nodes=MONO),
    Param(
        "camera_frame", "", "child frame of odometry and tf; empty: the image's header.frame_id", nodes=MONO
    ),
    Param("publish_tf", False, "broadcast odom_frame -> camera_frame on /tf", runtime=True, nodes=MONO),
    Param(
        "publish_debug_image",
        True,
        "publish 'debug_image' (drawn matches) while someone subscribes",
        runtime=True,
    ),
    # ---- processing model and transport: start-up --------------------------------------------------
    Param(
        "qos",
        "sensor_data",
        "subscription QoS: sensor_data (best effort) or reliable",
        choices=("sensor_data", "reliable"),
    ),
    Param("qos_depth", 5, "subscription queue depth", min=1, max=1000),
    Param(
        "queue_size",
        1,
        "frames waiting for the worker; when full the oldest is dropped (and counted)",
        min=1,
        max=100,
    ),
    Param(
        "pipelined",
        True,
        "two stages on two threads: frame n+1 is decoded and its features extracted while frame n "
        "is matched and its pose estimated; on a CPU each stage gets half of the cores (2-core "
        "CPU, SIFT + LightGlue at 1024 keypoints: 8.8 -> 11-12 fps; with nearest neighbours the "
        "sequential path has the lower latency)",
        nodes=MONO,
    ),
    Param(
        "match_ahead",
        "auto",
        "pipelined only: a third stage matches frame n+1 (against the frame it is expected to be "
        "matched with) while frame n's pose is estimated, so that on a GPU the match overlaps the "
        "CPU's estimation; a wrong guess (frame n got no pose, or became the keyframe) is matched "
        "again. auto: with CUDA only (on CPUs matching and estimation share the cores); always; "
        "never",
        choices=("auto", "always", "never"),
        nodes=MONO,
    ),
    Param(
        "sync_slop",
        0.02,
        "ApproximateTimeSynchronizer slop, seconds (stereo pairs, image + depth)",
        min=0.0,
        max=10.0,
    ),
    Param("diagnostics_period", 1.0, "seconds between /diagnostics messages", min=0.05, max=3600.0),
    Param("latency_window", 500, "frames in the latency statistics (p50/p95)", min=10, max=1000000),
)

_BY_NAME = {p.name: p for p in SCHEMA}


def params_for(node: str) -> list[Param]:
    if node not in NODES:
        raise ParamError(f"unknown node '{node}', expected one of {NODES}")
    return [p for p in SCHEMA if node in p.nodes]


def defaults(node: str) -> dict[str, Any]:
    return {p.name: p.default for p in params_for(node)}


def validate(
    node: str, values: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``base`` (defaults) updated with ``values``; unknown names and bad values raise ``ParamError``."""
    schema = {p.name: p for p in params_for(node)}
    merged = dict(base if base is not None else defaults(node))
    errors = []
    for name, value in (values or {}).items():
        if name not in schema:
            errors.append(f"unknown parameter '{name}' for {node}")
            continue
        reason = schema[name].check(value)
        if reason:
            errors.append(reason)
        elif schema[name].type is float:
            merged[name] = float(value)
        else:
            merged[name] = value
    if errors:
        raise ParamError("; ".join(errors))
    return merged


def runtime_change_error(node: str, name: str, value: Any) -> str | None:
    """Why a parameter cannot change while ``node`` runs (None if it can)."""
    schema = {p.name: p for p in params_for(node)}
    if name not in schema:
        return f"unknown parameter '{name}'"
    if not schema[name].runtime:
        return (
            f"'{name}' is read at start-up only (model, device, QoS, queues): restart the node to change it"
        )
    return schema[name].check(value)


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["ransac_threshold=2", "keyframe_policy=keyframe"]`` -> typed values (YAML scalars)."""
    values = {}
    for item in items:
        if "=" not in item:
            raise ParamError(f"expected name=value, got '{item}'")
        name, text = item.split("=", 1)
        values[name.strip()] = yaml.safe_load(text) if text.strip() else ""
    return values


# ---- model configuration ------------------------------------------------------------------
MATCHER_CONF_KEYS = {
    "lightglue": {
        "depth_confidence": "depth_confidence",
        "width_confidence": "width_confidence",
        "min_layers": "min_layers",
        "max_layers": "max_layers",
        "filter_threshold": "filter_threshold",
    },
    "nn": {"nn_ratio_threshold": "ratio_thresh"},
    "gluestick": {"filter_threshold": "filter_threshold"},
}


LINE_MATCHERS = ("gluestick",)  # matchers that also match line segments (their extractor adds LSD)


def warm_up_size(values: Mapping[str, Any]) -> tuple[int, int] | None:
    """(height, width) to warm the extractor up at start-up, or None; one of the two alone is an error."""
    width, height = int(values["warm_up_width"]), int(values["warm_up_height"])
    if (width > 0) != (height > 0):
        raise ParamError(f"set both warm_up_width and warm_up_height (or neither), got {width} x {height}")
    return (height, width) if width > 0 else None


def pipeline_name(values: Mapping[str, Any]) -> str:
    """The featmatch_core config of the parameters: ``sift+nn``, ``superpoint+lsd+gluestick``."""
    lines = "+lsd" if values["matcher"] in LINE_MATCHERS else ""
    return f"{values['extractor']}{lines}+{values['matcher']}"


def model_overrides(values: Mapping[str, Any]) -> list[str]:
    """Dotlist overrides (relative to the model section) that the parameters imply."""
    resize = int(values["resize"])
    overrides = [
        f"extractor.max_num_keypoints={int(values['max_keypoints'])}",
        f"extractor.resize={resize if resize > 0 else 'null'}",
        f"device={values['device']}",
        f"precision={values['precision']}",
    ]
    for param, key in MATCHER_CONF_KEYS[values["matcher"]].items():
        if values[param] != MODEL_VALUE:
            overrides.append(f"matcher.{key}={values[param]}")
    return overrides + str(values.get("model_overrides", "")).split()


# ---- YAML files -----------------------------------------------------------------------------
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
CONFIG_FILES = {"matcher": "matcher.yaml", "stereo_matcher": "stereo_matcher.yaml"}


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, str):
        return (
            "''" if value == "" else yaml.safe_dump(value, default_style=None).strip().removesuffix("\n...")
        )
    return yaml.safe_dump(value).strip().removesuffix("\n...").strip()


def to_yaml(node: str) -> str:
    """The node's parameter file: every parameter at its default, with its description."""
    lines = [
        f"# Parameters of lightglue_ros {node}_node (generated from lightglue_ros/params.py:",
        "#   python -m lightglue_ros.params --write; tests check that both agree).",
        "# '/**' applies them to the node whatever its name and namespace.",
        "/**:",
        "  ros__parameters:",
    ]
    for p in params_for(node):
        lines.append(f"    # {p.help()}")
        lines.append(f"    {p.name}: {_yaml_scalar(p.default)}")
    return "\n".join(lines) + "\n"


def read_yaml(path: str | Path, node: str) -> dict[str, Any]:
    """Parameter values of a ROS 2 parameter file (``/**`` or any node key with ``ros__parameters``)."""
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    values: dict[str, Any] = {}
    sections = [
        v["ros__parameters"]
        for v in data.values()
        if isinstance(v, dict) and isinstance(v.get("ros__parameters"), dict)
    ]
    if not sections:
        raise ParamError(f"{path}: no '<node>: ros__parameters:' section")
    for section in sections:
        values.update(section)
    return validate(node, values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightglue_ros.params",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="write config/*.yaml from the schema")
    group.add_argument("--check", action="store_true", help="fail if config/*.yaml differ from the schema")
    group.add_argument("--print", choices=NODES, help="print one node's parameter file")
    parser.add_argument("--dir", type=Path, default=CONFIG_DIR, help="config folder (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.print:
        sys.stdout.write(to_yaml(args.print))
        return 0
    status = 0
    for node, name in CONFIG_FILES.items():
        path = args.dir / name
        text = to_yaml(node)
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        elif not path.is_file() or path.read_text() != text:
            print(f"{path} differs from lightglue_ros/params.py: run python -m lightglue_ros.params --write")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
