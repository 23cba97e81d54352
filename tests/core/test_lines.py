"""Line geometry: transfer, distances (hand-computed cases) and ground-truth line labels on
synthetic scenes (a homography and a plane seen by two posed cameras)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featmatch_core.eval.line_metrics import (
    average_precision,
    line_match_precision,
    line_match_recall,
    precision_recall_curve,
)
from featmatch_core.geometry.lines import (
    gt_line_matches_from_depth,
    gt_line_matches_from_homography,
    point_line_distance,
    sample_points_on_lines,
    segment_distances,
    segment_lengths,
    transfer_lines_homography,
)

SQ2 = math.sqrt(2.0)


def seg(x0, y0, x1, y1):
    return [[x0, y0], [x1, y1]]


# ---- transfer and distances ------------------------------------------------------------------

def test_transfer_lines_homography_maps_both_endpoints():
    H = np.array([[2.0, 0, 1], [0, 2.0, 2], [0, 0, 1]])
    lines = np.array([seg(0, 0, 10, 0), seg(3, 4, 3, 9)])
    out = transfer_lines_homography(lines, H)
    np.testing.assert_allclose(out, [seg(1, 2, 21, 2), seg(7, 10, 7, 20)])
    # projective case, batched torch: transfer then back is the identity
    Hp = torch.tensor([[1.0, 0.1, 5], [0.05, 0.9, -3], [1e-3, 2e-4, 1]], dtype=torch.float64)
    lines_t = torch.tensor([[seg(10, 20, 200, 30), seg(50, 50, 60, 300)]], dtype=torch.float64)
    there = transfer_lines_homography(lines_t, Hp[None])
    back = transfer_lines_homography(there, torch.linalg.inv(Hp)[None])
    assert there.shape == (1, 2, 2, 2)
    torch.testing.assert_close(back, lines_t)
    assert transfer_lines_homography(np.zeros((0, 2, 2)), H).shape == (0, 2, 2)


def test_point_line_distance_axis_aligned_slanted_and_degenerate():
    lines = np.array([seg(0, 0, 10, 0), seg(0, 0, 1, 1), seg(0, 0, 0, 0)])
    points = np.array([[3.0, 4.0], [1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(point_line_distance(points, lines), [4.0, 1 / SQ2, 5.0])
    # the infinite line: a point far beyond the end of the segment is still at distance 4
    assert point_line_distance(np.array([100.0, -4.0]), np.array(seg(0, 0, 10, 0))) == pytest.approx(4.0)
    # pairwise by broadcasting
    d = point_line_distance(points[:, None], lines[None])
    assert d.shape == (3, 3)
    assert d[0, 1] == pytest.approx(abs(4 - 3) / SQ2)


def test_segment_distances_hand_computed():
    a = np.array([seg(0, 0, 10, 0)])
    b = np.array([
        seg(5, 2, 15, 2),     # parallel, 2 px away, half overlapping
        seg(20, 0, 30, 0),    # collinear, disjoint
        seg(4, 0, 2, 0),      # collinear, contained (reversed endpoints)
        seg(0, -3, 10, 3),    # crossing in the middle: endpoint distances 3, 3 to a
        seg(5, 5, 5, 5),      # degenerate
    ])
    perp, overlap = segment_distances(a, b)
    assert perp.shape == overlap.shape == (1, 5)
    # crossing: endpoints of a are at distance 3*10/sqrt(136)... from b's line: |cross|/|b|
    d_a_to_b = 3 * 10 / math.sqrt(10 ** 2 + 6 ** 2)
    np.testing.assert_allclose(perp[0, :4], [2.0, 0.0, 0.0, 0.5 * (3.0 + d_a_to_b)], atol=1e-12)
    # degenerate b: its endpoint is 5 px from a's line; a's endpoints are 5*sqrt(2) and 5*sqrt(2) from the point
    assert perp[0, 4] == pytest.approx(0.5 * (5.0 + 5 * SQ2))
    # overlap relative to the shorter segment: 5/10, 0, 2/2; crossing: b covers all of a (10), a covers
    # 100/sqrt(136) of b (the difference of a's endpoints projected on b's direction (10, 6)/sqrt(136))
    np.testing.assert_allclose(overlap[0, :3], [0.5, 0.0, 1.0], atol=1e-12)
    assert overlap[0, 3] == pytest.approx(0.5 * (10 + 100 / math.sqrt(136)) / 10)
    assert overlap[0, 4] == 0.0


def test_segment_distances_slanted_and_symmetric():
    a = torch.tensor([seg(0, 0, 10, 10)], dtype=torch.float64)
    b = torch.tensor([seg(0, 2, 10, 12), seg(30, 30, 40, 40)], dtype=torch.float64)
    perp, overlap = segment_distances(a, b)
    assert perp[0, 0].item() == pytest.approx(SQ2)
    # b projected on a covers [sqrt2, 11*sqrt2] of [0, 10*sqrt2]; a on b covers [0, 9*sqrt2]
    assert overlap[0, 0].item() == pytest.approx(0.9)
    assert perp[0, 1].item() == pytest.approx(0.0, abs=1e-9) and overlap[0, 1].item() == 0.0
    perp_t, overlap_t = segment_distances(b, a)
    torch.testing.assert_close(perp_t.T, perp)
    torch.testing.assert_close(overlap_t.T, overlap)


def test_distances_have_finite_gradients_for_degenerate_segments():
    lines = torch.tensor([[seg(1, 1, 1, 1), seg(0, 0, 4, 3)]], dtype=torch.float64, requires_grad=True)
    other = torch.tensor([[seg(1, 1, 1, 1), seg(2, 0, 2, 5)]], dtype=torch.float64)
    perp, overlap = segment_distances(lines, other)
    d = point_line_distance(torch.tensor([1.0, 1.0], dtype=torch.float64), lines)
    (perp.sum() + overlap.sum() + d.sum()).backward()
    assert torch.isfinite(perp).all() and torch.isfinite(overlap).all() and torch.isfinite(d).all()
    assert torch.isfinite(lines.grad).all()
    assert segment_lengths(lines)[0, 0].item() == 0.0


def test_sample_points_on_lines_includes_endpoints():
    pts = sample_points_on_lines(torch.tensor([seg(0, 0, 4, 8)]), 5)
    torch.testing.assert_close(pts[0], torch.tensor([[0.0, 0], [1, 2], [2, 4], [3, 6], [4, 8]]))
    with pytest.raises(ValueError, match="npts"):
        sample_points_on_lines(torch.zeros(1, 2, 2), 1)


# ---- ground truth from a homography ----------------------------------------------------------

def _homography_scene():
    H = np.array([[0.9, 0.1, 20.0], [-0.05, 1.1, 10.0], [1e-4, 2e-4, 1.0]])
    lines0 = np.array([
        seg(20, 20, 120, 30),    # 0 -> 2
        seg(50, 150, 60, 60),    # 1 -> 0
        seg(150, 150, 180, 100),  # 2 -> nothing detected in image 1: unmatchable
        seg(-300, 10, -200, 10),  # 3 outside image 0 and lands outside image 1
        seg(100, 100, 100, 100),  # 4 degenerate
    ])
    warped = transfer_lines_homography(lines0, H)
    lines1 = np.stack([
        warped[1] + 0.7,                    # small offset, still matches
        np.array(seg(10, 180, 30, 190)),    # 1 unrelated
        warped[0][::-1] - [0.5, 1.0],       # reversed endpoints
        warped[0] + [0.0, 40.0],            # parallel but far: not a match
    ])
    return H, lines0, lines1


def test_gt_line_matches_from_homography_labels():
    H, lines0, lines1 = _homography_scene()
    out = gt_line_matches_from_homography(lines0, lines1, H, size0=(200, 200), size1=(200, 200))
    np.testing.assert_array_equal(out["gt_line_matches0"], [2, 0, -1, -1, -1])
    np.testing.assert_array_equal(out["gt_line_matches1"], [1, -1, 0, -1])
    assert out["gt_line_assignment"].sum() == 2 and out["gt_line_assignment"][0, 2]
    # a line covering only a small part of its counterpart is not a match (overlap_th)
    short = np.array([lines1[2][0] + 0.08 * (lines1[2][1] - lines1[2][0]), lines1[2][0]])
    only_short = gt_line_matches_from_homography(lines0[:1], short[None], H)
    np.testing.assert_array_equal(only_short["gt_line_matches0"], [-1])


def test_gt_line_matches_homography_batched_masks_and_empty():
    H, lines0, lines1 = _homography_scene()
    t0 = torch.tensor(np.stack([lines0, lines0]), dtype=torch.float32)
    t1 = torch.tensor(np.stack([lines1, lines1]), dtype=torch.float32)
    mask1 = torch.tensor([[True] * 4, [True, True, False, True]])
    out = gt_line_matches_from_homography(t0, t1, torch.tensor(H, dtype=torch.float32).expand(2, 3, 3),
                                          size0=torch.tensor([200, 200]), mask1=mask1)
    assert out["gt_line_matches0"].dtype == torch.int64
    assert out["gt_line_matches0"].tolist() == [[2, 0, -1, -1, -1], [-1, 0, -1, -1, -1]]
    assert out["gt_line_matches1"].tolist() == [[1, -1, 0, -1], [1, -1, -2, -1]]
    empty = gt_line_matches_from_homography(t0, t1[:, :0], H)
    assert empty["gt_line_matches0"].tolist() == [[-1] * 5] * 2
    assert empty["gt_line_matches1"].shape == (2, 0)
    assert empty["gt_line_assignment"].shape == (2, 5, 0)
    with pytest.raises(ValueError, match="lines0 must be"):
        gt_line_matches_from_homography(np.zeros((3, 4)), lines1, H)


# ---- ground truth from depth + poses ---------------------------------------------------------

def _plane_scene():
    """A fronto-parallel plane at z = 10 seen by two cameras 1 unit apart along x (a 10 px shift)."""
    w, h, f = 120, 100, 100.0
    K = np.array([[f, 0, 60.0], [0, f, 50.0], [0, 0, 1]])
    T = np.eye(4)
    T[0, 3] = -1.0  # X1 = X0 - (1, 0, 0): pixels move by -10 in x
    depth0 = np.full((h, w), 10.0)
    depth1 = np.full((h, w), 10.0)
    depth1[60:90, 70:110] = 5.0   # an object in front of the plane, seen only by camera 1
    depth0[5:30, 80:115] = 0.0    # a hole in the depth of image 0
    lines0 = np.array([
        seg(30, 20, 70, 25),   # 0 visible, detected in image 1
        seg(40, 40, 40, 90),   # 1 visible, detected in image 1
        seg(2, 50, 7, 95),     # 2 lands outside image 1 (x - 10 < 0)
        seg(85, 70, 110, 80),  # 3 occluded in image 1 by the object
        seg(85, 10, 110, 20),  # 4 no depth in image 0: ignore
        seg(60, 50, 75, 55),   # 5 visible, but not detected in image 1
    ])
    lines1 = np.array([
        lines0[1] - [10, 0],
        lines0[0] - [10, 0] + [0.5, -0.5],
        seg(75, 65, 95, 85),   # 2: an edge of the object, no counterpart in image 0 (occluded there)
        seg(110, 5, 119, 95),  # 3: its plane point is outside image 0? no: x0 = x1 + 10 >= 120: outside
    ])
    return K, T, depth0, depth1, lines0, lines1


def test_gt_line_matches_from_depth_plane_with_occlusion_and_out_of_view():
    K, T, depth0, depth1, lines0, lines1 = _plane_scene()
    out = gt_line_matches_from_depth(lines0, lines1, depth0, depth1, K, K, T)
    np.testing.assert_array_equal(out["gt_line_matches0"], [1, 0, -1, -1, -2, -1])
    # lines1[2] lies on the object (depth 5): seen from camera 0 it lands where depth0 is 10: occluded -> -1
    np.testing.assert_array_equal(out["gt_line_matches1"], [1, 0, -1, -1])
    # batched torch gives the same labels
    tt = {k: torch.tensor(v, dtype=torch.float32)[None] for k, v in
          dict(l0=lines0, l1=lines1, d0=depth0, d1=depth1, K=K, T=T).items()}
    bt = gt_line_matches_from_depth(tt["l0"], tt["l1"], tt["d0"], tt["d1"], tt["K"], tt["K"], tt["T"])
    assert bt["gt_line_matches0"].tolist() == [[1, 0, -1, -1, -2, -1]]


def test_gt_line_matches_from_depth_without_occlusion_check_would_match_hidden_line():
    # with the occluder removed, line 3 is visible and matches a segment detected where it lands
    K, T, depth0, depth1, lines0, lines1 = _plane_scene()
    depth1[:] = 10.0
    lines1 = np.concatenate([lines1, (lines0[3] - [10, 0])[None]])
    out = gt_line_matches_from_depth(lines0, lines1, depth0, depth1, K, K, T)
    assert out["gt_line_matches0"][3] == 4


# ---- metrics -----------------------------------------------------------------------------------

def test_line_match_precision_and_recall():
    gt = np.array([2, -1, 0, -2, 1])
    pred = np.array([2, 3, 1, 4, -1])  # correct, wrong (unmatchable), wrong, ignored, missed
    assert line_match_precision(gt, pred) == pytest.approx(1 / 3)
    assert line_match_recall(gt, pred) == pytest.approx(1 / 3)
    batched = line_match_precision(torch.tensor(np.stack([gt, gt])), torch.tensor(np.stack([pred, gt])))
    assert batched.tolist() == pytest.approx([1 / 3, 1.0])
    assert line_match_precision(np.full(3, -1), np.full(3, -1)) == 0.0


def test_average_precision_hand_computed():
    # ranked: correct, wrong, correct with 4 positives -> recall .25, .25, .5; precision 1, .5, 2/3
    # monotone precision 1, 2/3, 2/3 -> AP = .25 * 1 + .25 * 2/3
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 4) == pytest.approx(5 / 12)
    # the ranking comes from the scores, not the input order
    assert average_precision([0.7, 0.9, 0.8], [True, True, False], 4) == pytest.approx(5 / 12)
    assert average_precision([3.0, 2.0, 1.0], [True, True, True], 3) == pytest.approx(1.0)
    assert average_precision([3.0, 2.0], [True, True], 4) == pytest.approx(0.5)
    # a wrong match ranked first: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; made monotone: 2/3 throughout
    assert average_precision([3.0, 2.0, 1.0], [False, True, True], 2) == pytest.approx(2 / 3)
    assert average_precision([1.0, 2.0], [False, False], 5) == 0.0
    assert average_precision([], [], 0) == 0.0
    r, p = precision_recall_curve(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([True, False, True]), 4)
    np.testing.assert_allclose(r, [0.25, 0.25, 0.5])
    np.testing.assert_allclose(p, [1.0, 0.5, 2 / 3])
    with pytest.raises(ValueError, match="at least the number of correct"):
        average_precision([1.0, 2.0], [True, True], 1)
    with pytest.raises(ValueError, match="same length"):
        average_precision([1.0], [True, False], 2)
    with pytest.raises(ValueError, match="finite"):
        average_precision([np.nan], [True], 2)


def test_gt_line_matches_from_depth_when_one_image_has_no_segments():
    K, T, depth0, depth1, lines0, lines1 = _plane_scene()
    out = gt_line_matches_from_depth(lines0, lines1[:0], depth0, depth1, K, K, T)
    np.testing.assert_array_equal(out["gt_line_matches0"], [-1, -1, -1, -1, -2, -1])  # no depth stays unknown
    assert out["gt_line_matches1"].shape == (0,) and out["gt_line_assignment"].shape == (6, 0)
    out = gt_line_matches_from_depth(lines0[:0], lines1[:0], depth0, depth1, K, K, T)
    assert out["gt_line_matches0"].shape == (0,) and out["gt_line_matches1"].shape == (0,)
