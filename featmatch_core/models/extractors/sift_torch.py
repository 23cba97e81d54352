"""SIFT in torch tensors: OpenCV's algorithm (``cv::SIFT``, float pyramid) on any device.

The same steps as OpenCV's CPU code, each done for all points of a batch of images at once, so
that a GPU runs about 950 kernels per batch and the host reads the device four times here (the
candidate, survivor and orientation-peak counts, the descriptor windows' sizes):

1. The image (0..255) is doubled with OpenCV's precise upscale (``first_octave = -1``) and
   blurred to ``sigma``; each octave has ``levels + 3`` Gaussian levels, blurred incrementally
   with OpenCV's kernels (4 sigma radius, reflect-101 borders); the next octave starts from
   level ``levels`` subsampled 2x.
2. DoG extrema over 3x3x3 neighbours (ties count, as in OpenCV) at least 5 pixels inside.
3. Up to 5 steps of quadratic refinement (moving to the neighbour pixel or level while an
   offset exceeds 0.5), then the contrast and edge tests.
4. A 36-bin orientation histogram over a Gaussian window (1.5 sigma, radius 4.5 sigma),
   smoothed; every peak of at least 80 % of the maximum gives a point (parabolic peak).
5. The 4x4x8 descriptor with trilinear votes over the rotated window, clipped at 0.2.

Differences to OpenCV are those of floating point and of ``atan2`` (OpenCV's polynomial is
within 0.01 degrees): a few points flip at a bin or comparison boundary.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...device import cached_constant, device_constant, exact_fp32_convolutions
from .superpoint import max_filter

BORDER = 5  # pixels of each DoG map where no extremum is searched
INTERPOLATION_STEPS = 5
# above this many DoG extrema, one cheap step first drops those that settle and fail at once
PREFILTER_CANDIDATES = 100_000
POINT_BUCKET_MIN = 4096  # smallest padded point set of a graphed runner (see point_bucket)
DESCRIBE_CHUNK = 512  # points per graphed descriptor call: windows of 77^2 pixels, ~50 M floats of votes
INIT_SIGMA = 0.5  # the blur assumed in the input image
ORI_BINS = 36
ORI_SIGMA_FACTOR = 1.5
ORI_RADIUS_FACTOR = 3 * ORI_SIGMA_FACTOR
ORI_PEAK_RATIO = 0.8
DESC_WIDTH = 4  # 4x4 spatial cells
DESC_BINS = 8  # orientations per cell
DESC_SCALE_FACTOR = 3.0  # cell width in units of the keypoint's sigma
DESC_MAG_THRESHOLD = 0.2
# window pixels x keypoints per chunk of orientation histograms or descriptors (bounds the
# memory of the window tensors: up to 16 floats per pixel; more on GPUs, where each chunk costs
# kernel launches)
WINDOW_CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 23}


@dataclass(frozen=True)
class SiftSettings:
    """OpenCV's parameters: ``levels`` is nOctaveLayers, ``contrast_threshold`` is compared
    with |DoG| x levels (image in [0, 1]), ``edge_threshold`` bounds the curvature ratio."""

    levels: int = 3
    sigma: float = 1.6
    first_octave: int = -1
    num_octaves: int = 4
    contrast_threshold: float = 0.02
    edge_threshold: float = 10.0


@dataclass
class Detections:
    """Points of one image in image pixels (centres at integers), with what describes them."""

    xy: torch.Tensor  # (N, 2)
    size: torch.Tensor  # (N,) OpenCV's KeyPoint.size, 2 sigma in image pixels
    angle: torch.Tensor  # (N,) OpenCV's KeyPoint.angle, degrees
    response: torch.Tensor  # (N,) |DoG| at the refined extremum (image in [0, 1])
    image: torch.Tensor  # (N,) index of the image in the batch
    octave: torch.Tensor  # (N,) index of the octave in the pyramid (0 = first_octave)
    level: torch.Tensor  # (N,) Gaussian level (1..levels) of the refined extremum
    octave_xy: torch.Tensor  # (N, 2) position in that octave's pixels
    sigma: torch.Tensor  # (N,) scale in that octave's pixels

    def take(self, index: torch.Tensor) -> Detections:
        return Detections(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


# ---- scale space ------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def gaussian_kernel(sigma: float) -> tuple[float, ...]:
    """OpenCV's Gaussian for float images: 2 * round(4 sigma) + 1 taps (ksize rounded up to odd),
    weights computed in float64 and normalised."""
    size = int(math.floor(sigma * 8 + 1 + 0.5)) | 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-0.5 * x * x / (sigma * sigma))
    return tuple((weights / weights.sum()).tolist())


@cached_constant(maxsize=256)
def reflect101(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-n axis padded by ``pad`` on both sides with OpenCV's BORDER_REFLECT_101
    (any pad, also beyond the axis length)."""
    out = []
    for p in range(-pad, n + pad):
        if n == 1:
            p = 0
        while p < 0 or p >= n:
            p = -p if p < 0 else 2 * n - 2 - p
        out.append(p)
    return device_constant(tuple(out), device, torch.long)


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) Gaussian blur: rows then columns, reflect-101 borders (OpenCV's GaussianBlur)."""
    kernel = device_constant(gaussian_kernel(sigma), image.device, image.dtype)
    radius = len(kernel) // 2
    h, w = image.shape[-2:]
    if radius < min(h, w):  # torch's "reflect" is reflect-101, for pads shorter than the axis
        x = F.pad(image[:, None], (radius,) * 4, mode="reflect")
    else:
        x = image.index_select(2, reflect101(w, radius, image.device))
        x = x.index_select(1, reflect101(h, radius, image.device))[:, None]
    return F.conv2d(F.conv2d(x, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))[:, 0]


def upsample2x(image: torch.Tensor) -> torch.Tensor:
    """OpenCV's precise 2x upscale of (B, H, W) (warpAffine by 0.5, bilinear, BORDER_REFLECT):
    pixel 2i is pixel i, pixel 2i + 1 the mean of pixels i and i + 1 (the last one repeated)."""
    for dim in (1, 2):
        following = torch.cat((image.narrow(dim, 1, image.shape[dim] - 1), image.narrow(dim, -1, 1)), dim)
        image = torch.stack((image, 0.5 * (image + following)), dim=dim + 1).flatten(dim, dim + 1)
    return image


def level_sigmas(settings: SiftSettings) -> list[float]:
    """The incremental blur of each Gaussian level over the previous one (OpenCV's ``sig``)."""
    k = 2.0 ** (1.0 / settings.levels)
    sigmas = [settings.sigma]
    for i in range(1, settings.levels + 3):
        previous = k ** (i - 1) * settings.sigma
        sigmas.append(math.sqrt((previous * k) ** 2 - previous**2))
    return sigmas


def octave_count(height: int, width: int, settings: SiftSettings) -> int:
    """OpenCV's octave count for this image, capped at ``num_octaves``."""
    base = min(height, width) * (2 if settings.first_octave < 0 else 1)
    return max(1, min(settings.num_octaves, round(math.log2(base) - 2) - min(settings.first_octave, 0)))


def gaussian_pyramid(gray: torch.Tensor, settings: SiftSettings) -> list[torch.Tensor]:
    """(B, H, W) images in 0..255 -> per octave a (B, levels + 3, h, w) stack of Gaussian levels."""
    if settings.first_octave < 0:
        base = blur(upsample2x(gray), math.sqrt(max(settings.sigma**2 - 4 * INIT_SIGMA**2, 0.01)))
    else:
        base = blur(gray, math.sqrt(max(settings.sigma**2 - INIT_SIGMA**2, 0.01)))
    sigmas = level_sigmas(settings)
    octaves = []
    for o in range(octave_count(*gray.shape[-2:], settings)):
        if o == 0:
            levels = [base]
        else:
            previous = octaves[-1][:, settings.levels]
            levels = [previous[:, : previous.shape[1] // 2 * 2:2, : previous.shape[2] // 2 * 2:2]]
        for sigma in sigmas[1:]:
            levels.append(blur(levels[-1], sigma))
        octaves.append(torch.stack(levels, dim=1))
    return octaves


# ---- detection --------------------------------------------------------------------------

def flatten(stacks: list[torch.Tensor]) -> torch.Tensor:
    """Per-octave stacks as one flat tensor (the values of a :class:`FlatStore`)."""
    return torch.cat([s.reshape(-1) for s in stacks])


class FlatStore:
    """Per-octave (B, L, h, w) stacks in one flat tensor (:func:`flatten`), addressed by
    (octave, image, level, row, col); ``shapes`` are the stacks' (B, L, h, w)."""

    def __init__(self, values: torch.Tensor, shapes: Sequence[tuple[int, int, int, int]]) -> None:
        device = values.device
        self.values, self.shapes = values, tuple(shapes)
        sizes = [math.prod(shape) for shape in shapes]
        self.levels = shapes[0][1]
        self.starts = device_constant((0, *itertools.accumulate(sizes[:-1])), device, torch.long)
        self.heights = device_constant(tuple(shape[2] for shape in shapes), device, torch.long)
        self.widths = device_constant(tuple(shape[3] for shape in shapes), device, torch.long)

    def index(self, octave: torch.Tensor, image: torch.Tensor, level: torch.Tensor, row: torch.Tensor,
              col: torch.Tensor) -> torch.Tensor:
        h, w = self.heights[octave], self.widths[octave]
        return self.starts[octave] + ((image * self.levels + level) * h + row) * w + col

    def decode(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(octave, image, level, row, col) of flat indices."""
        octave = torch.searchsorted(self.starts, flat, right=True) - 1
        local = flat - self.starts[octave]
        h, w = self.heights[octave], self.widths[octave]
        plane = local // (h * w)
        return octave, plane // self.levels, plane % self.levels, local % (h * w) // w, local % w


def extrema_mask(dog: torch.Tensor, threshold: float, levels: int) -> torch.Tensor:
    """(B, levels + 2, h, w) DoG -> where OpenCV looks further: |value| above the threshold and
    no neighbour of 26 beyond it (ties allowed), on levels 1..levels, BORDER pixels inside."""
    highest = neighbour_max(dog)
    lowest = -neighbour_max(-dog)
    middle = dog[:, 1:levels + 1]
    found = ((middle > threshold) & (middle >= highest)) | ((middle < -threshold) & (middle <= lowest))
    inside = torch.zeros_like(found)
    inside[..., BORDER:-BORDER, BORDER:-BORDER] = True
    return F.pad(found & inside, (0, 0, 0, 0, 1, 1))  # back to all levels: none on the first and last


def neighbour_max(volume: torch.Tensor) -> torch.Tensor:
    """Maximum over the 3x3x3 neighbourhood of levels 1..L-2 of a (B, L, h, w) stack: a 3x3
    maximum per level (:func:`~.superpoint.max_filter`, fast on the CPU too), then over adjacent
    levels."""
    planar = max_filter(volume, 1)
    return torch.maximum(torch.maximum(planar[:, :-2], planar[:, 1:-1]), planar[:, 2:])


@cached_constant(maxsize=8)
def difference_operator(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(27, 12) coefficients of OpenCV's finite differences at the centre of a flattened 3x3x3
    cube [level, row, col] of 0..255 values: the gradient (x, y, level) and the Hessian's 9
    entries, image in [0, 1]."""
    img_scale = 1.0 / 255
    op = torch.zeros(3, 3, 3, 12, dtype=torch.float64)
    first, second, cross = img_scale * 0.5, img_scale, img_scale * 0.25
    axes = [(1, 1, 2), (1, 2, 1), (2, 1, 1)]  # the +1 neighbour along x, y, level
    for a, plus in enumerate(axes):
        minus = tuple(2 - p for p in plus)
        op[plus + (a,)] += first
        op[minus + (a,)] -= first
        op[plus + (3 + 4 * a,)] += second  # the diagonal entries 0, 4, 8 of the row-major 3x3
        op[minus + (3 + 4 * a,)] += second
        op[1, 1, 1, 3 + 4 * a] -= 2 * second
    for a, b in ((0, 1), (0, 2), (1, 2)):
        for sign_a in (-1, 1):
            for sign_b in (-1, 1):
                at = [1, 1, 1]
                at[2 - a] += sign_a  # x is the last index of the cube, level the first
                at[2 - b] += sign_b
                for entry in (3 + 3 * a + b, 3 + 3 * b + a):
                    op[tuple(at) + (entry,)] += sign_a * sign_b * cross
    return op.reshape(27, 12).to(device, dtype)


def derivatives(cube: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's finite differences at the centre of (N, 3, 3, 3) DoG cubes (0..255 values):
    gradient (N, 3) and Hessian (N, 3, 3) in (x, y, level) order, image in [0, 1]; one product."""
    out = cube.reshape(-1, 27) @ difference_operator(cube.device, cube.dtype)
    return out[:, :3], out[:, 3:].view(-1, 3, 3)


class Cubes:
    """The 3x3x3 DoG neighbourhoods of candidates (flat indices into ``store``), wherever the
    refinement moves them: positions are (col, row, level) within each candidate's octave and
    image."""

    def __init__(self, store: FlatStore, candidates: torch.Tensor, levels: int) -> None:
        octave, image, level, row, col = store.decode(candidates)
        device = candidates.device
        h, w = store.heights[octave], store.widths[octave]
        self.store, self.octave, self.image = store, octave, image
        self.strides = torch.stack((torch.ones_like(w), w, h * w), dim=1)
        taps = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, device=device)] * 3, indexing="ij"), -1)
        self.offsets = (taps.reshape(27, 1, 3).flip(-1) * self.strides).sum(-1).T  # (N, 27): [level, row, col]
        self.base = store.starts[octave] + image * store.levels * h * w
        self.lowest = device_constant((BORDER, BORDER, 1), device, torch.long)
        self.beyond = torch.stack((w - BORDER, h - BORDER, torch.full_like(w, levels + 1)), dim=1)
        self.start = torch.stack((col, row, level), dim=1)

    def at(self, position: torch.Tensor) -> torch.Tensor:
        centre = self.base + (position * self.strides).sum(1)
        return self.store.values[centre[:, None] + self.offsets].view(-1, 3, 3, 3)


def solve3x3(matrix: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solutions x of (N, 3, 3) x = (N, 3) by the adjugate, and whether each matrix is regular
    (a non-zero determinant). Element-wise work only: unlike ``torch.linalg.solve`` it calls no
    batched LU library, whose CUDA paths may not be capturable in a graph. On the points of
    graffiti and of a texture it gives OpenCV's LU points within 1e-3 px."""
    a, b, c = matrix[:, 0].unbind(1)
    d, e, f = matrix[:, 1].unbind(1)
    g, h, i = matrix[:, 2].unbind(1)
    cofactor0, cofactor1, cofactor2 = e * i - f * h, f * g - d * i, d * h - e * g
    determinant = a * cofactor0 + b * cofactor1 + c * cofactor2
    adjugate = torch.stack((cofactor0, c * h - b * i, b * f - c * e,
                            cofactor1, a * i - c * g, c * d - a * f,
                            cofactor2, b * g - a * h, a * e - b * d), dim=1).view(-1, 3, 3)
    return (adjugate @ rhs[..., None])[..., 0] / determinant[:, None], determinant != 0


def newton_step(cube: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient, Hessian and the offset -H^-1 g to the quadratic's extremum, (x, y, level); a
    singular Hessian gives no step (OpenCV's zero solution), a NaN one a step out of bounds."""
    gradient, hessian = derivatives(cube)
    solution, regular = solve3x3(hessian, gradient)
    step = torch.where(regular[:, None], -solution, 0.0).nan_to_num(nan=2.0**31)
    return gradient, hessian, step


def contrast_and_tests(cube: torch.Tensor, gradient: torch.Tensor, hessian: torch.Tensor, offset: torch.Tensor,
                       settings: SiftSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """|contrast| of the interpolated extremum and whether it passes OpenCV's contrast and edge
    tests."""
    contrast = (cube[:, 1, 1, 1] / 255 + 0.5 * (gradient * offset).sum(dim=1)).abs()
    trace = hessian[:, 0, 0] + hessian[:, 1, 1]
    det = hessian[:, 0, 0] * hessian[:, 1, 1] - hessian[:, 0, 1] ** 2
    edge = settings.edge_threshold
    passed = ((contrast * settings.levels >= settings.contrast_threshold)
              & (det > 0) & (trace * trace * edge < (edge + 1) ** 2 * det))
    return contrast, passed


def settled_and_rejected(store: FlatStore, candidates: torch.Tensor, settings: SiftSettings) -> torch.Tensor:
    """Candidates whose first step already converges and that then fail a test: exactly those
    :func:`refine` would drop at that step. Flat rendered regions give millions of such tie
    "extrema" (2.7 M on a 640x480 castle_simu frame, against about 10 k on photos)."""
    cubes = Cubes(store, candidates, settings.levels)
    cube = cubes.at(cubes.start)
    gradient, hessian, step = newton_step(cube)
    _, passed = contrast_and_tests(cube, gradient, hessian, step, settings)
    return (step.abs() < 0.5).all(dim=1) & ~passed


def refine(store: FlatStore, candidates: torch.Tensor, settings: SiftSettings):
    """OpenCV's ``adjustLocalExtrema`` for all candidates at once: (octave, image, level, row,
    col) of the final pixel, the sub-pixel offsets (N, 3) in (x, y, level) and |contrast|, and
    whether each point survives. About 40 kernels per step."""
    cubes = Cubes(store, candidates, settings.levels)
    position, n = cubes.start, len(candidates)
    offset = torch.zeros(n, 3, device=candidates.device)
    alive = torch.ones(n, dtype=torch.bool, device=candidates.device)
    converged = torch.zeros_like(alive)
    for _ in range(INTERPOLATION_STEPS):
        _, _, step = newton_step(cubes.at(position))
        active = alive & ~converged
        small = (step.abs() < 0.5).all(dim=1)
        offset = torch.where(active[:, None], step, offset)
        converged = converged | (active & small)
        moving = active & ~small
        # a step beyond INT_MAX / 3, which OpenCV rejects, lands outside as well
        position = position + (step.clamp(-(2.0**31), 2.0**31).round() * moving[:, None]).long()
        outside = ((position < cubes.lowest) | (position >= cubes.beyond)).any(dim=1)
        alive = alive & ~(moving & outside)
        position = torch.where(alive[:, None], position, cubes.lowest)  # dead points: an address in bounds
    cube = cubes.at(position)
    gradient, hessian = derivatives(cube)
    contrast, passed = contrast_and_tests(cube, gradient, hessian, offset, settings)
    col, row, level = position.unbind(1)
    return cubes.octave, cubes.image, level, row, col, offset, contrast, alive & converged & passed


# ---- orientation and description --------------------------------------------------------

def gradient_maps(octaves: list[torch.Tensor], levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dx = I(x + 1) - I(x - 1) and dy = I(y - 1) - I(y + 1) of the Gaussian levels 1..levels
    (stored from 0; OpenCV's signs: dy points up), flattened; the outermost pixels, which
    OpenCV never uses, are 0."""
    dxs, dys = [], []
    for stack in (octave[:, 1:levels + 1] for octave in octaves):
        dx, dy = torch.zeros_like(stack), torch.zeros_like(stack)
        dx[..., 1:-1, 1:-1] = stack[..., 1:-1, 2:] - stack[..., 1:-1, :-2]
        dy[..., 1:-1, 1:-1] = stack[..., :-2, 1:-1] - stack[..., 2:, 1:-1]
        dxs.append(dx)
        dys.append(dy)
    return flatten(dxs), flatten(dys)


def degrees(dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """atan2 in degrees in [0, 360), as OpenCV's fastAtan2."""
    angle = torch.rad2deg(torch.atan2(dy, dx))
    return torch.where(angle < 0, angle + 360, angle)


def window(dx_store: FlatStore, dy_store: FlatStore, octave, image, level, row, col, radius: int):
    """Gradients over the (2r + 1)^2 window around integer (row, col) and whether each pixel is
    one OpenCV uses (not on the outermost row or column): dx, dy, valid (N, 2r + 1, 2r + 1)
    and the offsets (i, j) of rows and columns."""
    steps = torch.arange(-radius, radius + 1, device=row.device)
    rows = row[:, None, None] + steps[None, :, None]
    cols = col[:, None, None] + steps[None, None, :]
    h, w = dx_store.heights[octave][:, None, None], dx_store.widths[octave][:, None, None]
    valid = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
    index = dx_store.index(octave[:, None, None], image[:, None, None], level[:, None, None] - 1,
                           rows.clamp(min=0), cols.clamp(min=0)).clamp(max=dx_store.values.numel() - 1)
    return dx_store.values[index], dy_store.values[index], valid, steps


def within(steps: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """(N, S, S): whether window offset (i, j) lies within each point's radius (Chebyshev)."""
    inside = steps.abs()[None, :] <= radius[:, None]
    return inside[:, :, None] & inside[:, None, :]


def orientation_histograms(dx_store: FlatStore, dy_store: FlatStore, octave, image, level, row, col,
                           sigma: torch.Tensor, radius_max: int) -> torch.Tensor:
    """(N, 36) gradient orientation histograms, Gaussian-weighted (1.5 sigma) over the radius
    4.5 sigma around each point, votes to the nearest bin (OpenCV's, before smoothing)."""
    dx, dy, valid, steps = window(dx_store, dy_store, octave, image, level, row, col, radius_max)
    inside = within(steps, torch.round(ORI_RADIUS_FACTOR * sigma).long())
    weight_sigma = ORI_SIGMA_FACTOR * sigma
    distance2 = (steps[:, None] ** 2 + steps[None, :] ** 2).to(dx)
    weight = torch.exp(distance2[None] * (-1.0 / (2 * weight_sigma * weight_sigma))[:, None, None])
    magnitude = torch.sqrt(dx * dx + dy * dy) * weight * (valid & inside)
    bins = torch.round(degrees(dy, dx) * (ORI_BINS / 360.0)).long() % ORI_BINS
    histogram = torch.zeros(len(row), ORI_BINS, device=row.device, dtype=dx.dtype)
    return histogram.scatter_add_(1, bins.flatten(1), magnitude.flatten(1))


def window_budget(device: torch.device) -> int:
    return WINDOW_CHUNK_ELEMENTS.get(device.type, WINDOW_CHUNK_ELEMENTS["cpu"])


def smoothed_histograms(dx_store: FlatStore, dy_store: FlatStore, octave, image, level, row, col,
                        sigma: torch.Tensor, settings: SiftSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's orientation histograms of the points, smoothed (N, 36), and where they peak (bool,
    N, 36; :func:`histogram_peaks` gives the dominant orientations), made in chunks of points
    (bounded memory on large images)."""
    largest_sigma = settings.sigma * 2.0 ** ((settings.levels + 0.5) / settings.levels)
    radius_max = int(math.floor(ORI_RADIUS_FACTOR * largest_sigma + 0.5))
    chunk = max(1, window_budget(row.device) // (2 * radius_max + 1) ** 2)
    points = (octave, image, level, row, col, sigma)
    parts = [orientation_histograms(dx_store, dy_store, *(t[i:i + chunk] for t in points), radius_max)
             for i in range(0, len(row), chunk)]
    histogram = torch.cat(parts) if parts else torch.zeros(0, ORI_BINS, device=row.device)
    smooth = ((histogram.roll(2, 1) + histogram.roll(-2, 1)) * (1 / 16)
              + (histogram.roll(1, 1) + histogram.roll(-1, 1)) * (4 / 16) + histogram * (6 / 16))
    highest = smooth.max(dim=1, keepdim=True).values
    return smooth, (smooth > smooth.roll(1, 1)) & (smooth > smooth.roll(-1, 1)) & (smooth >= ORI_PEAK_RATIO * highest)


def histogram_peaks(smooth: torch.Tensor, peaks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(point index, angle in degrees) of every peak, interpolated by a parabola (OpenCV's)."""
    point, peak = peaks.nonzero(as_tuple=True)
    before, centre, after = smooth[point, peak - 1], smooth[point, peak], smooth[point, (peak + 1) % ORI_BINS]
    position = peak.to(centre) + 0.5 * (before - after) / (before - 2 * centre + after)
    position = torch.where(position < 0, position + ORI_BINS, position)
    position = torch.where(position >= ORI_BINS, position - ORI_BINS, position)
    return point, reversed_degrees((360.0 / ORI_BINS) * position)


def reversed_degrees(angle: torch.Tensor) -> torch.Tensor:
    """360 - angle, 0 where that is 360 within float precision (OpenCV's KeyPoint.angle, which
    turns the other way, and back)."""
    turned = 360.0 - angle
    return torch.where((turned - 360.0).abs() < torch.finfo(torch.float32).eps, torch.zeros_like(turned), turned)


def descriptor_radius(sigma: torch.Tensor) -> torch.Tensor:
    """OpenCV's window radius of a descriptor: the 4x4 cells of 3 sigma, rotated (sqrt 2), with a
    half cell of interpolation on each side."""
    return torch.round(DESC_SCALE_FACTOR * sigma * math.sqrt(2) * (DESC_WIDTH + 1) * 0.5).long()  # OpenCV's order


def descriptors(dx_store: FlatStore, dy_store: FlatStore, found: Detections, settings: SiftSettings,
                runner: Runner | None = None) -> torch.Tensor:
    """OpenCV's 128-d descriptors (before its x512 scaling). With a ``runner`` (CUDA graphs):
    one call on the points padded to a power of two (at least DESCRIBE_CHUNK), in chunks of
    DESCRIBE_CHUNK points each with the window of the largest scale the settings allow.
    Otherwise chunks of points of similar scale, each with a window as large as its largest
    point needs (one read of the scales)."""
    if len(found.xy) == 0:
        return torch.zeros(0, DESC_WIDTH * DESC_WIDTH * DESC_BINS, device=found.xy.device)
    if runner is not None:
        described = describe_step(dx_store.shapes, settings)
        size = point_bucket(len(found.xy), DESCRIBE_CHUNK)
        return run_per_point(runner, described, (dx_store.values, dy_store.values), point_fields(found), size)[0]
    order = torch.argsort(found.sigma, descending=True)
    radii = descriptor_radius(found.sigma[order]).tolist()
    budget = window_budget(found.xy.device)
    parts, start = [], 0
    while start < len(radii):
        radius = radii[start]
        stop = start + max(1, budget // (2 * radius + 1) ** 2)
        parts.append(describe(dx_store, dy_store, *point_fields(found.take(order[start:stop])), radius))
        start = stop
    described = torch.cat(parts)
    return described[torch.argsort(order)]


@functools.lru_cache(maxsize=16)
def largest_radius(settings: SiftSettings) -> int:
    """The descriptor window radius of the largest scale a refined point can have (level
    ``levels`` + 0.5), and a pixel of margin (each point's window is masked to its own radius)."""
    largest = settings.sigma * 2.0 ** ((settings.levels + 0.5) / settings.levels)
    return int(descriptor_radius(torch.tensor(largest))) + 1


def point_fields(found: Detections) -> tuple[torch.Tensor, ...]:
    """What :func:`describe` reads of each point: octave, image, level, octave_xy, sigma, angle."""
    return found.octave, found.image, found.level, found.octave_xy, found.sigma, found.angle


def describe_in_chunks(dx_values: torch.Tensor, dy_values: torch.Tensor, *points: torch.Tensor, shapes: tuple,
                       radius_max: int) -> tuple[torch.Tensor]:
    """:func:`describe` on the flattened gradient stacks of ``shapes`` (a function of tensors),
    DESCRIBE_CHUNK points at a time (bounded memory)."""
    stores = FlatStore(dx_values, shapes), FlatStore(dy_values, shapes)
    return (torch.cat([describe(*stores, *(t[start:start + DESCRIBE_CHUNK] for t in points), radius_max)
                       for start in range(0, len(points[0]), DESCRIBE_CHUNK)]),)


def describe(dx_store: FlatStore, dy_store: FlatStore, octave: torch.Tensor, image: torch.Tensor, level: torch.Tensor,
             octave_xy: torch.Tensor, sigma: torch.Tensor, angle: torch.Tensor, radius_max: int) -> torch.Tensor:
    """The descriptors of points (:func:`point_fields`) whose windows fit in ``radius_max``."""
    d, n = DESC_WIDTH, DESC_BINS
    centre = torch.round(octave_xy).long()
    angle = reversed_degrees(angle)
    dx, dy, valid, steps = window(dx_store, dy_store, octave, image, level, centre[:, 1], centre[:, 0], radius_max)
    hist_width = DESC_SCALE_FACTOR * sigma
    radius = descriptor_radius(sigma)
    radians = torch.deg2rad(angle)
    cos_t, sin_t = (torch.cos(radians) / hist_width)[:, None, None], (torch.sin(radians) / hist_width)[:, None, None]
    i, j = steps.to(dx)[None, :, None], steps.to(dx)[None, None, :]
    c_rot, r_rot = j * cos_t - i * sin_t, j * sin_t + i * cos_t
    rbin, cbin = r_rot + d / 2 - 0.5, c_rot + d / 2 - 0.5
    inside = within(steps, radius) & (rbin > -1) & (rbin < d) & (cbin > -1) & (cbin < d) & valid
    magnitude = torch.sqrt(dx * dx + dy * dy) * torch.exp((c_rot * c_rot + r_rot * r_rot) * (-1.0 / (d * d * 0.5)))
    magnitude = magnitude * inside
    # trilinear votes as the products of three hat functions (the weights OpenCV gives the two
    # neighbouring cells of each axis), summed by one batched matrix product instead of a scatter
    cells = torch.arange(d, device=dx.device, dtype=dx.dtype)
    row_weight = (1 - (rbin[..., None] - cells).abs()).clamp(min=0)  # (K, S, S, d)
    col_weight = (1 - (cbin[..., None] - cells).abs()).clamp(min=0)
    obin = torch.remainder((degrees(dy, dx) - angle[:, None, None]) * (n / 360.0), n)
    bins = torch.arange(n + 1, device=dx.device, dtype=dx.dtype)  # bin n is bin 0 (circular)
    ori_weight = (1 - (obin[..., None] - bins).abs()).clamp(min=0)
    ori_weight = torch.cat((ori_weight[..., :1] + ori_weight[..., n:], ori_weight[..., 1:n]), dim=-1)
    spatial = (magnitude[..., None] * row_weight)[..., :, None] * col_weight[..., None, :]  # (K, S, S, d, d)
    k = len(octave)
    desc = (spatial.reshape(k, -1, d * d).transpose(1, 2) @ ori_weight.reshape(k, -1, n)).reshape(k, d * d * n)
    threshold = DESC_MAG_THRESHOLD * desc.norm(dim=1, keepdim=True)
    return torch.minimum(desc, threshold)


# ---- the whole extraction -----------------------------------------------------------------

def stack_shapes(batch: int, height: int, width: int, settings: SiftSettings) -> tuple[tuple[int, int, int, int], ...]:
    """(B, L, h, w) of each octave's DoG stack (L = levels + 2; the gradient stacks have
    ``levels`` levels) for images of (height, width)."""
    count = octave_count(height, width, settings)
    if settings.first_octave < 0:  # the precise 2x upscale
        height, width = 2 * height, 2 * width
    shapes = []
    for _ in range(count):
        shapes.append((batch, settings.levels + 2, height, width))
        height, width = height // 2, width // 2
    return tuple(shapes)


def scale_space(gray: torch.Tensor, settings: SiftSettings) -> tuple[torch.Tensor, ...]:
    """The static-shape front of :func:`detect` (replayed as one CUDA graph by the extractor):
    (B, H, W) images in 0..255 -> the flattened DoG stacks, where OpenCV looks for extrema
    (bool, same layout), and the flattened gradients dx, dy (:func:`gradient_maps`)."""
    with exact_fp32_convolutions(gray.device):  # TF32 blurs would move the DoG extrema on a GPU
        octaves = gaussian_pyramid(gray, settings)
    dogs = [stack[:, 1:] - stack[:, :-1] for stack in octaves]
    threshold = math.floor(0.5 * settings.contrast_threshold / settings.levels * 255)
    masks = [extrema_mask(dog, threshold, settings.levels) for dog in dogs]
    return (flatten(dogs), flatten(masks), *gradient_maps(octaves, settings.levels))


def refine_flat(dog_values: torch.Tensor, candidates: torch.Tensor, shapes: tuple, settings: SiftSettings):
    """:func:`refine` on the flattened DoG stacks of ``shapes`` (a function of tensors only)."""
    return refine(FlatStore(dog_values, shapes), candidates, settings)


def smoothed_histograms_flat(dx_values: torch.Tensor, dy_values: torch.Tensor, *points: torch.Tensor, shapes: tuple,
                             settings: SiftSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`smoothed_histograms` on the flattened gradient stacks of ``shapes``."""
    stores = FlatStore(dx_values, shapes), FlatStore(dy_values, shapes)
    return smoothed_histograms(*stores, *points, settings)


def gradient_shapes(shapes: tuple, settings: SiftSettings) -> tuple:
    """(B, levels, h, w) of the gradient stacks beside DoG stacks of ``shapes``."""
    return tuple((b, settings.levels, h, w) for b, _, h, w in shapes)


# The steps as the runner sees them, made in one place each, so that the warm-up captures the
# signatures that detect and descriptors replay.
def scale_space_step(settings: SiftSettings) -> functools.partial:
    return functools.partial(scale_space, settings=settings)


def refine_step(shapes: tuple, settings: SiftSettings) -> functools.partial:
    return functools.partial(refine_flat, shapes=shapes, settings=settings)


def histogram_step(gradients: tuple, settings: SiftSettings) -> functools.partial:
    return functools.partial(smoothed_histograms_flat, shapes=gradients, settings=settings)


def describe_step(gradients: tuple, settings: SiftSettings) -> functools.partial:
    return functools.partial(describe_in_chunks, shapes=gradients, radius_max=largest_radius(settings))


# runner(fn, *tensors, in_place=..., copy_outputs=...) -> fn(*tensors), e.g. Extractor.graphed: the
# scale space's outputs stay the graph's own and the per-point graphs read them where they are
Runner = Callable[..., Any]


def point_bucket(count: int, smallest: int = POINT_BUCKET_MIN) -> int:
    """Point sets are padded to a power of two (at least ``smallest``) for a graphed runner: a
    handful of captured sizes serve every frame."""
    return max(smallest, 1 << max(count - 1, 0).bit_length())


def run_per_point(runner: Runner | None, fn: Callable[..., Any], fixed: tuple[torch.Tensor, ...],
                  points: tuple[torch.Tensor, ...], size: int | None = None) -> tuple[torch.Tensor, ...]:
    """``fn(*fixed, *points)`` for a function whose outputs are per point (first dimension); with
    a runner, the points are padded to ``size`` (default :func:`point_bucket`; copies of the
    last point) and the outputs cut back."""
    count = len(points[0])
    if runner is None or count == 0:
        return fn(*fixed, *points)
    padded = pad_points(points, point_bucket(count) if size is None else size)
    return tuple(t[:count] for t in runner(fn, *fixed, *padded, in_place=len(fixed)))


def pad_points(points: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
    """Per-point tensors (a first dimension of N > 0) padded to ``size`` with copies of the last point."""
    return tuple(torch.cat((t, t[-1:].expand(size - len(t), *t.shape[1:]))) for t in points)


def warm_up(gray: torch.Tensor, settings: SiftSettings, runner: Runner, max_points: int, max_described: int) -> None:
    """Run ``runner``'s steps of :func:`detect` and :func:`descriptors` for ``gray``'s size, for
    every point bucket up to ``max_points`` and every bucket of described points up to
    ``max_described``, on stand-in points (a pixel inside the first octave), so that a graphed
    runner captures them now rather than in the middle of a stream."""
    dog_values, _, dx_values, dy_values = runner(scale_space_step(settings), gray, copy_outputs=False)
    shapes = stack_shapes(*gray.shape, settings)
    gradients = gradient_shapes(shapes, settings)
    refined, histograms = refine_step(shapes, settings), histogram_step(gradients, settings)
    described = describe_step(gradients, settings)

    def stand_in(size: int) -> tuple[torch.Tensor, ...]:
        """octave, image, level, row, col, sigma, octave_xy and angle of ``size`` points."""
        pixel = (0, 0, 1, BORDER, BORDER)
        where = tuple(torch.full((size,), value, dtype=torch.long, device=gray.device) for value in pixel)
        sigma, angle = (torch.full((size,), value, device=gray.device) for value in (settings.sigma, 0.0))
        return (*where, sigma, torch.full((size, 2), float(BORDER), device=gray.device), angle)

    size = POINT_BUCKET_MIN
    while size <= max(max_points, POINT_BUCKET_MIN):
        octave, image, level, row, col, sigma, _, _ = stand_in(size)
        candidates = FlatStore(dog_values, shapes).index(octave, image, level, row, col)
        run_per_point(runner, refined, (dog_values,), (candidates,))
        run_per_point(runner, histograms, (dx_values, dy_values), (octave, image, level, row, col, sigma))
        size *= 2
    size = DESCRIBE_CHUNK
    while size <= max(max_described, DESCRIBE_CHUNK):
        octave, image, level, _, _, sigma, octave_xy, angle = stand_in(size)
        run_per_point(runner, described, (dx_values, dy_values), (octave, image, level, octave_xy, sigma, angle), size)
        size *= 2


def detect(gray: torch.Tensor, settings: SiftSettings, runner: Runner | None = None
           ) -> tuple[Detections, FlatStore, FlatStore]:
    """(B, H, W) images in 0..255 (float32) -> every oriented point and the gradient stores.

    ``runner``: how the static-shape steps run (the scale space, the refinement and the
    orientation histograms, the last two on point sets padded to a bucket), e.g. as CUDA graphs
    (the extractor's ``graphed``); None: plain calls, unpadded."""
    scale_space_of = scale_space_step(settings)
    dog_values, extrema, dx_values, dy_values = (scale_space_of(gray) if runner is None else
                                                 runner(scale_space_of, gray, copy_outputs=False))
    shapes = stack_shapes(*gray.shape, settings)
    candidates = extrema.nonzero()[:, 0]
    store = FlatStore(dog_values, shapes)
    if len(candidates) > PREFILTER_CANDIDATES:  # mostly ties in flat regions: drop the settled ones first
        candidates = candidates[~settled_and_rejected(store, candidates, settings)]
    *where, offset, response, alive = run_per_point(runner, refine_step(shapes, settings), (dog_values,), (candidates,))
    keep = alive.nonzero()[:, 0]
    octave, image, level, row, col = (t[keep] for t in where)
    offset, response = offset[keep], response[keep]
    sigma = settings.sigma * 2.0 ** ((level.to(offset) + offset[:, 2]) / settings.levels)
    gradients = gradient_shapes(shapes, settings)
    histograms = histogram_step(gradients, settings)
    smooth, peaks = run_per_point(runner, histograms, (dx_values, dy_values), (octave, image, level, row, col, sigma))
    point, angle = histogram_peaks(smooth, peaks)
    dx_store, dy_store = FlatStore(dx_values, gradients), FlatStore(dy_values, gradients)
    octave_xy = torch.stack((col.to(offset) + offset[:, 0], row.to(offset) + offset[:, 1]), dim=1)[point]
    to_image = 2.0 ** (octave[point].to(offset) + settings.first_octave)
    found = Detections(
        xy=octave_xy * to_image[:, None], size=2 * sigma[point] * to_image, angle=angle,
        response=response[point], image=image[point], octave=octave[point], level=level[point],
        octave_xy=octave_xy, sigma=sigma[point],
    )
    return found, dx_store, dy_store
