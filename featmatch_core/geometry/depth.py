"""Pinhole projection with depth maps: unproject, project, safe depth sampling, reprojection.

Conventions: pixel centres at integer coordinates (OpenCV); ``K`` (..., 3, 3) pinhole
intrinsics (skew allowed); depth maps (..., H, W) hold the z coordinate in the camera frame,
with 0 (or a negative / non-finite value) meaning "no depth"; ``T_0to1`` maps camera-0
points to camera 1 (``X1 = R X0 + t``). numpy or torch, batched over leading dimensions.
"""

from __future__ import annotations

import torch

from .utils import ArrayLike, numpy_compat, to_homogeneous


@numpy_compat()
def image_to_camera(points: ArrayLike, K: ArrayLike) -> ArrayLike:
    """Normalised image coordinates (..., N, 2): ``K^-1 [x, y, 1]`` without the trailing 1."""
    rays = to_homogeneous(points) @ torch.linalg.inv(K.to(points.dtype)).transpose(-1, -2)
    return rays[..., :2] / rays[..., 2:]


@numpy_compat()
def unproject(points: ArrayLike, depth: ArrayLike, K: ArrayLike) -> ArrayLike:
    """3D points (..., N, 3) in the camera frame from pixels (..., N, 2) and their depths (..., N)."""
    return to_homogeneous(image_to_camera(points, K)) * depth[..., None].to(points.dtype)


@numpy_compat()
def project(X: ArrayLike, K: ArrayLike, eps: float = 1e-8) -> tuple[ArrayLike, ArrayLike]:
    """Pixels (..., N, 2) and depths z (..., N) of camera-frame points (..., N, 3).

    Points with ``z <= eps`` (behind or on the camera plane) get finite but meaningless pixels;
    callers must check ``z > 0``.
    """
    z = X[..., 2]
    safe_z = torch.where(z.abs() > eps, z, torch.full_like(z, eps))
    normalized = X[..., :2] / safe_z[..., None]
    pixels = to_homogeneous(normalized) @ K.to(X.dtype).transpose(-1, -2)
    return pixels[..., :2], z


@numpy_compat()
def transform_points(T: ArrayLike, X: ArrayLike) -> ArrayLike:
    """Apply rigid transforms (..., 4, 4) to points (..., N, 3): ``R X + t``."""
    T = T.to(X.dtype)
    return X @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


@numpy_compat()
def invert_transform(T: ArrayLike) -> ArrayLike:
    """Inverse (..., 4, 4) of rigid transforms (..., 4, 4)."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    inv = torch.zeros_like(T)
    inv[..., :3, :3] = R.transpose(-1, -2)
    inv[..., :3, 3] = -(R.transpose(-1, -2) @ t[..., None])[..., 0]
    inv[..., 3, 3] = 1.0
    return inv


def _gather(depth_flat: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor, width: int) -> torch.Tensor:
    """The values at integer pixels, in the pixels' dtype (only what is read gets converted)."""
    return torch.gather(depth_flat, 1, (yi * width + xi).long()).to(xi.dtype)


@numpy_compat(native_args=("depth",))
def sample_depth(points: ArrayLike, depth: ArrayLike, mode: str = "bilinear") -> tuple[ArrayLike, ArrayLike]:
    """Depth at sub-pixel points without mixing valid and missing depth.

    Args:
        points: (..., N, 2) pixels; depth: (..., H, W) with the same leading dimensions.
        mode: ``"nearest"`` (the closest pixel) or ``"bilinear"`` (interpolation, valid only
            where every neighbour with a non-zero interpolation weight has valid depth, so
            holes and invalid pixels never leak into the result; as Glue Factory, which marks
            a point invalid when any neighbour is missing).
    Returns:
        ``(values, valid)``, both (..., N); ``values`` is 0 where ``valid`` is False (outside
        the image, or missing depth).

    Note: interpolation across an occlusion boundary (both sides valid) still blends the two
    surfaces; use ``"nearest"`` when that matters more than sub-pixel accuracy.
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"sample_depth: mode must be 'nearest' or 'bilinear', got '{mode}'")
    lead = points.shape[:-2]
    if depth.shape[:-2] != lead:
        raise ValueError(f"sample_depth: points {tuple(points.shape)} and depth {tuple(depth.shape)} "
                         "must share their leading (batch) dimensions")
    height, width = depth.shape[-2:]
    num = points.shape[-2]
    batch = int(torch.tensor(lead).prod()) if len(lead) else 1  # explicit: -1 is ambiguous when num = 0
    pts = points.reshape(batch, num, 2)
    depth_flat = depth.reshape(batch, height * width)
    if not depth_flat.is_floating_point():  # integer maps (millimetres): not every int type gathers
        depth_flat = depth_flat.to(pts.dtype)
    x, y = pts[..., 0], pts[..., 1]
    finite = torch.isfinite(x) & torch.isfinite(y)
    x = torch.where(finite, x, torch.full_like(x, -1e6))
    y = torch.where(finite, y, torch.full_like(y, -1e6))

    def is_valid(d: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(d) & (d > 0)

    if mode == "nearest":
        xi, yi = torch.round(x), torch.round(y)
        inside = finite & (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
        d = _gather(depth_flat, xi.clamp(0, width - 1), yi.clamp(0, height - 1), width)
        valid = inside & is_valid(d)
        values = torch.where(valid, d, torch.zeros_like(d))
    else:
        inside = finite & (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
        x0 = torch.floor(x).clamp(0, max(width - 2, 0))
        y0 = torch.floor(y).clamp(0, max(height - 2, 0))
        x1 = (x0 + 1).clamp(max=width - 1)
        y1 = (y0 + 1).clamp(max=height - 1)
        fx = (x - x0).clamp(0, 1)
        fy = (y - y0).clamp(0, 1)
        corners = [(x0, y0, (1 - fx) * (1 - fy)), (x1, y0, fx * (1 - fy)),
                   (x0, y1, (1 - fx) * fy), (x1, y1, fx * fy)]
        valid = inside.clone()
        values = torch.zeros_like(x)
        for xc, yc, weight in corners:
            d = _gather(depth_flat, xc.clamp(0, width - 1), yc.clamp(0, height - 1), width)
            ok = is_valid(d)
            valid = valid & (ok | (weight <= 0))
            values = values + weight * torch.where(ok, d, torch.zeros_like(d))
        values = torch.where(valid, values, torch.zeros_like(values))
    return values.reshape(lead + (num,)), valid.reshape(lead + (num,))


@numpy_compat()
def reproject(points0: ArrayLike, depth0: ArrayLike, K0: ArrayLike, K1: ArrayLike, T_0to1: ArrayLike,
              mode: str = "bilinear") -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Move pixels of image 0 into image 1 through the depth map of image 0.

    Args:
        points0: (..., N, 2) pixels of image 0; depth0: (..., H0, W0) its depth map.
        K0, K1: (..., 3, 3); T_0to1: (..., 4, 4). mode: depth sampling, see ``sample_depth``.
    Returns:
        ``points1`` (..., N, 2) pixels in image 1, ``depth_in_1`` (..., N) their z in camera 1,
        ``valid`` (..., N): depth0 was valid at the point and the 3D point is in front of
        camera 1. Whether ``points1`` falls inside image 1 (and is visible there) is not
        checked here; ``gt_matches_from_depth`` does that with depth1.
    """
    d0, valid0 = sample_depth(points0, depth0, mode=mode)
    X1 = transform_points(T_0to1, unproject(points0, d0, K0))
    points1, z1 = project(X1, K1)
    valid = valid0 & (z1 > 0)
    return points1, z1, valid
