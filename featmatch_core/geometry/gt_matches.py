"""Ground-truth correspondence labels for keypoints of two images (evaluation and training).

Labels, per keypoint:

- ``j >= 0``: the index of the true match in the other image. Positives are mutual nearest
  neighbours of the reprojection-error matrix with an error below ``pos_th`` pixels.
- ``-1`` (``UNMATCHED``): has no match in the other image — no keypoint of the other image
  lies within ``neg_th`` pixels of its reprojection, or (depth only) it leaves the other
  image, lands behind its camera, or is occluded there.
- ``-2`` (``IGNORE``): unknown — no valid depth, the other image has no depth where it
  lands, its error is between ``pos_th`` and ``neg_th``, its reprojection is close to a
  keypoint whose own label is unknown, or it is padding (keypoint mask False).

The reprojection error of a pair (i, j) is ``max(||P01(k0_i) - k1_j||, ||k0_i - P10(k1_j)||)``
in pixels (both directions must agree, as in Glue Factory). Torch, batched (B, N, 2) or
unbatched (N, 2); numpy in -> numpy out.
"""

from __future__ import annotations

import torch

from .depth import invert_transform, project, sample_depth, transform_points, unproject
from .homography import warp_points
from .utils import ArrayLike, numpy_compat

UNMATCHED = -1
IGNORE = -2


def _batch(*tensors):
    return [None if t is None else t[None] for t in tensors]


def _min_or_inf(x: torch.Tensor, dim: int):
    """min/argmin along ``dim``; +inf and index 0 when that dimension is empty."""
    if x.shape[dim] == 0:
        shape = list(x.shape)
        del shape[dim]
        return x.new_full(shape, float("inf")), torch.zeros(shape, dtype=torch.long, device=x.device)
    values, indices = x.min(dim)
    return values, indices


def _assign(dist0: torch.Tensor, dist1: torch.Tensor, pair_ok: torch.Tensor,
            known0: torch.Tensor, known1: torch.Tensor, unmatchable0: torch.Tensor, unmatchable1: torch.Tensor,
            mask0: torch.Tensor, mask1: torch.Tensor, pos_th: float, neg_th: float) -> dict[str, torch.Tensor]:
    """Shared labelling from one-way errors (B, N0, N1) and per-point status.

    ``known*``: the point's reprojection into the other image is valid and visible (candidate
    for a positive); ``unmatchable*``: known to have no counterpart (outside, occluded).
    """
    inf = dist0.new_full((), float("inf"))  # a fill on the device, not a host copy (a sync on GPUs)
    dist = torch.where(pair_ok, torch.maximum(dist0, dist1), inf)
    min_d0, min0 = _min_or_inf(dist, -1)
    min_d1, min1 = _min_or_inf(dist, -2)
    # nearest keypoint of the other image to the reprojection, among real (unpadded) keypoints
    near0, _ = _min_or_inf(torch.where(mask1[:, None, :], dist0, inf), -1)
    near1, _ = _min_or_inf(torch.where(mask0[:, :, None], dist1, inf), -2)

    n0, n1 = dist.shape[-2:]
    idx0 = torch.arange(n0, device=dist.device)
    idx1 = torch.arange(n1, device=dist.device)
    mutual0 = (min1.gather(-1, min0) == idx0) if n1 > 0 else torch.zeros_like(min0, dtype=torch.bool)
    mutual1 = (min0.gather(-1, min1) == idx1) if n0 > 0 else torch.zeros_like(min1, dtype=torch.bool)
    positive0 = mutual0 & (min_d0 < pos_th)
    positive1 = mutual1 & (min_d1 < pos_th)

    def labels(positive, best, known, unmatchable, near, mask):
        out = torch.full_like(best, IGNORE)
        out = torch.where(unmatchable | (known & (near > neg_th)), torch.full_like(out, UNMATCHED), out)
        out = torch.where(positive, best, out)
        return torch.where(mask, out, torch.full_like(out, IGNORE))

    m0 = labels(positive0, min0, known0, unmatchable0, near0, mask0)
    m1 = labels(positive1, min1, known1, unmatchable1, near1, mask1)
    assignment = positive0[..., None] & (min0[..., None] == idx1)
    return {"gt_matches0": m0, "gt_matches1": m1, "gt_assignment": assignment, "reproj_error": dist}


