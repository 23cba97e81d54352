"""Traceable views of our LightGlue for ONNX export (batch of one pair, dynamic keypoint counts).

The modules here own no parameters: they call the submodules of a loaded
:class:`~featmatch_core.models.matchers.lightglue.LightGlue` (its transformer layers and heads,
:func:`normalize_keypoints`, :func:`sigmoid_log_double_softmax`, :func:`mutual_matches`), so the
exported graph computes what PyTorch computes. Two things differ, both for ONNX's sake:

* the rotary encoding is applied with real cos/sin products (:class:`RealRotary`): ONNX has no
  complex tensors, which the PyTorch model uses because a complex multiply is faster there;
* adaptive depth and width are not in these graphs. ``colmap`` and ``opencv`` run every layer
  on every point (as the known exports do); ``full`` exports one graph per layer
  (:class:`LayerStage`) plus per-layer assignment heads (:class:`AssignStage`), and the runner
  (:mod:`featmatch_core.models.matchers.onnx_runtime`) takes the exit and pruning decisions.

Layouts (``N0``/``N1`` keypoints, ``D`` descriptor size):

==========  =========================================================  ============================
format      inputs                                                     outputs
==========  =========================================================  ============================
colmap      kpts0 (1,N0,2) kpts1 desc0 (1,N0,D) desc1 image_size0       matches0 (N0,) int64 (-1),
            (1,2) image_size1 [scales0 (1,N0) scales1 oris0 oris1]      mscores0 (N0,) float32
opencv      kpts0 (1,N0,2) kpts1 desc0 (1,N0,D) desc1; keypoints        matches0 (K,2) int64 pairs,
            already normalised like ours (OpenCV's LG_NORM_MAX_SIDE)    mscores0 (K,) float32
==========  =========================================================  ============================

Keypoints are pixels with the centre of the top-left pixel at (0, 0) (our contract; COLMAP
subtracts its 0.5 before calling), image sizes are (W, H).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..models.matchers.lightglue import (
    LightGlue,
    mutual_matches,
    normalize_keypoints,
    rotate_pairs,
    sigmoid_log_double_softmax,
)

GRAPH_VERSION = 1  # part of the export cache key: bump when the traced graphs change


class RealRotary(NamedTuple):
    """The rotary encoding of :class:`~featmatch_core.models.matchers.lightglue.Rotary` with real
    arithmetic: channel pair (2k, 2k + 1) of a query/key is rotated by angle k."""

    cos: Tensor  # (1, 1, N, head_dim / 2)
    sin: Tensor

    @classmethod
    def from_angles(cls, angles: Tensor) -> RealRotary:
        return cls(angles.cos(), angles.sin())

    def apply(self, x: Tensor) -> Tensor:
        return rotate_pairs(x, self.cos, self.sin)


def keypoint_geometry(model: LightGlue, keypoints: Tensor, image_size: Tensor | None,
                      scales: Tensor | None, oris: Tensor | None) -> Tensor:
    """The matcher's geometry input (1, N, 2|4): normalised keypoints (unless ``image_size`` is
    None: already normalised), then scale and orientation for SIFT models."""
    geometry = keypoints if image_size is None else normalize_keypoints(keypoints, image_size.reshape(-1, 2))
    if model.conf.add_scale_ori:
        geometry = torch.cat([geometry, scales[..., None], oris[..., None]], -1)
    return geometry


def encode_side(model: LightGlue, geometry: Tensor, descriptors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Projected descriptors (1, N, D) and the rotary cos/sin (1, 1, N, head_dim / 2) of one image."""
    angles = model.posenc(geometry)
    return model.input_proj(descriptors), angles.cos(), angles.sin()


