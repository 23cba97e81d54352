"""LightGlue run by onnxruntime: ``model.matcher.backend=onnx`` in any LightGlue config.

The matcher takes the LightGlue config unchanged plus four keys:

* ``backend: onnx`` (what selects this class, see ``Pipeline.from_conf``);
* ``onnx_file``: an exported file (``python -m featmatch_core.export onnx``). Without it, the
  PyTorch model of the config (with its weights) is exported once into
  ``$FEATMATCH_CACHE_DIR/onnx/`` on first use, keyed by config and weights;
* ``onnx_format``: ``auto`` (= ``full``, whose runner reads the exit schedule, ``min_layers``,
  ``max_layers``, depth/width/filter thresholds at run time), or the format to export / expect
  (``colmap``, ``opencv``: fixed depth, threshold baked in);
* ``threads``: onnxruntime intra-op threads, 0 = as many as torch uses.

The outputs are LightGlue's (``matches0/1``, ``matching_scores0/1``, ``matches``, ``scores``,
``stop``, ``prune0/1``, ``num_pruned0/1``) with two differences: each pair of a batch is run,
and takes its exit and pruning decisions, on its own (the PyTorch model shares them across a
batch; batches of one are identical); and from ``colmap``/``opencv`` files, whose only outputs
are the matches of image 0, mutual pairs below ``filter_threshold`` have score 0 in
``matching_scores1`` (``opencv`` files: in both). Inputs are checked by the PyTorch model's
own checks, so bad features get the same errors. Mixed precision does not apply: onnxruntime
runs the float32 graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig

from ...config import ConfLike, to_container
from ..base import BaseModel
from .common import compact_matches, no_matches
from .lightglue import (
    AUTO_PRUNING_MIN_KEYPOINTS,
    LightGlue,
    confidence_schedule,
    exit_filter_threshold,
    last_layer_index,
)

logger = logging.getLogger(__name__)

ONNX_DEFAULTS: dict[str, Any] = {"backend": "onnx", "onnx_file": None, "onnx_format": "auto", "threads": 0}
ONNX_FORMATS = ("auto", "colmap", "opencv", "full")
# keys that do not change the exported graph (run-time settings of the `full` runner and ours)
RUNTIME_KEYS = ("weights", "backend", "onnx_file", "onnx_format", "threads", "depth_confidence",
                "width_confidence", "confidence_thresholds", "min_layers", "max_layers", "exit_filter_factors",
                "pruning_min_keypoints", "pruning_bucket", "filter_threshold", "return_all_layers")
ARCHITECTURE_KEYS = ("input_dim", "descriptor_dim", "add_scale_ori", "n_layers", "num_heads")


def lightglue_conf(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The PyTorch LightGlue part of an onnx-backend config."""
    return {k: v for k, v in to_container(conf).items() if k not in ONNX_DEFAULTS}


@dataclass
class PairMatches:
    """Matches of one pair over its (unpadded) keypoints, in input indexing."""

    matches0: np.ndarray  # (M,) int64, -1 = unmatched
    matches1: np.ndarray  # (N,)
    scores0: np.ndarray  # (M,) float32
    scores1: np.ndarray  # (N,)
    stop: int
    prune0: np.ndarray  # (M,) int64: first layer a point was pruned from, n_layers if never
    prune1: np.ndarray


