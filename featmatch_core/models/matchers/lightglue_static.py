"""Static-shape LightGlue inference, replayed as CUDA graphs on a GPU.

At 1024 points a LightGlue pass is a fraction of a millisecond of GPU arithmetic, but the
dynamic pass (:class:`~.lightglue._Run`) launches hundreds of small kernels and waits for the
host at every pruning compaction and exit check: it is bound by launches and syncs, not by
compute. This pass keeps every shape and every decision on the device, so that the encoding,
each layer and each assignment head can be captured once as a CUDA graph and replayed:

- Point sets are zero-padded (masked) to a multiple of ``static_bucket``: one capture serves a
  camera whose keypoint count changes every frame. Sets that fill their bucket and cannot be
  pruned (the usual case of a camera that delivers its keypoint budget) run without masks,
  so that attention may take its fastest kernel.
- Adaptive width by masks: a pruned point leaves the attention key masks and the final
  assignment instead of the tensors. The matches are those of removing it (attention over
  masked keys is attention over the rest); the work does not shrink, which on a GPU costs
  little (the reference prunes only above 1024 points there).
- Adaptive depth: every layer computes its exit decision on the device; the host reads it
  only after layers where an exit is allowed, and while the next layer already runs (the
  state between layers has two slots, so an exit drops that layer's work and keeps the state
  before it): the GPU does not wait for the host. Full depth reads nothing until the matches
  come back.
- The finite-input check runs on the device and is read with the number of matches of each
  pair: a full-depth pass waits for the device once.
- ``static_compile``: the layers go through torch.compile before the capture (fused
  element-wise work; one compiled graph serves every layer of a padded size).

Differences from the dynamic pass, both outside the default settings: ``pruning_bucket``
(keeping some prunable points to round set sizes) is not applied, since sizes are static
anyway; and an image whose points are all pruned ends the pass at the next exit check
instead of at once (it matches nothing either way; ``stop`` differs).

Each (batch, padded sizes, input dtype, autocast, settings, weights) gets its own buffers and
graphs (:class:`StaticPass`), captured at first use or by ``LightGlue.warm_up``; the model
keeps the most recent few. Without CUDA, or with ``cuda_graphs: false``, the same steps run
eagerly: that is how the tests compare this pass with the dynamic one on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from ..cuda_graphs import capture
from .common import compact_matches
from .lightglue import (
    LightGlue,
    Rotary,
    attention_key_mask,
    confidence_schedule,
    exit_filter_threshold,
    full_precision,
    last_layer_index,
    mutual_matches_from_similarity,
    parameter_versions,
    pruning_min_keypoints,
)

logger = logging.getLogger(__name__)

# keys kept per model, least recently used dropped first (each a few MB of buffers and graph
# memory): at least this many, and what LightGlue.warm_up_static built (up to 24 for a
# 1024-point camera with buckets of 256, 68 for 2048) plus WARM_UP_HEADROOM for other sets met later
MAX_CACHED_PASSES = 24
WARM_UP_HEADROOM = 6
REDUCED_DTYPES = (torch.float16, torch.bfloat16)  # autocast dtypes the layers run wholly in
COMPILED_VARIANTS_LIMIT = 256  # compiled variants of the layer code (padded sizes x masks) dynamo may keep


def padded_size(size: int, bucket: int) -> int:
    """``size`` rounded up to a multiple of ``bucket`` (at least one bucket)."""
    return max(-(-size // bucket), 1) * bucket


@dataclasses.dataclass(frozen=True)
class StaticKey:
    """What a captured pass depends on; a new value means new buffers and graphs."""

    batch: int
    size0: int  # padded point-set sizes
    size1: int
    device: torch.device
    input_dtype: torch.dtype  # of the descriptors
    autocast: torch.dtype | None  # the autocast dtype in force, None = off
    prune: bool  # adaptive width possible (off for batches padded by the caller, as in the dynamic pass)
    masked: bool  # some points are padding or may be pruned: attention and assignment take masks
    settings: tuple  # the config values baked into the graphs
    weights: tuple  # address and version of every parameter (StaticPasses.weights)
    use_graphs: bool
    compiled: bool  # layers through torch.compile (static_compile)


def static_key(model: LightGlue, batch: int, points0: int, points1: int, device: torch.device,
               input_dtype: torch.dtype, caller_padding: bool, weights: tuple | None = None) -> StaticKey:
    """The key of a batch of ``points0`` and ``points1`` points per image. The config is read
    once, as a plain dict (each OmegaConf read costs microseconds, and this runs every call)."""
    conf = OmegaConf.to_container(model.conf)
    n_layers = int(conf["n_layers"])
    autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    bucket = int(conf["static_bucket"])
    size0, size1 = padded_size(points0, bucket), padded_size(points1, bucket)
    min_keypoints = pruning_min_keypoints(conf["pruning_min_keypoints"], device)
    # sets no larger than min_keypoints are never pruned
    prune = conf["width_confidence"] > 0 and not caller_padding and max(size0, size1) > min_keypoints
    # without masks attention may take its fastest (flash) kernel: a camera that fills its
    # keypoint budget fills the bucket exactly
    masked = caller_padding or prune or (size0, size1) != (points0, points1)
    settings = (
        float(conf["depth_confidence"]) if conf["depth_confidence"] > 0 else None,
        float(conf["width_confidence"]) if prune else None,
        tuple(confidence_schedule(conf["confidence_thresholds"], n_layers)),  # exit_thresholds, on the host
        int(conf["min_layers"]),
        last_layer_index(conf["max_layers"], n_layers),
        min_keypoints,
        tuple(exit_filter_threshold(conf, layer) for layer in range(n_layers)),
    )
    if weights is None:
        weights = parameter_versions(model)
    use_graphs = device.type == "cuda" and bool(conf["cuda_graphs"])
    return StaticKey(batch, size0, size1, device, input_dtype, autocast, prune, masked, settings, weights,
                     use_graphs, bool(conf["static_compile"]))


def attention_key_masks(valid: Tensor, num0: int) -> tuple[Tensor, Tensor]:
    """Both images' attention key masks from the stacked ``valid`` (B, M + N)."""
    return attention_key_mask(valid[:, :num0]), attention_key_mask(valid[:, num0:])