def final_matches(model: LightGlue, x: Tensor, num0: Tensor | int, layer: int,
                  threshold: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Layer ``layer``'s assignment head and mutual-nearest-neighbour matching (no padding)."""
    head = model.log_assignment[layer]
    sim = head.similarity(x, num0)
    z = head.matchability_logits(x)
    scores = sigmoid_log_double_softmax(sim, z[:, :num0], z[:, num0:])
    return mutual_matches(scores, threshold)


class FixedDepthLightGlue(nn.Module):
    """Every layer on every point: the ``colmap`` and ``opencv`` graphs (see the module docstring)."""

    def __init__(self, model: LightGlue, pixel_keypoints: bool, pair_list: bool) -> None:
        super().__init__()
        self.model = model
        self.pixel_keypoints = pixel_keypoints  # colmap: pixels + image sizes; opencv: normalised
        self.pair_list = pair_list  # opencv: (K, 2) pairs of the matches; colmap: (N0,) per keypoint
        self.threshold = float(model.conf.filter_threshold)

    def forward(self, kpts0: Tensor, kpts1: Tensor, desc0: Tensor, desc1: Tensor,
                *extra: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        sizes: tuple[Tensor | None, Tensor | None] = (None, None)
        if self.pixel_keypoints:
            sizes, extra = (extra[0], extra[1]), extra[2:]
        scales, oris = (extra[:2], extra[2:]) if model.conf.add_scale_ori else ((None, None), (None, None))
        x0, cos0, sin0 = encode_side(model, keypoint_geometry(model, kpts0, sizes[0], scales[0], oris[0]), desc0)
        x1, cos1, sin1 = encode_side(model, keypoint_geometry(model, kpts1, sizes[1], scales[1], oris[1]), desc1)
        x = torch.cat([x0, x1], 1)
        rotary = RealRotary(torch.cat([cos0, cos1], 2), torch.cat([sin0, sin1], 2))
        num0 = kpts0.shape[1]
        for block in model.transformers:
            x = block(x, num0, rotary, (None, None))
        matches0, _, scores0, _ = final_matches(model, x, num0, len(model.transformers) - 1, self.threshold)
        matches0, scores0 = matches0[0], scores0[0]
        if not self.pair_list:
            return matches0, scores0
        rows = torch.nonzero(matches0 >= 0).squeeze(1)
        return torch.stack([rows, matches0[rows]], -1), scores0[rows]


# ---- full: the stages of the adaptive runner ----------------------------------------------------
class EncodeStage(nn.Module):
    """Pixels + descriptors (the ``colmap`` inputs) -> x0, x1 and the rotary cos/sin of each image."""

    def __init__(self, model: LightGlue) -> None:
        super().__init__()
        self.model = model

    def forward(self, kpts0: Tensor, kpts1: Tensor, desc0: Tensor, desc1: Tensor, image_size0: Tensor,
                image_size1: Tensor, *scale_ori: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        scales, oris = (scale_ori[:2], scale_ori[2:]) if scale_ori else ((None, None), (None, None))
        x0, cos0, sin0 = encode_side(model, keypoint_geometry(model, kpts0, image_size0, scales[0], oris[0]), desc0)
        x1, cos1, sin1 = encode_side(model, keypoint_geometry(model, kpts1, image_size1, scales[1], oris[1]), desc1)
        return x0, x1, cos0, sin0, cos1, sin1


class LayerStage(nn.Module):
    """Transformer layer ``layer`` on the current (possibly pruned) points; for every layer but the
    last also its token confidence and matchability, the inputs of the exit and pruning rules."""

    def __init__(self, model: LightGlue, layer: int) -> None:
        super().__init__()
        self.model, self.layer = model, layer
        self.last = layer == len(model.transformers) - 1

    def forward(self, x0: Tensor, x1: Tensor, cos0: Tensor, sin0: Tensor, cos1: Tensor,
                sin1: Tensor) -> tuple[Tensor, ...]:
        num0 = x0.shape[1]
        rotary = RealRotary(torch.cat([cos0, cos1], 2), torch.cat([sin0, sin1], 2))
        x = self.model.transformers[self.layer](torch.cat([x0, x1], 1), num0, rotary, (None, None))
        if self.last:
            return x[:, :num0], x[:, num0:]
        confidence = self.model.token_confidence[self.layer](x)[0]
        matchability = torch.sigmoid(self.model.log_assignment[self.layer].matchability_logits(x))[0]
        return x[:, :num0], x[:, num0:], confidence, matchability


class AssignStage(nn.Module):
    """Layer ``layer``'s assignment head: mutual matches of the current points, both directions,
    without the probability threshold (the runner applies ``filter_threshold``)."""

    def __init__(self, model: LightGlue, layer: int) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m0, m1, s0, s1 = final_matches(self.model, torch.cat([x0, x1], 1), x0.shape[1], self.layer, -1.0)
        return m0[0], m1[0], s0[0], s1[0]
