"""GlueStick point + line matcher (Pautrat, Suárez, Yu, Pollefeys, Larsson, ICCV 2023), written for
this package.

The nodes of the graph are the keypoints of both images, among them the *junctions* of the
wireframe: every line segment joins two keypoints (``lines_junc_idx``), so that lines are
matched through their endpoints. A SuperGlue-style network alternates self- and cross-attention
over all nodes; after every self-attention layer, a line layer passes messages along the
wireframe (each endpoint receives an update from the other endpoint of each of its lines and
from the line's geometry). Points are then matched by a dual softmax with a dustbin
(``bin_score``); a line's similarity is the mean similarity of its endpoints, in the better of
the two orientations, and lines are matched by a second dual softmax (``line_bin_score``).

The module layout and parameter names are those of the reference implementation
(cvg/GlueStick, ``gluestick/models/gluestick.py``) so that the released checkpoint
``checkpoint_GlueStick_MD.tar`` loads unchanged: ``kenc``, ``lenc``, ``gnn.layers.{i}.update``,
``gnn.line_layers.{i}.mlp``, ``final_proj``, ``final_line_proj``, ``bin_score``,
``line_bin_score``; the tar holds a training state whose ``model`` entry prefixes them with
``matcher.`` (:meth:`GlueStick.load_checkpoint_state_dict` strips it). Tensors are channels-first
(B, D, N) as in the reference (1x1 convolutions and batch norm).

Beyond the reference: padding masks (batches of different point / line counts), batched pairs
where only some have lines on both sides, and an empty result instead of an error for images
without points or lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..base import BaseModel, strict_load
from .common import check_point_features, compact_matches, no_matches

Tensor = torch.Tensor

# Log-assignment entries of padding (finite so that ``0 * entry`` stays 0 in a loss).
PADDING_LOG_SCORE = -1e4


# ---- building blocks (reference layout) ------------------------------------------------------
class Pointwise(nn.Conv1d):
    """A 1x1 ``Conv1d`` (same parameters and checkpoint keys) computed as a matrix product: on CPU
    ~1.7x faster than the convolution kernel for (B, D, N) point sets."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.transpose(1, 2), self.weight[:, :, 0], self.bias).transpose(1, 2)


