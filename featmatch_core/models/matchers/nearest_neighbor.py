"""Nearest-neighbour descriptor matching, with optional mutual check, Lowe ratio test and
distance threshold. No learned parameters; runs on any device.

Distances are Euclidean between the raw descriptors. The reported score of a pair is
``(1 + cosine similarity) / 2`` in [0, 1], which equals ``1 - d^2 / 4`` for unit-norm
descriptors (as SuperPoint, DISK, ALIKED and RootSIFT produce).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ..base import BaseModel
from .common import compact_matches

Tensor = torch.Tensor


def squared_distances(desc0: Tensor, desc1: Tensor) -> Tensor:
    """(B, M, N) squared Euclidean distances, via |a|^2 + |b|^2 - 2 a.b (clamped at 0)."""
    dots = desc0 @ desc1.transpose(1, 2)
    norms0 = desc0.square().sum(-1)
    norms1 = desc1.square().sum(-1)
    return (norms0[:, :, None] + norms1[:, None, :] - 2 * dots).clamp_(min=0)


def nearest_two(dist: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Index of the nearest neighbour along ``dim`` and the smallest two squared distances
    (the second is +inf when there is only one candidate)."""
    k = min(2, dist.shape[dim])
    values, indices = dist.topk(k, dim=dim, largest=False)
    first = values.select(dim, 0)
    second = values.select(dim, 1) if k == 2 else torch.full_like(first, float("inf"))
    return indices.select(dim, 0), first, second


def passes_thresholds(first: Tensor, second: Tensor, ratio_thresh: float | None,
                      distance_thresh: float | None) -> Tensor:
    """Ratio test d1 <= r * d2 and distance test d1 <= t, on squared distances."""
    ok = torch.isfinite(first)
    if ratio_thresh is not None:
        ok &= first <= (ratio_thresh ** 2) * second
    if distance_thresh is not None:
        ok &= first <= distance_thresh ** 2
    return ok


def cosine_scores(desc0: Tensor, desc1: Tensor, index0: Tensor) -> Tensor:
    """(1 + cos) / 2 between each row of ``desc0`` and its candidate ``desc1[index0]``."""
    partner = torch.take_along_dim(desc1, index0[:, :, None], dim=1)
    cosine = F.cosine_similarity(desc0, partner, dim=-1)
    return ((1 + cosine) / 2).clamp(0, 1)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class NearestNeighborMatcher(BaseModel):
    """Match by nearest descriptor neighbours. Same output keys as LightGlue:

    matches0 (B, M) / matches1 (B, N) int64 (-1 unmatched), matching_scores0/1 float32,
    matches: list of (K, 2) int64, scores: list of (K,) float32.
    Padded keypoints (``keypoint_mask`` False) are never matched nor used as candidates.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "nearest_neighbor",
        "mutual_check": True,
        "ratio_thresh": None,  # Lowe's ratio on (non-squared) distances, e.g. 0.8
        "distance_thresh": None,  # maximum Euclidean descriptor distance
        "weights": None,  # no parameters; kept for a uniform matcher config
    }

    def _init(self, conf: DictConfig) -> None:
        for key in ("ratio_thresh", "distance_thresh"):
            value = conf[key]
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (is_number and value > 0):
                raise ValueError(f"NearestNeighborMatcher: {key} must be None or a positive number, "
                                 f"got {value!r}")
        if conf.weights is not None:
            raise ValueError("NearestNeighborMatcher has no weights; set weights: null")

    def load_weights(self, source: str, download: bool = True) -> None:
        raise ValueError("NearestNeighborMatcher has no weights to load")

    @staticmethod
    def _side(feats: Mapping[str, Tensor], name: str) -> tuple[Tensor, Tensor | None]:
        if "descriptors" not in feats:
            raise ValueError(f"NearestNeighborMatcher: {name} lacks 'descriptors' (got keys {sorted(feats)})")
        desc = feats["descriptors"]
        if desc.ndim != 3:
            raise ValueError(f"NearestNeighborMatcher: {name} descriptors must be (B, N, D), "
                             f"got {tuple(desc.shape)}")
        if not bool(torch.isfinite(desc).all()):
            raise ValueError(f"NearestNeighborMatcher: {name} descriptors contain NaN or infinite values")
        mask = feats.get("keypoint_mask")
        if mask is not None and (tuple(mask.shape) != tuple(desc.shape[:2]) or mask.dtype != torch.bool):
            raise ValueError(f"NearestNeighborMatcher: {name} keypoint_mask must be bool "
                             f"{tuple(desc.shape[:2])}")
        return desc, mask

    def forward(self, data: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Any]:
        for key in ("image0", "image1"):
            if key not in data:
                raise ValueError(f"NearestNeighborMatcher expects 'image0' and 'image1', got {sorted(data)}")
        desc0, mask0 = self._side(data["image0"], "image0")
        desc1, mask1 = self._side(data["image1"], "image1")
        if desc0.shape[0] != desc1.shape[0]:
            raise ValueError("NearestNeighborMatcher: batch sizes differ "
                             f"({desc0.shape[0]} vs {desc1.shape[0]})")
        if desc0.shape[-1] != desc1.shape[-1]:
            raise ValueError("NearestNeighborMatcher: descriptor dimensions differ: image0 has "
                             f"{desc0.shape[-1]}, image1 has {desc1.shape[-1]}")
        b, m, n = desc0.shape[0], desc0.shape[1], desc1.shape[1]
        device = desc0.device
        if m == 0 or n == 0:
            return self._output(torch.full((b, m), -1, dtype=torch.long, device=device),
                                torch.full((b, n), -1, dtype=torch.long, device=device),
                                torch.zeros((b, m), device=device), torch.zeros((b, n), device=device))
        with _no_autocast(device):
            desc0, desc1 = desc0.float(), desc1.float()
            dist = squared_distances(desc0, desc1)
            if mask0 is not None:
                dist = dist.masked_fill(~mask0[:, :, None], float("inf"))
            if mask1 is not None:
                dist = dist.masked_fill(~mask1[:, None, :], float("inf"))
            nn0, first0, second0 = nearest_two(dist, dim=2)
            nn1, first1, second1 = nearest_two(dist, dim=1)
            ok0 = passes_thresholds(first0, second0, self.conf.ratio_thresh, self.conf.distance_thresh)
            ok1 = passes_thresholds(first1, second1, self.conf.ratio_thresh, self.conf.distance_thresh)
            if self.conf.mutual_check:
                ok0 &= nn1.gather(1, nn0) == torch.arange(m, device=device)[None]
                ok1 &= nn0.gather(1, nn1) == torch.arange(n, device=device)[None]
            matches0 = torch.where(ok0, nn0, torch.full_like(nn0, -1))
            matches1 = torch.where(ok1, nn1, torch.full_like(nn1, -1))
            scores0 = torch.where(ok0, cosine_scores(desc0, desc1, nn0), torch.zeros_like(first0))
            scores1 = torch.where(ok1, cosine_scores(desc1, desc0, nn1), torch.zeros_like(first1))
        return self._output(matches0, matches1, scores0, scores1)

    @staticmethod
    def _output(matches0: Tensor, matches1: Tensor, scores0: Tensor, scores1: Tensor) -> dict[str, Any]:
        matches, scores = compact_matches(matches0, scores0)
        return {"matches0": matches0, "matches1": matches1, "matching_scores0": scores0,
                "matching_scores1": scores1, "matches": matches, "scores": scores}
