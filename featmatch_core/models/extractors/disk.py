"""DISK (Tyszkiewicz, Fua, Trulls, NeurIPS 2020) through ``kornia.feature.DISK``.

The kornia module is ``self.model``; the official ``depth-save.pth`` stores its state dict
under the key ``"extractor"`` (beside training state). That nested form, a flat state dict and
a state dict of this wrapper (keys prefixed ``model.``) all load. Kornia returns integer pixel
indices, i.e. pixel centres.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from kornia.feature.disk.detector import heatmap_to_keypoints
from kornia.geometry.subpix import nms2d
from omegaconf import DictConfig

from ..base import strict_load
from .base import Extractor, Features, empty_features, strip_prefix, unpadded


def top_maxima(heatmaps: torch.Tensor, n: int, window: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Kornia's ``heatmap_to_keypoints`` for a whole batch in fixed shapes, without reading the
    device: per image the flat pixel indices (B, n') of its strict local maxima above
    ``threshold``, the ``n`` strongest (ties at the n-th score in raster order) in raster order,
    n' = min(n, H * W), padded with pixel 0, and how many are real (B,)."""
    b, _, h, w = heatmaps.shape
    found = nms2d(heatmaps, (window, window), mask_only=True) & (heatmaps > threshold)
    found, logits = found.reshape(b, -1), heatmaps.reshape(b, -1)
    n = min(n, h * w)
    strongest = torch.where(found, logits, -torch.inf).sort(dim=1, descending=True, stable=True).indices[:, :n]
    counts = found.sum(dim=1).clamp(max=n)
    real = torch.arange(n, device=heatmaps.device) < counts[:, None]
    raster = torch.where(real, strongest, h * w).sort(dim=1).values  # the padding (h * w) last
    return torch.where(real, raster, 0), counts


class DISK(Extractor):
    """DISK keypoints and descriptors (RGB input, ``desc_dim``-d descriptors)."""

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "disk",
        "weights": "disk-depth",
        "max_num_keypoints": None,
        "desc_dim": 128,
        "nms_window_size": 5,  # odd NMS window side, pixels
        "detection_threshold": 0.0,  # heatmap logit a keypoint must exceed
        "pad_if_not_divisible": True,  # zero-pad to a multiple of 16 (the U-Net needs it)
    }
    grayscale: ClassVar[bool] = False
    descriptor_dim: ClassVar[int] = 128
    has_scale_ori: ClassVar[bool] = False
    # fp16 on CUDA (tensor cores); float32 on CPUs, where bf16 is 2.3x faster but moves 5 % of
    # the points by more than a pixel (docs/benchmarks/cpu.md)
    autocast_devices: ClassVar[frozenset[str]] = frozenset({"cuda"})

    def _init(self, conf: DictConfig) -> None:
        from kornia.feature import DISK as KorniaDISK

        name = type(self).__name__
        if conf.desc_dim is None or int(conf.desc_dim) <= 0:
            raise ValueError(f"{name}: desc_dim must be a positive int, got {conf.desc_dim}")
        window = conf.nms_window_size
        if window is None or int(window) < 1 or int(window) % 2 == 0:
            raise ValueError(f"{name}: nms_window_size must be an odd int >= 1, got {window}")
        if conf.detection_threshold is None:
            raise ValueError(f"{name}: detection_threshold must be a number")
        self.descriptor_dim = int(conf.desc_dim)
        self.model = KorniaDISK(desc_dim=self.descriptor_dim)

    def load_checkpoint_state_dict(self, state_dict: Mapping[str, torch.Tensor], origin: str = "") -> None:
        # The released depth-save.pth wraps the weights as {'extractor': ...}; later saves of the
        # DISK code base use {'disk': ...} (its detect.py accepts both); other entries are ignored.
        nested = next((state_dict[k] for k in ("extractor", "disk") if isinstance(state_dict.get(k), Mapping)), None)
        if nested is not None:
            state_dict = nested
        strict_load(self.model, strip_prefix(state_dict, "model."), origin, self.release_extras)

    def dense_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits (B, 1, H, W) and raw descriptors (B, D, H, W) of images of any size
        (zero-padded to multiples of 16 for the U-Net, cropped back), as kornia's forward."""
        h, w = images.shape[-2:]
        padded = F.pad(images, (0, -w % 16, 0, -h % 16), value=0.0) if h % 16 or w % 16 else images
        heatmaps, descriptors = self.model.heatmap_and_dense_descriptors(padded)
        return heatmaps[..., :h, :w], descriptors[..., :h, :w]

    def padded_features(self, images: torch.Tensor, n: int, window: int, threshold: float) -> dict[str, torch.Tensor]:
        """:meth:`_extract` with fixed shapes (for a CUDA graph): every image's features padded to
        ``n`` points (:func:`top_maxima`), stacked, and ``counts`` (B,) of real ones."""
        heatmaps, descriptors = self.dense_maps(images)
        b, _, h, w = heatmaps.shape
        indices, counts = top_maxima(heatmaps, n, window, threshold)
        keypoints = torch.stack((indices % w, indices // w), dim=-1)
        scores = heatmaps.reshape(b, -1).gather(1, indices)
        sampled = descriptors.flatten(2).gather(2, indices[:, None].expand(-1, descriptors.shape[1], -1))
        return {"keypoints": keypoints.float(), "keypoint_scores": scores.float(),
                "descriptors": F.normalize(sampled.transpose(1, 2), dim=-1).float(), "counts": counts}

    def _extract(self, images: torch.Tensor) -> list[Features]:
        h, w = images.shape[-2:]
        if -(-h // 16) * -(-w // 16) < 2:  # the U-Net's instance norms need > 1 pixel at 1/16
            raise ValueError(f"{type(self).__name__} needs an image larger than 16x16 pixels "
                             f"(after resizing), got {w}x{h}")
        if not self.conf.pad_if_not_divisible and (h % 16 or w % 16):
            raise ValueError(f"{type(self).__name__}: image size {w}x{h} is not a multiple of 16; "
                             "set pad_if_not_divisible=True or resize the input")
        k = self.conf.max_num_keypoints
        settings = {"window": int(self.conf.nms_window_size), "threshold": float(self.conf.detection_threshold)}
        if k is not None and self.graphs_apply(images):  # static by padding to k: one graph, one read
            return unpadded(self.graphed(functools.partial(self.padded_features, n=int(k), **settings), images),
                            self.descriptor_dim)
        # kornia's DISK.forward, its network (the U-Net) replayed as one CUDA graph per image size
        heatmaps, descriptors = self.run_static(self.dense_maps, images)
        keypoints = heatmap_to_keypoints(heatmaps, n=None if k is None else int(k), window_size=settings["window"],
                                         score_threshold=settings["threshold"])
        out: list[Features] = []
        for feats in (found.merge_with_descriptors(desc) for found, desc in zip(keypoints, descriptors, strict=True)):
            if feats.keypoints.shape[0] == 0:
                out.append(empty_features(self.descriptor_dim, device=images.device))
                continue
            out.append({
                "keypoints": feats.keypoints.float(),
                "keypoint_scores": feats.detection_scores.float(),
                "descriptors": feats.descriptors.float(),
            })
        return out
