"""ONNX export of the extractors that are networks end to end: SuperPoint and DISK.

Graph: ``image`` (1, C, H, W) float32 in [0, 1] (C = 1 for SuperPoint, 3 for DISK), already
resized by the caller as the extractor's front end does (``resize`` long side; DISK: H and W
multiples of 16) -> ``keypoints`` (N, 2) pixels of that image (top-left pixel centre at (0, 0)),
``scores`` (N,), ``descriptors`` (N, D) L2-normalised; H, W and N are dynamic. Detection (NMS,
threshold, border, ``max_num_keypoints``) is in the graph, with the extractor's config values.
With ``max_num_keypoints`` the strongest are kept (SuperPoint: by decreasing score, like
``torch.topk``; DISK: in raster order, like kornia); an exact tie at the cut may pick another
point than PyTorch. SIFT (OpenCV, no network) and ALIKED (deformable convolutions, not in
opset 17) have no export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import to_container
from ..models.extractors.base import Extractor
from ..models.extractors.superpoint import CELL, nms_torch, sample_unit_descriptors
from .onnx_files import save_model, set_metadata, trace_to_onnx

EXTRACTOR_OUTPUTS = ("keypoints", "scores", "descriptors")


def border_mask(height: Tensor, width: Tensor, border: int, like: Tensor) -> Tensor:
    """(H, W) bool: False on the ``border`` outermost rows and columns (shapes stay dynamic)."""
    rows = torch.arange(height, device=like.device)
    cols = torch.arange(width, device=like.device)
    inside_rows = (rows >= border) & (rows < height - border)
    inside_cols = (cols >= border) & (cols < width - border)
    return inside_rows[:, None] & inside_cols[None, :]


class SuperPointGraph(nn.Module):
    """SuperPoint's dense network (plain convolutions: the strip-wise CPU path of the PyTorch
    model computes the same values), torch NMS, threshold, border, top-k and sampling."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m, conf = self.model, self.model.conf
        x = image
        for name in ("conv1", "conv2", "conv3"):
            x = F.relu(getattr(m, name + "a")(x))
            x = F.max_pool2d(F.relu(getattr(m, name + "b")(x)), 2)
        x = F.relu(m.conv4b(F.relu(m.conv4a(x))))
        logits = m.convPb(F.relu(m.convPa(x)))
        scores = F.pixel_shuffle(logits.softmax(1)[:, :-1], CELL)[:, 0]
        dense = F.normalize(m.convDb(F.relu(m.convDa(x))), p=2, dim=1)[0]
        if int(conf.nms_radius) > 0:
            scores = nms_torch(scores, int(conf.nms_radius))
        scores = scores[0]
        keep = scores > float(conf.detection_threshold)
        if int(conf.remove_borders) > 0:
            keep = keep & border_mask(scores.shape[0], scores.shape[1], int(conf.remove_borders), scores)
        yx = torch.nonzero(keep)
        kpt_scores = scores[yx[:, 0], yx[:, 1]]
        keypoints = yx.flip(1).float()
        if conf.max_num_keypoints is not None:
            order = torch.argsort(kpt_scores, descending=True)[: int(conf.max_num_keypoints)]
            keypoints, kpt_scores = keypoints[order], kpt_scores[order]
        # superpoint.sample_descriptors' mapping, with the span from the traced map size
        size = torch._shape_as_tensor(dense)[1:].flip(0).to(keypoints.dtype)  # (w, h) of the map
        span = size * CELL - CELL / 2 - 0.5
        grid = (keypoints - CELL / 2 + 0.5) / span * 2 - 1
        return keypoints, kpt_scores, sample_unit_descriptors(dense, grid)


class DISKGraph(nn.Module):
    """kornia's DISK U-Net, strict-maximum NMS, threshold, top-k in raster order, descriptors at
    the keypoint pixels."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from kornia.geometry.subpix import nms2d

        conf = self.model.conf
        heatmap, dense = self.model.model.heatmap_and_dense_descriptors(image)
        window = int(conf.nms_window_size)
        maxima = nms2d(heatmap, (window, window), mask_only=True)[0, 0]
        keep = maxima & (heatmap[0, 0] > float(conf.detection_threshold))
        yx = torch.nonzero(keep)
        kpt_scores = heatmap[0, 0][yx[:, 0], yx[:, 1]]
        if conf.max_num_keypoints is not None:
            strongest = torch.argsort(kpt_scores, descending=True)[: int(conf.max_num_keypoints)]
            raster = torch.sort(strongest).values  # kornia keeps the kept points in raster order
            yx, kpt_scores = yx[raster], kpt_scores[raster]
        descriptors = F.normalize(dense[0][:, yx[:, 0], yx[:, 1]].t(), dim=-1)
        return yx.flip(1).float(), kpt_scores, descriptors


GRAPHS = {"superpoint": (SuperPointGraph, 1), "disk": (DISKGraph, 3)}


def exportable_extractor(extractor: Extractor) -> bool:
    return extractor.conf.name in GRAPHS


def export_extractor(extractor: Extractor, path: str | Path) -> Path:
    """Write ``extractor`` (SuperPoint or DISK, its current weights and detection config) as ONNX."""
    name = extractor.conf.name
    if name not in GRAPHS:
        raise ValueError(f"no ONNX export for the {name} extractor (exportable: {sorted(GRAPHS)}; SIFT is "
                         "OpenCV code, not a network, and ALIKED's deformable convolutions are not in opset 17)")
    graph_class, channels = GRAPHS[name]
    g = torch.Generator().manual_seed(0)
    example = torch.rand(1, channels, 96, 128, generator=g)
    axes = {"image": {2: "H", 3: "W"}, "keypoints": {0: "N"}, "scores": {0: "N"}, "descriptors": {0: "N"}}
    was_training = extractor.training
    extractor.eval()
    try:
        onnx_model = trace_to_onnx(graph_class(extractor), [example], ["image"], EXTRACTOR_OUTPUTS, axes)
    finally:
        extractor.train(was_training)
    set_metadata(onnx_model, "extractor", to_container(extractor.conf))
    return save_model(onnx_model, path)
