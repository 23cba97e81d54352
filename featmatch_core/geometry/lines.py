"""Line segments: homography transfer, point-to-line and segment-to-segment distances, and
ground-truth line correspondences from a homography or from depth + poses.

Conventions: a segment is a (2, 2) array of endpoints ``[[x0, y0], [x1, y1]]`` in pixels,
OpenCV convention (centre of the top-left pixel at (0, 0)); batches of segments are
(..., L, 2, 2). ``H_0to1`` maps pixels of image 0 to image 1; ``T_0to1`` maps camera-0 points
to camera 1. Torch, batched over leading dimensions; numpy in -> numpy out (``numpy_compat``).

Degenerate (zero-length) segments never produce NaN: their "infinite line" is undefined, so
the distance of a point to it is the distance to the segment's (single) endpoint, their
length and every overlap with them is 0, and they are never ground-truth positives.

Ground-truth labels (as Glue Factory's ``gt_line_matches_from_homography`` /
``gt_line_matches_from_pose_depth``, which come from GlueStick): ``npts`` points are sampled
uniformly along each segment (endpoints included) and moved into the other image. A sample
of segment j (image 1) is *close* to segment i (image 0) when its perpendicular distance to
the infinite line of i is below ``dist_th`` pixels and its orthogonal projection falls
between the endpoints of i; and symmetrically with the samples of i moved into image 0.
A pair (i, j) is a candidate when both counts exceed ``overlap_th`` times the number of
samples (the number of *visible* samples with depth). Segments are matched one to one by the
Hungarian algorithm maximising the sum of the products of the two counts over all pairs of
segments that are neither unmatchable nor ignored, and an assigned pair is kept only if it is a
candidate (Glue Factory's procedure; on the graffiti pair with 300 LSD lines per image our
labels equal its labels except for a sample exactly at a segment end, which it loses by
computing segment lengths in float16). Labels per segment:
``j >= 0`` the true match, ``-1`` (unmatchable) no candidate or the segment leaves the other
image (depth: or is occluded there), ``-2`` (ignore) padding (mask False), and with depth: too
few samples with valid depth, or too few samples whose visibility can be decided.
"""

from __future__ import annotations

import torch

from .depth import invert_transform, sample_depth
from .gt_matches import IGNORE, UNMATCHED, _visibility
from .homography import warp_points
from .utils import ArrayLike, numpy_compat

_EPS = 1e-9


