"""LSD line segments (OpenCV's ``createLineSegmentDetector``), merged when near-collinear,
filtered by length and ranked.

The plain numpy functions work on one image; ``LSD`` batches them behind the usual model
interface. Output contract (docs/architecture.md, line contract): ``lines`` (B, L, 2, 2)
float32 endpoints in pixels of the ORIGINAL image, OpenCV convention (centre of the top-left
pixel at (0, 0)); ``line_scores`` (B, L); ``line_mask`` (B, L) bool, False for padding; L may
be 0. Images are resized (long side ``resize``) as the point extractors do, and the endpoints
are mapped back with the same pixel-centre formula ``x = (x' + 0.5) / s - 0.5``.

Scores: ``"nfa_sqrt_length"`` is Glue Factory's ranking for LSD (``-log10(NFA) * sqrt(length)``,
NFA from OpenCV's advanced refinement, as pytlsd gives it); ``"length"`` needs no NFA. A
merged segment keeps the largest ``-log10(NFA)`` of its parts (its score grows with its length).
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from omegaconf import DictConfig

from ...geometry.lines import point_line_coordinates, segment_lengths
from ...image import to_uint8_numpy
from ..base import BaseModel
from ..extractors.base import Extractor, prepare_images, to_original_pixels

REFINE = {"none": cv2.LSD_REFINE_NONE, "standard": cv2.LSD_REFINE_STD, "advanced": cv2.LSD_REFINE_ADV}
SCORES = ("nfa_sqrt_length", "length")
# shorter than this (pixels) counts as a zero-length segment: dropped before anything else
DEGENERATE_LENGTH = 1e-3


def drop_degenerate(segments: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Remove non-finite and (near) zero-length segments, and the same rows of ``values``."""
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 2, 2)
    keep = np.isfinite(segments).all(axis=(1, 2))
    keep[keep] = segment_lengths(segments[keep]) > DEGENERATE_LENGTH
    return (segments[keep], *(np.asarray(v)[keep] for v in values))


def detect_segments(gray: np.ndarray, refine: str = "advanced", **lsd_params: float) -> tuple[np.ndarray, np.ndarray]:
    """Raw LSD on one (H, W) uint8 image.

    Returns ``segments`` (N, 2, 2) float64 in pixels (OpenCV convention: an ideal step edge
    between columns 29 and 30 is found at x ~ 29.5) and ``nfa`` (N,): ``-log10(NFA)`` with
    ``refine="advanced"`` (higher = more meaningful), NaN otherwise (OpenCV computes no NFA).
    ``lsd_params``: OpenCV's ``scale, sigma_scale, quant, ang_th, log_eps, density_th, n_bins``.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"detect_segments expects a (H, W) uint8 image, got {gray.shape} {gray.dtype}")
    if refine not in REFINE:
        raise ValueError(f"unknown LSD refine '{refine}', expected one of {sorted(REFINE)}")
    detector = cv2.createLineSegmentDetector(REFINE[refine], **lsd_params)
    lines, _width, _prec, nfa = detector.detect(gray)
    if lines is None:
        return np.zeros((0, 2, 2)), np.zeros((0,))
    segments = lines.reshape(-1, 2, 2).astype(np.float64)
    nfa = np.full(len(segments), np.nan) if nfa is None else nfa.reshape(-1).astype(np.float64)
    return segments, nfa


def _union_find_groups(num: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label (num,) of each node given undirected edges (K, 2)."""
    parent = np.arange(num)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(int(i)), root(int(j))
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(num)], dtype=np.int64)


