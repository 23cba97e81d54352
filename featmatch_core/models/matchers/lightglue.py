"""LightGlue matcher (Lindenberger, Sarlin, Pollefeys, ICCV 2023), written for this package.

The network alternates self- and cross-attention over the keypoints of two images,
with rotary encodings of learned Fourier features of the keypoint geometry, and
predicts a partial assignment with a double softmax plus a per-point matchability.
After each layer a small head estimates how settled every point is; inference can
stop early (adaptive depth) and drop points that are confidently unmatchable
(adaptive width).

Parameter names follow the state-dict layout of the reference implementation
(``transformers.{i}.self_attn.Wqkv.weight``, ``log_assignment.{i}.matchability.weight``,
...). The officially released checkpoints use an older flat layout
(``self_attn.{i}.*``, ``cross_attn.{i}.*``); :meth:`LightGlue.load_checkpoint_state_dict`
converts it.

Internally the descriptors of both images live in one tensor of shape (B, M + N, D):
every linear layer then runs once for the pair, and attention works on views.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...device import device_constant
from ..base import BaseModel, strict_load
from .common import check_point_features, checked_mask, compact_matches, no_matches


Tensor = torch.Tensor
MaskPair = tuple[Tensor | None, Tensor | None]

# With ``pruning_min_keypoints: None`` an image is pruned only when it has more keypoints
# than this: on GPUs the gather that pruning needs costs more than it saves for small sets.
# (The reference uses -1 on CPU/MPS, 1024 on CUDA, and 1536 on CUDA with flash attention.)
AUTO_PRUNING_MIN_KEYPOINTS: dict[str, int] = {"cpu": 0, "mps": 0, "cuda": 1024}

# Log-assignment entries of padded keypoints (finite so that ``0 * entry`` stays 0 in a loss).
PADDING_LOG_SCORE = -1e4


# ---- geometry ----------------------------------------------------------------------------------
def normalize_keypoints(keypoints: Tensor, image_size: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Pixels -> roughly [-1, 1]: centre on the image, divide by half the longer side."""
    size = image_size.to(dtype)
    centre = size / 2
    half_long_side = size.max(-1).values / 2
    return (keypoints.to(dtype) - centre[:, None, :]) / half_long_side[:, None, None]


