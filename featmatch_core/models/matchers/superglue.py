"""SuperGlue matcher (Sarlin, DeTone, Malisiewicz, Rabinovich, CVPR 2020), written for this package.

A keypoint encoder adds an MLP embedding of (x, y, detection score) to every descriptor; an
attentional graph neural network alternates self- and cross-attention layers; a final
projection gives matching descriptors whose scaled dot products, bordered by a learnable
dustbin score, become a partial assignment through log-domain Sinkhorn optimal transport.
Matches are mutual arg-maxima of that assignment above ``match_threshold``.

Parameter names and shapes are those of the official checkpoints
(magicleap/SuperGluePretrainedNetwork): ``kenc.encoder.*``, ``gnn.layers.{i}.attn.merge.*``,
``gnn.layers.{i}.attn.proj.{0,1,2}.*``, ``gnn.layers.{i}.mlp.*``, ``final_proj.*`` and
``bin_score``, so they load unchanged. As there, features are channel-first (B, D, N) inside
the network and every linear layer is a 1x1 convolution. The official weights carry Magic
Leap's non-commercial licence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ..base import BaseModel, strict_load
from .lightglue import PADDING_LOG_SCORE, full_precision, mutual_matches
from .common import check_point_features, compact_matches, no_matches, padding_mask

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

# Log-marginal of padded rows/columns in the transport problem: exp() of it is exactly 0 in
# float32, yet it stays finite so that no -inf - (-inf) appears in the iterations.
NO_MASS = -1e4
# ``weights: indoor`` / ``outdoor`` as in the reference's config, for the registry ids.
WEIGHT_ALIASES = {"indoor": "superglue_indoor", "outdoor": "superglue_outdoor"}


# ---- building blocks -------------------------------------------------------------------------
def conv_mlp(channels: Sequence[int]) -> nn.Sequential:
    """1x1 convolutions with BatchNorm + ReLU between them; indices are checkpoint keys
    (conv 0, bn 1, conv 3, bn 4, ...; the last conv has no normalisation)."""
    layers: list[nn.Module] = []
    for i in range(1, len(channels)):
        layers.append(nn.Conv1d(channels[i - 1], channels[i], kernel_size=1, bias=True))
        if i < len(channels) - 1:
            layers += [nn.BatchNorm1d(channels[i]), nn.ReLU()]
    return nn.Sequential(*layers)


def masked_batch_norm(norm: nn.BatchNorm1d, x: Tensor, mask: Tensor) -> Tensor:
    """Training-mode BatchNorm of (B, C, N) whose statistics come from the real points only:
    padding would otherwise shift the normalisation of the real points."""
    points = x.transpose(1, 2)  # (B, N, C)
    real = points[mask]
    if real.shape[0] < 2:  # no batch statistics from fewer than two points: running ones
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            training=False, eps=norm.eps)
    out = torch.zeros_like(points)
    out[mask] = norm(real)
    return out.transpose(1, 2)


def run_mlp(mlp: nn.Sequential, x: Tensor, mask: Tensor | None) -> Tensor:
    for layer in mlp:
        if isinstance(layer, nn.BatchNorm1d) and layer.training and mask is not None:
            x = masked_batch_norm(layer, x, mask)
        else:
            x = layer(x)
    return x


def normalize_keypoints(keypoints: Tensor, image_size: Tensor) -> Tensor:
    """Pixels -> centred on the image and divided by 0.7 x its longer side (the reference's scaling).

    ``image_size`` (B, 2) is (W, H) of the image the keypoints are in.
    """
    size = image_size.to(keypoints.dtype)
    centre = size / 2
    scaling = size.max(-1).values * 0.7
    return (keypoints - centre[:, None, :]) / scaling[:, None, None]


class KeypointEncoder(nn.Module):
    """MLP embedding of (x, y, detection score), added to the descriptors."""

    def __init__(self, dim: int, layers: Sequence[int]) -> None:
        super().__init__()
        self.encoder = conv_mlp([3, *layers, dim])
        nn.init.constant_(self.encoder[-1].bias, 0.0)

    def forward(self, keypoints: Tensor, scores: Tensor, mask: Tensor | None) -> Tensor:
        """(B, N, 2) normalised keypoints, (B, N) scores -> (B, dim, N)."""
        inputs = torch.cat([keypoints.transpose(1, 2), scores[:, None, :]], 1)
        return run_mlp(self.encoder, inputs, mask)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, D, N) -> (B, H, N, D / H). As in the reference, channel ``d * H + h`` is channel d of head h.

    Contiguous: on CPU the fused attention is ~3x faster on it than on the permuted view."""
    b, dim, n = x.shape
    return x.view(b, dim // num_heads, num_heads, n).permute(0, 2, 3, 1).contiguous()


def merge_heads(x: Tensor) -> Tensor:
    """Inverse of :func:`split_heads`: (B, H, N, D / H) -> (B, D, N)."""
    b, heads, n, head_dim = x.shape
    return x.permute(0, 3, 1, 2).reshape(b, head_dim * heads, n)


class MultiHeadAttention(nn.Module):
    """Softmax attention with 1x1-conv projections of queries, keys, values (``proj``) and output
    (``merge``). The fused kernel computes the reference's softmax(q k^T / sqrt(D / H)) v."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.merge = nn.Conv1d(dim, dim, kernel_size=1)
        self.proj = nn.ModuleList([nn.Conv1d(dim, dim, kernel_size=1) for _ in range(3)])
        for proj in self.proj:  # the reference starts q, k, v from copies of ``merge``
            proj.load_state_dict(self.merge.state_dict())

    def forward(self, x: Tensor, source: Tensor, key_mask: Tensor | None) -> Tensor:
        query, key, value = (split_heads(proj(t), self.num_heads)
                             for proj, t in zip(self.proj, (x, source, source), strict=True))
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return self.merge(merge_heads(F.scaled_dot_product_attention(query, key, value, attn_mask=mask)))


class AttentionalPropagation(nn.Module):
    """Message from ``source`` by attention, then an MLP of [state, message] (the residual update)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, num_heads)
        self.mlp = conv_mlp([2 * dim, 2 * dim, dim])
        nn.init.constant_(self.mlp[-1].bias, 0.0)

    def forward(self, x: Tensor, source: Tensor, key_mask: Tensor | None, mask: Tensor | None) -> Tensor:
        message = self.attn(x, source, key_mask)
        return run_mlp(self.mlp, torch.cat([x, message], 1), mask)


class AttentionalGNN(nn.Module):
    """``layer_types`` ('self' | 'cross') in order; each layer updates both images with shared weights.

    The two images go through a layer in two calls, as in the reference: in training, BatchNorm
    statistics are then per image.
    """

    def __init__(self, dim: int, layer_types: Sequence[str], num_heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([AttentionalPropagation(dim, num_heads) for _ in layer_types])
        self.layer_types = tuple(layer_types)

    def forward(self, desc0: Tensor, desc1: Tensor, mask0: Tensor | None, mask1: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        keys0, keys1 = attention_key_mask(mask0), attention_key_mask(mask1)
        for layer, kind in zip(self.layers, self.layer_types, strict=True):
            if kind == "cross":
                src0, src1, src_keys0, src_keys1 = desc1, desc0, keys1, keys0
            else:
                src0, src1, src_keys0, src_keys1 = desc0, desc1, keys0, keys1
            delta0 = layer(desc0, src0, src_keys0, mask0)
            delta1 = layer(desc1, src1, src_keys1, mask1)
            desc0, desc1 = desc0 + delta0, desc1 + delta1
        return desc0, desc1


def attention_key_mask(mask: Tensor | None) -> Tensor | None:
    """Keys that may be attended; an image whose points are all padding attends to everything
    (its outputs are discarded) so that no softmax row is empty."""
    return None if mask is None else mask | ~mask.any(1, keepdim=True)


# ---- optimal transport -----------------------------------------------------------------------
def log_sinkhorn_iterations(couplings: Tensor, log_mu: Tensor, log_nu: Tensor, iterations: int) -> Tensor:
    """Alternate row and column normalisation in log space; the last step fits the columns exactly."""
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iterations):
        u = log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1)
    return couplings + u[:, :, None] + v[:, None, :]


def log_optimal_transport(scores: Tensor, bin_score: Tensor, iterations: int, valid0: Tensor | None = None,
                          valid1: Tensor | None = None) -> Tensor:
    """(B, M, N) scores -> (B, M + 1, N + 1) log assignment; the last row/column are the dustbins.

    With m and n real points, each real point has mass 1, the dustbin of image 0 has mass n and
    that of image 1 mass m (each can absorb every point of the other image); the problem is
    solved with marginals divided by m + n and the result multiplied back, so that in
    probabilities every real row and column sums to 1, the dustbin row to n and the dustbin
    column to m. ``valid0``/``valid1`` (B, M)/(B, N) exclude padding: m and n are then counted
    per pair, padded rows/columns carry no mass and come back as ``PADDING_LOG_SCORE``.
    """
    b, m, n = scores.shape
    couplings = torch.cat([torch.cat([scores, bin_score.expand(b, m, 1)], 2),
                           torch.cat([bin_score.expand(b, 1, n), bin_score.expand(b, 1, 1)], 2)], 1)
    if valid0 is None and valid1 is None:  # the reference's arithmetic exactly
        ms, ns = scores.new_full((b,), m), scores.new_full((b,), n)
        norm = -(ms + ns).log()
        log_mu = torch.cat([norm[:, None].expand(b, m), (ns.log() + norm)[:, None]], 1)
        log_nu = torch.cat([norm[:, None].expand(b, n), (ms.log() + norm)[:, None]], 1)
        return log_sinkhorn_iterations(couplings, log_mu, log_nu, iterations) - norm[:, None, None]
    valid0 = torch.ones((b, m), dtype=torch.bool, device=scores.device) if valid0 is None else valid0
    valid1 = torch.ones((b, n), dtype=torch.bool, device=scores.device) if valid1 is None else valid1
    ms, ns = valid0.sum(1).to(scores.dtype), valid1.sum(1).to(scores.dtype)
    norm = -(ms + ns).clamp(min=1).log()
    log_mu = torch.cat([norm[:, None].expand(b, m), (ns.clamp(min=1).log() + norm)[:, None]], 1)
    log_nu = torch.cat([norm[:, None].expand(b, n), (ms.clamp(min=1).log() + norm)[:, None]], 1)
    has_mass0 = torch.cat([valid0, (ns > 0)[:, None]], 1)  # a dustbin with nothing to absorb has none
    has_mass1 = torch.cat([valid1, (ms > 0)[:, None]], 1)
    log_mu = torch.where(has_mass0, log_mu, torch.full_like(log_mu, NO_MASS))
    log_nu = torch.where(has_mass1, log_nu, torch.full_like(log_nu, NO_MASS))
    z = log_sinkhorn_iterations(couplings, log_mu, log_nu, iterations) - norm[:, None, None]
    z = z.masked_fill(~torch.cat([valid0, valid0.new_ones((b, 1))], 1)[:, :, None], PADDING_LOG_SCORE)
    return z.masked_fill(~torch.cat([valid1, valid1.new_ones((b, 1))], 1)[:, None, :], PADDING_LOG_SCORE)


# ---- the model -------------------------------------------------------------------------------
class SuperGlue(BaseModel):
    """Match two sets of local features (the extractor output contract) with SuperGlue.

    Needs per image ``keypoints`` (B, N, 2), ``descriptors`` (B, N, descriptor_dim),
    ``keypoint_scores`` (B, N), ``image_size`` (B, 2) and optionally ``keypoint_mask`` (B, N).
    ``forward({"image0": feats0, "image1": feats1})`` returns the matcher contract of
    docs/architecture.md: ``matches0``/``matches1`` (-1 = unmatched), ``matching_scores0/1``
    (probability of mutual nearest neighbours, also below ``match_threshold``, else 0), and the
    per-pair lists ``matches`` (K, 2) and ``scores`` (K,). In training mode or with
    ``return_all_layers``, also ``log_assignment``: a one-element list with the
    (B, M + 1, N + 1) log assignment (dustbins last), which the generic trainer supervises with
    the assignment NLL; SuperGlue has no per-layer heads and no token confidences.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "superglue",
        "descriptor_dim": 256,  # of the extractor's descriptors, also the width of the network
        "keypoint_encoder": [32, 64, 128, 256],  # hidden widths of the keypoint MLP
        "gnn_layers": ["self", "cross"] * 9,
        "num_heads": 4,
        "sinkhorn_iterations": 100,
        "match_threshold": 0.2,
        "return_all_layers": False,  # also return the log assignment (the trainer sets it)
        "weights": "superglue_indoor",  # or superglue_outdoor (indoor / outdoor also accepted), a path, None
    }

    def _init(self, conf: DictConfig) -> None:
        dim, heads = int(conf.descriptor_dim), int(conf.num_heads)
        if dim <= 0 or heads <= 0 or dim % heads:
            raise ValueError(f"SuperGlue: descriptor_dim {dim} must split into num_heads {heads} equal heads")
        bad = [t for t in conf.gnn_layers if t not in ("self", "cross")]
        if bad or not conf.gnn_layers:
            raise ValueError(f"SuperGlue: gnn_layers must be a non-empty list of 'self'/'cross', got {bad}")
        if int(conf.sinkhorn_iterations) < 1:
            raise ValueError(f"SuperGlue: sinkhorn_iterations must be >= 1, got {conf.sinkhorn_iterations}")
        self.kenc = KeypointEncoder(dim, list(conf.keypoint_encoder))
        self.gnn = AttentionalGNN(dim, list(conf.gnn_layers), heads)
        self.final_proj = nn.Conv1d(dim, dim, kernel_size=1, bias=True)
        self.bin_score = nn.Parameter(torch.tensor(1.0))

    # ---- weights ---------------------------------------------------------------------------
    def load_weights(self, source: str, download: bool = True) -> None:
        super().load_weights(WEIGHT_ALIASES.get(str(source), str(source)), download=download)

    def load_checkpoint_state_dict(self, state_dict: Mapping[str, Tensor], origin: str = "") -> None:
        """Load an official checkpoint (or a state dict of this class), refusing other models' ones."""
        where = f" {origin}" if origin else ""
        if "bin_score" not in state_dict or "final_proj.weight" not in state_dict:
            raise ValueError(f"checkpoint{where} is not a SuperGlue checkpoint (no bin_score or final_proj.weight)")
        ckpt_dim = int(state_dict["final_proj.weight"].shape[0])
        ckpt_layers = len({key.split(".")[2] for key in state_dict if key.startswith("gnn.layers.")})
        if ckpt_dim != self.conf.descriptor_dim or ckpt_layers != len(self.conf.gnn_layers):
            raise ValueError(
                f"checkpoint{where} has descriptor_dim {ckpt_dim} and {ckpt_layers} GNN layers, the model is "
                f"configured with descriptor_dim {self.conf.descriptor_dim} and {len(self.conf.gnn_layers)}"
            )
        strict_load(self, state_dict, origin, self.release_extras)

    # ---- inputs ----------------------------------------------------------------------------
    @property
    def base_dtype(self) -> torch.dtype:
        return self.bin_score.dtype

    def _check_side(self, feats: Mapping[str, Tensor], name: str) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Validate one image's features; return (normalised keypoints, descriptors (B, D, N), scores, mask)."""
        b, n = check_point_features("SuperGlue", feats, name,
                                    ("keypoints", "descriptors", "keypoint_scores", "image_size"))
        keypoints, descriptors, scores = feats["keypoints"], feats["descriptors"], feats["keypoint_scores"]
        dim = int(self.conf.descriptor_dim)
        if tuple(descriptors.shape) != (b, n, dim):
            raise ValueError(f"SuperGlue: {name} descriptors must be (B, N, descriptor_dim) = ({b}, {n}, {dim}), "
                             f"got {tuple(descriptors.shape)}")
        if tuple(scores.shape) != (b, n):
            raise ValueError(f"SuperGlue: {name} keypoint_scores must be ({b}, {n}), got {tuple(scores.shape)}")
        image_size = feats["image_size"]
        for key, value in (("keypoints", keypoints), ("descriptors", descriptors), ("keypoint_scores", scores)):
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"SuperGlue: {name} '{key}' contains NaN or infinite values")
        mask = padding_mask("SuperGlue", feats, name, b, n)
        dtype = self.base_dtype
        with full_precision(keypoints.device):
            normalized = normalize_keypoints(keypoints.to(dtype), image_size.reshape(-1, 2).expand(b, 2))
        return normalized, descriptors.to(dtype).transpose(1, 2), scores.to(dtype), mask

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, data: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Any]:
        for key in ("image0", "image1"):
            if key not in data:
                raise ValueError(f"SuperGlue expects 'image0' and 'image1', got keys {sorted(data)}")
        kpts0, desc0, scores0, mask0 = self._check_side(data["image0"], "image0")
        kpts1, desc1, scores1, mask1 = self._check_side(data["image1"], "image1")
        if desc0.shape[0] != desc1.shape[0]:
            raise ValueError(f"SuperGlue: batch sizes differ ({desc0.shape[0]} vs {desc1.shape[0]})")
        b, m, n = desc0.shape[0], desc0.shape[2], desc1.shape[2]
        collect = self.training or bool(self.conf.return_all_layers)
        if m == 0 or n == 0 or (mask0 is not None and not bool(mask0.any())) \
                or (mask1 is not None and not bool(mask1.any())):
            return self._unmatched_output(b, m, n, desc0.device, collect)

        desc0 = desc0 + self.kenc(kpts0, scores0, mask0)
        desc1 = desc1 + self.kenc(kpts1, scores1, mask1)
        desc0, desc1 = self.gnn(desc0, desc1, mask0, mask1)
        mdesc0, mdesc1 = self.final_proj(desc0), self.final_proj(desc1)
        with full_precision(desc0.device):
            dtype = self.base_dtype
            sim = torch.einsum("bdn,bdm->bnm", mdesc0.to(dtype), mdesc1.to(dtype)) / self.conf.descriptor_dim ** 0.5
            log_assignment = log_optimal_transport(sim, self.bin_score, int(self.conf.sinkhorn_iterations),
                                                   mask0, mask1)
        out = self._extract_matches(log_assignment[:, :-1, :-1], mask0, mask1)
        if collect:
            out["log_assignment"] = [log_assignment]
        return out

    def _extract_matches(self, scores: Tensor, mask0: Tensor | None, mask1: Tensor | None) -> dict[str, Any]:
        m0, m1, s0, s1 = mutual_matches(scores, float(self.conf.match_threshold), mask0, mask1)
        matches, match_scores = compact_matches(m0, s0)
        return {"matches0": m0, "matches1": m1, "matching_scores0": s0, "matching_scores1": s1,
                "matches": matches, "scores": match_scores}

    def _unmatched_output(self, b: int, m: int, n: int, device: torch.device, collect: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            **no_matches(b, m, n, self.base_dtype, device),
        }
        if collect:  # nothing to supervise: the network did not run
            out["log_assignment"] = []
        return out
