"""SuperPoint (DeTone, Malisiewicz, Rabinovich, CVPRW 2018), in the layout of the official
``superpoint_v1.pth`` so that the released checkpoint loads without key conversion.

The detector head predicts, for every 8x8 cell, a 65-way softmax (64 pixels + "no keypoint");
the 64 pixel probabilities are rearranged into a full-resolution score map. Keypoints are the
local maxima of that map (non-maximum suppression with radius ``nms_radius``) above
``detection_threshold``, away from the image border, optionally the ``max_num_keypoints`` best.
Descriptors are bilinearly sampled from the coarse (H/8, W/8) descriptor map.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ...device import device_constant
from .base import Extractor, Features, empty_features, padded_selection, unpadded

CELL = 8  # the score map is predicted per 8x8 cell


def _running_max(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Maximum over the 2r+1 neighbours along ``dim`` (-1 or -2), the window clipped at the border."""
    k = 2 * radius + 1
    pad = (radius, radius) if dim == -1 else (0, 0, radius, radius)
    x = F.pad(x, pad, value=float("-inf"))
    # window length doubles with each step (log2(k) elementwise maxima), then one overlapping step
    span = 1
    while 2 * span <= k:
        n = x.shape[dim] - span
        x = torch.maximum(x.narrow(dim, 0, n), x.narrow(dim, span, n))
        span *= 2
    if span < k:
        rest = k - span
        n = x.shape[dim] - rest
        x = torch.maximum(x.narrow(dim, 0, n), x.narrow(dim, rest, n))
    return x


def max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum over the (2r+1) x (2r+1) window around each pixel of a (B, C, H, W) float tensor:
    ``max_pool2d(x, 2r+1, stride=1, padding=r)`` (window clipped at the border).

    On the CPU it is computed as two 1-D passes of log2(2r+1) shifted elementwise maxima: on a
    single-channel 640x480 map torch's CPU max_pool2d takes ~80 ms for r=4, this ~2 ms (one
    idle thread). On a GPU max_pool2d is one kernel instead of ~20 small ones.
    """
    if x.device.type != "cpu":
        return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)
    return _running_max(_running_max(x, radius, -1), radius, -2)


def nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Non-maximum suppression of a (B, H, W) score map; suppressed scores become 0.

    The semantics of the reference (SuperPoint/SuperGlue ``simple_nms``), reproduced exactly:
    keep every pixel that equals the maximum of its (2r+1)^2 window (ties are all kept), then,
    twice, also keep the pixels that are the maximum of their window once every pixel within r
    (Chebyshev distance) of a kept pixel is zeroed; such a pixel is itself never added.

    Only the window maximum is computed differently. On CPU, OpenCV's separable dilation and
    numpy take ~4 ms at 640x480 instead of the reference's ~220-300 ms; they also avoid the
    dozens of small OpenMP-parallel torch ops of :func:`max_filter` (used on other devices),
    each of which stalls for a scheduler slice when another process holds a core.
    """
    if radius < 0:
        raise ValueError(f"nms radius must be >= 0, got {radius}")
    if radius == 0:
        return scores
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        maps = scores.detach().numpy()
        keep = torch.from_numpy(np.stack([_local_maxima(np.ascontiguousarray(m), radius) for m in maps]))
        return scores.masked_fill(~keep, 0.0)  # applied in torch: gradients flow as in the reference
    return nms_torch(scores, radius)


