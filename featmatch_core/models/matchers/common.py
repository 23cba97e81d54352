"""Helpers shared by the matchers (one copy for LightGlue, SuperGlue, GlueStick and NN)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def compact_matches(matches0: Tensor, scores0: Tensor,
                    counts: Sequence[int] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """Per pair: (K, 2) index pairs (i, matches0[i]) of the matched points and their (K,) scores.

    The counts are data-dependent, so the host waits for the device: once for one pair, twice
    for a batch of any size (not once per pair). A caller that already read the number of
    matches of each pair (``counts``, e.g. together with other values it had to read) gets
    them without any wait."""
    valid = matches0 >= 0
    if counts is not None:
        items, rows = torch.nonzero_static(valid, size=sum(counts)).unbind(1)
    elif len(matches0) <= 1:
        rows = [torch.nonzero(pair).squeeze(1) for pair in valid]
        return ([torch.stack([r, m[r]], -1) for r, m in zip(rows, matches0, strict=True)],
                [s[r] for r, s in zip(rows, scores0, strict=True)])
    else:
        items, rows = torch.nonzero(valid, as_tuple=True)
        counts = torch.bincount(items, minlength=len(matches0)).tolist()
    pairs = torch.stack([rows, matches0[items, rows]], -1)
    return list(pairs.split(list(counts))), list(scores0[items, rows].split(list(counts)))


def check_point_features(owner: str, feats: Mapping[str, Tensor], name: str,
                         required: Sequence[str]) -> tuple[int, int]:
    """The checks every point matcher makes on one image's features: the ``required`` keys are
    there, ``keypoints`` is (B, N, 2) and ``image_size`` (B, 2) or (2,). Returns (B, N)."""
    for key in required:
        if key not in feats:
            raise ValueError(f"{owner}: {name} lacks '{key}' (got keys {sorted(feats)})")
    keypoints = feats["keypoints"]
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"{owner}: {name} keypoints must be (B, N, 2), got {tuple(keypoints.shape)}")
    b, n = keypoints.shape[:2]
    image_size = feats["image_size"]
    if image_size.shape[-1] != 2 or image_size.ndim > 2 or image_size.numel() not in (2, 2 * b):
        raise ValueError(f"{owner}: {name} image_size must be (B, 2) (W, H), got {tuple(image_size.shape)}")
    return b, n


def checked_mask(owner: str, feats: Mapping[str, Tensor], name: str, b: int, n: int) -> Tensor | None:
    """The ``keypoint_mask`` (B, N) of one image, its shape and dtype validated, or None."""
    mask = feats.get("keypoint_mask")
    if mask is not None and (tuple(mask.shape) != (b, n) or mask.dtype != torch.bool):
        raise ValueError(f"{owner}: {name} keypoint_mask must be bool ({b}, {n}), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    return mask


def padding_mask(owner: str, feats: Mapping[str, Tensor], name: str, b: int, n: int) -> Tensor | None:
    """The validated ``keypoint_mask`` (B, N) of one image, or None when there is no padding (so
    that the matcher takes its unmasked, reference-exact path)."""
    mask = checked_mask(owner, feats, name, b, n)
    return None if mask is None or bool(mask.all()) else mask


def no_matches(b: int, m: int, n: int, dtype: torch.dtype, device: torch.device) -> dict[str, object]:
    """The point-match outputs of a batch where nothing matches (an image without keypoints)."""
    return {
        "matches0": torch.full((b, m), -1, dtype=torch.long, device=device),
        "matches1": torch.full((b, n), -1, dtype=torch.long, device=device),
        "matching_scores0": torch.zeros((b, m), dtype=dtype, device=device),
        "matching_scores1": torch.zeros((b, n), dtype=dtype, device=device),
        "matches": [torch.zeros((0, 2), dtype=torch.long, device=device) for _ in range(b)],
        "scores": [torch.zeros((0,), dtype=dtype, device=device) for _ in range(b)],
    }