def thresholded(m0: np.ndarray, m1: np.ndarray, s0: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep mutual matches with probability above ``threshold`` (as ``mutual_matches`` does, in
    float32 so that a score equal to the threshold is decided as in PyTorch)."""
    matched0 = (m0 >= 0) & (s0 > np.float32(threshold))
    matched1 = (m1 >= 0) & matched0[np.clip(m1, 0, None)] if len(m0) else np.zeros_like(m1, dtype=bool)
    return np.where(matched0, m0, -1), np.where(matched1, m1, -1)


def from_matches0(matches0: np.ndarray, scores0: np.ndarray, n1: int) -> tuple[np.ndarray, np.ndarray]:
    """matches1 and scores1 of a one-to-one matches0 (the scores of matched points only)."""
    matches1 = np.full(n1, -1, np.int64)
    scores1 = np.zeros(n1, np.float32)
    rows = np.flatnonzero(matches0 >= 0)
    matches1[matches0[rows]] = rows
    scores1[matches0[rows]] = scores0[rows]
    return matches1, scores1


def normalize_keypoints_np(keypoints: np.ndarray, image_size: np.ndarray) -> np.ndarray:
    """:func:`~featmatch_core.models.matchers.lightglue.normalize_keypoints` in float32 numpy
    (what OpenCV's ``LG_NORM_MAX_SIDE`` does for an ``opencv`` file)."""
    size = image_size.reshape(1, 2).astype(np.float32)
    return (keypoints - size[:, None, :] / 2) / (size.max(-1) / 2)[:, None, None]


class FixedDepthRunner:
    """A ``colmap`` or ``opencv`` file: one session, every layer on every point."""

    def __init__(self, session: Any, fmt: str, n_layers: int) -> None:
        self.session, self.fmt, self.n_layers = session, fmt, n_layers

    def __call__(self, feeds: dict[str, np.ndarray]) -> PairMatches:
        m, n = feeds["kpts0"].shape[1], feeds["kpts1"].shape[1]
        if self.fmt == "colmap":
            names = [i.name for i in self.session.get_inputs()]
            matches0, scores0 = self.session.run(None, {k: feeds[k] for k in names})
            matches0 = matches0.astype(np.int64)  # COLMAP also accepts float matches0 from other exports
            matches1, scores1 = from_matches0(matches0, scores0, n)
        else:
            inputs = {f"kpts{i}": normalize_keypoints_np(feeds[f"kpts{i}"], feeds[f"image_size{i}"]) for i in (0, 1)}
            pairs, pair_scores = self.session.run(None, {**inputs, "desc0": feeds["desc0"], "desc1": feeds["desc1"]})
            matches0, scores0 = np.full(m, -1, np.int64), np.zeros(m, np.float32)
            matches0[pairs[:, 0]], scores0[pairs[:, 0]] = pairs[:, 1], pair_scores
            matches1, scores1 = from_matches0(matches0, scores0, n)
        never = np.full(m, self.n_layers, np.int64), np.full(n, self.n_layers, np.int64)
        return PairMatches(matches0, matches1, scores0, scores1, self.n_layers, *never)


class AdaptiveRunner:
    """A ``full`` file: one session per stage; the exit and pruning rules of ``lightglue._Run``
    (for one pair) applied between the layers."""

    def __init__(self, sessions: dict[str, Any], n_layers: int, conf: DictConfig) -> None:
        self.sessions, self.n_layers = sessions, n_layers
        self.conf = conf  # read at every call: the ROS node changes thresholds at run time

    def settings(self) -> None:
        conf = self.conf
        self.thresholds = np.array(confidence_schedule(conf.confidence_thresholds, self.n_layers), np.float32)
        self.min_layers = int(conf.min_layers)
        self.last_layer = last_layer_index(conf.max_layers, self.n_layers)
        self.early_exit = conf.depth_confidence > 0
        self.prune = conf.width_confidence > 0
        self.depth_confidence = np.float32(conf.depth_confidence)
        self.min_matchability = np.float32(1 - conf.width_confidence)
        minimum = conf.pruning_min_keypoints
        self.min_keypoints = AUTO_PRUNING_MIN_KEYPOINTS["cpu"] if minimum is None else int(minimum)

    def run_stage(self, stage: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self.sessions[stage]
        prefix = f"{stage}/"
        return session.run(None, {i.name: feeds[i.name[len(prefix):]] for i in session.get_inputs()})

    def __call__(self, feeds: dict[str, np.ndarray]) -> PairMatches:
        from ...export.lightglue_export import STATE

        self.settings()
        state = dict(zip(STATE, self.run_stage("encode", feeds), strict=True))
        m, n = feeds["kpts0"].shape[1], feeds["kpts1"].shape[1]
        index = [np.arange(m), np.arange(n)]
        prune = [np.full(m, self.n_layers, np.int64), np.full(n, self.n_layers, np.int64)]
        layer = 0
        for layer in range(self.last_layer + 1):
            outputs = self.run_stage(f"layer{layer}", state)
            state["x0"], state["x1"] = outputs[:2]
            if layer == self.last_layer or not (self.early_exit or self.prune):
                continue
            confidence, matchability = outputs[2], outputs[3]
            if self.early_exit and layer + 1 >= self.min_layers and self.confident_enough(confidence, layer, m + n):
                break
            if self.prune:
                self.prune_points(state, index, prune, confidence, matchability, layer)
                if len(index[0]) == 0 or len(index[1]) == 0:
                    break
        stop = layer + 1
        if len(index[0]) == 0 or len(index[1]) == 0:
            return PairMatches(np.full(m, -1, np.int64), np.full(n, -1, np.int64), np.zeros(m, np.float32),
                               np.zeros(n, np.float32), stop, *prune)
        m0, m1, s0, s1 = self.run_stage(f"assign{layer}", state)
        m0, m1 = thresholded(m0, m1, s0, exit_filter_threshold(self.conf, layer))
        full = [np.full(m, -1, np.int64), np.full(n, -1, np.int64)]
        scores = [np.zeros(m, np.float32), np.zeros(n, np.float32)]
        # back to the input indexing (identity unless points were pruned)
        full[0][index[0]] = np.where(m0 >= 0, index[1][np.clip(m0, 0, None)], -1)
        full[1][index[1]] = np.where(m1 >= 0, index[0][np.clip(m1, 0, None)], -1)
        scores[0][index[0]], scores[1][index[1]] = s0, s1
        return PairMatches(full[0], full[1], scores[0], scores[1], stop, *prune)

    def confident_enough(self, confidence: np.ndarray, layer: int, num_points: int) -> bool:
        """More than ``depth_confidence`` of all points (pruned ones count as confident) are sure."""
        unsure = np.count_nonzero(confidence < self.thresholds[layer])
        return bool(np.float32(1) - np.float32(unsure) / np.float32(num_points) > self.depth_confidence)

    def prune_points(self, state: dict[str, np.ndarray], index: list[np.ndarray], prune: list[np.ndarray],
                     confidence: np.ndarray, matchability: np.ndarray, layer: int) -> None:
        """Drop confidently unmatchable points of each image with more than ``min_keypoints``."""
        keep = (matchability > self.min_matchability) | (confidence <= self.thresholds[layer])
        num0 = len(index[0])
        for side, keep_side in enumerate((keep[:num0], keep[num0:])):
            if len(keep_side) <= self.min_keypoints:
                continue
            prune[side][index[side][~keep_side]] = layer + 1
            kept = np.flatnonzero(keep_side)
            index[side] = index[side][kept]
            state[f"x{side}"] = state[f"x{side}"][:, kept]
            state[f"cos{side}"] = state[f"cos{side}"][:, :, kept]
            state[f"sin{side}"] = state[f"sin{side}"][:, :, kept]


class OnnxLightGlue(BaseModel):
    """LightGlue's interface, computed by onnxruntime from an exported file (module docstring)."""

    default_conf: ClassVar[dict[str, Any]] = {**LightGlue.default_conf, **ONNX_DEFAULTS}
    preset_key: ClassVar[str | None] = "features"
    presets: ClassVar[dict[Any, dict[str, Any]]] = LightGlue.presets

    def _init(self, conf: DictConfig) -> None:
        if conf.backend != "onnx":
            raise ValueError(f"OnnxLightGlue: backend must be 'onnx', got {conf.backend!r}")
        if conf.onnx_format not in ONNX_FORMATS:
            raise ValueError(f"OnnxLightGlue: onnx_format must be one of {list(ONNX_FORMATS)}, "
                             f"got {conf.onnx_format!r}")
        if conf.return_all_layers:
            raise ValueError("OnnxLightGlue: return_all_layers (training) needs the PyTorch backend")
        # The PyTorch model checks the config and the inputs, and is what gets exported when no
        # file is given (random weights until weights are loaded, like every model here).
        self.source = LightGlue(lightglue_conf(conf)).eval()
        self.runner: FixedDepthRunner | AdaptiveRunner | None = None
        if conf.onnx_file is not None:
            self.runner = open_runner(Path(conf.onnx_file), conf)

    @classmethod
    def from_pretrained(cls, conf: ConfLike = None, weights: str | None = None, download: bool = True) -> BaseModel:
        model = cls(conf)
        if model.conf.onnx_file is None:  # an exported file has its weights inside
            source = weights if weights is not None else model.conf.weights
            if source is not None:
                model.load_weights(source, download=download)
            model.prepare()  # export now, at load time, not in the first frame's match
        return model

    def load_checkpoint_state_dict(self, state_dict: Mapping[str, torch.Tensor], origin: str = "") -> None:
        self.source.load_checkpoint_state_dict(state_dict, origin)
        self.runner = None  # exported again (or found in the cache) on first use

    def export_format(self) -> str:
        """``auto`` exports ``full``: its runner reads every threshold at run time."""
        return "full" if self.conf.onnx_format == "auto" else str(self.conf.onnx_format)

    def prepare(self) -> None:
        """Export the PyTorch model (or find its export in the cache) and open the sessions."""
        if self.runner is None:
            self.runner = open_runner(cached_export(self.source, self.export_format()), self.conf)

    def forward(self, data: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Any]:
        (_, desc0, mask0), (_, desc1, mask1), _ = self.source.check_inputs(data)
        b, m, n = desc0.shape[0], desc0.shape[1], desc1.shape[1]
        device, n_layers = desc0.device, int(self.conf.n_layers)
        out = {**no_matches(b, m, n, torch.float32, device), "stop": 0,
               "prune0": torch.full((b, m), n_layers, dtype=torch.long, device=device),
               "prune1": torch.full((b, n), n_layers, dtype=torch.long, device=device)}
        for pair in range(b):
            valid = [torch.ones(size, dtype=torch.bool) if mask is None else mask[pair].cpu()
                     for size, mask in ((m, mask0), (n, mask1))]
            if not (valid[0].any() and valid[1].any()):
                continue
            self.prepare()
            result = self.runner(pair_feeds(data, pair, valid, bool(self.conf.add_scale_ori)))
            rows = [torch.nonzero(v).squeeze(1).to(device) for v in valid]
            to_input = [r.new_full((len(r) + 1,), -1) for r in rows]  # position -> input index, -1 -> -1
            for side in (0, 1):
                to_input[side][:-1] = rows[side]
            for side, (matches, scores, pruned) in enumerate(((result.matches0, result.scores0, result.prune0),
                                                              (result.matches1, result.scores1, result.prune1))):
                other = to_input[1 - side]
                out[f"matches{side}"][pair, rows[side]] = other[torch.from_numpy(matches).to(device)]
                out[f"matching_scores{side}"][pair, rows[side]] = torch.from_numpy(scores).to(device)
                out[f"prune{side}"][pair, rows[side]] = torch.from_numpy(pruned).to(device)
            out["stop"] = max(out["stop"], result.stop)
        out["matches"], out["scores"] = compact_matches(out["matches0"], out["matching_scores0"])
        out["num_pruned0"] = (out["prune0"] < n_layers).sum(1)
        out["num_pruned1"] = (out["prune1"] < n_layers).sum(1)
        return out


def pair_feeds(data: Mapping[str, Mapping[str, torch.Tensor]], pair: int, valid: list[torch.Tensor],
               scale_ori: bool) -> dict[str, np.ndarray]:
    """The onnx inputs of one pair (batch of one, float32 numpy), padding removed."""
    feeds = {}
    for side in (0, 1):
        feats = data[f"image{side}"]
        keep = valid[side].to(feats["keypoints"].device)
        size = feats["image_size"].reshape(-1, 2)
        feeds[f"image_size{side}"] = size[pair if len(size) > 1 else 0][None].float().cpu().numpy()
        keys = {"kpts": "keypoints", "desc": "descriptors"}
        if scale_ori:
            keys.update(scales="scales", oris="oris")
        for name, key in keys.items():
            feeds[f"{name}{side}"] = np.ascontiguousarray(feats[key][pair][keep][None].float().cpu().numpy())
    return feeds


# ---- files ---------------------------------------------------------------------------------------
def session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Idle intra-op threads spin for a while after each run, stealing the cores of whatever runs
    # next: the next stage session (full: 1070 -> 720 ms at 1024 keypoints on 2 cores), and the
    # PyTorch extractor of the pipeline (2-thread torch ran ~3x slower right after a spinning run).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads if threads > 0 else torch.get_num_threads()
    options.inter_op_num_threads = 1  # the graphs are sequential: more threads only contend
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def create_session(model: Any, path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("model.matcher.backend=onnx needs onnxruntime: pip install 'lightglue_ros[onnx]'") from err
    from ...export.onnx_files import OnnxFileError

    try:
        return ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's Fail / InvalidGraph errors
        raise OnnxFileError(f"onnxruntime cannot load {path}: {str(err).splitlines()[0]}") from err


def open_runner(path: Path, conf: DictConfig) -> FixedDepthRunner | AdaptiveRunner:
    """Check ``path`` against the config (one error naming the file) and open its sessions."""
    from ...export import lightglue_export as lx
    from ...export.onnx_files import CONFIG_KEY, FORMAT_KEY, OnnxFileError, check_signature, load_model, metadata

    model = load_model(path)
    meta = metadata(model)
    names = {v.name for v in model.graph.input}
    fmt = meta.get(FORMAT_KEY) or ("colmap" if "image_size0" in names else "opencv")
    if fmt not in lx.FORMATS:
        raise OnnxFileError(f"{path} is a featmatch '{fmt}' export, not a LightGlue matcher")
    if conf.onnx_format not in ("auto", fmt):
        raise OnnxFileError(f"{path} is a '{fmt}' export, the config asks for onnx_format={conf.onnx_format}")
    exported = json.loads(meta.get(CONFIG_KEY, "{}"))
    check_exported_conf(path, exported, conf, fmt)
    threads = int(conf.threads)
    if fmt == "full":
        stages = json.loads(meta.get(lx.STAGES_KEY, "[]"))
        n_layers = int(conf.n_layers)
        expected = ["encode"] + [f"{kind}{i}" for i in range(n_layers) for kind in ("layer", "assign")]
        if sorted(stages) != sorted(expected):
            raise OnnxFileError(f"{path} has stages {stages}, a {n_layers}-layer full export has {expected}")
        sessions = {stage: create_session(lx.split_stage(model, stage), path, threads) for stage in stages}
        return AdaptiveRunner(sessions, n_layers, conf)
    scale_ori = bool(conf.add_scale_ori)
    inputs = lx.pixel_inputs(scale_ori) if fmt == "colmap" else list(lx.POINT_INPUTS)
    if fmt == "opencv" and scale_ori:
        raise OnnxFileError(f"{path} is an opencv export (no scale/orientation inputs) but the config "
                            "encodes scale and orientation (add_scale_ori=True)")
    dim = int(conf.input_dim)

    def descriptor_dim(value: Any) -> str | None:
        last = value.shape[-1] if value.shape else None
        if not isinstance(last, int) or last in (0, dim):  # a dimension name, or the config's
            return None
        return f"descriptors of dimension {last}, the config has input_dim {dim}"

    check_signature(path, model, inputs, list(lx.MATCH_OUTPUTS), f"a LightGlue '{fmt}' ONNX file for this config",
                    {"desc0": descriptor_dim, "desc1": descriptor_dim})
    if conf.max_layers is not None and int(conf.max_layers) < int(conf.n_layers):
        raise OnnxFileError(
            f"{path} is a '{fmt}' export (every layer) but the config sets max_layers={conf.max_layers}: "
            "export --format full, or set max_layers=null")
    if conf.depth_confidence > 0 or conf.width_confidence > 0:
        raise OnnxFileError(
            f"{path} is a '{fmt}' export (every layer on every point) but the config enables adaptive depth/width "
            f"(depth_confidence={conf.depth_confidence}, width_confidence={conf.width_confidence}): export "
            "--format full, or set depth_confidence=-1 width_confidence=-1")
    return FixedDepthRunner(create_session(model, path, threads), fmt, int(conf.n_layers))


def check_exported_conf(path: Path, exported: Mapping[str, Any], conf: DictConfig, fmt: str) -> None:
    """The architecture (and, for fixed graphs, the baked-in threshold) must be the config's."""
    from ...export.onnx_files import OnnxFileError

    keys = ARCHITECTURE_KEYS + (("filter_threshold",) if fmt != "full" else ())
    wrong = [f"{k} {exported[k]!r} (config: {conf[k]!r})" for k in keys if k in exported and exported[k] != conf[k]]
    if wrong:
        raise OnnxFileError(f"{path} was exported with " + ", ".join(wrong) + ": export it again for this config")


def cached_export(model: LightGlue, fmt: str) -> Path:
    """The export of ``model`` in ``fmt`` under the cache, written on first use."""
    from ...export.lightglue_export import export_lightglue
    from ...export.lightglue_graphs import GRAPH_VERSION
    from ...weights import cache_dir

    digest = hashlib.sha256()
    graph_conf = {k: v for k, v in to_container(model.conf).items() if k not in RUNTIME_KEYS}
    if fmt != "full":  # the fixed graphs bake the threshold in
        graph_conf["filter_threshold"] = model.conf.filter_threshold
    digest.update(json.dumps({"format": fmt, "version": GRAPH_VERSION, **graph_conf}, sort_keys=True).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = cache_dir() / "onnx" / f"lightglue-{fmt}-{digest.hexdigest()[:20]}.onnx"
    if not path.is_file():
        logger.info("exporting LightGlue to %s (%s format)", path, fmt)
        export_lightglue(model, path, fmt)
    return path