def _safe_norm(v: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Euclidean norm over the last dimension, with a finite gradient at 0."""
    sq = (v ** 2).sum(-1)
    positive = sq > eps ** 2
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def _safe_div(num: torch.Tensor, den: torch.Tensor, fill: float = 0.0, eps: float = _EPS) -> torch.Tensor:
    """``num / den`` where ``|den| > eps``, ``fill`` elsewhere (no NaN, also in the gradient)."""
    ok = den.abs() > eps
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, fill))


@numpy_compat()
def segment_lengths(lines: ArrayLike) -> ArrayLike:
    """Lengths (..., L) of segments (..., L, 2, 2), in pixels."""
    return _safe_norm(lines[..., 1, :] - lines[..., 0, :])


@numpy_compat()
def transfer_lines_homography(lines: ArrayLike, H: ArrayLike) -> ArrayLike:
    """Map segments (..., L, 2, 2) with homographies (..., 3, 3): both endpoints ``x' ~ H x``.

    The image of a segment under a homography is the segment between the mapped endpoints as
    long as the segment does not cross the line that H sends to infinity.
    """
    flat = lines.reshape(lines.shape[:-3] + (-1, 2))
    return warp_points(flat, H).reshape(lines.shape)


@numpy_compat()
def point_line_coordinates(points: ArrayLike, lines: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Coordinates of points in the frame of segments, broadcast elementwise.

    Args:
        points: (..., 2); lines: (..., 2, 2), leading dimensions broadcast together (for all
            pairs use ``points[..., :, None, :]`` with ``lines[..., None, :, :, :]``).
    Returns:
        ``along`` (...): signed distance in pixels from the first endpoint ``p0`` along the
        unit direction ``(p1 - p0) / |p1 - p0|`` (0 at ``p0``, the segment length at ``p1``);
        ``across`` (...): perpendicular (unsigned) distance to the infinite line through the
        segment. For a zero-length segment ``along`` is 0 and ``across`` is ``|p - p0|``.
    """
    p0, p1 = lines[..., 0, :], lines[..., 1, :]
    direction = p1 - p0
    length = _safe_norm(direction)
    rel = points - p0
    along = _safe_div((rel * direction).sum(-1), length)
    cross = direction[..., 0] * rel[..., 1] - direction[..., 1] * rel[..., 0]
    across = torch.where(length > _EPS, _safe_div(cross, length).abs(), _safe_norm(rel))
    return along, across


@numpy_compat()
def point_line_distance(points: ArrayLike, lines: ArrayLike) -> ArrayLike:
    """Perpendicular distance (...) in pixels of points (..., 2) to the infinite lines through
    segments (..., 2, 2), broadcast elementwise (see ``point_line_coordinates``); the distance
    to the endpoint for a zero-length segment."""
    return point_line_coordinates(points, lines)[1]


@numpy_compat()
def segment_distances(lines0: ArrayLike, lines1: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """Pairwise distances between segments (..., L0, 2, 2) and (..., L1, 2, 2).

    Returns, both (..., L0, L1):

    - ``perpendicular`` (pixels): the symmetrised mean endpoint-to-line distance,
      ``0.5 * (mean_k d(b_k, line(a)) + mean_k d(a_k, line(b)))`` over the two endpoints
      ``a_k`` of segment a (of lines0) and ``b_k`` of segment b (of lines1), ``d`` the
      perpendicular distance to the infinite line (``point_line_distance``).
    - ``overlap`` in [0, 1]: project the endpoints of b orthogonally on the line of a; the
      length of the intersection of that interval with a is ``I_ab``; likewise ``I_ba``.
      ``overlap = 0.5 * (I_ab + I_ba) / min(|a|, |b|)``, the overlap relative to the SHORTER
      segment (1 when the projection of one covers the other, e.g. a collinear segment
      containing a shorter one; 0 for disjoint projections; 0 when either has zero length).
    """
    a = lines0[..., :, None, :, :]
    b = lines1[..., None, :, :, :]
    along_ba, across_ba = point_line_coordinates(b, a[..., None, :, :])  # endpoints of b on a: (..., L0, L1, 2)
    along_ab, across_ab = point_line_coordinates(a, b[..., None, :, :])
    perpendicular = 0.5 * (across_ba.mean(-1) + across_ab.mean(-1))
    len_a = segment_lengths(a)
    len_b = segment_lengths(b)

    def intersection(along: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        lo = along.min(-1).values.clamp(min=0)
        hi = torch.minimum(along.max(-1).values, length)
        return (hi - lo).clamp(min=0)

    shorter = torch.minimum(len_a, len_b)
    inter = 0.5 * (intersection(along_ba, len_a) + intersection(along_ab, len_b))
    overlap = _safe_div(inter, shorter).clamp(0, 1)
    return perpendicular, overlap


def sample_points_on_lines(lines: torch.Tensor, npts: int) -> torch.Tensor:
    """``npts`` (>= 2) points (..., L, npts, 2) evenly spaced on segments (..., L, 2, 2), endpoints included."""
    if npts < 2:
        raise ValueError(f"sample_points_on_lines: npts must be >= 2, got {npts}")
    if not lines.is_floating_point():
        lines = lines.float()
    t = torch.linspace(0, 1, npts, dtype=lines.dtype, device=lines.device)[:, None]
    return lines[..., None, 0, :] * (1 - t) + lines[..., None, 1, :] * t


def _close_counts(lines_i: torch.Tensor, samples_j: torch.Tensor, usable_j: torch.Tensor,
                  dist_th: float) -> torch.Tensor:
    """(B, Li, Lj): how many usable samples (B, Lj, npts, 2) of each segment j lie within
    ``dist_th`` of the infinite line of segment i with their projection inside segment i.

    Only pairs whose bounding boxes (the samples', and segment i's grown by ``dist_th``) meet
    are evaluated, in the frame of segment i (``point_line_coordinates`` written out): the
    dense (B, Li, Lj, npts) computation takes seconds and ~1 GB for 512 x 512 segments.
    """
    b, li, lj = lines_i.shape[0], lines_i.shape[1], samples_j.shape[1]
    counts = torch.zeros((b, li, lj), dtype=torch.long, device=lines_i.device)
    if li == 0 or lj == 0:
        return counts
    samples_j = samples_j.to(lines_i.dtype)
    inf = samples_j.new_full((), float("inf"))  # a fill on the device, not a host copy
    lo_j = torch.where(usable_j[..., None], samples_j, inf).amin(2)  # (B, Lj, 2)
    hi_j = torch.where(usable_j[..., None], samples_j, -inf).amax(2)
    lo_i = lines_i.amin(2) - dist_th  # (B, Li, 2)
    hi_i = lines_i.amax(2) + dist_th
    meet = ((lo_i[:, :, None] <= hi_j[:, None]) & (lo_j[:, None] <= hi_i[:, :, None])).all(-1)
    bb, ii, jj = torch.nonzero(meet, as_tuple=True)
    if len(bb) == 0:
        return counts
    seg = lines_i[bb, ii]  # (P, 2, 2)
    origin = seg[:, 0]
    direction = seg[:, 1] - origin
    length = _safe_norm(direction)
    unit = _safe_div(direction, length[:, None])
    rel = samples_j[bb, jj] - origin[:, None]  # (P, npts, 2)
    along = (rel * unit[:, None]).sum(-1)
    across = (rel[..., 1] * unit[:, None, 0] - rel[..., 0] * unit[:, None, 1]).abs()
    ok = (along >= 0) & (along <= length[:, None]) & (across < dist_th) & (length[:, None] > _EPS) & usable_j[bb, jj]
    counts[bb, ii, jj] = ok.sum(-1)
    return counts


def _outside(points: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(..., npts) points outside the image of (B, 2) size (W, H) — Glue Factory's bounds."""
    wh = size[:, None, None, :].to(points.dtype)
    return (points < 0).any(-1) | (points >= wh).any(-1) | ~torch.isfinite(points).all(-1)


def _image_size(size, batch: int, ref: torch.Tensor) -> torch.Tensor | None:
    if size is None:
        return None
    size = torch.as_tensor(size, device=ref.device).reshape(-1, 2)
    return size.expand(batch, 2)


def _assign_lines(count0: torch.Tensor, count1_t: torch.Tensor, candidate: torch.Tensor,
                  unmatched0: torch.Tensor, unmatched1: torch.Tensor,
                  ignore0: torch.Tensor, ignore1: torch.Tensor) -> dict[str, torch.Tensor]:
    """Hungarian assignment over candidate pairs and the final labels (see module docstring)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:  # pragma: no cover - scipy is a dependency of the package
        raise ImportError("ground-truth line labels need scipy (Hungarian assignment): pip install scipy") from error

    b, n0, n1 = candidate.shape
    score = (count0 * count1_t).to(torch.float64)
    # As Glue Factory: rows / columns of unmatchable or ignored segments are forbidden, but the
    # other non-candidate pairs keep their score in the assignment and are only dropped after it.
    usable = ~(unmatched0 | ignore0)[:, :, None] & ~(unmatched1 | ignore1)[:, None, :]
    assignment = torch.zeros_like(candidate)
    for k in range(b):
        if n0 == 0 or n1 == 0:
            break
        cost = torch.where(usable[k], -score[k], torch.full_like(score[k], 1e6)).cpu().numpy()
        rows, cols = linear_sum_assignment(cost)
        device = candidate.device
        assignment[k, torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = True
    assignment &= candidate & usable

    def labels(assign: torch.Tensor, unmatched: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
        has = assign.any(-1)
        idx = assign.long().argmax(-1) if assign.shape[-1] > 0 else torch.zeros_like(has, dtype=torch.long)
        out = torch.where(has, idx, torch.full_like(idx, UNMATCHED))
        return torch.where(ignore, torch.full_like(out, IGNORE), out)

    return {"gt_line_matches0": labels(assignment, unmatched0, ignore0),
            "gt_line_matches1": labels(assignment.transpose(1, 2), unmatched1, ignore1),
            "gt_line_assignment": assignment}


def _prepare(lines0, lines1, mask0, mask1):
    unbatched = lines0.dim() == 3
    if unbatched:
        lines0, lines1 = lines0[None], lines1[None]
        mask0 = None if mask0 is None else mask0[None]
        mask1 = None if mask1 is None else mask1[None]
    for name, lines in (("lines0", lines0), ("lines1", lines1)):
        if lines.dim() != 4 or lines.shape[-2:] != (2, 2):
            raise ValueError(f"{name} must be (B, L, 2, 2) or (L, 2, 2), got {tuple(lines.shape)}")
    if mask0 is None:
        mask0 = torch.ones(lines0.shape[:2], dtype=torch.bool, device=lines0.device)
    if mask1 is None:
        mask1 = torch.ones(lines1.shape[:2], dtype=torch.bool, device=lines1.device)
    # a non-finite or zero-length segment (padding, degenerate merge) can never be matched
    mask0 = mask0.bool() & torch.isfinite(lines0).flatten(-2).all(-1)
    mask1 = mask1.bool() & torch.isfinite(lines1).flatten(-2).all(-1)
    lines0 = torch.nan_to_num(lines0, nan=0.0, posinf=0.0, neginf=0.0)
    lines1 = torch.nan_to_num(lines1, nan=0.0, posinf=0.0, neginf=0.0)
    return unbatched, lines0, lines1, mask0, mask1


def _check(npts: int, dist_th: float, overlap_th: float, min_visibility_th: float) -> None:
    if npts < 2 or dist_th <= 0 or not 0 <= overlap_th < 1 or not 0 < min_visibility_th <= 1:
        raise ValueError(f"need npts >= 2, dist_th > 0, 0 <= overlap_th < 1 and 0 < min_visibility_th <= 1, "
                         f"got npts={npts}, dist_th={dist_th}, overlap_th={overlap_th}, "
                         f"min_visibility_th={min_visibility_th}")


@torch.no_grad()
@numpy_compat()
def gt_line_matches_from_homography(lines0: ArrayLike, lines1: ArrayLike, H_0to1: ArrayLike,
                                    size0: ArrayLike | None = None, size1: ArrayLike | None = None,
                                    mask0: ArrayLike | None = None, mask1: ArrayLike | None = None,
                                    npts: int = 50, dist_th: float = 5.0, overlap_th: float = 0.2,
                                    min_visibility_th: float = 0.2) -> dict[str, ArrayLike]:
    """Ground-truth labels for segments of two images related by ``H_0to1`` (module docstring).

    Args:
        lines0: (B, L0, 2, 2) or (L0, 2, 2); lines1 likewise; H_0to1: (B, 3, 3) or (3, 3).
        size0, size1: optional image sizes (W, H), (2,) or (B, 2). With them, a segment whose
            samples fall outside the other image for a fraction >= ``1 - min_visibility_th``
            is unmatchable (Glue Factory's rule); without them no border check is made.
        mask0, mask1: optional (B, L) bool, False for padding (labelled -2).
        npts, dist_th (pixels), overlap_th, min_visibility_th: Glue Factory's defaults.
    Returns:
        ``gt_line_matches0`` (B, L0) int64, ``gt_line_matches1`` (B, L1) (index, -1, -2) and
        ``gt_line_assignment`` (B, L0, L1) bool; without the batch dimension for unbatched input.
    """
    _check(npts, dist_th, overlap_th, min_visibility_th)
    unbatched, lines0, lines1, mask0, mask1 = _prepare(lines0, lines1, mask0, mask1)
    if unbatched:
        H_0to1 = H_0to1[None]
    b, n0, n1 = lines0.shape[0], lines0.shape[1], lines1.shape[1]
    H = H_0to1.to(lines0.dtype).expand(b, 3, 3)
    s0 = sample_points_on_lines(lines0, npts)
    s1 = sample_points_on_lines(lines1, npts)
    s0_1 = warp_points(s0.reshape(b, -1, 2), H).reshape(s0.shape)
    s1_0 = warp_points(s1.reshape(b, -1, 2), torch.linalg.inv(H)).reshape(s1.shape)
    finite0 = torch.isfinite(s0_1).all(-1)
    finite1 = torch.isfinite(s1_0).all(-1)
    size0, size1 = _image_size(size0, b, lines0), _image_size(size1, b, lines1)
    out_of1 = torch.zeros((b, n0), dtype=torch.bool, device=lines0.device)
    out_of0 = torch.zeros((b, n1), dtype=torch.bool, device=lines0.device)
    if size1 is not None:
        out_of1 = _outside(s0_1, size1).float().mean(-1) >= 1 - min_visibility_th
    if size0 is not None:
        out_of0 = _outside(s1_0, size0).float().mean(-1) >= 1 - min_visibility_th
    count0 = _close_counts(lines0, torch.nan_to_num(s1_0), finite1, dist_th)  # (B, L0, L1)
    count1_t = _close_counts(lines1, torch.nan_to_num(s0_1), finite0, dist_th).transpose(1, 2)
    candidate = ((count0 > npts * overlap_th) & (count1_t > npts * overlap_th)
                 & mask0[:, :, None] & mask1[:, None, :] & ~out_of1[:, :, None] & ~out_of0[:, None, :])
    unmatched0 = ~candidate.any(-1) | out_of1
    unmatched1 = ~candidate.any(-2) | out_of0
    out = _assign_lines(count0, count1_t, candidate, unmatched0, unmatched1, ~mask0, ~mask1)
    return {k: v[0] for k, v in out.items()} if unbatched else out


@torch.no_grad()
@numpy_compat()
def gt_line_matches_from_depth(lines0: ArrayLike, lines1: ArrayLike, depth0: ArrayLike, depth1: ArrayLike,
                               K0: ArrayLike, K1: ArrayLike, T_0to1: ArrayLike,
                               mask0: ArrayLike | None = None, mask1: ArrayLike | None = None,
                               npts: int = 50, dist_th: float = 5.0, overlap_th: float = 0.2,
                               min_visibility_th: float = 0.5, depth_consistency: float = 0.05,
                               depth_sampling: str = "bilinear") -> dict[str, ArrayLike]:
    """Ground-truth labels for segments of two posed images with depth maps (module docstring).

    Each sample point is lifted with its depth map, moved by ``T_0to1`` (``T_1to0``) and
    projected; it is *visible* when it lands inside the other image in front of the camera
    and the other depth map agrees within ``depth_consistency`` (relative), *hidden* when it
    lands outside / behind the camera or is occluded (depth disagrees), and undecided otherwise
    (no depth where it starts or lands) — the classification of ``gt_matches_from_depth``.
    Glue Factory uses no occlusion test for lines; this one does, so an occluded segment is -1.

    Per segment: ``-2`` if fewer than ``min_visibility_th`` of its samples have valid depth, or
    if it is neither mostly hidden nor mostly visible (fewer than ``min_visibility_th`` of the
    samples visible); ``-1`` if at least ``1 - min_visibility_th`` of its samples are hidden,
    or no candidate segment of the other image is close; otherwise matched as for
    homographies, only visible samples count, and a pair is a candidate when each count
    exceeds ``overlap_th`` times the number of visible samples of the other segment.

    Shapes: lines (B, L, 2, 2) or (L, 2, 2), depth maps (B, H, W) or (H, W), K (B, 3, 3) or
    (3, 3), T_0to1 (B, 4, 4) or (4, 4). Returns the keys of ``gt_line_matches_from_homography``.
    """
    _check(npts, dist_th, overlap_th, min_visibility_th)
    unbatched, lines0, lines1, mask0, mask1 = _prepare(lines0, lines1, mask0, mask1)
    if unbatched:
        depth0, depth1, K0, K1, T_0to1 = depth0[None], depth1[None], K0[None], K1[None], T_0to1[None]
    b = lines0.shape[0]
    T_0to1 = T_0to1.to(lines0.dtype)
    s0 = sample_points_on_lines(lines0, npts)
    s1 = sample_points_on_lines(lines1, npts)

    def classify(samples, depth_i, depth_j, K_i, K_j, T_itoj):
        shape = samples.shape[:-1]
        if samples.shape[1] == 0:  # no segment: sample_depth cannot take zero points
            none = torch.zeros(shape, dtype=torch.bool, device=samples.device)
            return samples, none, none, none
        flat = samples.reshape(b, -1, 2)
        proj, visible, hidden = _visibility(flat, depth_i, depth_j, K_i, K_j, T_itoj, depth_consistency,
                                            depth_sampling)
        _, has_depth = sample_depth(flat, depth_i, mode=depth_sampling)
        return proj.reshape(samples.shape), visible.reshape(shape), hidden.reshape(shape), has_depth.reshape(shape)

    s0_1, vis0, hid0, dep0 = classify(s0, depth0, depth1, K0, K1, T_0to1)
    s1_0, vis1, hid1, dep1 = classify(s1, depth1, depth0, K1, K0, invert_transform(T_0to1))
    count0 = _close_counts(lines0, s1_0, vis1, dist_th)  # (B, L0, L1), visible samples of lines1 only
    count1_t = _close_counts(lines1, s0_1, vis0, dist_th).transpose(1, 2)
    nvis0 = vis0.float().sum(-1)
    nvis1 = vis1.float().sum(-1)
    candidate = ((count1_t > nvis0[:, :, None] * overlap_th) & (count0 > nvis1[:, None, :] * overlap_th)
                 & (count0 > 0) & (count1_t > 0) & mask0[:, :, None] & mask1[:, None, :])
    hidden0 = hid0.float().mean(-1) >= 1 - min_visibility_th
    hidden1 = hid1.float().mean(-1) >= 1 - min_visibility_th
    # uncertain: too little depth on the segment, or neither mostly hidden nor mostly visible
    ignore0 = ~mask0 | (dep0.float().mean(-1) < min_visibility_th) | (~hidden0 & (nvis0 < min_visibility_th * npts))
    ignore1 = ~mask1 | (dep1.float().mean(-1) < min_visibility_th) | (~hidden1 & (nvis1 < min_visibility_th * npts))
    candidate &= ~hidden0[:, :, None] & ~hidden1[:, None, :]
    unmatched0 = ~candidate.any(-1) | hidden0
    unmatched1 = ~candidate.any(-2) | hidden1
    out = _assign_lines(count0, count1_t, candidate, unmatched0, unmatched1, ignore0, ignore1)
    return {k: v[0] for k, v in out.items()} if unbatched else out