class FourierPositionEncoding(nn.Module):
    """Learned Fourier features of the keypoint geometry, used as rotary angles.

    ``Wr`` maps the geometry (x, y[, scale, orientation]) to one angle per channel pair of an
    attention head; all heads share the angles.
    """

    def __init__(self, geometry_dim: int, head_dim: int) -> None:
        super().__init__()
        self.Wr = nn.Linear(geometry_dim, head_dim // 2, bias=False)
        nn.init.normal_(self.Wr.weight, mean=0.0, std=1.0)

    def forward(self, geometry: Tensor) -> Tensor:
        """(B, N, geometry_dim) -> angles (B, 1, N, head_dim / 2)."""
        return self.Wr(geometry).unsqueeze(1)


class Rotary(NamedTuple):
    """Rotary encoding of a point set: channel pair (2k, 2k + 1) of a query/key is rotated by angle k.

    Stored as ``phasor = cos + i sin`` (B, 1, N, head_dim / 2) in the model's complex dtype:
    one complex multiply is several times faster on CPU than the equivalent real kernels,
    also for reduced-precision inputs, which are rotated in full precision and cast back.
    """

    phasor: Tensor

    @classmethod
    def from_angles(cls, angles: Tensor) -> Rotary:
        return cls(torch.polar(torch.ones_like(angles), angles))

    def select(self, positions: Tensor) -> Rotary:
        """Keep the points at ``positions`` (B, K)."""
        return Rotary(torch.take_along_dim(self.phasor, positions[:, None, :, None], dim=2))

    def apply(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return self.apply_real(x)
        real_dtype = self.phasor.real.dtype
        pairs = x.to(real_dtype).unflatten(-1, (-1, 2))
        if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(st % 2 for st in pairs.stride()[:-1]):
            pairs = pairs.contiguous()  # view_as_complex needs interleaved (re, im) storage
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * self.phasor).flatten(-2)
        return rotated.to(x.dtype)

    def apply_real(self, x: Tensor) -> Tensor:
        """:meth:`apply` in real arithmetic, for ``torch.compile`` (whose code generation has no
        complex numbers and which cannot trace the layout checks above)."""
        cos, sin = self.phasor.real, self.phasor.imag
        return rotate_pairs(x.to(cos.dtype), cos, sin).to(x.dtype)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Channel pair (2k, 2k + 1) of ``x`` rotated by the angle of cosine ``cos[k]`` and sine
    ``sin[k]``, in real arithmetic (torch.compile, the ONNX export)."""
    pairs = x.unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    return torch.stack((real * cos - imag * sin, real * sin + imag * cos), -1).flatten(-2)


# ---- attention -------------------------------------------------------------------------------
def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, N, H * d) -> (B, H, N, d), a view."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def merge_heads(*parts: Tensor) -> Tensor:
    """(B, H, N_i, d) parts -> (B, sum N_i, H * d), concatenated along the points in one copy."""
    return torch.cat([p.transpose(1, 2) for p in parts], dim=1).flatten(-2)


def attention_key_mask(valid: Tensor) -> Tensor:
    """The keys one image's points attend to, from its (B, N) ``valid`` points: an image
    without any attends to all of them (its output is discarded), so no softmax row is empty."""
    return valid | ~valid.any(1, keepdim=True)


def attend(query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor | None) -> Tensor:
    """Fused softmax(q k^T / sqrt(d)) v; ``key_mask`` (B, Nk) marks the keys that may be attended."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def concat_state_message(x: Tensor, message: Tensor) -> Tensor:
    """FFN input [x, message]; under autocast in the message's (reduced) dtype, which the FFN's
    first layer would cast to anyway, avoiding a slow mixed-dtype concatenation."""
    return torch.cat([x.to(message.dtype), message], -1)


def make_ffn(dim: int) -> nn.Sequential:
    """Update MLP of both blocks; its input is [state, message]. Indices 0, 1, 3 are checkpoint keys."""
    return nn.Sequential(
        nn.Linear(2 * dim, 2 * dim),
        nn.LayerNorm(2 * dim, elementwise_affine=True),
        nn.GELU(),
        nn.Linear(2 * dim, dim),
    )


class SelfAttentionBlock(nn.Module):
    """Each image attends to itself, with rotary encoding of its keypoint geometry."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.Wqkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ffn = make_ffn(dim)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values as (B, H, N, head_dim).

        The checkpoint interleaves them: output row ``(h * head_dim + c) * 3 + t`` is channel c of
        head h of q, k or v (t = 0, 1, 2). Reordering the (small) weight rows so that q, k and v are
        contiguous blocks makes each of them a view with a unit-stride last axis.
        """
        dim = x.shape[-1]
        weight = self.Wqkv.weight.view(dim, 3, dim).transpose(0, 1).reshape(3 * dim, dim)
        bias = self.Wqkv.bias.view(dim, 3).t().reshape(3 * dim)
        qkv = F.linear(x, weight, bias).unflatten(-1, (3, self.num_heads, -1))  # (B, N, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def forward(self, x: Tensor, num0: int, rotary: Rotary, key_masks: MaskPair) -> Tensor:
        q, k, v = self.project_qkv(x)
        q, k = rotary.apply(q), rotary.apply(k)
        image0, image1 = slice(0, num0), slice(num0, None)
        return self.update(x, merge_heads(
            attend(q[:, :, image0], k[:, :, image0], v[:, :, image0], key_masks[0]),
            attend(q[:, :, image1], k[:, :, image1], v[:, :, image1], key_masks[1]),
        ))

    def within_image(self, x: Tensor, rotary: Rotary, key_mask: Tensor | None) -> Tensor:
        """The same block for the points of one image alone (B, N, D): it needs nothing of the
        other image, so a video frame's result serves both pairs the frame is part of."""
        q, k, v = self.project_qkv(x)
        return self.update(x, merge_heads(attend(rotary.apply(q), rotary.apply(k), v, key_mask)))

    def update(self, x: Tensor, heads: Tensor) -> Tensor:
        return x + self.ffn(concat_state_message(x, self.out_proj(heads)))


class CrossAttentionBlock(nn.Module):
    """Each image attends to the other; queries and keys share one projection (``to_qk``).

    The reference computes one similarity matrix and normalises it along both axes; two fused
    attention calls give the same result (the similarity is symmetric in the two roles) without
    materialising the (H, M, N) matrix.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qk = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.ffn = make_ffn(dim)

    def forward(self, x: Tensor, num0: int, key_masks: MaskPair) -> Tensor:
        qk = split_heads(self.to_qk(x), self.num_heads)
        v = split_heads(self.to_v(x), self.num_heads)
        qk0, qk1 = qk[:, :, :num0], qk[:, :, num0:]
        v0, v1 = v[:, :, :num0], v[:, :, num0:]
        message = self.to_out(merge_heads(attend(qk0, qk1, v1, key_masks[1]),
                                          attend(qk1, qk0, v0, key_masks[0])))
        return x + self.ffn(concat_state_message(x, message))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = SelfAttentionBlock(dim, num_heads)
        self.cross_attn = CrossAttentionBlock(dim, num_heads)

    def forward(self, x: Tensor, num0: int, rotary: Rotary, key_masks: MaskPair) -> Tensor:
        return self.cross_attn(self.self_attn(x, num0, rotary, key_masks), num0, key_masks)


# ---- heads -----------------------------------------------------------------------------------
class MatchAssignmentHead(nn.Module):
    """Pairwise similarity of projected descriptors and a per-point matchability logit."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.matchability = nn.Linear(dim, 1)
        self.final_proj = nn.Linear(dim, dim)

    def similarity(self, x: Tensor, num0: int) -> Tensor:
        """(B, M, N) dot products of projected descriptors, scaled by 1 / sqrt(D)."""
        projected = self.final_proj(x) * x.shape[-1] ** -0.25
        return projected[:, :num0] @ projected[:, num0:].transpose(1, 2)

    def matchability_logits(self, x: Tensor) -> Tensor:
        return self.matchability(x).squeeze(-1)


class TokenConfidenceHead(nn.Module):
    """How settled each point's prediction is after a layer; trained without moving the features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Sequential(nn.Linear(dim, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return self.token(x.detach()).squeeze(-1)


def is_integer(value: Any) -> bool:
    """An int, not a bool (which Python counts as one): what config counts must be."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def confidence_threshold(layer_index: int, n_layers: int) -> float:
    """Confidence a point needs after ``layer_index``; stricter for early layers."""
    return min(max(0.8 + 0.1 * math.exp(-4.0 * layer_index / n_layers), 0.0), 1.0)


def confidence_schedule(thresholds: Sequence[float] | None, n_layers: int) -> list[float]:
    """Per-layer confidence thresholds (n_layers values): the config's ``confidence_thresholds``
    (one per layer but the last, whose value is never used: it always ends the pass) or the paper's."""
    paper = [confidence_threshold(i, n_layers) for i in range(n_layers)]
    return paper if thresholds is None else [float(t) for t in thresholds] + paper[-1:]


def exit_filter_threshold(conf: Mapping[str, Any], layer: int) -> float:
    """Minimum match probability of the matches of layer ``layer`` when the pass ends there:
    ``filter_threshold``, scaled by ``exit_filter_factors[layer]`` before the last layer."""
    threshold = float(conf["filter_threshold"])
    factors = conf["exit_filter_factors"]
    if factors is None or layer >= int(conf["n_layers"]) - 1:
        return threshold
    return threshold * float(factors[layer])


def parameter_versions(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Identity and in-place version of every parameter: changes when the weights do."""
    return tuple((p.data_ptr(), p._version) for p in module.parameters())


def pruning_min_keypoints(setting: int | None, device: torch.device) -> int:
    """Images with at most this many points are not pruned: ``pruning_min_keypoints``, or the
    device's default (None)."""
    return AUTO_PRUNING_MIN_KEYPOINTS.get(device.type, 0) if setting is None else int(setting)


def last_layer_index(max_layers: int | None, n_layers: int) -> int:
    """Index of the last layer that may run: ``max_layers - 1`` (None: every layer)."""
    return n_layers - 1 if max_layers is None else min(int(max_layers), n_layers) - 1


def sigmoid_log_double_softmax(sim: Tensor, z0: Tensor, z1: Tensor, valid0: Tensor | None = None,
                               valid1: Tensor | None = None) -> Tensor:
    """Log-probabilities (B, M, N) that point i matches j: row softmax + column softmax + matchability.

    ``valid0`` (B, M) / ``valid1`` (B, N) exclude padded points from the softmaxes. The
    dustbin column/row are added by :func:`with_dustbins`.
    """
    very_negative = torch.finfo(sim.dtype).min  # not -inf: an all-padded row must not give NaN
    rows = sim if valid1 is None else sim.masked_fill(~valid1[:, None, :], very_negative)
    cols = sim if valid0 is None else sim.masked_fill(~valid0[:, :, None], very_negative)
    scores = F.log_softmax(rows, dim=2) + F.log_softmax(cols, dim=1)
    return scores + F.logsigmoid(z0)[:, :, None] + F.logsigmoid(z1)[:, None, :]


def with_dustbins(scores: Tensor, z0: Tensor, z1: Tensor, valid0: Tensor | None = None,
                  valid1: Tensor | None = None) -> Tensor:
    """(B, M + 1, N + 1) log assignment: the last column/row is the log-probability of no match."""
    b, m, n = scores.shape
    full = scores.new_zeros((b, m + 1, n + 1))
    full[:, :m, :n] = scores
    full[:, :m, n] = F.logsigmoid(-z0)
    full[:, m, :n] = F.logsigmoid(-z1)
    if valid0 is not None:
        full[:, :m].masked_fill_(~valid0[:, :, None], PADDING_LOG_SCORE)
    if valid1 is not None:
        full[:, :, :n].masked_fill_(~valid1[:, None, :], PADDING_LOG_SCORE)
    return full


def mutual_matches(scores: Tensor, threshold: float, valid0: Tensor | None = None,
                   valid1: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours of a (B, M, N) log-assignment, kept if their probability > threshold.

    Returns matches0 (B, M), matches1 (B, N) (int64, -1 = unmatched) and the probabilities
    scores0/scores1, which are non-zero for every mutual pair, even below the threshold.
    """
    if valid0 is not None or valid1 is not None:
        pair_ok = torch.ones_like(scores, dtype=torch.bool)
        if valid0 is not None:
            pair_ok &= valid0[:, :, None]
        if valid1 is not None:
            pair_ok &= valid1[:, None, :]
        scores = scores.masked_fill(~pair_ok, float("-inf"))
    best0, nn0 = scores.max(2)
    best1, nn1 = scores.max(1)
    mutual0 = torch.arange(nn0.shape[1], device=nn0.device)[None] == nn1.gather(1, nn0)
    mutual1 = torch.arange(nn1.shape[1], device=nn1.device)[None] == nn0.gather(1, nn1)
    # padded points, and points of an image whose partner image has no valid point, stay unmatched
    # (out of place: the ONNX exporter has no in-place `&=`)
    mutual0 = mutual0 & torch.isfinite(best0)
    mutual1 = mutual1 & torch.isfinite(best1)
    scores0 = torch.where(mutual0, best0.exp(), torch.zeros_like(best0))
    scores1 = torch.where(mutual1, scores0.gather(1, nn1), torch.zeros_like(scores0[:, :1]))
    matched0 = mutual0 & (scores0 > threshold)
    matched1 = mutual1 & matched0.gather(1, nn1)
    matches0 = torch.where(matched0, nn0, torch.full_like(nn0, -1))
    matches1 = torch.where(matched1, nn1, torch.full_like(nn1, -1))
    return matches0, matches1, scores0, scores1


def mutual_matches_from_similarity(sim: Tensor, z0: Tensor, z1: Tensor, threshold: float,
                                   valid0: Tensor | None = None, valid1: Tensor | None = None,
                                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``mutual_matches(sigmoid_log_double_softmax(sim, z0, z1, valid0, valid1), threshold, valid0,
    valid1)`` for inference, without building the (B, M, N) log assignment.

    Entry (i, j) of the log assignment is ``2 (sim_ij + row_i + col_j)`` with the per-point terms
    ``row = (logsigmoid(z0) - logsumexp_j sim) / 2`` and ``col = (logsigmoid(z1) - logsumexp_i sim) / 2``
    (each softmax contributes one ``sim``). So the nearest neighbour of row i is the arg-max of
    ``sim_i + col``, and i is mutual iff ``sim_i,nn(i) + row_i`` is the maximum of its column: one
    row-wise arg-max and plain column maxima. (On CPU a column-wise arg-max costs ~10x a row-wise
    one; the two log-softmax tensors, their sum and both arg-maxes were ~20 % of a 6-layer
    forward pass at 1024 points.) The result equals the reference's up to the float rounding
    of near-ties. ``valid0`` / ``valid1`` exclude padded points (they match nothing).
    """
    b, m, n = sim.shape
    masked = valid0 is not None or valid1 is not None
    if masked:
        v0 = valid0 if valid0 is not None else torch.ones((b, m), dtype=torch.bool, device=sim.device)
        v1 = valid1 if valid1 is not None else torch.ones((b, n), dtype=torch.bool, device=sim.device)
        sim = sim.masked_fill(~(v0[:, :, None] & v1[:, None, :]), float("-inf"))
    row = (F.logsigmoid(z0) - torch.logsumexp(sim, 2)) / 2  # (B, M)
    col = (F.logsigmoid(z1) - torch.logsumexp(sim, 1)) / 2  # (B, N)
    if masked:  # a point without valid partners gets -inf, not +inf
        row = row.masked_fill(~v0 | ~torch.isfinite(row), float("-inf"))
        col = col.masked_fill(~v1 | ~torch.isfinite(col), float("-inf"))
    best_in_row, nn0 = (sim + col[:, None, :]).max(2)
    column_max = (sim + row[:, :, None]).amax(1)  # (B, N)
    own = sim.gather(2, nn0[:, :, None]).squeeze(2) + row  # the same float as in column_max
    mutual0 = (own == column_max.gather(1, nn0)) & torch.isfinite(own)
    # an exact tie in a column makes several rows mutual with it: the scatter keeps one of them
    rows = torch.arange(m, device=sim.device).expand(b, m)
    partner1 = torch.full((b, n + 1), -1, dtype=torch.long, device=sim.device)
    partner1 = partner1.scatter(1, torch.where(mutual0, nn0, n), rows)[:, :n]
    mutual0 = mutual0 & (partner1.gather(1, nn0) == rows)
    scores0 = torch.where(mutual0, (2 * (best_in_row + row)).exp(), torch.zeros_like(row))
    mutual1 = partner1 >= 0
    scores1 = torch.where(mutual1, scores0.gather(1, partner1.clamp(min=0)), torch.zeros_like(col))
    matched0 = mutual0 & (scores0 > threshold)
    matches0 = torch.where(matched0, nn0, torch.full_like(nn0, -1))
    matches1 = torch.where(mutual1 & (scores1 > threshold), partner1, torch.full_like(partner1, -1))
    return matches0, matches1, scores0, scores1


# ---- checkpoints -----------------------------------------------------------------------------
_RELEASE_KEY = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.(.+)$")
_MODERN_KEY = re.compile(r"^transformers\.(\d+)\.(self_attn|cross_attn)\.(.+)$")


def from_release_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename released-checkpoint keys ``self_attn.{i}.*`` / ``cross_attn.{i}.*`` to
    ``transformers.{i}.self_attn.*`` / ``transformers.{i}.cross_attn.*``; other keys unchanged."""
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        match = _RELEASE_KEY.match(key)
        converted[f"transformers.{match[2]}.{match[1]}.{match[3]}" if match else key] = value
    return converted


def to_release_layout(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`from_release_layout`: the flat layout of the released ``*_lightglue.pth``."""
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        match = _MODERN_KEY.match(key)
        converted[f"{match[2]}.{match[1]}.{match[3]}" if match else key] = value
    return converted


def describe_features(input_dim: int, add_scale_ori: bool, presets: Mapping[str, Mapping[str, Any]]) -> str:
    """'128-d descriptors with scale/orientation (sift)' - for error messages."""
    names = [name for name, p in presets.items()
             if p.get("input_dim") == input_dim and bool(p.get("add_scale_ori", False)) == add_scale_ori]
    geometry = "with" if add_scale_ori else "without"
    hint = f" ({' or '.join(names)})" if names else ""
    return f"{input_dim}-d descriptors {geometry} scale/orientation{hint}"


# ---- the model -------------------------------------------------------------------------------
def warm_up_sizes(max_keypoints: int, bucket: int) -> list[tuple[int, int]]:
    """The pairs of padded point-set sizes (multiples of ``bucket``) a stream of up to
    ``max_keypoints`` points per frame meets: every pair from half of the largest size up (the
    sizes a camera's frames normally have), and below that the pairs of equal or neighbouring
    sizes, which a stream passes through as its count falls and recovers (a blank wall, a dark
    corner): consecutive frames differ by little. Capturing them at start keeps their
    captures out of the frame path (``LightGlue.warm_up_static``)."""
    from .lightglue_static import padded_size  # it builds on this module

    largest = padded_size(max_keypoints, bucket)
    sizes = range(bucket, largest + 1, bucket)
    return [(m, n) for m in sizes for n in sizes
            if min(m, n) * 2 >= largest or abs(m - n) <= bucket]


class LightGlue(BaseModel):
    """Match two sets of local features (the extractor output contract) with LightGlue.

    ``forward({"image0": feats0, "image1": feats1})`` returns (M, N = keypoints per image):
      matches0 (B, M) / matches1 (B, N)        int64 index into the other image, -1 if unmatched
      matching_scores0 / matching_scores1      float32* match probability of mutual nearest
                                               neighbours (also below ``filter_threshold``), else 0
      matches   list of B (K, 2) int64         index pairs (i in image0, j in image1)
      scores    list of B (K,) float32*
      stop      int                            number of layers that ran
      prune0 / prune1 (B, M) / (B, N) int64    index of the first layer a point was pruned from,
                                               n_layers if it never was
      num_pruned0 / num_pruned1 (B,) int64
    With ``return_all_layers`` or in training mode additionally:
      log_assignment    list over layers of (B, M + 1, N + 1) float32* log-assignments
      token_confidence0 / token_confidence1    list over layers 0..n_layers-2 of (B, M) / (B, N)
    Collecting all layers runs every layer without early exit or pruning.
    (*) The dtype of the model's parameters: float32 unless the model was converted, e.g.
    ``.double()``. Under autocast the heads, keypoint normalisation and the residual stream
    stay in that dtype; only the transformer's matrix products run in reduced precision.

    Adaptive depth stops after layer i < n_layers - 1 (i + 1 >= ``min_layers``) when more than
    ``depth_confidence`` of the valid points of the whole batch (pruned points count as
    confident) have a confidence of at least threshold i (``exit_thresholds``: the config's
    ``confidence_thresholds`` or the paper's schedule); ``stop`` is therefore shared by the batch.
    ``max_layers`` bounds the depth at inference (the last layer's matches are then those of layer
    ``max_layers``, through its own assignment head), a latency bound for real time. Matches of a
    pass that stops before the last layer need ``filter_threshold * exit_filter_factors[i]``.
    Adaptive width then removes points whose matchability is at most ``1 - width_confidence`` and whose
    confidence is above the threshold, in images with more than ``pruning_min_keypoints`` points
    (None: 1024 on CUDA, always elsewhere); pruned points come back unmatched. Unlike the
    reference, confidences are computed for pruning even when adaptive depth is off, so that
    only confident points are ever pruned. Both are off in training mode and with
    ``return_all_layers``; pruning is also off for padded batches (``keypoint_mask`` with
    False entries), which the reference does not support either. An unpadded batch with B > 1
    is pruned per pair, padding the pairs to the largest kept set. With ``pruning_bucket`` k > 1
    the kept sets are rounded up to a multiple of k by keeping some prunable points (pruning
    less, never more): under CPU bf16 every new point-set size costs oneDNN/flash-attention
    kernel creation (+2-5 ms per attention call), which made pruning slower than none.
    """

    # The released *_lightglue.pth files carry one scalar `r` per assignment head, a leftover of
    # an earlier head that the released architecture does not use (the reference loads them with
    # strict=False; Hugging Face's converter pops them).
    release_extras: ClassVar[tuple[str, ...]] = (r"log_assignment\.\d+\.r",)
    reuses_image_states: ClassVar[bool] = True  # forward takes ``image_states`` (Pipeline passes them)
    matches_padded_batches: ClassVar[bool] = True  # a keypoint_mask batch matches like its pairs alone

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "lightglue",
        "features": None,  # preset: superpoint, disk, aliked, sift; None = custom dims, random init
        "input_dim": 256,  # dimension of the extractor's descriptors
        "descriptor_dim": 256,  # width of the transformer
        "add_scale_ori": False,  # encode keypoint scale and orientation too (SIFT)
        "n_layers": 9,
        "num_heads": 4,
        "depth_confidence": 0.95,  # early exit, -1 disables
        "width_confidence": 0.99,  # point pruning, -1 disables
        # confidence a point needs after layer i (n_layers - 1 values) to count as settled, for the
        # exit and for pruning; None = the paper's 0.8 + 0.1 exp(-4 i / n_layers)
        "confidence_thresholds": None,
        "min_layers": 1,  # layers run before an early exit is considered (pruning is not affected)
        # at most this many layers run at inference (a latency bound: the matches of layer
        # max_layers are returned); None or >= n_layers: all. Training and return_all_layers run all.
        "max_layers": None,
        "pruning_min_keypoints": None,  # prune only images with more points; None = device default
        "pruning_bucket": None,  # point-set sizes rounded up to a multiple of this; None = 64 on bf16 CPU, else 1
        "filter_threshold": 0.1,  # minimum match probability
        # when the pass stops after layer i < n_layers - 1 (early exit, max_layers) its matches need
        # filter_threshold * exit_filter_factors[i] (n_layers - 1 values): an earlier layer's head
        # gives softer probabilities to the same correct matches; None = 1 for every layer
        "exit_filter_factors": None,
        "return_all_layers": False,  # also return every layer's log assignment (training)
        # inference with static shapes (lightglue_static): point sets padded to multiples of
        # static_bucket, pruning by masks, decisions on the device; None = on CUDA only
        "static_shapes": None,
        "static_bucket": 256,
        "cuda_graphs": True,  # replay the static pass as CUDA graphs (on CUDA; eager otherwise)
        "static_compile": False,  # torch.compile the static pass's layers (fused kernels; compiling takes a while)
        "weights": None,
    }
    preset_key: ClassVar[str | None] = "features"
    presets: ClassVar[dict[Any, dict[str, Any]]] = {
        "superpoint": {"input_dim": 256, "weights": "superpoint_lightglue"},
        "disk": {"input_dim": 128, "weights": "disk_lightglue"},
        "aliked": {"input_dim": 128, "weights": "aliked_lightglue"},
        "sift": {"input_dim": 128, "add_scale_ori": True, "weights": "sift_lightglue"},
    }

    def _init(self, conf: DictConfig) -> None:
        self._validate_conf(conf)
        dim, heads, n_layers = int(conf.descriptor_dim), int(conf.num_heads), int(conf.n_layers)
        self.input_dim = int(conf.input_dim)
        self.geometry_dim = 4 if conf.add_scale_ori else 2
        if self.input_dim != dim:
            self.input_proj: nn.Module = nn.Linear(self.input_dim, dim)
        else:
            self.input_proj = nn.Identity()
        self.posenc = FourierPositionEncoding(self.geometry_dim, dim // heads)
        self.transformers = nn.ModuleList([TransformerLayer(dim, heads) for _ in range(n_layers)])
        self.log_assignment = nn.ModuleList([MatchAssignmentHead(dim) for _ in range(n_layers)])
        self.token_confidence = nn.ModuleList([TokenConfidenceHead(dim) for _ in range(n_layers - 1)])
        thresholds = confidence_schedule(None, n_layers)
        # The paper's schedule, derived from n_layers, not learned; kept in the state dict like the
        # reference does. The schedule in force is the config's, read at every call (exit_thresholds).
        self.register_buffer("confidence_thresholds", torch.tensor(thresholds, dtype=torch.float32))
        self.gradient_checkpointing = False
        # dtype -> (weights key, layers): reduced-precision copies of the layers, see layers_in
        self._reduced_layers: dict[torch.dtype, tuple[tuple, nn.ModuleList]] = {}
        self._static_passes: Any = None  # lightglue_static.StaticPasses, made at the first static pass

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer layer in the backward pass instead of storing its
        activations (training memory ~ one layer instead of n_layers); no effect without grad."""
        self.gradient_checkpointing = bool(enabled)

    @staticmethod
    def _validate_conf(conf: DictConfig) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"LightGlue: {message}")

        dim, heads = conf.descriptor_dim, conf.num_heads
        if conf.input_dim <= 0 or dim <= 0 or heads <= 0 or conf.n_layers <= 0:
            fail("input_dim, descriptor_dim, num_heads and n_layers must be positive")
        if dim % heads or (dim // heads) % 2:
            fail(f"descriptor_dim {dim} must split into {heads} heads of even size (rotary encoding)")
        for key in ("depth_confidence", "width_confidence"):
            value = conf[key]
            if not (value == -1 or 0 < value <= 1):
                fail(f"{key} must be -1 (disabled) or in (0, 1], got {value}")
        def per_layer(values: Any, valid: Any) -> bool:  # one value per layer but the last
            return isinstance(values, Sequence | ListConfig) and len(values) == conf.n_layers - 1 \
                and all(valid(v) for v in values)

        thresholds = conf.confidence_thresholds
        if thresholds is not None and not per_layer(thresholds, lambda t: isinstance(t, int | float) and 0 <= t <= 1):
            fail(f"confidence_thresholds must be None or {conf.n_layers - 1} numbers in [0, 1] "
                 f"(one per layer but the last), got {thresholds!r}")
        factors = conf.exit_filter_factors
        if factors is not None and not per_layer(factors, lambda f: is_number(f) and f > 0):
            fail(f"exit_filter_factors must be None or {conf.n_layers - 1} positive numbers "
                 f"(one per layer but the last), got {factors!r}")
        min_layers = conf.min_layers
        if not (is_integer(min_layers) and min_layers >= 1):
            fail(f"min_layers must be an int >= 1 (n_layers or more: no early exit), got {min_layers!r}")
        max_layers = conf.max_layers
        if max_layers is not None and not (is_integer(max_layers) and max_layers >= 1):
            fail(f"max_layers must be None or an int >= 1 (n_layers or more: all layers), got {max_layers!r}")
        minimum = conf.pruning_min_keypoints
        if minimum is not None and not (is_integer(minimum) and minimum >= -1):
            fail(f"pruning_min_keypoints must be None (device default) or an int >= -1, got {minimum!r}")
        bucket = conf.pruning_bucket
        if bucket is not None and not (is_integer(bucket) and bucket >= 1):
            fail(f"pruning_bucket must be None (automatic) or an int >= 1, got {bucket!r}")
        if not (is_integer(conf.static_bucket) and conf.static_bucket >= 1):
            fail(f"static_bucket must be an int >= 1, got {conf.static_bucket!r}")
        if conf.static_shapes not in (None, True, False):
            fail(f"static_shapes must be None (on CUDA only), true or false, got {conf.static_shapes!r}")
        for key in ("cuda_graphs", "static_compile"):
            if not isinstance(conf[key], bool):
                fail(f"{key} must be true or false, got {conf[key]!r}")

    # ---- weights ---------------------------------------------------------------------------
    def load_checkpoint_state_dict(self, state_dict: Mapping[str, Tensor], origin: str = "") -> None:
        """Load a released checkpoint (flat ``self_attn.{i}`` layout) or a state dict of this class.

        ``confidence_thresholds`` is recomputed from the config; the released files' unused
        ``log_assignment.{i}.r`` and entries outside this model's modules are ignored (logged);
        a checkpoint for other features or another configuration raises ValueError.
        """
        state = from_release_layout(state_dict)
        state.pop("confidence_thresholds", None)
        self._check_checkpoint_features(state, origin)
        strict_load(self, state, origin, self.release_extras)

    def _check_checkpoint_features(self, state: Mapping[str, Tensor], origin: str) -> None:
        where = f" {origin}" if origin else ""
        posenc, head = state.get("posenc.Wr.weight"), state.get("log_assignment.0.final_proj.weight")
        if posenc is None or head is None or posenc.ndim != 2 or head.ndim != 2:
            raise ValueError(f"checkpoint{where} is not a LightGlue checkpoint (no posenc.Wr.weight or "
                             "log_assignment.0.final_proj.weight)")
        ckpt_dim = int(head.shape[0])
        proj = state.get("input_proj.weight")
        ckpt_input_dim = int(proj.shape[1]) if proj is not None and proj.ndim == 2 else ckpt_dim
        ckpt_scale_ori = int(posenc.shape[1]) == 4
        ours = (self.input_dim, bool(self.conf.add_scale_ori))
        if (ckpt_input_dim, ckpt_scale_ori) != ours:
            raise ValueError(
                f"checkpoint{where} is for another feature type: it expects "
                f"{describe_features(ckpt_input_dim, ckpt_scale_ori, self.presets)}, but this LightGlue "
                f"(features={self.conf.features!r}) expects {describe_features(*ours, self.presets)}. "
                "Choose the `features` preset that matches the extractor and the weights."
            )
        layers = {int(m[1]) for m in map(re.compile(r"^transformers\.(\d+)\.").match, state) if m}
        ckpt_layers = max(layers) + 1 if layers else 0
        if ckpt_dim != self.conf.descriptor_dim or ckpt_layers != self.conf.n_layers:
            raise ValueError(
                f"checkpoint{where} has descriptor_dim {ckpt_dim} and {ckpt_layers} layers, the model is "
                f"configured with descriptor_dim {self.conf.descriptor_dim} and {self.conf.n_layers} layers"
            )

    def inference_layers(self, device: torch.device) -> nn.ModuleList | None:
        """bf16 copies of the transformer layers when inference runs under CPU bf16 autocast.

        Autocast keeps the weights, the residual stream, LayerNorm and GELU in fp32 and casts
        around every linear layer; on a CPU with AMX those casts and the fp32 element-wise work
        cost as much as the bf16 matrix products (~10 % of a 9-layer pass at 1024 points). A
        layer run wholly in bf16 (its input cast once, its output cast back, so the stream between
        layers stays in the base dtype) avoids them. Not used with gradients (training keeps
        plain autocast) nor on CUDA. The copies follow the weights: a changed parameter (new
        tensor or in-place update) rebuilds them.
        """
        if (device.type != "cpu" or torch.is_grad_enabled() or not torch.is_autocast_enabled("cpu")
                or torch.get_autocast_dtype("cpu") != torch.bfloat16 or self.base_dtype == torch.bfloat16):
            return None
        return self.layers_in(torch.bfloat16, parameter_versions(self.transformers))

    def layers_in(self, dtype: torch.dtype, weights: tuple) -> nn.ModuleList:
        """Copies of the transformer layers in ``dtype``, made again when ``weights`` (addresses
        and in-place versions of the parameters) change; one cache per dtype, shared by the
        CPU's bf16 path and the static pass."""
        cached = self._reduced_layers.get(dtype)
        if cached is None or cached[0] != weights:
            with torch.inference_mode(False), torch.no_grad():
                layers = copy.deepcopy(self.transformers).to(dtype).requires_grad_(False)
            self._reduced_layers[dtype] = cached = (weights, layers)
        return cached[1]

    def exit_thresholds(self) -> Tensor:
        """The per-layer confidence thresholds in force: the config's ``confidence_thresholds``,
        read at every call (a node may change it at run time), else the paper's schedule."""
        if self.conf.confidence_thresholds is None:
            return self.confidence_thresholds
        schedule = confidence_schedule(self.conf.confidence_thresholds, int(self.conf.n_layers))
        return device_constant(tuple(schedule), self.confidence_thresholds.device)

    def last_layer(self, all_layers: bool = False) -> int:
        """Index of the last layer an inference pass may run (``max_layers``, read at every call);
        ``all_layers`` (training, ``return_all_layers``): always the model's last."""
        return last_layer_index(None if all_layers else self.conf.max_layers, int(self.conf.n_layers))

    def size_bucket(self, reduced_precision: bool) -> int:
        """Point-set sizes are rounded up to multiples of this (``pruning_bucket``; automatic: 64
        for CPU bf16 inference, where every new shape costs kernel creation, else 1)."""
        bucket = self.conf.pruning_bucket
        return int(bucket) if bucket is not None else (64 if reduced_precision else 1)

    @torch.inference_mode()
    def warm_up(self, max_keypoints: int) -> int:
        """Run one transformer layer on every pair of point-set sizes that pruning can produce
        for up to ``max_keypoints`` points per image; returns how many pairs ran (0 when not
        needed).

        Only CPU bf16 inference needs it (call it under the autocast the matching runs in):
        oneDNN and the flash-attention kernel are created, and cached, per shape. Doing that at
        start-up keeps new shapes from costing milliseconds in the frame path, and the memory
        of the caches from growing for hundreds of frames after start (~150 MB at 1024 points).
        With the static pass (CUDA) it captures that pass's graphs instead (``warm_up_static``).
        """
        device = self.posenc.Wr.weight.device
        if max_keypoints > 0 and self.uses_static_pass(device, collect=False):
            return self.warm_up_static(max_keypoints)
        layers = self.inference_layers(device)
        if layers is None or max_keypoints <= 0:
            return 0
        bucket = self.size_bucket(True)
        sizes = list(range(bucket, max_keypoints + bucket, bucket))  # inputs are padded to the bucket too
        dim, heads = int(self.conf.descriptor_dim), int(self.conf.num_heads)
        count = 0
        with torch.autocast(device.type, enabled=False):
            for i, m in enumerate(sizes):
                for n in sizes[i:]:  # one layer covers self (m, m), (n, n) and cross (m, n), (n, m)
                    x = torch.zeros(1, m + n, dim, dtype=torch.bfloat16, device=device)
                    rotary = Rotary.from_angles(torch.zeros(1, 1, m + n, dim // heads // 2, device=device))
                    layers[0](x, m, rotary, (None, None))
                    count += 1
        return count

    def warm_up_static(self, max_keypoints: int) -> int:
        """Capture the static passes (batch 1, float32 features) for the pairs of padded sizes a
        camera's frames have (:func:`warm_up_sizes`), each filled exactly and padded. Other pairs
        are captured when they first come. Returns how many passes were built."""
        from .lightglue_static import WARM_UP_HEADROOM  # it builds on this module

        pairs = warm_up_sizes(max_keypoints, int(self.conf.static_bucket))
        device = self.posenc.Wr.weight.device
        features = torch.zeros(1, 1, self.input_dim, device=device)
        passes = self.static_passes()
        capacity = passes.capacity
        passes.capacity = max(capacity, 2 * len(pairs))  # none of them evicted while building
        built = {id(self.static_pass(1, m - short, n - short, features, caller_padding=False))
                 for m, n in pairs for short in (0, 1)}
        passes.capacity = max(capacity, len(built) + WARM_UP_HEADROOM)  # all kept, and room for more
        return len(built)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # derived caches (bf16 layers, captured static passes): never pickled or deep-copied
        return {**state, "_reduced_layers": {}, "_static_passes": None}

    # ---- inputs ----------------------------------------------------------------------------
    @property
    def base_dtype(self) -> torch.dtype:
        """Precision of the parameters, used for everything autocast should not touch."""
        return self.posenc.Wr.weight.dtype

    def _check_side(self, feats: Mapping[str, Tensor], name: str,
                    check_finite: bool = True) -> tuple[Tensor, Tensor, Tensor | None, list[tuple[str, Tensor]]]:
        """Validate one image's features; return (geometry (B, N, 2|4), descriptors, keypoint_mask
        or None, checks). ``checks``: with ``check_finite``, (error message, on-device flag that
        must be true) per tensor, read by :meth:`read_checks` together with the masks' flags."""
        b, n = check_point_features("LightGlue", feats, name, ("keypoints", "descriptors", "image_size"))
        keypoints, descriptors, image_size = feats["keypoints"], feats["descriptors"], feats["image_size"]
        if descriptors.ndim != 3 or descriptors.shape[:2] != (b, n):
            raise ValueError(f"LightGlue: {name} descriptors must be (B, N, D) = ({b}, {n}, D), "
                             f"got {tuple(descriptors.shape)}")
        if descriptors.shape[-1] != self.input_dim:
            raise ValueError(f"LightGlue: {name} descriptors have dimension {descriptors.shape[-1]}, "
                             f"expected {self.input_dim} (features={self.conf.features!r}, input_dim)")
        checked = {"keypoints": keypoints, "descriptors": descriptors, "image_size": image_size}
        with full_precision(keypoints.device):
            geometry = normalize_keypoints(keypoints, image_size.reshape(-1, 2).expand(b, 2), self.base_dtype)
        if self.conf.add_scale_ori:
            extra = []
            for key in ("scales", "oris"):
                if key not in feats or tuple(feats[key].shape) != (b, n):
                    raise ValueError(f"LightGlue: add_scale_ori needs {name} '{key}' of shape ({b}, {n})")
                checked[key] = feats[key]
                extra.append(feats[key].to(self.base_dtype)[..., None])
            geometry = torch.cat([geometry, *extra], -1)
        checks = [(f"LightGlue: {name} '{key}' contains NaN or infinite values", torch.isfinite(value).all())
                  for key, value in checked.items() if check_finite and value.is_floating_point()]
        return geometry, descriptors, checked_mask("LightGlue", feats, name, b, n), checks

    def check_inputs(self, data: Mapping[str, Mapping[str, Tensor]], check_finite: bool = True
                     ) -> tuple[tuple[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor | None], bool]:
        """Both images' (geometry, descriptors, mask) validated, and whether both have a real
        point. A mask is None where every point is real."""
        for key in ("image0", "image1"):
            if key not in data:
                raise ValueError(f"LightGlue expects 'image0' and 'image1', got keys {sorted(data)}")
        geometry0, desc0, mask0, checks0 = self._check_side(data["image0"], "image0", check_finite)
        geometry1, desc1, mask1, checks1 = self._check_side(data["image1"], "image1", check_finite)
        if desc0.shape[0] != desc1.shape[0]:
            raise ValueError(f"LightGlue: batch sizes differ ({desc0.shape[0]} vs {desc1.shape[0]})")
        (mask0, mask1), real = self.read_checks(checks0 + checks1, (mask0, mask1))
        return (geometry0, desc0, mask0), (geometry1, desc1, mask1), real

    @staticmethod
    def read_checks(checks: list[tuple[str, Tensor]], masks: tuple[Tensor | None, Tensor | None]
                    ) -> tuple[tuple[Tensor | None, Tensor | None], bool]:
        """One read of the device for every input check: raises the first failed check; returns
        the masks that pad something (None where all points are real) and whether both images
        have a real point. On a GPU each separate read would wait for the stream."""
        present = [mask for mask in masks if mask is not None]
        flags = [flag for _, flag in checks] + [t for mask in present for t in (mask.all(), mask.any())]
        values = torch.stack(flags).tolist() if flags else []
        finite, mask_flags = values[:len(checks)], values[len(checks):]
        for (message, _), ok in zip(checks, finite, strict=True):
            if not ok:
                raise ValueError(message)
        full = iter(mask_flags[0::2])
        kept = tuple(None if mask is None or next(full) else mask for mask in masks)
        return kept, all(mask_flags[1::2])

    # ---- static-shape inference (lightglue_static) -----------------------------------------
    def uses_static_pass(self, device: torch.device, collect: bool) -> bool:
        """Whether inference takes the static pass: ``static_shapes`` (None: on CUDA), never
        with gradients or when all layers are collected."""
        if collect or torch.is_grad_enabled():
            return False
        setting = self.conf.static_shapes
        return device.type == "cuda" if setting is None else bool(setting)

    def static_passes(self) -> Any:
        """This model's cache of static passes (``lightglue_static.StaticPasses``), made at first use."""
        if self._static_passes is None:
            from .lightglue_static import StaticPasses  # it builds on this module

            self._static_passes = StaticPasses(self)
        return self._static_passes

    def static_pass(self, b: int, m: int, n: int, descriptors: Tensor, caller_padding: bool) -> Any:
        """The static pass (buffers, graphs) for a batch of ``b`` pairs of ``m`` and ``n`` points,
        captured at its first use under the autocast in force."""
        from .lightglue_static import static_key  # it builds on this module

        passes = self.static_passes()
        key = static_key(self, b, m, n, descriptors.device, descriptors.dtype, caller_padding, passes.weights())
        return passes.get(self, key)

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, data: Mapping[str, Mapping[str, Tensor]],
                image_states: tuple[dict[str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        """``image_states``: one dict per image, owned by the caller and kept with that image's
        features (``FeatureStream``'s frames). Inference stores there what depends on that image
        alone (rotary encoding, input projection, layer 0's self-attention) and reuses it when the
        same features come again with the same model and precision: a video frame is matched
        twice, as the second image of one pair and the first of the next."""
        collect = self.training or bool(self.conf.return_all_layers)
        descriptors = data.get("image0", {}).get("descriptors")  # when missing, check_inputs says so
        static = descriptors is not None and self.uses_static_pass(descriptors.device, collect)
        # the static pass checks finiteness on the device, with its results (no sync here)
        (geometry0, desc0, mask0), (geometry1, desc1, mask1), real = self.check_inputs(data, check_finite=not static)
        b, m, n = desc0.shape[0], desc0.shape[1], desc1.shape[1]
        if m == 0 or n == 0 or not real:
            return self._unmatched_output(b, m, n, desc0.device, stop=0, collect=collect)
        if static:
            return self.static_pass(b, m, n, desc0, mask0 is not None or mask1 is not None).run(
                ((geometry0, desc0, mask0), (geometry1, desc1, mask1)))
        reduced = self.inference_layers(desc0.device)
        bucket = self.size_bucket(reduced is not None)
        bucket_padded = False
        if reduced is not None and bucket > 1 and mask0 is None and mask1 is None:
            # CPU bf16: pad both point sets to the bucket (masked), so that a camera whose keypoint
            # count changes every frame does not create new kernels every frame
            (geometry0, desc0, mask0), (geometry1, desc1, mask1) = (
                pad_points(geometry0, desc0, bucket), pad_points(geometry1, desc1, bucket))
            bucket_padded = mask0 is not None or mask1 is not None
        run = _Run(self, desc0.device, b, desc0.shape[1], desc1.shape[1], mask0, mask1, collect,
                   reduced, bucket, bucket_padded)
        if image_states is not None and not collect and not torch.is_grad_enabled():
            sides = [self.encode_image(data[name]["descriptors"], geometry, desc, key_mask, reduced, state)
                     for name, geometry, desc, key_mask, state in zip(
                         ("image0", "image1"), (geometry0, geometry1), (desc0, desc1), run.key_masks(),
                         image_states, strict=True)]
            rotary = Rotary(torch.cat([side.phasor for side in sides], 2))
            x = torch.cat([side.state for side in sides], 1)
            return crop_points(run.execute(x, rotary, first_self_attention_done=True), m, n)
        with full_precision(desc0.device):
            rotary = Rotary.from_angles(self.posenc(torch.cat([geometry0, geometry1], 1)))
        # the residual stream keeps the base dtype under autocast; the layers cast their inputs
        x = self.input_proj(torch.cat([desc0, desc1], 1).detach().to(self.base_dtype)).to(self.base_dtype)
        return crop_points(run.execute(x, rotary), m, n)

    def encode_image(self, source: Tensor, geometry: Tensor, descriptors: Tensor, key_mask: Tensor | None,
                     reduced: nn.ModuleList | None, state: dict[str, Any]) -> ImageEncoding:
        """One image's rotary phasor and its tokens after layer 0's self-attention, from ``state``
        when they were computed for the same ``source`` descriptors with the same content, model
        weights, precision and padding, else computed and stored there."""
        device = descriptors.device
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        # tensors made under inference mode have no version counter: sums stand for the content,
        # weighted by the point index so that points swapped in place change them too
        order = torch.arange(1, descriptors.shape[1] + 1, device=device, dtype=torch.float64)
        content = tuple(float((part.double().sum(-1) * order).sum()) for part in (geometry, descriptors))
        key = (id(self), parameter_versions(self), autocast,
               reduced is not None, tuple(descriptors.shape), None if key_mask is None else int(key_mask.sum()),
               content)
        cached = state.get(ImageEncoding.STATE_KEY)
        if isinstance(cached, ImageEncoding) and cached.source is source and cached.key == key:
            return cached
        with full_precision(device):
            rotary = Rotary.from_angles(self.posenc(geometry))
        x = self.input_proj(descriptors.detach().to(self.base_dtype)).to(self.base_dtype)
        if reduced is not None:
            with torch.autocast(device.type, enabled=False):
                x = reduced[0].self_attn.within_image(x.to(torch.bfloat16), rotary, key_mask).to(x.dtype)
        else:
            x = self.transformers[0].self_attn.within_image(x, rotary, key_mask)
        encoded = ImageEncoding(rotary.phasor, x, source, key)
        state[ImageEncoding.STATE_KEY] = encoded
        return encoded

    def _unmatched_output(self, b: int, m: int, n: int, device: torch.device, stop: int,
                          collect: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            **no_matches(b, m, n, self.base_dtype, device),
            "stop": stop,
            "prune0": torch.full((b, m), self.conf.n_layers, dtype=torch.long, device=device),
            "prune1": torch.full((b, n), self.conf.n_layers, dtype=torch.long, device=device),
            "num_pruned0": torch.zeros((b,), dtype=torch.long, device=device),
            "num_pruned1": torch.zeros((b,), dtype=torch.long, device=device),
        }
        if collect:  # nothing to supervise: no layer ran
            out.update(log_assignment=[], token_confidence0=[], token_confidence1=[])
        return out


@dataclass(frozen=True)
class ImageEncoding:
    """What LightGlue's inference computes from one image alone (see ``LightGlue.encode_image``)."""

    STATE_KEY: ClassVar[str] = "lightglue"

    phasor: Tensor  # rotary encoding (B, 1, N, head_dim / 2)
    state: Tensor  # tokens after layer 0's self-attention (B, N, D), base dtype
    source: Tensor  # the descriptors it was computed from (kept alive: the identity check is safe)
    key: tuple  # model, weights, precision, padding, content


def pad_points(geometry: Tensor, descriptors: Tensor, bucket: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """Zero-pad one image's (B, N, .) geometry and descriptors to a multiple of ``bucket`` points;
    the mask (B, N') marks the real ones (None when nothing was added)."""
    b, n = descriptors.shape[:2]
    extra = -n % bucket
    if extra == 0:
        return geometry, descriptors, None
    mask = (torch.arange(n + extra, device=descriptors.device) < n).expand(b, n + extra)
    return F.pad(geometry, (0, 0, 0, extra)), F.pad(descriptors, (0, 0, 0, extra)), mask


def crop_points(out: dict[str, Any], m: int, n: int) -> dict[str, Any]:
    """Per-point outputs back to the (unpadded) input sizes; padded points never match."""
    for key, size in (("matches0", m), ("matching_scores0", m), ("prune0", m),
                      ("matches1", n), ("matching_scores1", n), ("prune1", n)):
        if key in out and out[key].shape[1] != size:
            out[key] = out[key][:, :size]
    return out


def full_precision(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Disable autocast (if active) for small numerically sensitive parts."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _Run:
    """State of one forward pass: current point sets (after pruning), masks and bookkeeping.

    ``index0``/``index1`` (B, M')/(B, N') map current positions to the input indexing;
    ``valid0``/``valid1`` mark real points among the current ones (None = all real).
    ``reduced_layers`` (bf16 copies of the layers, or None) and ``bucket`` are decided by the
    model for the whole pass; ``bucket_padded``: the masks only mark the model's bucket padding.
    """

    def __init__(self, model: LightGlue, device: torch.device, b: int, m: int, n: int,
                 mask0: Tensor | None, mask1: Tensor | None, collect: bool,
                 reduced_layers: nn.ModuleList | None, bucket: int, bucket_padded: bool) -> None:
        conf = model.conf
        self.model, self.device, self.b, self.m, self.n = model, device, b, m, n
        self.n_layers = int(conf.n_layers)
        self.collect = collect
        padded = mask0 is not None or mask1 is not None
        self.early_exit = conf.depth_confidence > 0 and not collect
        self.min_layers = int(conf.min_layers)
        self.last_layer = model.last_layer(collect)
        self.thresholds = model.exit_thresholds()
        # the padding that rounds sizes up to the bucket is the model's own: pruning handles it
        self.prune = conf.width_confidence > 0 and not collect and (bucket_padded or not padded)
        self.min_keypoints = pruning_min_keypoints(conf.pruning_min_keypoints, device)
        self.compacted = False  # index0/index1 no longer the identity
        self.reduced_layers, self.bucket = reduced_layers, bucket  # see LightGlue.inference_layers
        self.valid0, self.valid1 = mask0, mask1
        self.index0 = torch.arange(m, device=device).expand(b, m)
        self.index1 = torch.arange(n, device=device).expand(b, n)
        self.prune0 = torch.full((b, m), self.n_layers, dtype=torch.long, device=device)
        self.prune1 = torch.full((b, n), self.n_layers, dtype=torch.long, device=device)
        # pruned points count as confident, so the exit ratio keeps the original denominator
        self.num_valid = (m if mask0 is None else mask0.sum()) + (n if mask1 is None else mask1.sum())

    @property
    def num0(self) -> int:
        return self.index0.shape[1]

    def key_masks(self) -> MaskPair:
        return tuple(None if v is None else attention_key_mask(v) for v in (self.valid0, self.valid1))

    def execute(self, x: Tensor, rotary: Rotary, first_self_attention_done: bool = False) -> dict[str, Any]:
        """The layers on the stacked tokens ``x``; with ``first_self_attention_done`` layer 0 starts
        at its cross-attention (``x`` already holds each image's self-attention result)."""
        model = self.model
        all_scores: list[Tensor] = []
        confidences: list[tuple[Tensor, Tensor]] = []
        layer = 0
        checkpointing = model.gradient_checkpointing and torch.is_grad_enabled()
        reduced = self.reduced_layers
        for layer in range(self.last_layer + 1):
            block = model.transformers[layer]
            if layer == 0 and first_self_attention_done:
                x = self.cross_attention_only(x)
            elif checkpointing:
                x = checkpoint(block, x, self.num0, rotary, self.key_masks(), use_reentrant=False)
            elif reduced is not None:
                with torch.autocast(x.device.type, enabled=False):
                    x = reduced[layer](x.to(torch.bfloat16), self.num0, rotary, self.key_masks()).to(x.dtype)
            else:
                x = block(x, self.num0, rotary, self.key_masks())
            if self.collect:
                all_scores.append(self.log_assignment(x, layer, dustbins=True))
            if layer == self.last_layer:
                break
            if not (self.early_exit or self.prune or self.collect):
                continue
            with full_precision(x.device):
                confidence = model.token_confidence[layer](x.to(model.base_dtype))
            if self.collect:
                confidences.append((confidence[:, :self.num0], confidence[:, self.num0:]))
            if self.early_exit and layer + 1 >= self.min_layers and self.confident_enough(confidence, layer):
                break
            if self.prune:
                x, rotary = self.prune_points(x, rotary, confidence, layer)
                if self.index0.shape[1] == 0 or self.index1.shape[1] == 0:
                    break
        stop = layer + 1
        if self.index0.shape[1] == 0 or self.index1.shape[1] == 0:
            out = model._unmatched_output(self.b, self.m, self.n, self.device, stop, self.collect)
            out.update(self.pruning_outputs())
            return out
        if self.collect:
            out = self.extract_matches(mutual_matches(all_scores[-1][:, :-1, :-1],
                                                      float(model.conf.filter_threshold),
                                                      self.valid0, self.valid1))
        else:
            out = self.extract_matches(self.final_matches(x, layer))
        out["stop"] = stop
        out.update(self.pruning_outputs())
        if self.collect:
            out["log_assignment"] = all_scores
            out["token_confidence0"] = [c0 for c0, _ in confidences]
            out["token_confidence1"] = [c1 for _, c1 in confidences]
        return out

    def cross_attention_only(self, x: Tensor) -> Tensor:
        """Layer 0's cross-attention block alone (its self-attention ran per image)."""
        if self.reduced_layers is None:
            return self.model.transformers[0].cross_attn(x, self.num0, self.key_masks())
        with torch.autocast(x.device.type, enabled=False):
            return self.reduced_layers[0].cross_attn(x.to(torch.bfloat16), self.num0, self.key_masks()).to(x.dtype)

    def log_assignment(self, x: Tensor, layer: int, dustbins: bool) -> Tensor:
        """Layer ``layer``'s log assignment in the base dtype, (B, M, N) or (B, M + 1, N + 1)."""
        head = self.model.log_assignment[layer]
        with full_precision(x.device):
            x = x.to(self.model.base_dtype)
            sim = head.similarity(x, self.num0)
            z = head.matchability_logits(x)
            z0, z1 = z[:, :self.num0], z[:, self.num0:]
            scores = sigmoid_log_double_softmax(sim, z0, z1, self.valid0, self.valid1)
            return with_dustbins(scores, z0, z1, self.valid0, self.valid1) if dustbins else scores

    def final_matches(self, x: Tensor, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Mutual matches of layer ``layer`` (inference): matches0/1 and scores0/1, current indexing."""
        threshold = exit_filter_threshold(self.model.conf, layer)
        head = self.model.log_assignment[layer]
        with full_precision(x.device):
            x = x.to(self.model.base_dtype)
            z = head.matchability_logits(x)
            return mutual_matches_from_similarity(head.similarity(x, self.num0), z[:, :self.num0],
                                                  z[:, self.num0:], threshold, self.valid0, self.valid1)

    def confident_enough(self, confidence: Tensor, layer: int) -> bool:
        threshold = self.thresholds[layer]
        unsure = confidence < threshold
        valid = self.current_valid()
        if valid is not None:
            unsure &= valid
        ratio_confident = 1.0 - unsure.sum() / self.num_valid
        return bool(ratio_confident > self.model.conf.depth_confidence)

    def current_valid(self) -> Tensor | None:
        if self.valid0 is None and self.valid1 is None:
            return None
        sides = ((self.valid0, self.index0), (self.valid1, self.index1))
        return torch.cat([torch.ones_like(index, dtype=torch.bool) if valid is None else valid
                          for valid, index in sides], 1)

    def prune_points(self, x: Tensor, rotary: Rotary, confidence: Tensor,
                     layer: int) -> tuple[Tensor, Rotary]:
        """Drop confidently unmatchable points; compact the sets (padding where items differ)."""
        model, num0 = self.model, self.num0
        with full_precision(x.device):
            matchable = torch.sigmoid(model.log_assignment[layer].matchability_logits(x.to(model.base_dtype)))
        unsure = confidence <= self.thresholds[layer]
        keep = (matchable > 1 - model.conf.width_confidence) | unsure
        selections = []
        sides = ((keep[:, :num0], num0), (keep[:, num0:], x.shape[1] - num0))
        for side, (keep_side, size) in enumerate(sides):
            if size <= self.min_keypoints:
                selections.append(None)
                continue
            selections.append(self.compact_side(side, keep_side, layer))
        if selections[0] is None and selections[1] is None:
            return x, rotary
        sizes = (num0, x.shape[1] - num0)
        positions = [torch.arange(sizes[s], device=x.device).expand(self.b, sizes[s]) if sel is None else sel
                     for s, sel in enumerate(selections)]
        joint = torch.cat([positions[0], positions[1] + num0], 1)
        return torch.take_along_dim(x, joint[:, :, None], dim=1), rotary.select(joint)

    def compact_side(self, side: int, keep: Tensor, layer: int) -> Tensor | None:
        """Record pruned points of one image, update its index/mask; return kept positions (B, K),
        None if all are retained."""
        valid = self.valid0 if side == 0 else self.valid1
        index = self.index0 if side == 0 else self.index1
        record = self.prune0 if side == 0 else self.prune1
        if valid is not None:
            keep = keep & valid
        # each item keeps its kept count rounded up to the bucket: the first positions of a
        # stable sort, which puts kept points first, then the others, in their original order
        counts = (-(-keep.sum(1) // self.bucket) * self.bucket).clamp(max=keep.shape[1])
        if valid is None and bool((counts == keep.shape[1]).all()):
            return None  # every point retained: nothing to compact
        width = int(counts.max())
        positions = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :width]
        retained = torch.zeros_like(keep).scatter(
            1, positions, torch.arange(width, device=keep.device)[None] < counts[:, None])
        if valid is not None:
            retained &= valid
        positions = positions.sort(dim=1).values  # the points stay in their input order
        new_valid = retained.gather(1, positions)
        removed = ~retained if valid is None else valid & ~retained
        record.scatter_(1, index, torch.where(removed, layer + 1, record.gather(1, index)))
        new_valid = None if bool(new_valid.all()) else new_valid
        new_index = index.gather(1, positions)
        self.compacted = True
        if side == 0:
            self.index0, self.valid0 = new_index, new_valid
        else:
            self.index1, self.valid1 = new_index, new_valid
        return positions

    def extract_matches(self, mutual: tuple[Tensor, Tensor, Tensor, Tensor]) -> dict[str, Any]:
        """Outputs in the input indexing from ``mutual_matches``' result on the current points."""
        m0, m1, s0, s1 = mutual
        # back to the input indexing (identity unless points were pruned)
        m0 = torch.where(m0 >= 0, self.index1.gather(1, m0.clamp(min=0)), m0)
        m1 = torch.where(m1 >= 0, self.index0.gather(1, m1.clamp(min=0)), m1)
        if self.compacted:
            m0 = m0.new_full((self.b, self.m), -1).scatter(1, self.index0, m0)
            m1 = m1.new_full((self.b, self.n), -1).scatter(1, self.index1, m1)
            s0 = s0.new_zeros((self.b, self.m)).scatter(1, self.index0, s0)
            s1 = s1.new_zeros((self.b, self.n)).scatter(1, self.index1, s1)
        matches, scores_list = compact_matches(m0, s0)
        return {"matches0": m0, "matches1": m1, "matching_scores0": s0, "matching_scores1": s1,
                "matches": matches, "scores": scores_list}

    def pruning_outputs(self) -> dict[str, Tensor]:
        return {
            "prune0": self.prune0,
            "prune1": self.prune1,
            "num_pruned0": (self.prune0 < self.n_layers).sum(1),
            "num_pruned1": (self.prune1 < self.n_layers).sum(1),
        }
