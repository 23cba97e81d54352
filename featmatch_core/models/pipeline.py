"""Two-view pipeline (extractor + matcher) and the streaming form used by the ROS node.

``load("sift+lightglue")`` is the one entry point for scripts:

    pipe = featmatch_core.load("sift+lightglue", ["matcher.depth_confidence=0.9"])
    pred = pipe.match(image0, image1)      # TwoViewMatches: keypoints, matches, scores, timings

``FeatureStream`` extracts every frame exactly once and matches it against cached
features of the previous frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import ConfigError, ConfLike, load_named_config, merge_strict, parse_dotlist, to_container
from ..device import autocast, precision_for, resolve_device, to_numpy_together
from ..image import ImageLike, PinnedStaging, upload_image
from ..weights import WeightsUnavailableError
from . import build_model
from .extractors.base import Extractor, Features, autocast_allowed, num_valid_keypoints, pad_and_stack

Overrides = Sequence[str] | Mapping[str, Any] | DictConfig | None
OPEN_KEYS = ("extractor", "matcher", "fallback_matcher")  # validated by the models themselves
logger = logging.getLogger(__name__)


@dataclass
class TwoViewMatches:
    """Matches between two images, as numpy arrays in original pixel coordinates."""

    keypoints0: np.ndarray  # (N0, 2)
    keypoints1: np.ndarray  # (N1, 2)
    matches: np.ndarray  # (K, 2) int64 indices into keypoints0 / keypoints1
    scores: np.ndarray  # (K,) matching confidence
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds
    info: dict[str, Any] = field(default_factory=dict)  # matcher facts: layers run, points pruned
    features0: Features | None = None  # raw batched features (on the pipeline's device)
    features1: Features | None = None
    # line segments (L, 2, 2) and their matches, from a matcher with lines (GlueStick); None without
    lines0: np.ndarray | None = None
    lines1: np.ndarray | None = None
    line_matches: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # (K, 2)
    line_match_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (K,)

    @property
    def points0(self) -> np.ndarray:
        return self.keypoints0[self.matches[:, 0]]

    @property
    def points1(self) -> np.ndarray:
        return self.keypoints1[self.matches[:, 1]]

    def summary(self) -> str:
        parts = [f"keypoints {len(self.keypoints0)}/{len(self.keypoints1)}", f"matches {len(self.matches)}"]
        if "stop_layer" in self.info:
            parts.append(f"layers {self.info['stop_layer']}")
        parts += [f"{k} {v:.1f} ms" for k, v in self.timings.items()]
        return ", ".join(parts)


@dataclass
class Frame:
    """Features of one image, extracted once and reusable in any number of matches."""

    features: Features
    index: int
    stamp: Any = None
    # what the matcher computed from this image alone, reused when the frame is matched again
    # (LightGlue: see its ``image_states``); owned by the frame, dropped with it
    matcher_state: dict[str, Any] = field(default_factory=dict)

    @property
    def num_keypoints(self) -> int:
        return int(self.features["keypoints"].shape[1])


def _fallback_fits(conf: DictConfig) -> bool:
    """A fallback matcher replaces official weights of the features it was trained on only: a
    matcher reconfigured for other features (``matcher.features=superpoint`` behind SIFT) fails."""
    if conf.fallback_matcher is None:
        return False
    features = conf.matcher.get("features")
    return features is None or features == conf.extractor.get("name")


class Pipeline(nn.Module):
    """Extractor + matcher on one device with one precision."""

    default_conf: dict[str, Any] = {
        "extractor": {"name": None},
        "matcher": {"name": None},
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "precision": "fp32",  # fp32 | bf16 | fp16 (CUDA only) | auto (native reduced precision, else fp32)
        # matcher config used when the matcher's weights cannot be had (e.g. offline):
        # the named LightGlue configs fall back to the weights bundled with the package
        "fallback_matcher": None,
    }

    def __init__(self, extractor: Extractor, matcher: nn.Module, conf: ConfLike = None) -> None:
        super().__init__()
        self.conf = merge_strict(self.default_conf, conf, owner="pipeline", open_keys=OPEN_KEYS)
        check_compatible(extractor, matcher)
        self.extractor = extractor
        self.matcher = matcher
        self.device = resolve_device(self.conf.device)
        # ``auto`` is decided once, here: the conf then says what runs (diagnostics, exports)
        self.conf.precision = precision_for(self.device, self.conf.precision)
        # camera frames reach a GPU through one reused page-locked buffer (upload_image)
        self._staging = PinnedStaging() if self.device.type == "cuda" else None
        self.warmed_sizes: set[tuple[int, int]] = set()  # (height, width) of warm_up_extractor's runs
        self.to(self.device).eval()

    @classmethod
    def from_conf(cls, conf: ConfLike, download: bool = True, pretrained: bool = True) -> Pipeline:
        """Build both models from a config and load their weights (this may download).

        A model section with ``dense:`` instead of extractor/matcher (LoFTR) builds a
        ``DenseTwoView``, which offers the same two-view methods."""
        from .dense.two_view import DenseTwoView, is_dense_conf

        if is_dense_conf(conf):
            return DenseTwoView.from_conf(conf, download=download, pretrained=pretrained)
        conf = merge_strict(cls.default_conf, conf, owner="pipeline", open_keys=OPEN_KEYS)
        extractor = build_model("extractor", conf.extractor, pretrained=pretrained, download=download)
        try:
            matcher = build_matcher(conf.matcher, pretrained=pretrained, download=download)
        except WeightsUnavailableError as err:
            if not _fallback_fits(conf):
                raise
            fallback = conf.fallback_matcher
            logger.warning("%s\n-> using the fallback matcher (weights %s) instead",
                           str(err).splitlines()[0], fallback.get("weights"))
            # the fallback runs on the backend the matcher asked for
            backend = {k: conf.matcher[k] for k in ("backend", "onnx_format", "threads") if k in conf.matcher}
            matcher = build_matcher({**to_container(fallback), **backend}, pretrained=pretrained, download=download)
        conf.extractor = OmegaConf.create(to_container(extractor.conf))
        conf.matcher = OmegaConf.create(to_container(matcher.conf))
        return cls(extractor, matcher, conf)

    # ---- batched form (evaluation, training) --------------------------------------
    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``data["image0"]``, ``data["image1"]``: (B, C, H, W) in [0, 1] -> features and matches."""
        feats0 = self._run_extractor(data["image0"])
        feats1 = self._run_extractor(data["image1"])
        return {"image0": feats0, "image1": feats1, **self._run_matcher(feats0, feats1)}

    def _run_extractor(self, images: torch.Tensor) -> Features:
        use_amp = autocast_allowed(self.extractor, self.device)
        with autocast(self.device, self.conf.precision if use_amp else "fp32"):
            feats = self.extractor({"image": images.to(self.device)})
        return {k: v.float() if v.is_floating_point() else v for k, v in feats.items()}

    def _run_matcher(self, feats0: Features, feats1: Features,
                     image_states: tuple[dict[str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        extra = {}
        if image_states is not None and getattr(self.matcher, "reuses_image_states", False):
            extra["image_states"] = image_states
        with autocast(self.device, self.conf.precision):
            return self.matcher({"image0": feats0, "image1": feats1}, **extra)

    @torch.inference_mode()
    def warm_up(self) -> int:
        """Prepare the matcher for every point-set size it can meet (LightGlue under CPU bf16:
        its kernels are created per shape), up to the extractor's ``max_num_keypoints``; a
        long-running user (a node) calls it once at start-up. Returns the number of shapes run
        (0 when nothing needs it)."""
        warm = getattr(self.matcher, "warm_up", None)
        max_keypoints = self.conf.extractor.get("max_num_keypoints")
        if warm is None or not max_keypoints:
            return 0
        with autocast(self.device, self.conf.precision):
            return int(warm(int(max_keypoints)))

    @torch.inference_mode()
    def warm_up_extractor(self, height: int, width: int, runs: int = 2) -> None:
        """Run the extractor on a noise image of the camera's size: kernels, cuDNN's algorithm
        choice, the allocator's blocks and the CUDA graphs (``Extractor.warm_up``) are set up
        before the first real frame."""
        if height <= 0 or width <= 0:
            raise ValueError(f"warm-up image size must be positive, got {height}x{width}")
        noise = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
        for _ in range(runs):
            self.extract(noise)
        self.extractor.warm_up(upload_image(noise, self.device, self._staging))
        self.warmed_sizes.add((height, width))
        sync_current_stream(self.device)

    # ---- single pair API -----------------------------------------------------------
    @torch.inference_mode()
    def extract(self, image: ImageLike) -> Features:
        """Features of one image (numpy HxW[xC] or tensor [B]xCxHxW, uint8 or float in [0, 1])."""
        return self._run_extractor(upload_image(image, self.device, self._staging))

    @torch.inference_mode()
    def match_features(self, feats0: Features, feats1: Features,
                       image_states: tuple[dict[str, Any], dict[str, Any]] | None = None) -> TwoViewMatches:
        """Match two images' features; ``image_states`` (one dict per image, kept with its
        features) lets a matcher reuse per-image work when an image is matched again."""
        with _timer(self.device) as t:
            pred = self._run_matcher(feats0, feats1, image_states)
        result = to_two_view_matches(feats0, feats1, pred)
        result.timings["match"] = t.ms
        return result

    @torch.inference_mode()
    def match_features_batch(self, pairs: Sequence[tuple[Features, Features]]) -> list[TwoViewMatches]:
        """``match_features`` of every pair, in one padded batch where that gives the same matches:
        a matcher that takes padded batches (``matches_padded_batches``) at full depth and width
        (adaptive depth would stop a whole batch at once, and padded batches are not pruned).
        Otherwise pair by pair. Batching is what pays on a GPU (one launch per layer for B pairs)."""
        if len(pairs) <= 1 or not self.batches_pairs():
            return [self.match_features(feats0, feats1) for feats0, feats1 in pairs]
        sides = [batch_of_pairs([pair[side] for pair in pairs], self.device) for side in (0, 1)]
        with _timer(self.device) as t:
            pred = self._run_matcher(*sides)
        results = []
        for i, (feats0, feats1) in enumerate(pairs):
            item = {"matches": [pred["matches"][i]], "scores": [pred["scores"][i]], "stop": pred["stop"]}
            result = to_two_view_matches(feats0, feats1, item)
            result.timings["match"] = t.ms / len(pairs)  # the batch's time, shared
            results.append(result)
        return results

    def batches_pairs(self) -> bool:
        conf = getattr(self.matcher, "conf", {})
        return bool(getattr(self.matcher, "matches_padded_batches", False)) \
            and conf.get("depth_confidence", -1) <= 0 and conf.get("width_confidence", -1) <= 0

    def match(self, image0: ImageLike, image1: ImageLike) -> TwoViewMatches:
        with _timer(self.device) as t0:
            feats0 = self.extract(image0)
        with _timer(self.device) as t1:
            feats1 = self.extract(image1)
        result = self.match_features(feats0, feats1)
        result.timings = {"extract0": t0.ms, "extract1": t1.ms, **result.timings}
        result.timings["total"] = t0.ms + t1.ms + result.timings["match"]
        return result


def build_matcher(conf: ConfLike, pretrained: bool = True, download: bool = True) -> nn.Module:
    """The matcher of a config; ``backend: onnx`` runs a LightGlue through onnxruntime
    (``matchers/onnx_runtime.py``), ``backend: torch`` (or none) is the PyTorch model."""
    conf = to_container(conf)
    backend = conf.pop("backend", "torch")
    if backend == "torch":
        return build_model("matcher", conf, pretrained=pretrained, download=download)
    if backend != "onnx" or conf.get("name") != "lightglue":
        raise ConfigError(f"matcher backend '{backend}' is not available for matcher '{conf.get('name')}': "
                          "backend is 'torch' (default) or 'onnx' (LightGlue only)")
    from .matchers.onnx_runtime import OnnxLightGlue

    conf["backend"] = backend
    return OnnxLightGlue.from_pretrained(conf, download=download) if pretrained else OnnxLightGlue(conf)


def check_compatible(extractor: nn.Module, matcher: nn.Module) -> None:
    """Refuse extractor/matcher pairs whose descriptors or inputs cannot fit together."""
    mconf = getattr(matcher, "conf", {})
    dim = getattr(extractor, "descriptor_dim", None)
    input_dim = mconf.get("input_dim") if hasattr(mconf, "get") else None
    if input_dim is not None and dim and int(input_dim) != int(dim):
        raise ConfigError(
            f"{type(extractor).__name__} gives {dim}-d descriptors but the matcher expects {input_dim}-d "
            f"(matcher features={mconf.get('features')}); use a matcher configured for this extractor"
        )
    if mconf.get("add_scale_ori") and not getattr(extractor, "has_scale_ori", False):
        raise ConfigError(
            f"the matcher encodes keypoint scale and orientation but {type(extractor).__name__} has none"
        )


POINT_KEYS = ("keypoints", "keypoint_scores", "descriptors", "scales", "oris")


def batch_of_pairs(features: Sequence[Features], device: torch.device) -> Features:
    """Batch-of-one feature sets -> one (B, N_max, ...) batch, padding masked by ``keypoint_mask``."""
    keys = [k for k in POINT_KEYS if all(k in f for f in features)]
    counts = [num_valid_keypoints(f) for f in features]
    per_image = [{k: f[k][0, :n] for k in keys} for f, n in zip(features, counts, strict=True)]
    batch = pad_and_stack(per_image, int(features[0]["descriptors"].shape[-1]), device)
    batch["image_size"] = torch.cat([f["image_size"].reshape(1, 2) for f in features]).to(device)
    return batch


def to_two_view_matches(feats0: Features, feats1: Features, pred: dict[str, Any]) -> TwoViewMatches:
    """Batch of one -> numpy result (padding removed), fetched from the device in one transfer."""
    wanted = {"keypoints0": feats0["keypoints"][0].float(), "keypoints1": feats1["keypoints"][0].float(),
              "matches": pred["matches"][0].reshape(-1, 2), "scores": pred["scores"][0].float()}
    for i, feats in enumerate((feats0, feats1)):
        if isinstance(feats.get("keypoint_mask"), torch.Tensor):
            wanted[f"mask{i}"] = feats["keypoint_mask"][0]
    for key in ("num_pruned0", "num_pruned1"):
        if key in pred:
            wanted[key] = torch.as_tensor(pred[key]).sum()
    host = dict(zip(wanted, to_numpy_together(*wanted.values()), strict=True))
    info: dict[str, Any] = {}
    if "stop" in pred:
        info["stop_layer"] = int(pred["stop"])
    for key in ("num_pruned0", "num_pruned1"):
        if key in host:
            info[key] = int(host[key])
    counts = [int(host[f"mask{i}"].sum()) if f"mask{i}" in host else num_valid_keypoints(feats)
              for i, feats in enumerate((feats0, feats1))]
    return TwoViewMatches(
        **_line_fields(feats0, feats1, pred),
        keypoints0=host["keypoints0"][:counts[0]],
        keypoints1=host["keypoints1"][:counts[1]],
        matches=host["matches"].astype(np.int64),
        scores=host["scores"],
        info=info,
        features0=feats0,
        features1=feats1,
    )


def _line_fields(feats0: Features, feats1: Features, pred: dict[str, Any]) -> dict[str, Any]:
    """Segments (padding removed) and line matches of a batch of one, when the matcher has lines."""
    if "line_matches" not in pred or "lines" not in feats0 or "lines" not in feats1:
        return {}
    segments = []
    for feats in (feats0, feats1):
        lines = feats["lines"][0]
        if "line_mask" in feats:
            lines = lines[: int(feats["line_mask"][0].sum())]
        segments.append(lines.float().cpu().numpy().reshape(-1, 2, 2))
    return {
        "lines0": segments[0],
        "lines1": segments[1],
        "line_matches": pred["line_matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2),
        "line_match_scores": pred["line_match_scores"][0].float().cpu().numpy().reshape(-1),
    }


def sync_current_stream(device: torch.device) -> None:
    """Wait for the work this thread queued on ``device`` (its current CUDA stream), not the
    whole device's: a node's stages run on streams of their own and must not wait for each
    other, and a device-wide synchronize fails another thread's CUDA-graph capture."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class _timer:
    """Wall time of a block in ms; waits for this thread's CUDA work so that it is counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ms = 0.0

    def __enter__(self) -> _timer:
        sync_current_stream(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        sync_current_stream(self.device)
        self.ms = (time.perf_counter() - self._start) * 1e3


class FeatureStream:
    """Extract each frame once; match it against the cached previous frame.

    The ROS node and the bag replay drive this class; only their I/O differs.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        if not getattr(pipeline, "per_image_features", True):  # a dense matcher (LoFTR) sees both images at once
            from .dense.two_view import no_per_image_features

            raise no_per_image_features(getattr(pipeline, "name", type(pipeline).__name__))
        self.pipeline = pipeline
        self.previous: Frame | None = None
        self.num_extracted = 0

    def extract(self, image: ImageLike, stamp: Any = None) -> Frame:
        frame = Frame(self.pipeline.extract(image), index=self.num_extracted, stamp=stamp)
        self.num_extracted += 1
        return frame

    def match(self, frame0: Frame, frame1: Frame) -> TwoViewMatches:
        return self.pipeline.match_features(frame0.features, frame1.features,
                                            (frame0.matcher_state, frame1.matcher_state))

    def push(self, image: ImageLike, stamp: Any = None) -> TwoViewMatches | None:
        """Add a frame; returns its matches to the previous frame (None for the first)."""
        with _timer(self.pipeline.device) as t:
            frame = self.extract(image, stamp)
        result = self.match(self.previous, frame) if self.previous is not None else None
        if result is not None:
            result.timings = {"extract": t.ms, **result.timings}
        self.previous = frame
        return result

    def reset(self) -> None:
        self.previous = None


def pipeline_conf(name_or_conf: str | ConfLike, overrides: Overrides = None) -> DictConfig:
    """The ``model`` section of a named config (or a given conf) with overrides applied.

    ``overrides`` are relative to the model section: ``["matcher.filter_threshold=0.2"]``
    or ``{"matcher": {"filter_threshold": 0.2}}``.
    """
    if isinstance(name_or_conf, str):
        full = load_named_config(name_or_conf)
        if "model" not in full:
            raise ConfigError(f"config '{name_or_conf}' has no 'model' section")
        conf = full.model
    else:
        conf = OmegaConf.create(to_container(name_or_conf))
    if overrides is None:
        return conf
    if isinstance(overrides, (list, tuple)):
        overrides = parse_dotlist(overrides)
    return OmegaConf.merge(conf, to_container(overrides))


def load(name_or_conf: str | ConfLike, overrides: Overrides = None, download: bool = True) -> Pipeline:
    """Build a ready-to-use pipeline from a named config (e.g. ``"sift+lightglue"``)."""
    return Pipeline.from_conf(pipeline_conf(name_or_conf, overrides), download=download)

