"""ALIKED (Zhao et al., IEEE TIM 2023): kornia's network, the official detection, one-kernel
deformable sampling.

``self.model`` is ``kornia.feature.ALIKED`` and holds exactly the parameters of the official
checkpoints (Shiaoming/ALIKED ``aliked-n16.pth``), which therefore load into it unchanged. Two
of its parts are replaced, both for fidelity to the official model and for speed:

- Keypoint detection follows the official ``DKD`` (as in cvg/LightGlue's ``aliked.py``):
  ``simple_nms`` (the SuperPoint suppression, :func:`~.superpoint.nms`), then top-k or a
  threshold, then a soft-argmax over each keypoint's (2r+1)^2 window. Kornia 0.9 keeps strict
  local maxima instead, which selects other keypoints from the same score map (about half
  differ on random weights) and costs twice the operators.
- The deformable convolutions of the backbone sample with one ``grid_sample``
  (:func:`deform_conv2d`) instead of kornia's pure-torch gathers of four corners (~120
  operators, each a kernel launch on a GPU, per convolution). The result is
  ``torchvision.ops.deform_conv2d``'s, without depending on torchvision.

Keypoints are in pixel indices (``align_corners=True`` grid), i.e. pixel centres.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from kornia.feature.aliked.aliked import DeformableConv2d, InputPadder
from omegaconf import DictConfig

from ...device import cached_constant, device_constant
from ..base import strict_load
from .base import Extractor, Features, empty_features, padded_selection, strip_prefix, unpadded
from .superpoint import nms

SOFT_ARGMAX_TEMPERATURE = 0.1  # the official DKD's tuned temperature
THRESHOLD_MODE_LIMIT = 20000  # the official cap on keypoints in threshold mode without max_num_keypoints


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  padding: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` with stride 1, dilation 1, one group and one offset
    group (ALIKED's case), its inputs sampled by one ``grid_sample``.

    ``offset`` is (B, 2K, H', W') with (dy, dx) interleaved per kernel tap (K = kh * kw, taps
    in row-major order), ``mask`` (B, K, H', W') or None. Bilinear sampling with zeros outside
    the input is torchvision's interpolation. About six kernels per call on a GPU.
    """
    b, c, h, w = x.shape
    c_out, c_in, kh, kw = weight.shape
    k = kh * kw
    h_out, w_out = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    if c_in != c or offset.shape != (b, 2 * k, h_out, w_out):
        raise ValueError(f"deform_conv2d: input {tuple(x.shape)}, weight {tuple(weight.shape)} and offset "
                         f"{tuple(offset.shape)} do not fit one group with stride 1 and padding {padding}")
    # positions in float32 whatever the autocast: in fp16 (bf16) a 640-pixel axis would resolve
    # only 0.3 (2.5) pixels, so reduced-precision maps are sampled as float32
    taps, scale = tap_grid(kh, kw, h, w, padding, offset.device, torch.float32)
    dx_dy = offset.float().view(b, k, 2, h_out, w_out).flip(2).permute(0, 1, 3, 4, 2)  # (B, K, H', W', 2)
    grid = torch.addcmul(taps, dx_dy, scale).view(b, k * h_out, w_out, 2)
    sampled = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(b, c, k, h_out * w_out)  # (B, C, K, H'W')
    if mask is not None:
        sampled = sampled * mask.reshape(b, 1, k, h_out * w_out)
    out = weight.reshape(c_out, c * k) @ sampled.view(b, c * k, h_out * w_out)
    if bias is not None:
        out = out + bias[:, None]
    return out.view(b, c_out, h_out, w_out)


