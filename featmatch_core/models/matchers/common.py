"""Helpers shared by the matchers (one copy for LightGlue, SuperGlue, GlueStick and NN)."""

from __future__ import annotations

import torch
from torch import Tensor


def compact_matches(matches0: Tensor, scores0: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Per pair: (K, 2) index pairs (i, matches0[i]) of the matched points and their (K,) scores."""
    matches, scores = [], []
    for pair_matches, pair_scores in zip(matches0, scores0, strict=True):
        rows = torch.nonzero(pair_matches >= 0).squeeze(1)
        matches.append(torch.stack([rows, pair_matches[rows]], -1))
        scores.append(pair_scores[rows])
    return matches, scores