def nms_torch(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`nms` in torch operations only (other devices, and ONNX export), ``radius`` >= 1."""
    x = scores[:, None]
    is_max = x == max_filter(x, radius)
    for _ in range(2):
        suppressed = max_filter(is_max.to(x.dtype), radius) > 0
        remaining = x.masked_fill(suppressed, 0.0)
        is_max = is_max | ((remaining == max_filter(remaining, radius)) & ~suppressed)  # ONNX: no in-place |=
    return x.masked_fill(~is_max, 0.0)[:, 0]


def _local_maxima(scores: np.ndarray, radius: int) -> np.ndarray:
    """The mask of pixels :func:`nms` keeps in one (H, W) float32 map (cv2.dilate ignores the
    outside of the image, like max_pool2d's -inf padding)."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    is_max = scores == cv2.dilate(scores, kernel)
    for _ in range(2):
        suppressed = cv2.dilate(is_max.view(np.uint8), kernel).astype(bool)
        remaining = np.where(suppressed, np.float32(0), scores)
        is_max |= (remaining == cv2.dilate(remaining, kernel)) & ~suppressed
    return is_max


def remove_borders(scores: torch.Tensor, border: int, fill: float = -1.0) -> torch.Tensor:
    """Set the scores of the ``border`` outermost rows and columns of (B, H, W) to ``fill``."""
    if border <= 0:
        return scores
    scores = scores.clone()
    scores[:, :border] = fill
    scores[:, -border:] = fill
    scores[:, :, :border] = fill
    scores[:, :, -border:] = fill
    return scores


# Pixels of a conv output computed per strip. Full-resolution 64-channel maps are 79 MB at
# 640x480: allocating one costs ~30 ms of page faults here (glibc maps blocks above 32 MB
# afresh each time) and it does not fit in any cache. At 640x480, strips of 32k-98k pixels
# halve the first block (420 -> 210 ms, 2 idle cores) and save ~15 % of the whole network on
# one thread; the largest (4 strips, 25 MB blocks) is kept because every strip adds small
# parallel ops, which cost a scheduler slice each when another process holds a core.
STRIP_PIXELS = 98304


def conv3x3_rows(x: torch.Tensor, conv: nn.Conv2d, pad_rows: int = 0) -> torch.Tensor:
    """``conv(x)`` for a 3x3 conv, zero-padded by 1 column and ``pad_rows`` rows; channels_last.

    With a single input channel (conv1a) oneDNN is slow (16 ms for a 54x640 strip, one thread)
    and returns NCHW, which makes the next layers slow too; as unfold + matmul it takes 2.5 ms
    and yields channels_last directly.
    """
    if conv.in_channels != 1:
        return F.conv2d(x, conv.weight, conv.bias, padding=(pad_rows, 1))
    b, _, h, w = x.shape
    cols = F.unfold(x, 3, padding=(pad_rows, 1)).transpose(1, 2)  # (B, H' * W, 9)
    weight = conv.weight.reshape(conv.out_channels, 9).t()
    out = torch.matmul(cols, weight.to(cols.dtype))  # (B, H' * W, C): NHWC
    out = out.add_(conv.bias.to(out.dtype))
    return out.view(b, h + 2 * pad_rows - 2, w, conv.out_channels).permute(0, 3, 1, 2)


def vgg_block(x: torch.Tensor, conv_a: nn.Conv2d, conv_b: nn.Conv2d) -> torch.Tensor:
    """``max_pool2d(relu(conv_b(relu(conv_a(x)))), 2)`` for 3x3 convs with padding 1, by strips.

    Each strip of pooled rows [p0, p1) needs conv_b rows [2p0, 2p1), hence conv_a rows
    [2p0-1, 2p1+1) and input rows [2p0-2, 2p1+2). Input rows outside the image are zeros
    (conv_a's padding); conv_a rows outside the image are set to zero afterwards, because conv_b
    pads with zeros, not with conv_a of zeros. The result equals the unstripped block.
    """
    b, _, h, w = x.shape
    ph = h // 2
    rows = max(1, STRIP_PIXELS // (2 * w))  # pooled rows per strip
    if rows >= ph:
        x = F.relu(conv3x3_rows(x, conv_a, pad_rows=1), inplace=True)
        return F.max_pool2d(F.relu(conv_b(x), inplace=True), 2)
    out = None
    for p0 in range(0, ph, rows):
        p1 = min(p0 + rows, ph)
        r0, r1 = 2 * p0 - 1, 2 * p1 + 1  # conv_a rows needed, in image rows
        top, bottom = max(0, 1 - r0), max(0, r1 + 1 - h)  # input rows outside the image
        strip = x[:, :, r0 - 1 + top:r1 + 1 - bottom]
        if top or bottom:  # only the first and last strips are padded (copied)
            strip = F.pad(strip, (0, 0, top, bottom)).contiguous(memory_format=torch.channels_last)
        y = F.relu(conv3x3_rows(strip, conv_a), inplace=True)
        if r0 < 0:
            y[:, :, :-r0] = 0
        if r1 > h:
            y[:, :, y.shape[2] - (r1 - h):] = 0
        y = F.relu(F.conv2d(y, conv_b.weight, conv_b.bias, padding=(0, 1)), inplace=True)
        y = F.max_pool2d(y, 2)
        if out is None:
            out = torch.empty((b, y.shape[1], ph, y.shape[3]), dtype=y.dtype, device=y.device,
                              memory_format=torch.channels_last)
        out[:, :, p0:p1] = y
    return out


def top_k(keypoints: torch.Tensor, scores: torch.Tensor, k: int | None):
    """The ``k`` highest-scoring keypoints (sorted by score); all of them when there are fewer."""
    if k is None or k >= len(scores):
        return keypoints, scores
    scores, idx = torch.topk(scores, k, sorted=True)
    return keypoints[idx], scores


def sample_descriptors(keypoints: torch.Tensor, descriptors: torch.Tensor, cell: int = CELL) -> torch.Tensor:
    """Bilinear descriptors at (N, 2) pixel keypoints from a (D, h, w) map, L2-normalised -> (N, D).

    The official SuperPoint convention, kept because the released weights were trained with it:
    ``x' = (x - cell/2 + 0.5) / (w*cell - cell/2 - 0.5)`` in [0, 1] for ``align_corners=True``.
    The first cell centre (3.5 px) maps exactly to descriptor 0 and the last pixel to the last
    descriptor, so the other cell centres are slightly off their descriptor (a known quirk).
    """
    d, h, w = descriptors.shape
    if len(keypoints) == 0:
        return descriptors.new_zeros((0, d))
    span = device_constant((w * cell - cell / 2 - 0.5, h * cell - cell / 2 - 0.5), keypoints.device, keypoints.dtype)
    return sample_unit_descriptors(descriptors, (keypoints - cell / 2 + 0.5) / span * 2 - 1)


def sample_unit_descriptors(descriptors: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a (D, h, w) map at (N, 2) ``grid_sample`` coordinates in [-1, 1]
    (``align_corners=True``), L2-normalised -> (N, D). Each caller owns its pixel -> grid mapping."""
    d = descriptors.shape[0]
    grid = grid.to(descriptors.dtype).view(1, 1, -1, 2)
    sampled = F.grid_sample(descriptors[None], grid, mode="bilinear", align_corners=True)
    return F.normalize(sampled.reshape(d, -1), p=2, dim=0).t()


def suppress(scores: torch.Tensor, radius: int, border: int) -> torch.Tensor:
    """Non-maximum suppression (:func:`nms`), then :func:`remove_borders`."""
    return remove_borders(nms(scores, radius), border)


class SuperPoint(Extractor):
    """SuperPoint detector and descriptor. Input: grayscale; output keypoints in pixel centres."""

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "superpoint",
        "weights": "superpoint_v1",
        "descriptor_dim": 256,
        "nms_radius": 4,
        "max_num_keypoints": None,
        "detection_threshold": 0.0005,
        "remove_borders": 4,
    }
    grayscale: ClassVar[bool] = True
    descriptor_dim: ClassVar[int] = 256
    has_scale_ori: ClassVar[bool] = False

    def _init(self, conf: DictConfig) -> None:
        name = type(self).__name__
        if conf.descriptor_dim is None or int(conf.descriptor_dim) <= 0:
            raise ValueError(f"{name}: descriptor_dim must be a positive int, got {conf.descriptor_dim}")
        for key in ("nms_radius", "remove_borders"):
            if conf[key] is None or int(conf[key]) < 0:
                raise ValueError(f"{name}: {key} must be an int >= 0, got {conf[key]}")
        if conf.detection_threshold is None or conf.detection_threshold < 0:
            raise ValueError(f"{name}: detection_threshold must be >= 0, got {conf.detection_threshold}")
        # instance value: a non-default descriptor_dim changes the output width
        self.descriptor_dim = int(conf.descriptor_dim)

        c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
        self.conv1a = nn.Conv2d(1, c1, 3, padding=1)
        self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
        self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
        self.conv3a = nn.Conv2d(c2, c3, 3, padding=1)
        self.conv3b = nn.Conv2d(c3, c3, 3, padding=1)
        self.conv4a = nn.Conv2d(c3, c4, 3, padding=1)
        self.conv4b = nn.Conv2d(c4, c4, 3, padding=1)
        self.convPa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convPb = nn.Conv2d(c5, CELL * CELL + 1, 1)
        self.convDa = nn.Conv2d(c4, c5, 3, padding=1)
        self.convDb = nn.Conv2d(c5, self.descriptor_dim, 1)

    def dense_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> score map (B, 8h, 8w) in float32 and descriptor map (B, D, h, w),
        h = H // 8: :meth:`network`, one CUDA graph per image size where graphs apply."""
        return self.run_static(self.network, images)

    def network(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs of :meth:`dense_outputs`, computed."""
        if images.device.type == "cpu":
            # channels_last: oneDNN's direct NHWC convolutions and a fast vectorised max pooling;
            # strips keep the first blocks' maps in cache (vgg_block)
            x = images.contiguous(memory_format=torch.channels_last)
            for name in ("conv1", "conv2", "conv3"):
                x = vgg_block(x, getattr(self, name + "a"), getattr(self, name + "b"))
        else:  # GPUs: whole-image convolutions (cuDNN), the fewest kernels
            x = images
            for name in ("conv1", "conv2", "conv3"):
                x = F.relu(getattr(self, name + "a")(x), inplace=True)
                x = F.max_pool2d(F.relu(getattr(self, name + "b")(x), inplace=True), 2)
        x = F.relu(self.conv4a(x), inplace=True)
        x = F.relu(self.conv4b(x), inplace=True)

        logits = self.convPb(F.relu(self.convPa(x), inplace=True)).float()
        # channel 8*i + j of a cell is its pixel (row i, column j): exactly pixel_shuffle's layout
        scores = F.pixel_shuffle(logits.softmax(1)[:, :-1].contiguous(), CELL)[:, 0]
        # kept channels_last on the CPU: grid_sample reads it 4x faster than copying it to NCHW first
        descriptors = self.convDb(F.relu(self.convDa(x), inplace=True)).float()
        return scores, F.normalize(descriptors, p=2, dim=1)

    def _extract(self, images: torch.Tensor) -> list[Features]:
        conf = self.conf
        h, w = images.shape[-2:]
        if h < CELL or w < CELL:
            raise ValueError(f"{type(self).__name__} needs images of at least {CELL}x{CELL} pixels "
                             f"(after resizing), got {w}x{h}")
        threshold = float(conf.detection_threshold)
        radius, border = int(conf.nms_radius), int(conf.remove_borders)
        k = conf.max_num_keypoints
        # a caller recording the dense maps wraps dense_outputs (Wireframe): then the two graphs below
        if k is not None and "dense_outputs" not in vars(self) and self.graphs_apply(images):
            # every shape fixed by padding to k: the whole extraction is one CUDA graph, one read
            settings = {"threshold": threshold, "radius": radius, "border": border, "limit": int(k)}
            return unpadded(self.graphed(functools.partial(self.padded_features, **settings), images),
                            self.descriptor_dim)
        scores, descriptors = self.dense_outputs(images)
        scores = self.run_static(functools.partial(suppress, radius=radius, border=border), scores)

        if images.device.type != "cpu":
            return self.select_batched(scores, descriptors, threshold)
        out: list[Features] = []
        for s, desc in zip(scores, descriptors, strict=True):
            yx = torch.nonzero(s > threshold)
            if len(yx) == 0:
                out.append(empty_features(self.descriptor_dim, device=images.device))
                continue
            kpt_scores = s[yx[:, 0], yx[:, 1]]
            keypoints = yx.flip(1).float()  # (row, col) -> (x, y): pixel centres
            keypoints, kpt_scores = top_k(keypoints, kpt_scores, conf.max_num_keypoints)
            out.append({
                "keypoints": keypoints,
                "keypoint_scores": kpt_scores,
                "descriptors": sample_descriptors(keypoints, desc),
            })
        return out

    def padded_features(self, images: torch.Tensor, threshold: float, radius: int, border: int,
                        limit: int) -> dict[str, torch.Tensor]:
        """:meth:`_extract` with fixed shapes (for a CUDA graph): every image's features padded to
        ``limit`` points (:func:`~.base.padded_selection`: the same points in the same order, ties
        in raster order), stacked, and ``counts`` (B,) of real ones."""
        scores, descriptors = self.network(images)
        width = scores.shape[-1]
        flat = suppress(scores, radius, border).flatten(1)
        indices, counts = padded_selection(flat, flat > threshold, limit)
        keypoints = torch.stack((indices % width, indices // width), dim=-1).float()
        sampled = [sample_descriptors(points, desc) for points, desc in zip(keypoints, descriptors, strict=True)]
        return {"keypoints": keypoints, "keypoint_scores": flat.gather(1, indices),
                "descriptors": torch.stack(sampled), "counts": counts}

    def select_batched(self, scores: torch.Tensor, descriptors: torch.Tensor, threshold: float) -> list[Features]:
        """The per-image selection of :meth:`_extract` for a whole batch with one read of the
        device (the counts above the threshold) instead of one per image: on a GPU each read
        waits for the stream, and a training batch holds dozens of images. The same points in
        the same order (all of them in raster order, else the best k by score)."""
        b, w = len(scores), scores.shape[-1]
        flat = scores.reshape(b, -1)
        valid = flat > threshold
        counts = valid.sum(1).tolist()
        k = self.conf.max_num_keypoints
        kept = [n if k is None else min(n, int(k)) for n in counts]
        values, index = torch.where(valid, flat, -torch.inf).topk(max(kept), dim=1)
        out: list[Features] = []
        for i, (n, found) in enumerate(zip(kept, counts, strict=True)):
            if n == 0:
                out.append(empty_features(self.descriptor_dim, device=scores.device))
                continue
            pixel, kpt_scores = index[i, :n], values[i, :n]
            if n == found:  # every point: raster order, as nonzero gives it
                pixel, order = pixel.sort()
                kpt_scores = kpt_scores[order]
            keypoints = torch.stack((pixel % w, pixel // w), dim=1).float()
            out.append({"keypoints": keypoints, "keypoint_scores": kpt_scores,
                        "descriptors": sample_descriptors(keypoints, descriptors[i])})
        return out