@cached_constant(maxsize=64)
def tap_grid(kh: int, kw: int, h: int, w: int, padding: int, device: torch.device,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The undeformed taps of a kh x kw kernel over an (h, w) map as ``grid_sample`` positions,
    (K, H', W', 2) in (x, y), and the (2,) scale of a pixel offset there.

    ``align_corners=False`` with pixel p at (2p + 1) / size - 1 addresses maps of any size, one
    pixel wide included. Made once per shape (outside inference mode: the tensors may meet
    autograd later).
    """
    with torch.inference_mode(False):
        h_out, w_out = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
        tap_rows = torch.arange(kh, dtype=torch.float64).repeat_interleave(kw)
        tap_cols = torch.arange(kw, dtype=torch.float64).repeat(kh)
        rows = torch.arange(h_out, dtype=torch.float64)[None, :, None] + tap_rows[:, None, None] - padding
        cols = torch.arange(w_out, dtype=torch.float64)[None, None, :] + tap_cols[:, None, None] - padding
        x_positions = ((2 * cols + 1) / w - 1).expand(-1, h_out, -1)
        y_positions = ((2 * rows + 1) / h - 1).expand(-1, -1, w_out)
        taps = torch.stack((x_positions, y_positions), dim=-1)
        scale = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64)
        return taps.to(device, dtype), scale.to(device, dtype)


class GridSampleDeformableConv2d(DeformableConv2d):
    """Kornia's module (same parameters and offsets) running :func:`deform_conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1 or self.dilation != 1:
            raise ValueError("GridSampleDeformableConv2d supports stride 1 and dilation 1 only")
        max_offset = max(x.shape[-2:]) / 4.0
        out = self.offset_conv(x)
        if self.mask:
            dy_dx_a, dy_dx_b, modulation = torch.chunk(out, 3, dim=1)
            offset, modulation = torch.cat((dy_dx_a, dy_dx_b), dim=1), torch.sigmoid(modulation)
        else:
            offset, modulation = out, None
        return deform_conv2d(x, offset.clamp(-max_offset, max_offset), self.regular_conv.weight,
                             self.regular_conv.bias, self.padding, modulation)


def dense_maps(net: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kornia's ``ALIKED.extract_dense_map`` (feature map, score map) with the score head in
    float32 under autocast: in reduced precision many top scores tie (bf16 keeps 8 bits), and
    the suppression and top-k then pick other pixels. The head is four convolutions of at most
    8 channels, a small share of the network."""
    padder = InputPadder(images.shape[-2], images.shape[-1], 32)
    x1 = net.block1(padder.pad(images))
    x2 = net.block2(net.pool2(x1))
    x3 = net.block3(net.pool4(x2))
    x4 = net.block4(net.pool4(x3))
    x1234 = torch.cat([net.gate(net.conv1(x1)), net.upsample2(net.gate(net.conv2(x2))),
                       net.upsample8(net.gate(net.conv3(x3))), net.upsample32(net.gate(net.conv4(x4)))], dim=1)
    with torch.autocast(images.device.type, enabled=False):
        score_map = torch.sigmoid(net.score_head(x1234.float()))
    return padder.unpad(F.normalize(x1234, p=2, dim=1)), padder.unpad(score_map)


def detect_keypoints(score_map: torch.Tensor, radius: int, top_k: int, threshold: float,
                     limit: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The official ALIKED detection on a (B, 1, H, W) score map: per image, keypoints in
    normalised coordinates (N, 2) ([-1, 1], ``align_corners=True``) and their scores (N,).

    ``top_k > 0``: the ``top_k`` best suppressed scores (in descending order). Otherwise the
    suppressed scores above ``threshold`` (or, in an image with none, above its mean score), in
    raster order, the ``limit`` best if there are more. Each is refined by a soft-argmax over
    its (2r+1)^2 window and scored by bilinear lookup.
    """
    scores, suppressed = suppressed_scores(score_map, radius)
    if top_k > 0:
        indices = list(torch.topk(suppressed, min(top_k, suppressed.shape[1])).indices)
    else:
        indices = []
        for image_scores, image_suppressed in zip(scores, suppressed, strict=True):
            kept = image_suppressed > threshold
            if not kept.any():
                kept = image_suppressed > image_scores.mean()
            found = kept.nonzero()[:, 0]
            if len(found) > limit:  # ties in raster order (the official sort leaves them open)
                found = found[image_scores[found].sort(descending=True, stable=True).indices[:limit]]
            indices.append(found)
    return [refine(score_map[i], found, radius) for i, found in enumerate(indices)]


def suppressed_scores(score_map: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, H, W) score map -> its scores and the suppressed ones (``simple_nms``, the border of
    width r at 0), both flattened (B, H * W)."""
    b, _, h, w = score_map.shape
    scores = score_map.detach()[:, 0]
    suppressed = nms(scores, radius)
    inside = torch.zeros_like(suppressed)
    inside[:, radius:h - radius, radius:w - radius] = 1.0  # the border of width r is dropped
    return scores.reshape(b, -1), (suppressed * inside).reshape(b, -1)


def threshold_selection(scores: torch.Tensor, suppressed: torch.Tensor, threshold: float, limit: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The threshold mode of :func:`detect_keypoints` for all images at once, in fixed shapes
    and without reading the device: per image the flat indices (B, L) of its selected pixels,
    L = min(limit, H * W), in the same order (raster order, or by descending score when more
    than ``limit`` pass, ties in raster order), padded with pixel 0, and how many are real (B,)."""
    kept = suppressed > threshold
    none = ~kept.any(dim=1, keepdim=True)  # an image without any: those above its mean score
    kept = torch.where(none, suppressed > scores.mean(dim=1, keepdim=True), kept)
    return padded_selection(scores, kept, limit)


def refine(score_map: torch.Tensor, indices: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-argmax of one (1, H, W) score map around the flat pixel ``indices`` (the windows
    gathered at the keypoints, with the zeros outside the map that the official ``unfold``
    sees): normalised keypoints (N, 2) and their bilinear scores (N,)."""
    _, h, w = score_map.shape
    size = 2 * radius + 1
    steps = torch.arange(-radius, radius + 1, device=score_map.device)
    padded = F.pad(score_map[0], (radius, radius, radius, radius)).reshape(-1)
    rows, cols = indices // w, indices % w
    window = ((rows[:, None, None] + steps[None, :, None] + radius) * (w + 2 * radius)
              + cols[:, None, None] + steps[None, None, :] + radius)  # (N, 2r+1, 2r+1), row-major
    patches = padded[window.reshape(len(indices), size * size)]
    grid = torch.stack(torch.meshgrid(steps, steps, indexing="ij")[::-1], dim=-1).reshape(-1, 2).to(patches)
    weights = ((patches - patches.max(dim=1, keepdim=True).values.detach()) / SOFT_ARGMAX_TEMPERATURE).exp()
    offset = weights @ grid / weights.sum(dim=1, keepdim=True)  # (x, y)
    pixels = torch.stack((cols, rows), dim=1).to(offset) + offset
    wh = device_constant((w - 1, h - 1), score_map.device, offset.dtype)
    normalised = pixels / wh * 2 - 1
    keypoint_scores = F.grid_sample(score_map[None], normalised.view(1, 1, -1, 2).to(score_map.dtype),
                                    mode="bilinear", align_corners=True)[0, 0, 0]
    return normalised, keypoint_scores


def describe(head: torch.nn.Module, feature_map: torch.Tensor, keypoints: list[torch.Tensor]) -> list[torch.Tensor]:
    """ALIKED's SDDH descriptor head (kornia's ``SDDH`` module, its parameters) for the points of
    all images at once: per point, offsets predicted from the 3x3 features around it, features
    sampled there, projected and summed with learned weights; L2-normalised (N_i, C) per image.

    The official computation, without its per-image loop and the two host-to-device copies it
    makes per image (each a wait on a GPU)."""
    b, c, h, w = feature_map.shape
    size = head.kernel_size
    counts = [len(k) for k in keypoints]
    wh = device_constant((w - 1, h - 1), feature_map.device, torch.float32)
    pixels = (torch.cat(keypoints).float() / 2 + 0.5) * wh  # (N, 2), x y
    image = torch.cat([torch.full((n,), i, device=feature_map.device) for i, n in enumerate(counts)])
    # the official patch corner: (int(pixel) - size / 2 + 1) truncated, inside the map
    corner = (pixels.long() - size / 2 + 1).long()
    corner = torch.stack((corner[:, 0].clamp(0, w - 1 - size), corner[:, 1].clamp(0, h - 1 - size)), dim=1)
    steps = torch.arange(size, device=feature_map.device)
    rows = corner[:, 1, None, None] + steps[None, :, None]
    cols = corner[:, 0, None, None] + steps[None, None, :]
    flat = feature_map.permute(0, 2, 3, 1).reshape(-1, c)
    patches = flat[(image[:, None, None] * h + rows) * w + cols].permute(0, 3, 1, 2)  # (N, C, size, size)
    offsets = head.offset_conv(patches).clamp(-max(h, w) / 4.0, max(h, w) / 4.0)[:, :, 0, 0]
    n, n_pos = len(pixels), head.n_pos
    if head.mask:
        offsets = offsets.view(n, 3, n_pos).permute(0, 2, 1)
        weights, offsets = torch.sigmoid(offsets[:, :, -1]), offsets[:, :, :-1]
    else:
        offsets, weights = offsets.view(n, 2, n_pos).permute(0, 2, 1), None
    positions = 2.0 * (pixels[:, None] + offsets.float()) / wh - 1  # (N, n_pos, 2), float32 as in deform_conv2d
    features = feature_map.float()
    sampled = torch.cat([  # (C, N_i * n_pos) per image
        F.grid_sample(features[i:i + 1], part.reshape(1, -1, 1, 2), mode="bilinear", align_corners=True)[0, :, :, 0]
        for i, part in enumerate(positions.split(counts))], dim=1)
    sampled = sampled.view(c, n, n_pos).permute(1, 0, 2)[..., None]  # (N, C, n_pos, 1)
    if weights is not None:
        sampled = sampled * weights[:, None, :, None]
    projected = torch.selu(head.sf_conv(sampled))[..., 0]  # (N, C, n_pos)
    if head.conv2d:
        descriptors = head.convM(projected.reshape(n, -1)[:, :, None, None])[:, :, 0, 0]
    else:
        descriptors = torch.einsum("ncp,pcd->nd", projected, head.agg_weights)
    return list(F.normalize(descriptors, p=2.0, dim=1).split(counts))


# descriptor width of each kornia ALIKED configuration
DESCRIPTOR_DIMS = {"aliked-t16": 64, "aliked-n16": 128, "aliked-n16rot": 128, "aliked-n32": 128}


class ALIKED(Extractor):
    """ALIKED keypoints and descriptors (RGB input; 128-d except aliked-t16, 64-d)."""

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "aliked",
        "weights": "aliked-n16",
        "model_name": "aliked-n16",
        "max_num_keypoints": None,
        "detection_threshold": 0.2,  # > 0: threshold mode; <= 0: the top max_num_keypoints
        "nms_radius": 2,
    }
    grayscale: ClassVar[bool] = False
    descriptor_dim: ClassVar[int] = 128
    has_scale_ori: ClassVar[bool] = False
    # On CPUs bf16 is no faster here (the float32 sampling and score head cost what the
    # convolutions save), so ALIKED stays in float32 there
    autocast_devices: ClassVar[frozenset[str]] = frozenset({"cuda"})

    def _init(self, conf: DictConfig) -> None:
        from kornia.feature import ALIKED as KorniaALIKED

        name = type(self).__name__
        if conf.model_name not in DESCRIPTOR_DIMS:
            raise ValueError(f"{name}: unknown model_name '{conf.model_name}', expected one of "
                             f"{sorted(DESCRIPTOR_DIMS)}")
        if conf.weights in DESCRIPTOR_DIMS and conf.weights != conf.model_name:
            # aliked-n16rot has the shapes of aliked-n16: a mix-up would load silently
            raise ValueError(f"{name}: weights '{conf.weights}' are for another model than "
                             f"model_name '{conf.model_name}'; set weights to '{conf.model_name}'")
        if conf.nms_radius is None or int(conf.nms_radius) < 0:
            raise ValueError(f"{name}: nms_radius must be an int >= 0, got {conf.nms_radius}")
        if conf.detection_threshold is None:
            raise ValueError(f"{name}: detection_threshold must be a number (<= 0 selects top-k mode)")
        if conf.detection_threshold <= 0 and conf.max_num_keypoints is None:
            raise ValueError(f"{name}: detection_threshold <= 0 selects top-k mode, "
                             "which needs max_num_keypoints")
        self.descriptor_dim = DESCRIPTOR_DIMS[conf.model_name]
        # its own detection settings are unused: detection is ours (detect_keypoints)
        self.model = KorniaALIKED(model_name=conf.model_name)
        for module in self.model.modules():
            if type(module) is DeformableConv2d:
                module.__class__ = GridSampleDeformableConv2d  # same parameters, another forward

    def load_checkpoint_state_dict(self, state_dict: Mapping[str, torch.Tensor], origin: str = "") -> None:
        """The official checkpoint is the state dict of the kornia module itself; a state dict
        of this wrapper (keys prefixed ``model.``) is accepted too."""
        strict_load(self.model, strip_prefix(state_dict, "model."), origin, self.release_extras)

    def network(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`dense_maps` of this model: the feature map and the score map."""
        return dense_maps(self.model, images)

    def _extract(self, images: torch.Tensor) -> list[Features]:
        conf = self.conf
        top_k = int(conf.max_num_keypoints) if conf.detection_threshold <= 0 else -1
        limit = THRESHOLD_MODE_LIMIT if conf.max_num_keypoints is None else int(conf.max_num_keypoints)
        settings = {"radius": int(conf.nms_radius), "top_k": top_k, "threshold": float(conf.detection_threshold),
                    "limit": limit}
        if top_k > 0:  # every shape is fixed: the whole extraction is one CUDA graph
            return self.run_static(functools.partial(self.features, **settings), images)
        if self.graphs_apply(images):  # threshold mode made static by padding: one graph, one read
            del settings["top_k"]
            return unpadded(self.graphed(functools.partial(self.padded_features, **settings), images),
                            self.descriptor_dim)
        return self.features(images, **settings)

    def features(self, images: torch.Tensor, radius: int, top_k: int, threshold: float, limit: int) -> list[Features]:
        """Per image the features (:func:`detect_keypoints`'s settings)."""
        feature_map, score_map = self.network(images)
        detections = detect_keypoints(score_map, radius, top_k, threshold, limit)
        return self.described(images, feature_map, detections)

    def padded_features(self, images: torch.Tensor, radius: int, threshold: float,
                        limit: int) -> dict[str, torch.Tensor]:
        """The threshold mode of :meth:`features` with fixed shapes (for a CUDA graph): every
        image's features padded to ``limit`` points, stacked, and ``counts`` (B,) of real ones.
        The same points in the same order (:func:`threshold_selection`)."""
        feature_map, score_map = self.network(images)
        indices, counts = threshold_selection(*suppressed_scores(score_map, radius), threshold, limit)
        detections = [refine(score_map[i], found, radius) for i, found in enumerate(indices)]
        per_image = self.described(images, feature_map, detections)
        return {**{key: torch.stack([f[key] for f in per_image]) for key in per_image[0]}, "counts": counts}

    def described(self, images: torch.Tensor, feature_map: torch.Tensor,
                  detections: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Features]:
        """Per image the features of the detections (normalised keypoints and scores): keypoints
        in pixels and the SDDH descriptors."""
        normalised = [keypoints for keypoints, _ in detections]
        descriptors = describe(self.model.desc_head, feature_map, normalised)
        h, w = images.shape[-2:]
        out: list[Features] = []
        for keypoints, (_, scores), desc in zip(normalised, detections, descriptors, strict=True):
            if len(keypoints) == 0:
                out.append(empty_features(self.descriptor_dim, device=images.device))
                continue
            wh = device_constant((w - 1, h - 1), keypoints.device, keypoints.dtype)
            out.append({
                "keypoints": (wh * (keypoints + 1) / 2).float(),  # the official conversion to pixels
                "keypoint_scores": scores.float(),
                "descriptors": desc.float(),
            })
        return out