def mlp(channels: Sequence[int]) -> nn.Sequential:
    """1x1 convolutions with batch norm + ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(1, len(channels)):
        layers.append(Pointwise(channels[i - 1], channels[i]))
        if i < len(channels) - 1:
            layers += [nn.BatchNorm1d(channels[i]), nn.ReLU()]
    return nn.Sequential(*layers)


def normalize_keypoints(points: Tensor, image_size: Tensor) -> Tensor:
    """Pixels (B, N, 2) -> centred on the image, divided by 0.7 x the longer side (SuperGlue's scale)."""
    size = image_size.to(points)
    centre = size / 2
    scale = size.max(-1, keepdim=True).values * 0.7
    return (points - centre[:, None, :]) / scale[:, None, :]


class KeypointEncoder(nn.Module):
    """MLP of (x, y, score) added to the descriptor of every node."""

    def __init__(self, dim: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.encoder = mlp([3, *layers, dim])
        nn.init.constant_(self.encoder[-1].bias, 0.0)

    def forward(self, points: Tensor, scores: Tensor) -> Tensor:
        return self.encoder(torch.cat([points.transpose(1, 2), scores[:, None]], 1))


class EndpointEncoder(nn.Module):
    """MLP of (endpoint x, y, offset to the other endpoint, line score), one column per endpoint."""

    def __init__(self, dim: int, layers: Sequence[int], reference_pairing: bool = True) -> None:
        super().__init__()
        self.encoder = mlp([5, *layers, dim])
        nn.init.constant_(self.encoder[-1].bias, 0.0)
        self.reference_pairing = reference_pairing

    def forward(self, lines: Tensor, scores: Tensor, num_valid: Tensor) -> Tensor:
        """``lines`` (B, L, 2, 2) normalised, ``scores`` (B, L), ``num_valid`` (B,) -> (B, D, 2L).

        The reference pairs endpoint column j with the score of line ``j mod L`` (it repeats the
        score vector instead of interleaving it); the released weights were trained with that
        pairing, so it is kept, with L the number of real lines of each pair. It makes the
        output depend on the order of the lines; ``reference_pairing=False`` gives each endpoint
        the score of its own line (order-independent, for models trained here).
        """
        b, n = lines.shape[:2]
        offset = (lines[:, :, 1] - lines[:, :, 0])[:, :, None]
        offset = torch.cat([offset, -offset], 2).reshape(b, 2 * n, 2)
        column = torch.arange(2 * n, device=lines.device)[None]
        if self.reference_pairing:
            score_index = column % num_valid.clamp(min=1)[:, None]
        else:
            score_index = (column // 2).expand(b, -1)
        endpoint_scores = scores.gather(1, score_index)
        inputs = torch.cat([lines.reshape(b, 2 * n, 2), offset, endpoint_scores[..., None]], -1)
        return self.encoder(inputs.transpose(1, 2))


class MultiHeadedAttention(nn.Module):
    """Attention with the reference's channel layout: channel ``c`` is feature ``c // H`` of head
    ``c % H`` (the heads are the fast axis)."""

    def __init__(self, num_heads: int, dim: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"GlueStick: descriptor_dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.merge = Pointwise(dim, dim)
        self.proj = nn.ModuleList([Pointwise(dim, dim) for _ in range(3)])

    def split(self, x: Tensor) -> Tensor:
        """(B, D, N) -> (B, H, N, D / H), contiguous (the fused attention kernel is ~2x faster on CPU)."""
        b, d, n = x.shape
        return x.reshape(b, d // self.num_heads, self.num_heads, n).permute(0, 2, 3, 1).contiguous()

    def forward(self, x: Tensor, source: Tensor, source_mask: Tensor | None) -> Tensor:
        q, k, v = (self.split(proj(t)) for proj, t in zip(self.proj, (x, source, source), strict=True))
        mask = None if source_mask is None else source_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(x.dtype)
        b, _, n, _ = out.shape
        return self.merge(out.permute(0, 3, 1, 2).reshape(b, -1, n))


class AttentionalPropagation(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = MultiHeadedAttention(num_heads, dim)
        self.mlp = mlp([2 * dim, 2 * dim, dim])
        nn.init.constant_(self.mlp[-1].bias, 0.0)

    def forward(self, x: Tensor, source: Tensor, source_mask: Tensor | None) -> Tensor:
        return self.mlp(torch.cat([x, self.attn(x, source, source_mask)], 1))


class GNNLayer(nn.Module):
    """Self (each image to itself) or cross (each image to the other) message passing."""

    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        if kind not in ("self", "cross"):
            raise ValueError(f"GlueStick: GNN layer type must be 'self' or 'cross', got {kind!r}")
        self.type = kind
        self.update = AttentionalPropagation(dim, 4)

    def forward(self, desc0: Tensor, desc1: Tensor, mask0: Tensor | None, mask1: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        if self.type == "cross":
            src0, src1, smask0, smask1 = desc1, desc0, mask1, mask0
        else:
            src0, src1, smask0, smask1 = desc0, desc1, mask0, mask1
        # both updates from the inputs of the layer; one call per image as in the reference
        # (batch norm statistics are per call in training)
        delta0, delta1 = self.update(desc0, src0, smask0), self.update(desc1, src1, smask1)
        return desc0 + delta0, desc1 + delta1


class LineLayer(nn.Module):
    """Message passing along the wireframe: each endpoint of a line gets an MLP of [its node, the
    other endpoint's node, the endpoint's line encoding]; a junction averages the messages of its
    lines (a node on no real line is unchanged)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = mlp([3 * dim, 2 * dim, dim])

    def endpoint_messages(self, desc: Tensor, line_enc: Tensor, junc_idx: Tensor) -> Tensor:
        b = junc_idx.shape[0]
        ends = desc.gather(2, junc_idx[:, None].expand(-1, self.dim, -1))  # (B, D, 2L)
        other_end = ends.reshape(b, self.dim, -1, 2).flip(-1).reshape(b, self.dim, -1)
        return self.mlp(torch.cat([ends, other_end, line_enc], 1))

    def update_side(self, desc: Tensor, line_enc: Tensor, junc_idx: Tensor, target_idx: Tensor) -> Tensor:
        """``target_idx`` = ``junc_idx`` with the endpoints of padded lines sent to an extra column."""
        messages = self.endpoint_messages(desc, line_enc, junc_idx)
        b, d, n = desc.shape
        # under autocast the MLP's messages come in reduced precision; the features stay in theirs
        update = desc.new_zeros((b, d, n + 1)).scatter_reduce_(
            2, target_idx[:, None].expand(-1, d, -1), messages.to(desc.dtype), reduce="mean", include_self=False)
        return desc + update[:, :, :n]

    def forward(self, desc0: Tensor, desc1: Tensor, lines: LineInputs) -> tuple[Tensor, Tensor]:
        return (self.update_side(desc0, lines.enc0, lines.junc0, lines.target0),
                self.update_side(desc1, lines.enc1, lines.junc1, lines.target1))


class LineInputs:
    """Wireframe of both images for the line layers: endpoint encodings (B, D, 2L), endpoint
    junction indices (B, 2L), and the scatter targets (padded lines -> the extra column N)."""

    def __init__(self, enc0: Tensor, enc1: Tensor, junc0: Tensor, junc1: Tensor, valid0: Tensor,
                 valid1: Tensor, num_nodes0: int, num_nodes1: int) -> None:
        self.enc0, self.enc1, self.junc0, self.junc1 = enc0, enc1, junc0, junc1
        self.target0 = torch.where(valid0.repeat_interleave(2, 1), junc0, torch.full_like(junc0, num_nodes0))
        self.target1 = torch.where(valid1.repeat_interleave(2, 1), junc1, torch.full_like(junc1, num_nodes1))


# ---- assignment --------------------------------------------------------------------------
def log_double_softmax(scores: Tensor, bin_score: Tensor, valid0: Tensor | None = None,
                       valid1: Tensor | None = None) -> Tensor:
    """(B, M, N) similarities -> (B, M + 1, N + 1) log assignment with a dustbin row and column.

    Matches: mean of the row-wise and column-wise log softmax (each including the dustbin, whose
    similarity is ``bin_score``); the dustbin entries come from the one softmax that has them.
    Masked rows/columns (padding, or lines of a pair where the other image has none) take no
    probability mass: their match entries get ``PADDING_LOG_SCORE`` and their dustbin entry 0
    (certainly unmatched), so a loss on them is 0 whatever their label.
    """
    b, m, n = scores.shape
    if valid0 is not None or valid1 is not None:
        v0 = scores.new_ones((b, m), dtype=torch.bool) if valid0 is None else valid0
        v1 = scores.new_ones((b, n), dtype=torch.bool) if valid1 is None else valid1
        scores = scores.masked_fill(~(v0[:, :, None] & v1[:, None, :]), float("-inf"))
    bins = bin_score.to(scores).expand(b, 1, 1)
    rows = torch.cat([scores, bins.expand(b, m, 1)], 2).log_softmax(2)
    cols = torch.cat([scores, bins.expand(b, 1, n)], 1).log_softmax(1)
    out = scores.new_zeros((b, m + 1, n + 1))
    out[:, :m, :n] = (rows[:, :, :n] + cols[:, :m, :]) / 2
    out[:, :m, n] = rows[:, :, n]
    out[:, m, :n] = cols[:, m, :]
    if valid0 is not None or valid1 is not None:
        invalid = torch.zeros((b, m + 1, n + 1), dtype=torch.bool, device=scores.device)
        invalid[:, :m, :] |= ~v0[:, :, None]
        invalid[:, :, :n] |= ~v1[:, None, :]
        out = out.masked_fill(invalid, PADDING_LOG_SCORE)
        out[:, :m, n] = out[:, :m, n].masked_fill(~v0, 0.0)
        out[:, m, :n] = out[:, m, :n].masked_fill(~v1, 0.0)
    return out


def mutual_matches(log_assignment: Tensor, threshold: float, valid0: Tensor | None = None,
                   valid1: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The reference's match extraction: mutual arg-max of the (B, M+1, N+1) log assignment without
    dustbins; the score of a mutual pair is its probability; matches need score > ``threshold``."""
    scores = log_assignment[:, :-1, :-1]
    b, m, n = scores.shape
    if m == 0 or n == 0:
        return (torch.full((b, m), -1, dtype=torch.long, device=scores.device),
                torch.full((b, n), -1, dtype=torch.long, device=scores.device),
                scores.new_zeros((b, m)), scores.new_zeros((b, n)))
    max0, max1 = scores.max(2), scores.max(1)
    m0, m1 = max0.indices, max1.indices
    mutual0 = torch.arange(m, device=scores.device)[None] == m1.gather(1, m0)
    mutual1 = torch.arange(n, device=scores.device)[None] == m0.gather(1, m1)
    if valid0 is not None:
        mutual0 &= valid0
        mutual1 &= valid0.gather(1, m1)
    if valid1 is not None:
        mutual1 &= valid1
        mutual0 &= valid1.gather(1, m0)
    zero = scores.new_zeros(())
    s0 = torch.where(mutual0, max0.values.exp(), zero)
    s1 = torch.where(mutual1, s0.gather(1, m1), zero)
    keep0 = mutual0 & (s0 > threshold)
    keep1 = mutual1 & keep0.gather(1, m1)
    return (torch.where(keep0, m0, -1), torch.where(keep1, m1, -1), s0, s1)


# ---- the model ------------------------------------------------------------------------------
class GlueStick(BaseModel):
    """Input per image: ``keypoints`` (B, N, 2) (the junctions among them), ``keypoint_scores``,
    ``descriptors`` (B, N, D), ``image_size`` (B, 2), optional ``keypoint_mask``; ``lines``
    (B, L, 2, 2), ``line_scores`` (B, L), ``lines_junc_idx`` (B, L, 2), optional ``line_mask``.
    Without ``lines`` an image has no lines. Output: point matches as LightGlue's, plus
    ``line_matches0/1``, ``line_matching_scores0/1``, ``line_matches``, ``line_match_scores``,
    and the log assignments ``log_assignment`` / ``line_log_assignment`` (B, M+1, N+1)."""

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "gluestick",
        "weights": None,  # "gluestick_md" = the released checkpoint_GlueStick_MD.tar
        "input_dim": 256,
        "descriptor_dim": 256,
        "keypoint_encoder": [32, 64, 128, 256],
        "GNN_layers": ["self", "cross"] * 9,
        "num_line_iterations": 1,
        "filter_threshold": 0.2,  # on the matching probability (points and lines)
        "checkpointed": False,  # recompute each layer in backward (less memory in training)
        # intermediate line supervision: after the cross layer of these (self, cross) blocks, as
        # the reference's ``inter_supervision``; adds ``inter_line_proj`` parameters
        "inter_supervision": None,
        "inter_supervision_weights": [0.3, 0.6],  # loss weights of those layers (reference loss conf)
        # endpoint j of the line encoder gets the score of line j mod L ("reference": how the released
        # weights were trained, depends on the line order) or of its own line ("line")
        "line_score_pairing": "reference",
        "return_all_layers": False,  # training: the supervised assignments as lists (see _forward)
    }

    def _init(self, conf: DictConfig) -> None:
        dim = int(conf.descriptor_dim)
        layer_types = list(conf.GNN_layers)
        if conf.line_score_pairing not in ("reference", "line"):
            raise ValueError(f"GlueStick: line_score_pairing must be 'reference' or 'line', "
                             f"got {conf.line_score_pairing!r}")
        if len(layer_types) % 2 or any(t not in ("self", "cross") for t in layer_types):
            raise ValueError(f"GlueStick: GNN_layers must be (self, cross) pairs, got {layer_types}")
        inter = list(conf.inter_supervision or [])
        if any(not 0 <= int(i) < len(layer_types) // 2 for i in inter):
            raise ValueError(f"GlueStick: inter_supervision blocks {inter} out of range "
                             f"[0, {len(layer_types) // 2})")
        if inter and len(conf.inter_supervision_weights) != len(inter):
            raise ValueError("GlueStick: inter_supervision_weights needs one weight per inter_supervision layer")
        self.input_dim = int(conf.input_dim)
        if conf.input_dim != conf.descriptor_dim:
            self.input_proj = Pointwise(int(conf.input_dim), dim)
            nn.init.constant_(self.input_proj.bias, 0.0)
        self.kenc = KeypointEncoder(dim, conf.keypoint_encoder)
        self.lenc = EndpointEncoder(dim, conf.keypoint_encoder, conf.line_score_pairing == "reference")
        self.gnn = nn.Module()
        self.gnn.layers = nn.ModuleList([GNNLayer(dim, t) for t in layer_types])
        self.gnn.line_layers = nn.ModuleList([LineLayer(dim) for _ in range(len(layer_types) // 2)])
        self.final_proj = Pointwise(dim, dim)
        self.final_line_proj = Pointwise(dim, dim)
        for proj in (self.final_proj, self.final_line_proj):
            nn.init.constant_(proj.bias, 0.0)
            nn.init.orthogonal_(proj.weight, gain=1)
        self.inter_blocks = [int(i) for i in inter]
        if inter:
            self.inter_line_proj = nn.ModuleList([Pointwise(dim, dim) for _ in inter])
            for proj in self.inter_line_proj:
                nn.init.constant_(proj.bias, 0.0)
                nn.init.orthogonal_(proj.weight, gain=1)
        self.bin_score = nn.Parameter(torch.tensor(1.0))
        self.line_bin_score = nn.Parameter(torch.tensor(1.0))

    # ---- weights ---------------------------------------------------------------------------
    def load_checkpoint_state_dict(self, state_dict: Mapping[str, Tensor], origin: str = "") -> None:
        """The released tar is a training state: ``{"model": {"matcher.<key>": ...}, ...}``
        (possibly with ``module.`` from distributed training); a bare state dict loads as is."""
        if "model" in state_dict and isinstance(state_dict["model"], Mapping):
            state_dict = state_dict["model"]
        if any("matcher." in k for k in state_dict):  # a whole pipeline: keep the matcher's part
            state_dict = {k: v for k, v in state_dict.items() if "matcher." in k}
        converted = {k.replace("matcher.", "").replace("module.", ""): v for k, v in state_dict.items()}
        strict_load(self, converted, origin, self.release_extras)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.conf.checkpointed = bool(enabled)

    # ---- inputs ------------------------------------------------------------------------------
    def _check_side(self, feats: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
        b, n = check_point_features("GlueStick", feats, name,
                                    ("keypoints", "descriptors", "keypoint_scores", "image_size"))
        kpts, desc = feats["keypoints"], feats["descriptors"]
        if desc.ndim != 3 or desc.shape[:2] != (b, n) or desc.shape[-1] != self.input_dim:
            raise ValueError(f"GlueStick: {name} descriptors must be (B, N, {self.input_dim}) with B, N = "
                             f"{b}, {n}, got {tuple(desc.shape)} (input_dim)")
        out = {"keypoints": kpts, "descriptors": desc, "keypoint_scores": feats["keypoint_scores"],
               "image_size": feats["image_size"].reshape(-1, 2).expand(b, 2),
               "keypoint_mask": feats.get("keypoint_mask", torch.ones((b, n), dtype=torch.bool,
                                                                      device=kpts.device)).bool()}
        if "lines" in feats:
            lines = feats["lines"]
            if lines.ndim != 4 or lines.shape[0] != b or tuple(lines.shape[2:]) != (2, 2):
                raise ValueError(f"GlueStick: {name} lines must be (B, L, 2, 2), got {tuple(lines.shape)}")
            num_lines = lines.shape[1]
            for key in ("lines_junc_idx", "line_scores"):
                if key not in feats:
                    raise ValueError(f"GlueStick: {name} has lines but no '{key}' (a wireframe extractor gives it)")
            junc = feats["lines_junc_idx"]
            if tuple(junc.shape) != (b, num_lines, 2):
                raise ValueError(f"GlueStick: {name} lines_junc_idx must be ({b}, {num_lines}, 2), "
                                 f"got {tuple(junc.shape)}")
            mask = feats.get("line_mask", torch.ones((b, num_lines), dtype=torch.bool, device=lines.device))
            mask = mask.bool() & (junc[..., 0] != junc[..., 1])  # a zero-length segment is no line
            if bool(((junc < 0) | (junc >= n))[mask].any()):
                raise ValueError(f"GlueStick: {name} lines_junc_idx points outside the {n} keypoints")
            junc = junc.long().clamp(0, max(n - 1, 0))  # padded lines may hold any index
            out.update(lines=lines, line_scores=feats["line_scores"], lines_junc_idx=junc, line_mask=mask)
        else:
            out.update(lines=kpts.new_zeros((b, 0, 2, 2)), line_scores=kpts.new_zeros((b, 0)),
                       lines_junc_idx=torch.zeros((b, 0, 2), dtype=torch.long, device=kpts.device),
                       line_mask=torch.zeros((b, 0), dtype=torch.bool, device=kpts.device))
        for key in ("keypoints", "descriptors", "keypoint_scores"):
            if not bool(torch.isfinite(out[key]).all()):
                raise ValueError(f"GlueStick: {name} '{key}' contains NaN or infinite values")
        return out

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, data: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Any]:
        for key in ("image0", "image1"):
            if key not in data:
                raise ValueError(f"GlueStick expects 'image0' and 'image1', got keys {sorted(data)}")
        f0, f1 = self._check_side(data["image0"], "image0"), self._check_side(data["image1"], "image1")
        if f0["keypoints"].shape[0] != f1["keypoints"].shape[0]:
            raise ValueError("GlueStick: batch sizes differ")
        b, m, n = f0["keypoints"].shape[0], f0["keypoints"].shape[1], f1["keypoints"].shape[1]
        lm, ln = f0["lines"].shape[1], f1["lines"].shape[1]
        if m == 0 or n == 0:
            return self._empty_output(b, m, n, lm, ln, f0["keypoints"])
        return self._forward(f0, f1)

    def _forward(self, f0: dict[str, Tensor], f1: dict[str, Tensor]) -> dict[str, Any]:
        conf = self.conf
        b = f0["keypoints"].shape[0]
        mask0, mask1 = f0["keypoint_mask"], f1["keypoint_mask"]
        desc0 = f0["descriptors"].transpose(1, 2)
        desc1 = f1["descriptors"].transpose(1, 2)
        if hasattr(self, "input_proj"):
            desc0, desc1 = self.input_proj(desc0), self.input_proj(desc1)
        kpts0 = normalize_keypoints(f0["keypoints"], f0["image_size"])
        kpts1 = normalize_keypoints(f1["keypoints"], f1["image_size"])
        desc0 = desc0 + self.kenc(kpts0, f0["keypoint_scores"])
        desc1 = desc1 + self.kenc(kpts1, f1["keypoint_scores"])

        # lines take part only in pairs where both images have some (as the reference, per pair)
        has_lines = f0["line_mask"].any(1) & f1["line_mask"].any(1)
        lvalid0 = f0["line_mask"] & has_lines[:, None]
        lvalid1 = f1["line_mask"] & has_lines[:, None]
        use_lines = bool(has_lines.any())
        lines = None
        if use_lines:
            lines = LineInputs(self._encode_lines(f0, lvalid0), self._encode_lines(f1, lvalid1),
                               f0["lines_junc_idx"].flatten(1), f1["lines_junc_idx"].flatten(1),
                               lvalid0, lvalid1, desc0.shape[2], desc1.shape[2])
        # attention keys: an image whose points are all padding attends to everything (discarded)
        key0 = None if bool(mask0.all()) else mask0 | ~mask0.any(1, keepdim=True)
        key1 = None if bool(mask1.all()) else mask1 | ~mask1.any(1, keepdim=True)
        inter_states: dict[int, tuple[Tensor, Tensor]] = {}
        for i, layer in enumerate(self.gnn.layers):
            desc0, desc1 = self._run(layer, desc0, desc1, key0, key1)
            if layer.type == "self" and lines is not None:
                for _ in range(int(conf.num_line_iterations)):
                    desc0, desc1 = self._run(self.gnn.line_layers[i // 2], desc0, desc1, lines)
            if layer.type == "cross" and i // 2 in self.inter_blocks:
                inter_states[i // 2] = (desc0, desc1)

        mdesc0, mdesc1 = self.final_proj(desc0), self.final_proj(desc1)
        sim = torch.einsum("bdn,bdm->bnm", mdesc0, mdesc1) / mdesc0.shape[1] ** 0.5
        log_assignment = log_double_softmax(sim, self.bin_score, mask0, mask1)
        m0, m1, s0, s1 = mutual_matches(log_assignment, float(conf.filter_threshold), mask0, mask1)
        matches, scores = compact_matches(m0, s0)
        pred: dict[str, Any] = {"matches0": m0, "matches1": m1, "matching_scores0": s0, "matching_scores1": s1,
                                "matches": matches, "scores": scores, "log_assignment": log_assignment}

        lm, ln = f0["lines"].shape[1], f1["lines"].shape[1]
        if use_lines:
            line_la = self._line_log_assignment(desc0, desc1, f0, f1, lvalid0, lvalid1, self.final_line_proj)
            lm0, lm1, ls0, ls1 = mutual_matches(line_la, float(conf.filter_threshold), lvalid0, lvalid1)
        else:
            line_la = self._padding_assignment(b, lm, ln, sim)
            lm0, lm1, ls0, ls1 = mutual_matches(line_la, 1.0)
        line_matches, line_scores = compact_matches(lm0, ls0)
        pred.update(line_matches0=lm0, line_matches1=lm1, line_matching_scores0=ls0, line_matching_scores1=ls1,
                    line_matches=line_matches, line_match_scores=line_scores, line_log_assignment=line_la)
        if self.training or conf.return_all_layers:
            pred["log_assignment"] = [log_assignment]  # GlueStick supervises the final point assignment
            inter = []
            if use_lines:
                for k, block in enumerate(self.inter_blocks):
                    d0, d1 = inter_states[block]
                    inter.append(self._line_log_assignment(d0, d1, f0, f1, lvalid0, lvalid1,
                                                           self.inter_line_proj[k]))
            pred["line_log_assignment_inter"] = inter
            pred["line_inter_weights"] = [float(w) for w in conf.inter_supervision_weights][:len(inter)]
        return pred

    def _run(self, layer: nn.Module, *args: Any) -> tuple[Tensor, Tensor]:
        if self.conf.checkpointed and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _encode_lines(self, feats: dict[str, Tensor], valid: Tensor) -> Tensor:
        lines = feats["lines"]
        b, num = lines.shape[:2]
        normalized = normalize_keypoints(lines.reshape(b, 2 * num, 2), feats["image_size"]).reshape(b, num, 2, 2)
        return self.lenc(normalized, feats["line_scores"].to(lines), valid.sum(1))

    def _line_log_assignment(self, desc0: Tensor, desc1: Tensor, f0: dict[str, Tensor], f1: dict[str, Tensor],
                             valid0: Tensor, valid1: Tensor, proj: nn.Module) -> Tensor:
        """Line similarity = mean endpoint similarity in the better orientation -> dual softmax."""
        junc0, junc1 = f0["lines_junc_idx"].flatten(1), f1["lines_junc_idx"].flatten(1)
        d = desc0.shape[1]
        ends0 = proj(desc0.gather(2, junc0[:, None].expand(-1, d, -1)))
        ends1 = proj(desc1.gather(2, junc1[:, None].expand(-1, d, -1)))
        sim = torch.einsum("bdn,bdm->bnm", ends0, ends1) / d ** 0.5
        b, lm, ln = sim.shape[0], junc0.shape[1] // 2, junc1.shape[1] // 2
        sim = sim.reshape(b, lm, 2, ln, 2)
        line_sim = 0.5 * torch.maximum(sim[:, :, 0, :, 0] + sim[:, :, 1, :, 1],
                                       sim[:, :, 0, :, 1] + sim[:, :, 1, :, 0])
        return log_double_softmax(line_sim, self.line_bin_score, valid0, valid1)

    @staticmethod
    def _padding_assignment(b: int, m: int, n: int, like: Tensor) -> Tensor:
        """Log assignment when nothing can match: every element certainly in its dustbin."""
        out = like.new_full((b, m + 1, n + 1), PADDING_LOG_SCORE)
        out[:, :m, n] = 0.0
        out[:, m, :n] = 0.0
        return out

    def _empty_output(self, b: int, m: int, n: int, lm: int, ln: int, like: Tensor) -> dict[str, Any]:
        """No keypoints in one image (hence no junctions, no lines): nothing matches."""
        lines = no_matches(b, lm, ln, like.dtype, like.device)
        out: dict[str, Any] = {
            **no_matches(b, m, n, like.dtype, like.device),
            "log_assignment": self._padding_assignment(b, m, n, like),
            **{f"line_{key}": value for key, value in lines.items() if key != "scores"},
            "line_match_scores": lines["scores"],
            "line_log_assignment": self._padding_assignment(b, lm, ln, like),
        }
        if self.training or self.conf.return_all_layers:
            out.update(log_assignment=[], line_log_assignment_inter=[], line_inter_weights=[])
        return out
