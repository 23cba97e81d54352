"""Wireframe features for GlueStick: keypoints of a point extractor + LSD segments whose endpoints
are keypoints too (as GlueStick's ``lines_to_wireframe`` and Glue Factory's
``SPWireframeDescriptor``).

Per image (in the pixels of the resized image, mapped back to the original at the end):
1. segments from :class:`~featmatch_core.models.lines.lsd.LSD` (best ``max_num_lines``);
2. endpoints closer than ``junction_radius`` are chained into one *junction* (single linkage,
   DBSCAN with ``min_samples=1`` in the reference) placed at their mean; each segment is snapped
   to its two junctions, and a segment whose ends fall into one junction is dropped;
3. keypoints closer than ``merge_points_radius`` to an endpoint are removed (the junction
   stands for them), then the junctions are put *in front of* the keypoints (as the reference
   does): ``lines_junc_idx`` (L, 2) indexes ``keypoints``;
4. junction descriptors are sampled from a dense descriptor map: SuperPoint's own (the map its
   keypoint descriptors come from), or kornia's dense SIFT for SIFT (``dense_descriptors``);
   junction scores are the mean score of their segments (segment scores divided by the
   image's best, as the reference).

Output: the extractor contract (``keypoints`` ... ``keypoint_mask``, ``image_size``) plus
``lines`` (B, L, 2, 2), ``line_scores``, ``line_mask`` and ``lines_junc_idx`` (B, L, 2).
``max_num_keypoints`` bounds junctions + keypoints together (so features pad to a fixed size).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig

from ...config import to_container
from ...image import to_uint8_numpy
from .. import build_model, get_model
from ..extractors.base import Extractor, Features, image_sizes, pad_and_stack, prepare_images, to_original_pixels
from ..extractors.superpoint import sample_descriptors, sample_unit_descriptors
from .lsd import LSD, _union_find_groups, pad_lines

DENSE_SOURCES = ("point_extractor", "dense_sift")
POINT_EXTRACTOR = {"name": "superpoint", "max_num_keypoints": 1000}  # the reference's SuperPoint budget
LINES = {"min_length": 15.0, "max_num_lines": 250}


def cluster_endpoints(lines: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Junctions of segments (L, 2, 2): endpoints within ``radius`` of each other (transitively)
    share one junction at their mean. Returns ``junctions`` (J, 2) and ``junc_idx`` (L, 2)."""
    endpoints = lines.reshape(-1, 2)
    if len(endpoints) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2), dtype=np.int64)
    dist = np.linalg.norm(endpoints[:, None] - endpoints[None], axis=-1)
    i, j = np.nonzero(np.triu(dist <= radius, k=1))
    roots = _union_find_groups(len(endpoints), np.stack([i, j], -1))
    _, labels = np.unique(roots, return_inverse=True)
    counts = np.bincount(labels)
    junctions = np.stack([np.bincount(labels, endpoints[:, k]) for k in (0, 1)], -1) / counts[:, None]
    return junctions, labels.reshape(-1, 2).astype(np.int64)


