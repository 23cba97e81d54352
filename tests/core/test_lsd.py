"""LSD line segments: edges of generated rectangles, collinear merging, length filter, top-k,
resize back to original pixels, and bad input (no segments, degenerate segments)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featmatch_core.config import ConfigError
from featmatch_core.geometry.lines import point_line_distance, segment_lengths
from featmatch_core.models import build_model
from featmatch_core.models.lines.lsd import (
    LSD,
    detect_segments,
    filter_short_segments,
    merge_collinear_segments,
    segment_scores,
    top_k_segments,
)


def rectangles_image() -> tuple[np.ndarray, list[np.ndarray]]:
    """Two bright rectangles on a dark background and their 8 edges (pixel-centre convention:
    the step between columns 39 and 40 is at x = 39.5)."""
    image = np.full((240, 320), 50, np.uint8)
    image[40:120, 40:200] = 200   # edges x = 39.5, 199.5; y = 39.5, 119.5
    image[150:220, 230:300] = 150  # edges x = 229.5, 299.5; y = 149.5, 219.5
    edges = []
    for x0, x1, y0, y1 in ((39.5, 199.5, 39.5, 119.5), (229.5, 299.5, 149.5, 219.5)):
        edges += [np.array([[x0, y0], [x1, y0]]), np.array([[x0, y1], [x1, y1]]),
                  np.array([[x0, y0], [x0, y1]]), np.array([[x1, y0], [x1, y1]])]
    return image, edges


def split_edge_image() -> np.ndarray:
    """A rectangle whose top edge (y = 39.5) is interrupted by a small notch at x ~ 146-151."""
    image = np.full((160, 300), 60, np.uint8)
    image[40:120, 20:280] = 200
    image[30:50, 146:152] = 130
    return image


def to_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).float()[:, None] / 255.0


def assert_edges_found(lines: np.ndarray, edges: list[np.ndarray], tol: float = 1.5) -> None:
    """Each edge has a detected segment on its line (both endpoints within ``tol`` px) covering
    at least 80% of it."""
    for edge in edges:
        on_line = point_line_distance(lines, edge[None]).max(-1) < tol  # endpoints (L, 2) to the edge line
        assert on_line.any(), f"no segment on edge {edge.tolist()}"
        best = segment_lengths(lines[on_line]).max()
        assert best >= 0.8 * segment_lengths(edge[None])[0], f"edge {edge.tolist()} only {best:.1f} px"


def test_lsd_finds_rectangle_edges_within_pixels():
    image, edges = rectangles_image()
    out = LSD()({"image": to_batch(image)})
    assert out["lines"].shape[0] == 1 and out["lines"].shape[2:] == (2, 2)
    assert out["lines"].dtype == torch.float32 and out["line_mask"].all()
    assert out["lines"].shape[1] == 8  # exactly the 8 edges, nothing spurious on flat regions
    assert_edges_found(out["lines"][0].numpy().astype(np.float64), edges)
    scores = out["line_scores"][0]
    assert (scores[:-1] >= scores[1:]).all()  # sorted by decreasing score


def test_lsd_resize_maps_back_to_original_pixels():
    image, edges = rectangles_image()
    out = LSD({"resize": 160})({"image": to_batch(image)})  # detection at half size
    assert_edges_found(out["lines"][0].numpy().astype(np.float64), edges, tol=2.0)


def test_merge_collinear_segments_joins_a_split_edge():
    raw, nfa = detect_segments(split_edge_image())
    top = point_line_distance(raw, np.array([[0, 39.5], [1, 39.5]])).max(-1) < 1.5
    assert top.sum() == 2  # LSD alone gives two pieces of the top edge
    merged, merged_nfa = merge_collinear_segments(raw, nfa)
    top = point_line_distance(merged, np.array([[0, 39.5], [1, 39.5]])).max(-1) < 1.5
    assert top.sum() == 1
    xs = np.sort(merged[top][0, :, 0])
    assert xs[0] < 22 and xs[1] > 277  # spans both pieces
    assert len(merged) == len(raw) - 1
    assert merged_nfa[np.nonzero(top)[0][0]] == pytest.approx(nfa[np.nonzero(
        point_line_distance(raw, np.array([[0, 39.5], [1, 39.5]])).max(-1) < 1.5)[0]].max())
    # the model: merged by default, two pieces with merge off
    batch = to_batch(split_edge_image())
    assert LSD({"merge": False})({"image": batch})["lines"].shape[1] == LSD()({"image": batch})["lines"].shape[1] + 1


def test_merge_thresholds_hand_made_segments():
    segs = np.array([
        [[0, 0], [50, 0.5]], [[55, 0.5], [100, 1.0]],   # collinear, gap 5: merged
        [[0, 20], [40, 20]], [[60, 20], [100, 20]],     # gap 20 > 10: kept apart
        [[0, 40], [50, 40]], [[52, 45], [100, 45]],     # offset 5 px > 2: kept apart
        [[0, 60], [50, 60]], [[50, 60], [90, 72]],      # 16.7 degrees: kept apart
        [[5, 5], [5, 5]],                               # zero length: dropped
        [[np.nan, 1], [2, 3]],                          # not finite: dropped
    ])
    merged, nfa = merge_collinear_segments(segs)
    assert len(merged) == 7 and np.isnan(nfa).all()
    np.testing.assert_allclose(merged[-1], [[0, 0], [100, 1.0]], atol=0.1)  # oriented as its parts
    # a wider gap threshold joins the second pair
    assert len(merge_collinear_segments(segs, gap_th=25.0)[0]) == 6
    # a chain bending slowly (each step < 5 degrees) is not merged into one bent segment
    chain = np.array([[[10 * k, 0.08 * (10 * k) ** 2 / 10], [10 * (k + 1), 0.08 * (10 * (k + 1)) ** 2 / 10]]
                      for k in range(8)])
    assert len(merge_collinear_segments(chain)[0]) > 1
    # bad input: nothing, one segment, only degenerate ones
    assert merge_collinear_segments(np.zeros((0, 2, 2)))[0].shape == (0, 2, 2)
    assert merge_collinear_segments(segs[:1])[0].shape == (1, 2, 2)
    assert merge_collinear_segments(np.zeros((3, 2, 2)))[0].shape == (0, 2, 2)


def test_length_filter_scores_and_top_k():
    segs = np.array([[[0, 0], [10, 0]], [[0, 0], [30, 0]], [[0, 0], [0, 20]]], dtype=np.float64)
    nfa = np.array([10.0, 1.0, 4.0])
    kept, kept_nfa = filter_short_segments(segs, 15.0, nfa)
    assert len(kept) == 2 and kept_nfa.tolist() == [1.0, 4.0]
    np.testing.assert_allclose(segment_scores(segs, nfa, "length"), [10, 30, 20])
    np.testing.assert_allclose(segment_scores(segs, nfa, "nfa_sqrt_length"), nfa * np.sqrt([10, 30, 20]))
    top, top_scores = top_k_segments(segs, segment_scores(segs, nfa, "nfa_sqrt_length"), 2)
    assert top_scores.tolist() == pytest.approx([10 * np.sqrt(10), 4 * np.sqrt(20)])
    np.testing.assert_array_equal(top, segs[[0, 2]])
    image, _ = rectangles_image()
    out = LSD({"max_num_lines": 3, "score": "length", "refine": "standard"})({"image": to_batch(image)})
    assert out["lines"].shape == (1, 3, 2, 2)
    assert (segment_lengths(out["lines"][0]) >= 69).all()  # the three longest: 160, 160, 80


def test_lsd_empty_and_mixed_batches():
    blank = np.zeros((60, 80), np.uint8)
    out = LSD()({"image": to_batch(blank)})
    assert out["lines"].shape == (1, 0, 2, 2)
    assert out["line_scores"].shape == (1, 0) and out["line_mask"].shape == (1, 0)
    image, _ = rectangles_image()
    mixed = LSD()({"image": to_batch(image, np.zeros_like(image))})
    assert mixed["lines"].shape == (2, 8, 2, 2)
    assert mixed["line_mask"].sum(-1).tolist() == [8, 0]
    assert torch.isfinite(mixed["lines"]).all() and (mixed["lines"][1] == 0).all()
    rgb = LSD()({"image": to_batch(image).expand(-1, 3, -1, -1)})
    torch.testing.assert_close(rgb["lines"], LSD()({"image": to_batch(image)})["lines"])


def test_lsd_config_errors_and_registry():
    with pytest.raises(ValueError, match="needs refine='advanced'"):
        LSD({"refine": "standard"})
    with pytest.raises(ValueError, match="unknown score"):
        LSD({"score": "width"})
    with pytest.raises(ConfigError):
        LSD({"min_lenght": 3})
    with pytest.raises(ValueError, match="expects images"):
        LSD()({"image": torch.zeros(1, 2, 10, 10)})
    with pytest.raises(ValueError, match="uint8"):
        detect_segments(np.zeros((10, 10), np.float32))
    model = build_model("line_detector", {"name": "lsd", "min_length": 20.0})
    assert isinstance(model, LSD) and model.conf.min_length == 20.0