class StaticPass:
    """Buffers and steps (graphs on CUDA) of the static pass for one :class:`StaticKey`.

    State between steps lives in fixed buffers: the tokens ``x`` (2, B, M' + N', D), ``valid``
    (2, B, M' + N') (real and not pruned) and ``pruned_at`` (layer index + 1 of the pruning,
    n_layers if never) in two slots (layer i reads slot i % 2, writes the other), the rotary
    ``phasor``, the per-layer exit flags and the outputs of the head that ran last.
    """

    def __init__(self, model: LightGlue, key: StaticKey) -> None:
        self.model, self.key = model, key
        conf = model.conf
        self.n_layers = int(conf.n_layers)
        depth, width, thresholds, min_layers, last, min_keypoints, filters = key.settings
        self.depth_confidence, self.width_confidence = depth, width
        self.thresholds, self.filters = thresholds, filters
        self.min_keypoints, self.last_layer = min_keypoints, last
        # layers after which the pass may end early: the host reads the exit flag there
        self.exit_layers = {layer for layer in range(last) if depth is not None and layer + 1 >= min_layers}
        b, m, n, device = key.batch, key.size0, key.size1, key.device
        heads, dim = int(conf.num_heads), int(conf.descriptor_dim)
        points = m + n
        with torch.inference_mode(False):  # normal tensors: updated in place under any grad mode
            self.allocate(b, points, heads, dim, device)
        # Under fp16/bf16 autocast the layers run wholly in that dtype, from copies of the
        # weights made once per weights (``LightGlue.layers_in``): inside a graph autocast's weight
        # casts are not cached but replayed, two small kernels per linear layer and call.
        self.reduced = key.autocast if key.autocast in REDUCED_DTYPES and model.base_dtype == torch.float32 else None
        layers = model.transformers if self.reduced is None else model.layers_in(self.reduced, key.weights)
        # static_compile: the transformer layers through torch.compile (fused element-wise work;
        # fullgraph, so a break, which could hide a host sync, raises). Layers of one structure
        # share one compiled graph per padded size; encoding and heads stay eager (in graphs anyway).
        self.layers = ([torch.compile(layer, fullgraph=True, dynamic=False) for layer in layers]
                       if key.compiled else layers)
        self.steps: dict[str, Callable[[], None]] = {}
        self.pool: Any = None  # the memory pool the graphs of this pass share (made at the first capture)
        self.build()

    def allocate(self, b: int, points: int, heads: int, dim: int, device: torch.device) -> None:
        model, base = self.model, self.model.base_dtype
        self.geometry = torch.zeros(b, points, model.geometry_dim, dtype=base, device=device)
        self.descriptors = torch.zeros(b, points, model.input_dim, dtype=self.key.input_dtype, device=device)
        self.input_valid = torch.zeros(b, points, dtype=torch.bool, device=device)
        # the state between layers, in two slots: layer i reads slot i % 2 and writes the other,
        # so that the state after layer i survives layer i + 1 run while its exit flag is read
        self.x = torch.zeros(2, b, points, dim, dtype=base, device=device)
        self.valid = torch.zeros(2, b, points, dtype=torch.bool, device=device)
        self.pruned_at = torch.full((2, b, points), self.n_layers, dtype=torch.long, device=device)
        self.phasor = torch.zeros(b, 1, points, dim // heads // 2, dtype=base.to_complex(), device=device)
        self.num_valid = torch.zeros((), dtype=torch.long, device=device)
        self.key_mask = torch.zeros(b, points, dtype=torch.bool, device=device)  # attention keys, if fixed
        self.exit_flags = torch.zeros(self.n_layers, dtype=torch.bool, device=device)
        on_gpu = device.type == "cuda"
        self.exit_host = torch.zeros(self.n_layers, dtype=torch.bool, pin_memory=on_gpu)  # copies of the flags
        self.flag_copied = [torch.cuda.Event() for _ in range(self.n_layers)] if on_gpu else None
        self.finite = torch.ones(2, dtype=torch.bool, device=device)  # per image
        self.matches = torch.full((b, points), -1, dtype=torch.long, device=device)  # matches0 ++ matches1
        self.scores = torch.zeros(b, points, dtype=base, device=device)

    # ---- steps ---------------------------------------------------------------------------
    def precision(self) -> contextlib.AbstractContextManager[None]:
        """The call's autocast, without its weight-cast cache: a capture must not keep pointers
        to casts that the cache frees when the autocast region ends."""
        key = self.key
        if key.autocast is None:
            return full_precision(key.device)
        return torch.autocast(key.device.type, dtype=key.autocast, cache_enabled=False)

    def encode(self) -> None:
        """Inputs -> rotary phasor, projected tokens; reset masks and records; check finiteness."""
        model, m = self.model, self.key.size0
        with full_precision(self.key.device):
            self.phasor.copy_(Rotary.from_angles(model.posenc(self.geometry)).phasor)
        base = model.base_dtype
        self.x[0].copy_(model.input_proj(self.descriptors.to(base)).to(base))
        self.valid.copy_(self.input_valid.expand_as(self.valid))  # both slots: without pruning they stay so
        if self.key.masked and not self.key.prune:  # padding alone: the same attention masks in every layer
            self.key_mask.copy_(torch.cat(attention_key_masks(self.input_valid, m), 1))
        self.pruned_at.fill_(self.n_layers)
        self.exit_flags.zero_()
        self.num_valid.copy_(self.input_valid.sum())
        finite = torch.isfinite(self.geometry).all(-1) & torch.isfinite(self.descriptors).all(-1)  # (B, P)
        self.finite.copy_(torch.stack([finite[:, :m].all(), finite[:, m:].all()]))

    def layer(self, index: int) -> None:
        """Transformer layer ``index`` from slot ``index % 2`` into the other slot, then (before
        the last layer) its exit flag and pruning."""
        model, m = self.model, self.key.size0
        source, target = index % 2, (index + 1) % 2
        valid = self.valid[source]
        valid0, valid1 = valid[:, :m], valid[:, m:]
        if not self.key.masked:
            key_masks: tuple[Tensor | None, Tensor | None] = (None, None)
        elif self.key.prune:  # the masks change as points are pruned
            key_masks = attention_key_masks(valid, m)
        else:
            key_masks = (self.key_mask[:, :m], self.key_mask[:, m:])
        if self.reduced is None:
            x = self.layers[index](self.x[source], m, Rotary(self.phasor), key_masks)
        else:  # the stream between layers stays in the base dtype
            with torch.autocast(self.key.device.type, enabled=False):
                x = self.layers[index](self.x[source].to(self.reduced), m, Rotary(self.phasor), key_masks)
            x = x.to(model.base_dtype)
        self.x[target].copy_(x)
        decides = index != self.last_layer and (index in self.exit_layers or self.width_confidence is not None)
        if not decides:
            if self.width_confidence is not None:  # pruning may have changed the masks: carry them
                self.valid[target].copy_(valid)
                self.pruned_at[target].copy_(self.pruned_at[source])
            return
        threshold = self.thresholds[index]
        with full_precision(self.key.device):
            x = x.to(model.base_dtype)
            confidence = model.token_confidence[index](x)
            exits = torch.zeros((), dtype=torch.bool, device=x.device)
            if index in self.exit_layers:
                unsure = (confidence < threshold) & valid
                exits = (1.0 - unsure.sum() / self.num_valid) > self.depth_confidence
            if self.width_confidence is not None:
                matchable = torch.sigmoid(model.log_assignment[index].matchability_logits(x))
                keep = (matchable > 1 - self.width_confidence) | (confidence <= threshold)
                # an image is pruned while its current set (the largest of the batch) is big enough
                allowed = torch.cat([(v.sum(1).amax() > self.min_keypoints).expand(v.shape[1])
                                     for v in (valid0, valid1)])
                removed = valid & ~keep & allowed & ~exits  # a pass that ends here prunes nothing
                self.pruned_at[target].copy_(torch.where(removed, index + 1, self.pruned_at[source]))
                kept = valid & ~removed
                self.valid[target].copy_(kept)
                exits = exits | ~kept[:, :m].any() | ~kept[:, m:].any()
            self.exit_flags[index].copy_(exits)

    def head(self, index: int) -> None:
        """Mutual matches of layer ``index``'s assignment head (on the slot layer ``index``
        wrote) into ``matches`` / ``scores``."""
        model, m, slot = self.model, self.key.size0, (index + 1) % 2
        head = model.log_assignment[index]
        with full_precision(self.key.device):
            x = self.x[slot].to(model.base_dtype)
            z = head.matchability_logits(x)
            valid = self.valid[slot]
            valid0, valid1 = (valid[:, :m], valid[:, m:]) if self.key.masked else (None, None)
            m0, m1, s0, s1 = mutual_matches_from_similarity(
                head.similarity(x, m), z[:, :m], z[:, m:], self.filters[index], valid0, valid1)
        self.matches.copy_(torch.cat([m0, m1], 1))
        self.scores.copy_(torch.cat([s0, s1], 1).to(self.scores.dtype))

    def build(self) -> None:
        """Capture (CUDA graphs) or bind (eager) every step the pass can take."""
        heads = sorted(self.exit_layers | {self.last_layer})
        self.add_step("encode", self.encode)
        for index in range(self.last_layer + 1):
            self.add_step(f"layer{index}", lambda index=index: self.layer(index))
        for index in heads:
            self.add_step(f"head{index}", lambda index=index: self.head(index))

    def add_step(self, name: str, step: Callable[[], None]) -> None:
        def run() -> None:
            with self.precision():
                step()

        if self.key.compiled:
            # compiles now, not in the first frame; each padded size and mask variant is one
            # more compilation of the same layer code, beyond dynamo's default limit of 8
            with torch._dynamo.config.patch(recompile_limit=COMPILED_VARIANTS_LIMIT):
                run()
        if self.key.use_graphs and self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        self.steps[name] = capture(run, self.key.device, self.pool) if self.key.use_graphs else run

    # ---- one call ------------------------------------------------------------------------
    def load_inputs(self, sides: tuple[tuple[Tensor, Tensor, Tensor | None], ...]) -> None:
        """Copy (geometry, descriptors, mask) of each image into the padded input buffers (the
        padding zeroed and masked out: a set that fills its bucket costs three copies)."""
        start = 0
        for (geometry, descriptors, mask), size in zip(sides, (self.key.size0, self.key.size1), strict=True):
            count, end = descriptors.shape[1], start + size
            self.geometry[:, start:start + count].copy_(geometry)
            self.descriptors[:, start:start + count].copy_(descriptors)
            if mask is None:
                self.input_valid[:, start:start + count] = True
            else:
                self.input_valid[:, start:start + count].copy_(mask)
            if count < size:
                for buffer in (self.geometry, self.descriptors, self.input_valid):
                    buffer[:, start + count:end] = 0
            start = end

    def run(self, sides: tuple[tuple[Tensor, Tensor, Tensor | None], ...]) -> dict[str, Any]:
        """The pass on one batch; outputs as ``LightGlue.forward`` gives them, cropped to the inputs."""
        self.load_inputs(sides)
        self.steps["encode"]()
        stop, pending = self.last_layer + 1, None
        for index in range(self.last_layer + 1):
            self.steps[f"layer{index}"]()
            # the previous layer's exit flag is read while this layer runs on the GPU (which
            # then never waits for the host); on an exit this layer's work is dropped
            if pending is not None and self.read_exit_flag(pending):
                stop = pending + 1
                break
            pending = None
            if index in self.exit_layers:
                self.send_exit_flag(index)
                pending = index
        self.steps[f"head{stop - 1}"]()
        m, n = sides[0][1].shape[1], sides[1][1].shape[1]
        # the one wait of a full-depth pass: the finite flags and the number of matches of each
        # pair (which compacting the matches needs) come back together
        values = torch.cat([self.finite.long(), (self.matches[:, :m] >= 0).sum(1)]).tolist()
        finite, counts = values[:2], values[2:]
        if not all(finite):
            names = [name for name, ok in zip(("image0", "image1"), finite, strict=True) if not ok]
            raise ValueError(f"LightGlue: {' and '.join(names)} features (keypoints, scales, oris, image_size "
                             "or descriptors) contain NaN or infinite values")
        return self.outputs(stop, m, n, counts)

    def send_exit_flag(self, index: int) -> None:
        """Queue the copy of layer ``index``'s exit flag to the host (asynchronous on CUDA)."""
        self.exit_host[index].copy_(self.exit_flags[index], non_blocking=True)
        if self.flag_copied is not None:
            self.flag_copied[index].record()

    def read_exit_flag(self, index: int) -> bool:
        """Wait for that copy alone (not for the work queued after it) and read it."""
        if self.flag_copied is not None:
            self.flag_copied[index].synchronize()
        return bool(self.exit_host[index])

    def outputs(self, stop: int, m: int, n: int, counts: list[int]) -> dict[str, Any]:
        """Copies of the output buffers (the next call overwrites them), cropped to (m, n) points;
        ``counts``: the number of matches of each pair, read already."""
        size0 = self.key.size0
        # one copy each (the views of it are the outputs); pruned_at: the slot of the last layer kept
        matches, scores, pruned_at = (t.clone() for t in (self.matches, self.scores, self.pruned_at[stop % 2]))
        matches0, matches1 = matches[:, :m], matches[:, size0:size0 + n]
        scores0, scores1 = scores[:, :m], scores[:, size0:size0 + n]
        prune0, prune1 = pruned_at[:, :m], pruned_at[:, size0:size0 + n]
        matches, scores = compact_matches(matches0, scores0, counts)
        return {"matches0": matches0, "matches1": matches1, "matching_scores0": scores0,
                "matching_scores1": scores1, "matches": matches, "scores": scores, "stop": stop,
                "prune0": prune0, "prune1": prune1,
                "num_pruned0": (prune0 < self.n_layers).sum(1), "num_pruned1": (prune1 < self.n_layers).sum(1)}


class StaticPasses:
    """The passes of one model, most recently used last; a change of weights drops the others."""

    def __init__(self, model: LightGlue) -> None:
        self.passes: OrderedDict[StaticKey, StaticPass] = OrderedDict()
        self.capacity = MAX_CACHED_PASSES  # raised by a warm-up that builds more (``warm_up_static``)
        self.captures = 0  # passes built so far (tests and benchmarks read it)
        # where each parameter is held: read at every call, so that a replaced parameter (not
        # only a moved one) changes the key, in ~20 us instead of ~250 for model.parameters()
        self.parameter_slots = [(module._parameters, name) for module in model.modules()
                                for name, value in module._parameters.items() if value is not None]

    def weights(self) -> tuple[tuple[int, int], ...]:
        """Address and in-place version of every parameter: an update in place (an optimizer
        step, load_state_dict) makes new passes too, whose reduced-precision copies follow it."""
        return tuple([(slots[name].data_ptr(), slots[name]._version) for slots, name in self.parameter_slots])

    def get(self, model: LightGlue, key: StaticKey) -> StaticPass:
        found = self.passes.get(key)
        if found is not None:
            self.passes.move_to_end(key)
            return found
        for old in [k for k in self.passes if k.weights != key.weights]:
            del self.passes[old]  # graphs of replaced weights (or of their old copies) would read freed memory
        while len(self.passes) >= self.capacity:
            self.passes.popitem(last=False)
        try:
            created = StaticPass(model, key)
        except RuntimeError as err:
            if not key.use_graphs:
                raise
            # a driver or an operator that cannot be captured: the same steps, launched one by one
            logger.warning("LightGlue: CUDA graph capture failed (%s); this pass runs its steps uncaptured",
                           str(err).splitlines()[0] if str(err) else type(err).__name__)
            created = StaticPass(model, dataclasses.replace(key, use_graphs=False))
        self.passes[key] = created
        self.captures += 1
        return created

    def clear(self) -> None:
        self.passes.clear()
