"""Shared front end of all extractors: input checks, resizing, output contract.

Output contract (see docs/architecture.md):
  keypoints        (B, N, 2) float32, pixels of the *original* image, OpenCV convention
                   (centre of the top-left pixel at (0, 0))
  keypoint_scores  (B, N)
  descriptors      (B, N, D)
  scales, oris     (B, N), only for methods that have them (pixels, radians)
  keypoint_mask    (B, N) bool, False for padding when images of a batch have different counts
  image_size       (B, 2) (W, H) of the original image
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from kornia.geometry.transform import resize as kornia_resize
from omegaconf import DictConfig
from torch import nn

from ...device import device_constant
from ...image import to_grayscale, to_rgb
from ..base import BaseModel
from ..cuda_graphs import GraphedCalls

T = TypeVar("T", torch.Tensor, np.ndarray)

GRAPH_MAX_BATCH = 8  # images per call up to which the static-shape steps are CUDA-graphed

Features = dict[str, torch.Tensor]


class Extractor(BaseModel):
    """Subclasses implement ``_extract(images) -> list of per-image feature dicts``.

    ``images`` arrive as (B, C, H, W) float in [0, 1], already resized and converted to
    grayscale or RGB as ``grayscale`` says. Keypoints come back in resized pixels; this
    class maps them to the original image.
    """

    default_conf: ClassVar[dict[str, Any]] = {
        "resize": 1024,  # long side in pixels, None to keep the input size
        "max_num_keypoints": None,
        # replay the static-shape work as CUDA graphs (on CUDA, without autograd, up to 8 images)
        "cuda_graphs": True,
    }
    grayscale: ClassVar[bool] = True
    descriptor_dim: ClassVar[int] = 0
    has_scale_ori: ClassVar[bool] = False
    # Device types on which autocast (bf16/fp16) may run this extractor's network; elsewhere it
    # runs in float32 whatever the pipeline's precision (see autocast_allowed).
    autocast_devices: ClassVar[frozenset[str]] = frozenset({"cpu", "cuda"})

    def __init__(self, conf=None) -> None:
        super().__init__(conf)
        if self.conf.resize is not None and int(self.conf.resize) <= 0:
            raise ValueError(f"{type(self).__name__}: resize must be positive or None, got {self.conf.resize}")
        mk = self.conf.max_num_keypoints
        if mk is not None and int(mk) <= 0:
            raise ValueError(f"{type(self).__name__}: max_num_keypoints must be positive or None, got {mk}")

    def _init(self, conf: DictConfig) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def graphed_calls(self) -> GraphedCalls:
        """This extractor's captured graphs (made at first use, after every submodule exists)."""
        calls = self.__dict__.get("_graphed_calls")
        if calls is None:
            calls = self.__dict__["_graphed_calls"] = GraphedCalls(self)
        return calls

    def graphs_apply(self, images: torch.Tensor) -> bool:
        """Whether the static-shape steps of a call on ``images`` replay as CUDA graphs (or, in
        tests, run through the graphs' buffers): ``cuda_graphs`` on, a device where graphs apply
        and at most GRAPH_MAX_BATCH images. Larger batches (training) are bound by arithmetic,
        not launches, and a graph would keep the memory of all their activations."""
        return (bool(self.conf.cuda_graphs) and len(images) <= GRAPH_MAX_BATCH
                and self.graphed_calls.applies(images.device))

    def graphed(self, fn: Callable[..., Any], *inputs: torch.Tensor, **options: Any) -> Any:
        """``fn(*inputs)`` replayed as a CUDA graph (:class:`~..cuda_graphs.GraphedCalls`, whose
        ``options`` chain graphs without copies; settings ``fn`` reads go in as the arguments of
        a ``functools.partial``), for callers that checked :meth:`graphs_apply`."""
        return self.graphed_calls(fn, *inputs, **options)

    def run_static(self, fn: Callable[[torch.Tensor], Any], images: torch.Tensor) -> Any:
        """``fn(images)`` for a function of a batch of images (or of maps of them) whose shapes
        follow the images': graphed where :meth:`graphs_apply`, else a plain call."""
        return self.graphed(fn, images) if self.graphs_apply(images) else fn(images)

    def warm_up(self, images: torch.Tensor) -> int:
        """Prepare what the first calls on images like ``images`` would otherwise build while a
        stream runs (captures beyond those of one call); returns how many were made. Nothing
        here: one call on them captures every graph of most extractors."""
        return 0

    def __getstate__(self) -> dict[str, Any]:
        # the captured graphs belong to this instance's tensors: never pickled or deep-copied
        return {key: value for key, value in super().__getstate__().items() if key != "_graphed_calls"}

    def _extract(self, images: torch.Tensor) -> list[Features]:  # pragma: no cover - abstract
        raise NotImplementedError

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = to_grayscale(images) if self.grayscale else to_rgb(images)
        if self.conf.resize is not None:
            h, w = images.shape[-2:]
            if max(h, w) != int(self.conf.resize):
                images = kornia_resize(images, int(self.conf.resize), side="long", antialias=True)
        return images

    def forward(self, data: dict[str, torch.Tensor]) -> Features:
        images = data["image"]
        resized, scale = prepare_images(self, images)
        per_image = self._extract(resized)
        for feats in per_image:
            feats["keypoints"] = to_original_pixels(feats["keypoints"].float(), scale)
            if "scales" in feats:
                feats["scales"] = feats["scales"].float() / scale.mean()
        batch = pad_and_stack(per_image, self.descriptor_dim, images.device)
        batch["image_size"] = image_sizes(images)
        return batch