def _fit_segment(segments: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """One segment through the endpoints of ``segments`` (M, 2, 2): the length-weighted total
    least squares line, from the extreme projections, oriented as the longest member. Also
    returns the largest perpendicular distance of an endpoint to it (to reject a chain that bends)."""
    points = segments.reshape(-1, 2)
    w = np.repeat(weights, 2)
    centre = (w[:, None] * points).sum(0) / w.sum()
    centred = points - centre
    cov = (w[:, None] * centred).T @ centred
    direction = np.linalg.eigh(cov)[1][:, -1]
    longest = segments[np.argmax(weights)]
    if direction @ (longest[1] - longest[0]) < 0:  # keep LSD's orientation (it encodes the edge polarity)
        direction = -direction
    along = centred @ direction
    normal = np.array([-direction[1], direction[0]])
    residual = float(np.abs(centred @ normal).max())
    merged = np.stack([centre + along.min() * direction, centre + along.max() * direction])
    return merged, residual


def _near_parallel_pairs(segments: np.ndarray, lengths: np.ndarray, angle_th: float,
                         reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), each unordered pair once, of segments whose undirected directions differ
    by at most ``angle_th`` degrees and whose centres are at most half their lengths + ``reach``
    apart. Sorting by angle avoids the N x N matrices (slow for the ~1000 segments of a photo)."""
    n = len(segments)
    d = segments[:, 1] - segments[:, 0]
    theta = np.mod(np.arctan2(d[:, 1], d[:, 0]), np.pi)
    order = np.argsort(theta)
    sorted_theta = theta[order]
    extended = np.concatenate([sorted_theta, sorted_theta + np.pi])  # wrap around at pi
    hi = np.searchsorted(extended, sorted_theta + np.deg2rad(angle_th), side="right")
    hi = np.minimum(hi, np.arange(n) + n)  # never reach oneself again
    counts = np.maximum(hi - np.arange(n) - 1, 0)
    first = np.repeat(np.arange(n), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    i, j = order[first], order[(first + 1 + offsets) % n]
    centres = segments.mean(1)
    dist = np.linalg.norm(centres[i] - centres[j], axis=-1)
    near = dist <= 0.5 * (lengths[i] + lengths[j]) + reach
    return i[near], j[near]


def merge_collinear_segments(segments: np.ndarray, nfa: np.ndarray | None = None, angle_th: float = 5.0,
                             dist_th: float = 2.0, gap_th: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Merge near-collinear segments (N, 2, 2) of one image.

    Two segments a, b are *compatible* when their undirected directions differ by at most
    ``angle_th`` degrees, every endpoint of each lies within ``dist_th`` pixels of the other's
    infinite line, and the gap between them along the line is below ``gap_th`` pixels (the
    distance from a to the projection of b on a's line, and vice versa, the larger of the two;
    overlapping segments have gap 0). Compatible segments are grouped transitively; each group
    becomes the segment fitted to all its endpoints (length-weighted total least squares,
    extent = extreme projections). A group whose endpoints stray more than ``dist_th`` from its
    fitted line (a chain of small bends) is left unmerged. Degenerate (zero-length, non-finite)
    segments are dropped first.

    Returns ``(segments (M, 2, 2), nfa (M,))``: the unmerged segments in input order, then the
    merged ones; ``nfa`` of a merged segment is the largest ``-log10(NFA)`` of its members (NaN
    when all are NaN, as without advanced refinement).
    """
    if nfa is None:
        nfa = np.full(len(np.asarray(segments).reshape(-1, 2, 2)), np.nan)
    segments, nfa = drop_degenerate(segments, nfa)
    n = len(segments)
    if n < 2:
        return segments, nfa
    lengths = segment_lengths(segments)
    i, j = _near_parallel_pairs(segments, lengths, angle_th, gap_th + 2 * dist_th)
    if len(i) == 0:
        return segments, nfa
    a, b = segments[i], segments[j]
    # endpoints of b in the frame of a and vice versa: (K, 2) along / across
    along_ba, across_ba = point_line_coordinates(b, a[:, None])
    along_ab, across_ab = point_line_coordinates(a, b[:, None])
    close = np.maximum(across_ba.max(-1), across_ab.max(-1)) < dist_th
    gap_a = np.maximum(along_ba.min(-1) - lengths[i], -along_ba.max(-1)).clip(min=0)
    gap_b = np.maximum(along_ab.min(-1) - lengths[j], -along_ab.max(-1)).clip(min=0)
    ok = close & (np.maximum(gap_a, gap_b) < gap_th)
    if not ok.any():
        return segments, nfa
    groups = _union_find_groups(n, np.stack([i[ok], j[ok]], -1))
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    alone = counts[inverse] == 1
    out_segments, out_nfa = [segments[alone]], [nfa[alone]]
    for label in np.unique(groups[~alone]):
        members = np.nonzero(groups == label)[0]
        merged, residual = _fit_segment(segments[members], lengths[members])
        if residual <= dist_th:
            member_nfa = nfa[members]
            out_segments.append(merged[None])
            finite = member_nfa[np.isfinite(member_nfa)]
            out_nfa.append(np.array([finite.max() if len(finite) else np.nan]))
        else:
            out_segments.append(segments[members])
            out_nfa.append(nfa[members])
    return np.concatenate(out_segments), np.concatenate(out_nfa)


def filter_short_segments(segments: np.ndarray, min_length: float, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keep segments at least ``min_length`` pixels long (and the same rows of ``values``)."""
    keep = segment_lengths(segments) >= min_length
    return (segments[keep], *(np.asarray(v)[keep] for v in values))


def segment_scores(segments: np.ndarray, nfa: np.ndarray, score: str) -> np.ndarray:
    """Ranking scores (N,): ``"length"`` or ``"nfa_sqrt_length"`` (Glue Factory's LSD score)."""
    lengths = segment_lengths(segments)
    if score == "length":
        return lengths
    if score == "nfa_sqrt_length":
        if len(nfa) and not np.isfinite(nfa).all():
            raise ValueError("LSD score 'nfa_sqrt_length' needs NFA values: use refine='advanced'")
        return nfa * np.sqrt(lengths)
    raise ValueError(f"unknown LSD score '{score}', expected one of {SCORES}")


def top_k_segments(segments: np.ndarray, scores: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Segments sorted by decreasing score (stable), at most ``k`` of them."""
    order = np.argsort(-scores, kind="stable")
    if k is not None:
        order = order[:k]
    return segments[order], scores[order]


class LSD(BaseModel):
    """Batched LSD line segments: ``forward({"image": (B, C, H, W) in [0, 1]})`` ->
    ``{"lines", "line_scores", "line_mask"}`` (module docstring). No learned parameters."""

    default_conf: ClassVar[dict[str, Any]] = {
        "resize": None,  # long side in pixels before detection, None = original size (as Glue Factory)
        "refine": "advanced",  # OpenCV refinement: none | standard | advanced (advanced gives the NFA)
        "scale": 0.8,  # OpenCV LSD parameters, OpenCV's defaults
        "sigma_scale": 0.6,
        "quant": 2.0,
        "ang_th": 22.5,
        "log_eps": 0.0,
        "density_th": 0.7,
        "n_bins": 1024,
        "merge": True,  # merge near-collinear segments before the length filter
        "merge_angle_th": 5.0,  # degrees
        "merge_dist_th": 2.0,  # pixels (of the resized image), endpoint to the other's line
        "merge_gap_th": 10.0,  # pixels, largest gap between the parts along the line
        "min_length": 15.0,  # pixels of the resized image (Glue Factory's GlueStick setting)
        "max_num_lines": None,  # top-k by score; Glue Factory's GlueStick uses 512
        "score": "nfa_sqrt_length",  # or "length"
    }
    grayscale: ClassVar[bool] = True
    # the extractors' resize (long side, antialiased) and grayscale conversion, not a copy
    preprocess = Extractor.preprocess

    def _init(self, conf: DictConfig) -> None:
        if conf.resize is not None and int(conf.resize) <= 0:
            raise ValueError(f"LSD: resize must be positive or None, got {conf.resize}")
        if conf.max_num_lines is not None and int(conf.max_num_lines) <= 0:
            raise ValueError(f"LSD: max_num_lines must be positive or None, got {conf.max_num_lines}")
        if conf.refine not in REFINE:
            raise ValueError(f"LSD: unknown refine '{conf.refine}', expected one of {sorted(REFINE)}")
        if conf.score not in SCORES:
            raise ValueError(f"LSD: unknown score '{conf.score}', expected one of {SCORES}")
        if conf.score == "nfa_sqrt_length" and conf.refine != "advanced":
            raise ValueError("LSD: score 'nfa_sqrt_length' needs refine='advanced' (OpenCV gives no NFA otherwise)")

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segments (L, 2, 2) and scores (L,) of one (H, W) uint8 image, in its own pixels."""
        c = self.conf
        params = {k: c[k] for k in ("scale", "sigma_scale", "quant", "ang_th", "log_eps", "density_th", "n_bins")}
        segments, nfa = detect_segments(gray, c.refine, **params)
        segments, nfa = drop_degenerate(segments, nfa)
        if c.merge:
            segments, nfa = merge_collinear_segments(segments, nfa, c.merge_angle_th, c.merge_dist_th,
                                                     c.merge_gap_th)
        segments, nfa = filter_short_segments(segments, c.min_length, nfa)
        scores = segment_scores(segments, nfa, c.score)
        return top_k_segments(segments, scores, c.max_num_lines)

    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = data["image"]
        resized, scale = prepare_images(self, images)
        scale = scale.cpu().numpy()
        per_image = []
        for image in resized:
            segments, scores = self.detect(to_uint8_numpy(image))
            per_image.append((to_original_pixels(segments, scale), scores))
        return pad_lines(per_image, images.device)


def pad_lines(per_image: list[tuple[np.ndarray, np.ndarray]], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Stack per-image ``(segments (L, 2, 2), scores (L,))`` into padded ``lines`` (B, Lmax, 2, 2),
    ``line_scores`` (B, Lmax) and ``line_mask`` (B, Lmax) (zeros / False for padding)."""
    b = len(per_image)
    n_max = max((len(s) for s, _ in per_image), default=0)
    lines = np.zeros((b, n_max, 2, 2), dtype=np.float32)
    scores = np.zeros((b, n_max), dtype=np.float32)
    mask = np.zeros((b, n_max), dtype=bool)
    for k, (segments, segment_scores_k) in enumerate(per_image):
        n = len(segments)
        lines[k, :n] = segments
        scores[k, :n] = segment_scores_k
        mask[k, :n] = True
    return {"lines": torch.from_numpy(lines).to(device), "line_scores": torch.from_numpy(scores).to(device),
            "line_mask": torch.from_numpy(mask).to(device)}