def build_wireframe(lines: np.ndarray, line_scores: np.ndarray, radius: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Snap segments to shared junctions; drop segments collapsed onto one junction.

    Returns ``junctions`` (J, 2), ``junction_scores`` (J,) (mean score of their segments),
    ``lines`` (L', 2, 2) (endpoints = junctions), ``line_scores`` (L',), ``junc_idx`` (L', 2).
    """
    junctions, junc_idx = cluster_endpoints(lines, radius)
    keep = junc_idx[:, 0] != junc_idx[:, 1]
    junc_idx, line_scores = junc_idx[keep], line_scores[keep]
    used, junc_idx = np.unique(junc_idx.reshape(-1), return_inverse=True)  # junctions still on a line
    junctions, junc_idx = junctions[used], junc_idx.reshape(-1, 2)
    sums = np.bincount(junc_idx.reshape(-1), np.repeat(line_scores, 2), minlength=len(junctions))
    counts = np.bincount(junc_idx.reshape(-1), minlength=len(junctions)).clip(min=1)
    return junctions, sums / counts, junctions[junc_idx].reshape(-1, 2, 2), line_scores, junc_idx


def points_away_from(points: np.ndarray, endpoints: np.ndarray, radius: float) -> np.ndarray:
    """Mask (N,) of the points farther than ``radius`` from every endpoint (M, 2)."""
    if len(points) == 0 or len(endpoints) == 0:
        return np.ones(len(points), dtype=bool)
    dist = np.linalg.norm(points[:, None] - endpoints[None], axis=-1)
    return dist.min(1) >= radius


@contextlib.contextmanager
def capture_dense_descriptors(extractor: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, ``extractor.dense_outputs`` also records its descriptor map (B, D, h, w), so the
    map that gives the keypoint descriptors also gives the junctions' (no second network pass)."""
    captured: list[torch.Tensor] = []
    original = extractor.dense_outputs

    def recording(images: torch.Tensor):
        scores, descriptors = original(images)
        captured.append(descriptors)
        return scores, descriptors

    extractor.dense_outputs = recording
    try:
        yield captured
    finally:
        del extractor.dense_outputs  # back to the class method


def sample_dense_sift(points: torch.Tensor, dense: torch.Tensor, stride: int, image_shape: tuple[int, int]
                      ) -> torch.Tensor:
    """Bilinear samples (N, D) of a (D, h, w) dense SIFT map at pixels (N, 2), L2-normalised.
    Column k of the map is the patch centred at ``k * stride + offset`` (offset from the sizes)."""
    d, h, w = dense.shape
    if len(points) == 0:
        return dense.new_zeros((0, d))
    height, width = image_shape
    offset = points.new_tensor([(width - 1 - (w - 1) * stride) / 2, (height - 1 - (h - 1) * stride) / 2])
    cells = (points - offset) / stride
    return sample_unit_descriptors(dense, cells / points.new_tensor([max(w - 1, 1), max(h - 1, 1)]) * 2 - 1)


class Wireframe(Extractor):
    """Point extractor + LSD wireframe (module docstring)."""

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "wireframe",
        # weights of the point extractor: "default" = its own default weights, None = random, or an id/path
        "weights": "default",
        "resize": 1024,
        "max_num_keypoints": None,  # junctions + keypoints together
        # sub-configs validated by their own models, on top of POINT_EXTRACTOR / LINES
        "point_extractor": None,
        "lines": None,  # LSD conf (its resize is this extractor's)
        "dense_descriptors": "point_extractor",  # point_extractor (SuperPoint's map) | dense_sift (kornia)
        "dense_sift_stride": 4,
        "junction_radius": 3.0,  # pixels (resized image): endpoints this close share a junction
        "merge_points": True,  # remove keypoints near a line endpoint (the junction replaces them)
        "merge_points_radius": 4.0,  # pixels (resized image); the reference uses SuperPoint's nms_radius
    }
    grayscale: ClassVar[bool] = True

    def _init(self, conf: DictConfig) -> None:
        if conf.dense_descriptors not in DENSE_SOURCES:
            raise ValueError(f"Wireframe: unknown dense_descriptors '{conf.dense_descriptors}', "
                             f"expected one of {DENSE_SOURCES}")
        point_conf = {**POINT_EXTRACTOR, **to_container(conf.point_extractor), "resize": None, "weights": None}
        self.point_name = point_conf["name"]  # resized here, once; weights see load_weights
        if point_conf.get("name") in (None, "wireframe"):
            raise ValueError("Wireframe: point_extractor.name must name a point extractor (e.g. superpoint, sift)")
        self.point_extractor = build_model("extractor", point_conf, pretrained=False)
        self.descriptor_dim = int(self.point_extractor.descriptor_dim)
        self.autocast_devices = self.point_extractor.autocast_devices
        lines_conf = {**LINES, **to_container(conf.lines), "resize": None}
        self.lsd = LSD(lines_conf)
        cap = conf.max_num_keypoints
        self.max_num_lines = lines_conf.get("max_num_lines")
        if cap is not None:
            self.max_num_lines = min(int(self.max_num_lines or cap), int(cap) // 2)
        if conf.dense_descriptors == "point_extractor" and not hasattr(self.point_extractor, "dense_outputs"):
            raise ValueError(f"Wireframe: {type(self.point_extractor).__name__} has no dense descriptor map; "
                             "set dense_descriptors: dense_sift")
        if conf.dense_descriptors == "dense_sift":
            from kornia.feature import DenseSIFTDescriptor

            self.dense_sift = DenseSIFTDescriptor(rootsift=True, stride=int(conf.dense_sift_stride))
            if self.descriptor_dim != 128:
                raise ValueError(f"Wireframe: dense SIFT gives 128-d descriptors, the point extractor "
                                 f"{self.descriptor_dim}-d")

    def load_weights(self, source: str, download: bool = True) -> None:
        """Weights belong to the point extractor; ``"default"`` = its class default (maybe none)."""
        if source == "default":
            user = to_container(self.conf.point_extractor)
            source = user.get("weights", get_model("extractor", self.point_name).full_default_conf().get("weights"))
        if source is not None:
            self.point_extractor.load_weights(source, download=download)
        self.eval()

    # ---- extraction -------------------------------------------------------------------------
    def _extract(self, images: torch.Tensor) -> list[Features]:
        dense: list[torch.Tensor] = []
        if self.conf.dense_descriptors == "point_extractor":
            with capture_dense_descriptors(self.point_extractor) as captured:
                points = self.point_extractor._extract(images)
            dense = list(torch.cat(captured, 0)) if captured else []
        else:
            points = self.point_extractor._extract(images)
            dense = list(self.dense_sift(images.float()))
        return [self._wireframe(image, pts, desc_map) for image, pts, desc_map in
                zip(images, points, dense, strict=True)]

    def _wireframe(self, image: torch.Tensor, points: Features, dense: torch.Tensor) -> Features:
        conf = self.conf
        device = image.device
        segments, scores = self.lsd.detect(to_uint8_numpy(image))
        segments, scores = segments[:self.max_num_lines], scores[:self.max_num_lines]
        if len(scores):
            scores = scores / (scores.max() + 1e-8)
        junctions, junc_scores, lines, line_scores, junc_idx = build_wireframe(
            segments, np.asarray(scores, dtype=np.float64), float(conf.junction_radius))
        kpts = points["keypoints"].float()
        keep = np.ones(len(kpts), dtype=bool)
        if conf.merge_points:
            keep = points_away_from(kpts.cpu().numpy(), junctions, float(conf.merge_points_radius))
        keep = torch.from_numpy(keep).to(device)
        kpts, kpt_scores, desc = kpts[keep], points["keypoint_scores"][keep], points["descriptors"][keep]
        if conf.max_num_keypoints is not None:
            room = max(int(conf.max_num_keypoints) - len(junctions), 0)
            order = torch.argsort(kpt_scores, descending=True, stable=True)[:room]
            kpts, kpt_scores, desc = kpts[order], kpt_scores[order], desc[order]
        junctions_t = torch.from_numpy(junctions).float().to(device)
        if conf.dense_descriptors == "point_extractor":
            junc_desc = sample_descriptors(junctions_t, dense.float())
        else:
            junc_desc = sample_dense_sift(junctions_t, dense.float(), int(conf.dense_sift_stride),
                                          tuple(image.shape[-2:]))
        return {
            "keypoints": torch.cat([junctions_t, kpts], 0),
            "keypoint_scores": torch.cat([torch.from_numpy(junc_scores).float().to(device), kpt_scores.float()], 0),
            "descriptors": torch.cat([junc_desc.to(desc.dtype), desc], 0),
            "lines": torch.from_numpy(lines).float().to(device),
            "line_scores": torch.from_numpy(line_scores).float().to(device),
            "lines_junc_idx": torch.from_numpy(junc_idx).to(device),
        }

    def forward(self, data: dict[str, torch.Tensor]) -> Features:
        images = data["image"]
        resized, scale = prepare_images(self, images)
        per_image = self._extract(resized)
        line_parts, junc_parts = [], []
        for feats in per_image:
            lines = to_original_pixels(feats.pop("lines"), scale)
            line_parts.append((lines.cpu().numpy(), feats.pop("line_scores").cpu().numpy()))
            junc_parts.append(feats.pop("lines_junc_idx"))
            feats["keypoints"] = to_original_pixels(feats["keypoints"], scale)
        batch = pad_and_stack(per_image, self.descriptor_dim, images.device)
        batch.update(pad_lines(line_parts, images.device))
        junc = torch.zeros((len(per_image), batch["lines"].shape[1], 2), dtype=torch.long, device=images.device)
        for k, idx in enumerate(junc_parts):
            junc[k, :len(idx)] = idx
        batch["lines_junc_idx"] = junc
        batch["image_size"] = image_sizes(images)
        return batch