def padded_selection(scores: torch.Tensor, kept: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of (B, N) flat scores, the selection the per-image detections make of the
    ``kept`` pixels: all of them in raster order or, when more than ``limit`` are kept, the
    ``limit`` best by descending score (ties in raster order). In fixed shapes and without
    reading the device (for a CUDA graph): flat indices (B, L), L = min(limit, N), padded with
    pixel 0, and how many are real (B,)."""
    n = scores.shape[1]
    counts = kept.sum(dim=1)
    limit = min(limit, n)
    pixel = torch.arange(n, device=scores.device)
    raster = torch.where(kept, pixel, n).topk(limit, dim=1, largest=False).values  # ascending
    ranked = torch.where(kept, scores, -torch.inf).sort(dim=1, descending=True, stable=True).indices[:, :limit]
    indices = torch.where((counts > limit)[:, None], ranked, raster)
    real = torch.arange(limit, device=scores.device) < counts[:, None]
    return torch.where(real, indices, 0), counts.clamp(max=limit)


def unpadded(padded: dict[str, torch.Tensor], descriptor_dim: int) -> list[Features]:
    """Per-image features of padded ones (B, L, ...) with their ``counts`` (B,): the counts are
    read (the one wait for the device of a graphed extraction) and each image's tensors cut."""
    counts = padded.pop("counts").tolist()
    device = padded["keypoints"].device
    return [{key: value[i, :n] for key, value in padded.items()} if n else empty_features(descriptor_dim, device=device)
            for i, n in enumerate(counts)]


def autocast_allowed(model: nn.Module, device: torch.device) -> bool:
    """Whether ``model`` (an extractor, or a model wrapping one) may run under autocast on ``device``."""
    return device.type in getattr(model, "autocast_devices", Extractor.autocast_devices)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Mapping[str, torch.Tensor]:
    """Drop ``prefix`` from the keys when every key has it, else return the dict unchanged."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def num_valid_keypoints(feats: Any) -> int:
    """Real keypoints of batch-of-one features (torch or numpy): ``keypoint_mask``'s count, else all."""
    mask = feats.get("keypoint_mask")
    if mask is not None:
        return int(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)[0].sum())
    return int(feats["keypoints"].shape[-2])


def pad_and_stack(per_image: list[Features], descriptor_dim: int, device: torch.device) -> Features:
    """Stack variable-length per-image features into padded (B, N, ...) tensors + mask."""
    n_max = max((int(f["keypoints"].shape[0]) for f in per_image), default=0)
    keys = per_image[0].keys()
    out: Features = {}
    for key in keys:
        tensors = []
        for feats in per_image:
            t = feats[key].to(device)
            n = t.shape[0]
            if n < n_max:
                pad = t.new_zeros((n_max - n, *t.shape[1:]))
                t = torch.cat([t, pad], 0)
            tensors.append(t)
        out[key] = torch.stack(tensors, 0)
    if out["descriptors"].ndim == 2:  # zero keypoints in every image
        out["descriptors"] = out["descriptors"].reshape(len(per_image), 0, descriptor_dim)
    # filled on the device: a mask made from host counts would be a blocking copy on a GPU
    out["keypoint_mask"] = torch.zeros((len(per_image), n_max), dtype=torch.bool, device=device)
    for i, feats in enumerate(per_image):
        out["keypoint_mask"][i, :int(feats["keypoints"].shape[0])] = True
    out["keypoints"] = out["keypoints"].float()
    out["keypoint_scores"] = out["keypoint_scores"].float()
    return out


def empty_features(descriptor_dim: int, with_scale_ori: bool = False, device=None) -> Features:
    """Features of an image without keypoints, with the right trailing shapes."""
    feats = {
        "keypoints": torch.zeros((0, 2), device=device),
        "keypoint_scores": torch.zeros((0,), device=device),
        "descriptors": torch.zeros((0, descriptor_dim), device=device),
    }
    if with_scale_ori:
        feats["scales"] = torch.zeros((0,), device=device)
        feats["oris"] = torch.zeros((0,), device=device)
    return feats


def prepare_images(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a (B, C, H, W) batch and resize it with ``model.preprocess``; returns the resized
    images and the scale (sx, sy) = resized / original size, shared by every detector."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{type(model).__name__} expects images (B, C, H, W) with C in {{1, 3}}, "
                         f"got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    resized = model.preprocess(images)
    rh, rw = resized.shape[-2:]
    dtype = images.dtype if images.is_floating_point() else torch.float32
    return resized, device_constant((rw / w, rh / h), images.device, dtype)


def to_original_pixels(points: T, scale: T) -> T:
    """Pixels of the resized image -> pixels of the original one (torch or numpy, ``(..., 2)``).
    Pixel centres map onto each other: x_orig + 0.5 = (x_resized + 0.5) / scale."""
    return (points + 0.5) / scale - 0.5


def image_sizes(images: torch.Tensor) -> torch.Tensor:
    """(B, 2) float32 (W, H) of a (B, C, H, W) batch: the ``image_size`` of the feature contract."""
    h, w = images.shape[-2:]
    return device_constant(((w, h),), images.device).expand(len(images), 2).clone()