def _masks(kpts0, kpts1, mask0, mask1):
    if mask0 is None:
        mask0 = torch.ones(kpts0.shape[:-1], dtype=torch.bool, device=kpts0.device)
    if mask1 is None:
        mask1 = torch.ones(kpts1.shape[:-1], dtype=torch.bool, device=kpts1.device)
    return mask0.bool(), mask1.bool()


def _check_th(pos_th: float, neg_th: float) -> None:
    if not 0 < pos_th <= neg_th:
        raise ValueError(f"need 0 < pos_th <= neg_th, got pos_th={pos_th}, neg_th={neg_th}")


def _one_way_errors(proj0_1: torch.Tensor, proj1_0: torch.Tensor, kpts0: torch.Tensor, kpts1: torch.Tensor):
    """``||P01(k0_i) - k1_j||`` and ``||k0_i - P10(k1_j)||``, (B, N0, N1) pixels.

    Computed directly, not through the |a|^2 + |b|^2 - 2ab expansion that cdist uses by
    default for large inputs: in float32 that expansion is off by ~0.3 px at 1000 px
    coordinates, too much next to a 3 px threshold.
    """
    if kpts0.shape[-2] == 0 or kpts1.shape[-2] == 0:
        empty = kpts0.new_zeros(kpts0.shape[:-1] + kpts1.shape[-2:-1])
        return empty, empty.clone()
    mode = "donot_use_mm_for_euclid_dist"
    return (torch.cdist(proj0_1, kpts1, compute_mode=mode), torch.cdist(kpts0, proj1_0, compute_mode=mode))


@numpy_compat()
def gt_matches_from_homography(kpts0: ArrayLike, kpts1: ArrayLike, H: ArrayLike, pos_th: float = 3.0,
                               neg_th: float = 5.0, mask0: ArrayLike | None = None,
                               mask1: ArrayLike | None = None) -> dict[str, ArrayLike]:
    """Labels for keypoints related by ``H_0to1`` (see the module docstring).

    Args:
        kpts0: (B, N0, 2) or (N0, 2); kpts1: (B, N1, 2) or (N1, 2); H: (B, 3, 3) or (3, 3).
        mask0, mask1: optional (B, N) bool, False for padding.
    Returns:
        ``gt_matches0`` (B, N0) int64, ``gt_matches1`` (B, N1), ``gt_assignment`` (B, N0, N1)
        bool (the positives), ``reproj_error`` (B, N0, N1) pixels, ``proj_0to1`` (B, N0, 2),
        ``proj_1to0`` (B, N1, 2); without the batch dimension for unbatched input.
        Points are not checked against image borders: one warped outside image 1 is
        unmatchable because no keypoint of image 1 is near it.
    """
    _check_th(pos_th, neg_th)
    unbatched = kpts0.dim() == 2
    if unbatched:
        kpts0, kpts1, H, mask0, mask1 = _batch(kpts0, kpts1, H, mask0, mask1)
    mask0, mask1 = _masks(kpts0, kpts1, mask0, mask1)
    H = H.to(kpts0.dtype)
    proj0_1 = warp_points(kpts0, H)
    proj1_0 = warp_points(kpts1, torch.linalg.inv(H))
    dist0, dist1 = _one_way_errors(proj0_1, proj1_0, kpts0, kpts1)
    known0 = torch.isfinite(proj0_1).all(-1) & mask0
    known1 = torch.isfinite(proj1_0).all(-1) & mask1
    pair_ok = known0[:, :, None] & known1[:, None, :]
    none0, none1 = torch.zeros_like(known0), torch.zeros_like(known1)
    out = _assign(dist0, dist1, pair_ok, known0, known1, none0, none1, mask0, mask1, pos_th, neg_th)
    out.update(proj_0to1=proj0_1, proj_1to0=proj1_0)
    return {k: v[0] for k, v in out.items()} if unbatched else out


def _visibility(kpts, depth_i, depth_j, K_i, K_j, T_itoj, consistency, mode):
    """Reproject keypoints of image i into image j and classify them (all (B, N))."""
    d_i, has_depth = sample_depth(kpts, depth_i, mode=mode)
    X_j = transform_points(T_itoj, unproject(kpts, d_i, K_i))
    proj, z = project(X_j, K_j)
    height, width = depth_j.shape[-2:]
    x, y = proj[..., 0], proj[..., 1]
    inside = (z > 0) & (x >= -0.5) & (x < width - 0.5) & (y >= -0.5) & (y < height - 0.5)
    d_j, has_depth_j = sample_depth(proj, depth_j, mode=mode)
    agrees = (d_j - z).abs() <= consistency * z.abs()
    visible = has_depth & inside & has_depth_j & agrees
    unmatchable = has_depth & (~inside | (has_depth_j & ~agrees))
    return proj, visible, unmatchable


@numpy_compat()
def gt_matches_from_depth(kpts0: ArrayLike, kpts1: ArrayLike, depth0: ArrayLike, depth1: ArrayLike,
                          K0: ArrayLike, K1: ArrayLike, T_0to1: ArrayLike, pos_th: float = 3.0,
                          neg_th: float = 5.0, depth_consistency: float = 0.05,
                          mask0: ArrayLike | None = None, mask1: ArrayLike | None = None,
                          depth_sampling: str = "bilinear") -> dict[str, ArrayLike]:
    """Labels for keypoints of two posed images with depth maps (see the module docstring).

    A keypoint of image 0 is lifted with depth0 (sampled with ``depth_sampling``, see
    ``sample_depth``), moved by ``T_0to1`` and projected into image 1. It is

    - ``-2`` if depth0 has no valid value there, or it lands inside image 1 where depth1
      has none (visibility cannot be decided);
    - ``-1`` if it lands outside image 1 (or behind camera 1), or is occluded: depth1 at the
      landing pixel differs from its depth in camera 1 by more than ``depth_consistency``
      times that depth (relative tolerance; either sign);
    - otherwise visible, and labelled by the reprojection error against the keypoints of
      image 1 as for homographies (positive index / -1 beyond ``neg_th`` / -2 in between).

    Image 1 is treated symmetrically with ``T_1to0``. Shapes: kpts (B, N, 2) or (N, 2), depth
    maps (B, H, W) or (H, W), K (B, 3, 3) or (3, 3), T_0to1 (B, 4, 4) or (4, 4).

    Returns the keys of ``gt_matches_from_homography`` plus ``visible0`` / ``visible1``.
    ``reproj_error`` is +inf for pairs where either point is not visible.
    """
    _check_th(pos_th, neg_th)
    unbatched = kpts0.dim() == 2
    if unbatched:
        kpts0, kpts1, depth0, depth1, K0, K1, T_0to1, mask0, mask1 = _batch(
            kpts0, kpts1, depth0, depth1, K0, K1, T_0to1, mask0, mask1)
    mask0, mask1 = _masks(kpts0, kpts1, mask0, mask1)
    T_0to1 = T_0to1.to(kpts0.dtype)
    proj0_1, vis0, unm0 = _visibility(kpts0, depth0, depth1, K0, K1, T_0to1, depth_consistency, depth_sampling)
    proj1_0, vis1, unm1 = _visibility(kpts1, depth1, depth0, K1, K0, invert_transform(T_0to1),
                                      depth_consistency, depth_sampling)
    vis0, vis1 = vis0 & mask0, vis1 & mask1
    dist0, dist1 = _one_way_errors(proj0_1, proj1_0, kpts0, kpts1)
    pair_ok = vis0[:, :, None] & vis1[:, None, :]
    out = _assign(dist0, dist1, pair_ok, vis0, vis1, unm0, unm1, mask0, mask1, pos_th, neg_th)
    out.update(proj_0to1=proj0_1, proj_1to0=proj1_0, visible0=vis0, visible1=vis1)
    return {k: v[0] for k, v in out.items()} if unbatched else out
