"""SIFT through OpenCV or pycolmap (CPU), or in torch (``torch``, ours; ``kornia``) on any
device, with RootSIFT descriptors, scales and orientations.

The OpenCV and pycolmap back ends are configured with COLMAP's parameters; all three return
the same conventions (checked in tests/core/test_extractors.py):

* keypoints in pixel centres (OpenCV convention). COLMAP puts the origin at the corner of the
  top-left pixel, so 0.5 is subtracted from its coordinates. OpenCV runs with
  ``enable_precise_upscale``: without it, its 2x upsampled first octave shifts every keypoint
  by about +0.25 px (measured on synthetic blobs).
* ``scales``: the keypoint diameter of OpenCV's ``KeyPoint.size``, which is 2 sigma of the
  detection scale. COLMAP's keypoint scale is sigma, so it is doubled.
* ``oris``: radians in (-pi, pi], angle from +x towards +y in image coordinates (y pointing
  down), which is what COLMAP returns and what OpenCV's degrees give after conversion (a
  counter-clockwise rotation of the image on screen decreases both).
* ``keypoint_scores``: OpenCV's response (|DoG| at the extremum). COLMAP exposes no response,
  so its scores are the scales: the top-k then keeps the coarsest features, as COLMAP itself
  does when it truncates (``max_num_features`` drops the finest scale levels first). Scores
  are therefore not comparable across back ends.

``backend: torch`` runs OpenCV's algorithm written in torch (:mod:`.sift_torch`) on the images'
device, the GPU path of SIFT: on 640x480 photos over 99.8 % of OpenCV's points are found within
0.01 px and 1 degree, descriptors at cosine 0.999. The selection is the OpenCV back end's (one
point per pixel, top-k, the same order), done on the device. It supports ``nms_radius`` 0 or
None and ``first_octave`` -1 or 0. ``backend: auto`` (the default) takes OpenCV for images on the
CPU (10-20x faster there) and this one on other devices, unless the settings are ones only
OpenCV honours.

``backend: kornia`` runs kornia's ``SIFTFeatureScaleSpace`` (DoG on a 2x upsampled scale space, 3
levels per octave, sigma 1.6, sub-pixel refinement, one orientation per point, RootSIFT in
OpenCV's descriptor layout) on the images' device: the GPU path of SIFT. It ranks all DoG
extrema by |DoG| (the same units as OpenCV's response) and keeps the top ``max_num_keypoints``
above ``detection_threshold``; it has no edge test and its own octaves, so ``edge_threshold``,
``first_octave``, ``num_octaves`` and ``nms_radius`` must keep their defaults (an error
otherwise). Its points, scales and orientations follow the conventions above: LAF centres are
pixel centres, the LAF scale is 6 sigma (so ``scales`` = LAF scale / 3) and the LAF angle runs
the other way (``oris`` = -angle). On the bundled graffiti pair about 44 % of its 2048 points lie
within 0.5 px of an OpenCV point, with the same scale and orientations 0.8 degrees apart (median).
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from ...device import exact_fp32_convolutions
from ...image import to_uint8_numpy
from . import sift_torch
from .base import Extractor, Features, empty_features, prepare_images

BACKENDS = ("auto", "opencv", "pycolmap", "torch", "kornia")
# COLMAP's octave resolution (DoG levels per octave), which OpenCV calls nOctaveLayers.
LEVELS_PER_OCTAVE = 3
# point sets the torch port's graphs are captured for at warm-up: a 640x480 photo has 10-30 k
# extremum candidates and 2-8 k oriented points (more go through bigger buckets, captured when
# first met)
WARM_UP_POINTS = 65536
WARM_UP_DESCRIBED = 8192  # per image, without max_num_keypoints

Detections = dict[str, np.ndarray]  # keypoints (N,2), scales, oris, scores (N,), descriptors (N,128)


def rootsift(descriptors: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root, L2-normalise."""
    x = F.normalize(descriptors, p=1, dim=-1, eps=eps).clamp(min=eps).sqrt()
    return F.normalize(x, p=2, dim=-1, eps=eps)


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles in radians mapped to (-pi, pi]."""
    return np.pi - np.mod(np.pi - angle, 2 * np.pi)


def filter_colocated(keypoints: np.ndarray, scores: np.ndarray, oris: np.ndarray,
                     image_shape: tuple[int, int], nms_radius: int) -> np.ndarray:
    """Indices of the DoG points to keep: one per pixel, then optionally a score NMS.

    SIFT returns one point per dominant orientation, so a blob often appears 2-4 times at the
    same position. Per pixel the highest score is kept (ties: the smallest |orientation|, an
    arbitrary but deterministic choice, as in the LightGlue reference). With ``nms_radius`` > 0,
    a point is also dropped when a point with a higher score lies within that many pixels
    (Chebyshev distance), as the reference's max-pool NMS does.
    """
    if len(keypoints) == 0:
        return np.zeros((0,), dtype=np.int64)
    h, w = image_shape
    col = np.clip(np.floor(keypoints[:, 0] + 0.5), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(keypoints[:, 1] + 0.5), 0, h - 1).astype(np.int64)
    pixel = row * w + col
    order = np.lexsort((np.abs(oris), -scores, pixel))  # by pixel, then best first
    first = np.ones(len(order), dtype=bool)
    first[1:] = pixel[order[1:]] != pixel[order[:-1]]
    keep = order[first]
    if nms_radius > 0:
        grid = np.zeros((h, w), dtype=np.float32)
        grid[row[keep], col[keep]] = scores[keep]
        size = 2 * nms_radius + 1
        local_max = cv2.dilate(grid, np.ones((size, size), np.uint8), borderType=cv2.BORDER_CONSTANT,
                               borderValue=0)
        keep = keep[grid[row[keep], col[keep]] >= local_max[row[keep], col[keep]]]
    return np.sort(keep)


class SIFT(Extractor):
    """SIFT keypoints with scales and orientations, RootSIFT descriptors (128-d)."""

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "sift",
        # "auto": opencv for images on the CPU, torch on other devices; "opencv" or "pycolmap" (CPU),
        # "torch" or "kornia" (any device, e.g. CUDA)
        "backend": "auto",
        "rootsift": True,
        "nms_radius": 0,  # 0: one point per pixel; r > 0: also NMS; None: keep co-located points
        "max_num_keypoints": 4096,
        "detection_threshold": 0.0066667,  # COLMAP's peak threshold on |DoG|, image in [0, 1]
        "edge_threshold": 10.0,
        "first_octave": -1,  # -1 upsamples the image 2x first (COLMAP's default)
        "num_octaves": 4,
        "resize": 1024,
    }
    grayscale: ClassVar[bool] = True
    descriptor_dim: ClassVar[int] = 128
    has_scale_ori: ClassVar[bool] = True

    def _init(self, conf: DictConfig) -> None:
        name = type(self).__name__
        if conf.backend not in BACKENDS:
            raise ValueError(f"{name}: unknown backend '{conf.backend}', expected one of {list(BACKENDS)}")
        if conf.nms_radius is not None and int(conf.nms_radius) < 0:
            raise ValueError(f"{name}: nms_radius must be >= 0 or None, got {conf.nms_radius}")
        if conf.detection_threshold is None or conf.detection_threshold < 0:
            raise ValueError(f"{name}: detection_threshold must be >= 0, got {conf.detection_threshold}")
        if conf.edge_threshold is None or conf.edge_threshold <= 0:
            raise ValueError(f"{name}: edge_threshold must be > 0, got {conf.edge_threshold}")
        if conf.num_octaves is None or int(conf.num_octaves) <= 0:
            raise ValueError(f"{name}: num_octaves must be a positive int, got {conf.num_octaves}")
        if conf.first_octave is None:
            raise ValueError(f"{name}: first_octave must be an int (-1 upsamples the image 2x)")
        if conf.backend == "kornia":
            self._kornia = _create_kornia_sift(conf, name)
        if conf.backend == "torch":
            self._settings = torch_sift_settings(conf, name)
        if conf.backend == "auto":
            try:
                self._settings = torch_sift_settings(conf, name)
            except ValueError:  # settings only OpenCV honours: OpenCV on every device
                self._settings = None
        if conf.backend in ("opencv", "auto"):
            if int(conf.first_octave) < -1:
                raise ValueError(f"{name}: the opencv backend supports first_octave >= -1, "
                                 f"got {conf.first_octave}")
            self._detector = _create_opencv_sift(conf)
            self._budget = CandidateBudget()
        if conf.backend == "pycolmap":
            self._detector = _create_pycolmap_sift(conf)

    def backend_for(self, images: torch.Tensor) -> str:
        """The back end that runs on ``images``: ``auto`` is OpenCV for images on the CPU (or
        settings the port does not support), the torch port elsewhere."""
        if self.conf.backend != "auto":  # the same points either way (see the module's docstring)
            return str(self.conf.backend)
        return "opencv" if images.device.type == "cpu" or self._settings is None else "torch"

    def warm_up(self, images: torch.Tensor) -> int:
        """Capture the torch port's graphs for ``images``' size (a batch as the camera gives it)
        and for every padded point set of up to WARM_UP_POINTS points, so that no frame waits
        for a capture; returns how many signatures were built (0 where nothing is graphed)."""
        resized, _ = prepare_images(self, images)
        if self.backend_for(resized) != "torch" or not self.graphs_apply(resized):
            return 0
        before = self.graphed_calls.captures
        batch, shape = len(resized), tuple(resized.shape[-2:])
        with torch.inference_mode():
            described = batch * int(self.conf.max_num_keypoints or WARM_UP_DESCRIBED)
            sift_torch.warm_up(to_sift_gray(resized), self._settings, self.graphed, WARM_UP_POINTS, described)
            selected = padded_selector(self.conf, shape, batch)
            size = sift_torch.POINT_BUCKET_MIN
            while size <= WARM_UP_POINTS:  # the selection, on stand-in points
                zeros = torch.zeros(size, device=resized.device)
                self.graphed(selected, torch.zeros(size, 2, device=resized.device), zeros, zeros,
                             zeros.long(), torch.ones(size, dtype=torch.bool, device=resized.device))
                size *= 2
        return self.graphed_calls.captures - before

    def _extract(self, images: torch.Tensor) -> list[Features]:
        backend = self.backend_for(images)
        if backend == "kornia":
            return [_run_kornia(self._kornia, image, self.conf) for image in images]
        if backend == "torch":
            # its static-shape steps replayed as CUDA graphs where they apply
            return _run_torch(images, self.conf, self._settings,
                              self.graphed if self.graphs_apply(images) else None)
        out: list[Features] = []
        for image in images:
            gray = to_uint8_numpy(image)
            if backend == "opencv":
                det = _run_opencv(self._detector, gray, self.conf, self._budget)
            else:
                det = select(_run_pycolmap(self._detector, gray), gray.shape, self.conf)
            out.append(self._to_features(det, images.device))
        return out

    def _to_features(self, det: Detections, device: torch.device) -> Features:
        if len(det["keypoints"]) == 0:
            return empty_features(self.descriptor_dim, with_scale_ori=True, device=device)
        desc = torch.from_numpy(np.ascontiguousarray(det["descriptors"], dtype=np.float32))
        desc = rootsift(desc) if self.conf.rootsift else F.normalize(desc, p=2, dim=-1)
        feats = {
            "keypoints": torch.from_numpy(det["keypoints"].astype(np.float32)),
            "keypoint_scores": torch.from_numpy(det["scores"].astype(np.float32)),
            "descriptors": desc,
            "scales": torch.from_numpy(det["scales"].astype(np.float32)),
            "oris": torch.from_numpy(det["oris"].astype(np.float32)),
        }
        return {key: v.to(device) for key, v in feats.items()}


def select(det: Detections, shape: tuple[int, int], conf: DictConfig) -> Detections:
    """The co-located filter (unless ``nms_radius`` is None), then the top-k by score."""
    return _top_k(_filter(det, shape, conf), conf.max_num_keypoints)


def _filter(det: Detections, shape: tuple[int, int], conf: DictConfig) -> Detections:
    if conf.nms_radius is None:
        return det
    keep = filter_colocated(det["keypoints"], det["scores"], det["oris"], shape, int(conf.nms_radius))
    return {k: v[keep] for k, v in det.items()}


def _top_k(det: Detections, k: int | None) -> Detections:
    if k is not None and len(det["scores"]) > k:
        # stable: equal scores keep detection order, so the result is deterministic
        keep = np.sort(np.argsort(-det["scores"], kind="stable")[:k])
        det = {key: v[keep] for key, v in det.items()}
    return det


# ---- torch (any device) -----------------------------------------------------------------

def torch_sift_settings(conf: DictConfig, name: str) -> sift_torch.SiftSettings:
    if int(conf.first_octave) not in (-1, 0):
        raise ValueError(f"{name}: the torch backend supports first_octave -1 or 0, got {conf.first_octave}")
    if conf.nms_radius is not None and int(conf.nms_radius) > 0:
        raise ValueError(f"{name}: the torch backend keeps one point per pixel (nms_radius 0) or all "
                         f"(None), got nms_radius={conf.nms_radius}")
    return sift_torch.SiftSettings(
        levels=LEVELS_PER_OCTAVE, first_octave=int(conf.first_octave), num_octaves=int(conf.num_octaves),
        contrast_threshold=float(conf.detection_threshold) * LEVELS_PER_OCTAVE,
        edge_threshold=float(conf.edge_threshold))


def to_sift_gray(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) images in [0, 1] (or uint8) -> (B, H, W) float32 in 0..255: the 8-bit images
    OpenCV would be given, in fp32 whatever the pipeline's autocast."""
    return images[:, 0].float() if images.dtype == torch.uint8 else (images[:, 0].float().clamp(0, 1) * 255).round()


def _run_torch(images: torch.Tensor, conf: DictConfig, settings: sift_torch.SiftSettings,
               runner: sift_torch.Runner | None = None) -> list[Features]:
    """(B, 1, H, W) images in [0, 1] (or uint8) -> the OpenCV back end's features, on their
    device, the whole batch at once (``runner``: see :func:`~.sift_torch.detect`)."""
    gray = to_sift_gray(images)
    batch, shape = len(images), tuple(gray.shape[-2:])
    with torch.autocast(images.device.type, enabled=False):
        found, dx, dy = sift_torch.detect(gray, settings, runner)
        oris = wrap_angle_torch(torch.deg2rad(found.angle))
        if runner is None or len(found.xy) == 0:
            index = select_torch(found.xy, found.response, oris, found.image, shape, conf)
            counts = None
        else:  # the selection as a graph too: a table of the images' rows, read once with the counts
            size = sift_torch.point_bucket(len(found.xy))
            valid = torch.arange(size, device=found.xy.device) < len(found.xy)
            points = sift_torch.pad_points((found.xy, found.response, oris, found.image), size)
            table, counts = runner(padded_selector(conf, shape, batch), *points, valid)
            index = table.flatten()
        chosen, oris = found.take(index), oris[index]
        descriptors = sift_torch.descriptors(dx, dy, chosen, settings, runner)
        descriptors = rootsift(descriptors) if conf.rootsift else F.normalize(descriptors, p=2, dim=-1)
    if counts is None:  # consecutive runs per image
        sizes = torch.bincount(chosen.image, minlength=batch).tolist()
        starts = [sum(sizes[:i]) for i in range(batch)]
    else:  # one row of the table per image
        sizes, starts = counts.tolist(), [i * table.shape[1] for i in range(batch)]
    out: list[Features] = []
    for start, n in zip(starts, sizes, strict=True):
        if n == 0:
            out.append(empty_features(128, with_scale_ori=True, device=images.device))
            continue
        feats = (chosen.xy, chosen.response, descriptors, chosen.size, oris)
        out.append(dict(zip(("keypoints", "keypoint_scores", "descriptors", "scales", "oris"),
                            (t[start:start + n] for t in feats), strict=True)))
    return out


def wrap_angle_torch(angle: torch.Tensor) -> torch.Tensor:
    """:func:`wrap_angle` on tensors."""
    return math.pi - torch.remainder(math.pi - angle, 2 * math.pi)


def select_torch(xy: torch.Tensor, scores: torch.Tensor, oris: torch.Tensor, image: torch.Tensor,
                 shape: tuple[int, int], conf: DictConfig) -> torch.Tensor:
    """Indices of :func:`select` followed by the OpenCV back end's canonical order, per image of
    a batch (``image``: each point's), on the points' device: one point per pixel (the best
    score, then the smallest |orientation|) unless ``nms_radius`` is None, then the top
    ``max_num_keypoints`` by score (ties by index), ordered by image, then strongest first, ties
    by y, x and orientation."""
    kept = one_per_pixel(xy, scores, oris, image, shape) if conf.nms_radius is not None else \
        torch.ones_like(scores, dtype=torch.bool)
    ranked, group, rank = ranked_per_image(scores, image, kept)
    chosen = kept[ranked]
    if conf.max_num_keypoints is not None:
        chosen &= rank < int(conf.max_num_keypoints)
    top = ranked[chosen]
    return top[stable_lexsort(image[top], -scores[top], xy[top, 1], xy[top, 0], oris[top])]


def select_padded(xy: torch.Tensor, scores: torch.Tensor, oris: torch.Tensor, image: torch.Tensor,
                  valid: torch.Tensor, shape: tuple[int, int], batch: int, nms_radius: int | None,
                  limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`select_torch` on a padded point set (``valid``: the real points) in fixed shapes and
    without reading the device (for a CUDA graph): a (batch, K) table of point indices, each row
    an image's selection in the same order, K = ``limit`` (or every point), padded with point
    0, and how many are real per image (batch,)."""
    image = torch.where(valid, image, batch)  # the padding after every image
    kept = valid if nms_radius is None else one_per_pixel(xy, scores, oris, image, shape) & valid
    ranked, group, rank = ranked_per_image(scores, image, kept)
    k = len(scores) if limit is None else min(limit, len(scores))
    chosen = kept[ranked] & (rank < k)
    slot = torch.where(chosen, group * k + rank, batch * k)  # the others to a slot cut off below
    table = torch.full((batch * k + 1,), -1, dtype=torch.long, device=scores.device)
    table = table.index_put_((slot,), ranked)[:-1].view(batch, k)
    counts = torch.zeros(batch + 1, dtype=torch.long, device=scores.device)
    counts = counts.scatter_add_(0, torch.where(chosen, group, batch), chosen.long())[:-1]
    padding, point = table < 0, table.clamp(min=0)
    order = stable_lexsort(padding, -scores[point], xy[point, 1], xy[point, 0], oris[point])
    return point.gather(1, order), counts


def padded_selector(conf: DictConfig, shape: tuple[int, int], batch: int) -> functools.partial:
    """:func:`select_padded` with the settings of ``conf`` for a batch of images of ``shape``
    (one function, so that the warm-up captures the signature the extraction replays)."""
    return functools.partial(select_padded, shape=shape, batch=batch, nms_radius=conf.nms_radius,
                             limit=conf.max_num_keypoints)


def one_per_pixel(xy: torch.Tensor, scores: torch.Tensor, oris: torch.Tensor, image: torch.Tensor,
                  shape: tuple[int, int]) -> torch.Tensor:
    """Which points are the best of their pixel (rounded position) in their image: the highest
    score, then the smallest |orientation|, then the first."""
    h, w = shape
    col = torch.floor(xy[:, 0] + 0.5).clamp(0, w - 1).long()
    row = torch.floor(xy[:, 1] + 0.5).clamp(0, h - 1).long()
    pixel = (image * h + row) * w + col
    order = stable_lexsort(pixel, -scores, oris.abs())
    first = torch.ones_like(pixel, dtype=torch.bool)
    first[1:] = pixel[order[1:]] != pixel[order[:-1]]
    return torch.zeros_like(first).index_put_((order,), first)


def ranked_per_image(scores: torch.Tensor, image: torch.Tensor, kept: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The points ordered by image, each image's kept points first by descending score (ties by
    index); each ranked point's image and its rank within that image."""
    ranked = stable_lexsort(image, torch.where(kept, -scores, torch.inf))
    group = image[ranked]
    return ranked, group, torch.arange(len(ranked), device=ranked.device) - torch.searchsorted(group, group)


def stable_lexsort(*keys: torch.Tensor) -> torch.Tensor:
    """The order sorting by the first key, ties by the next and so on (numpy's lexsort with the
    keys reversed), along the last dimension (each row of 2-D keys on its own)."""
    first = keys[0]
    order = torch.arange(first.shape[-1], device=first.device).expand_as(first)
    for key in reversed(keys):
        order = order.gather(-1, torch.sort(key.gather(-1, order), dim=-1, stable=True).indices)
    return order


# ---- kornia (any torch device) ----------------------------------------------------------
KORNIA_FIXED = ("edge_threshold", "first_octave", "num_octaves")


def _create_kornia_sift(conf: DictConfig, name: str) -> torch.nn.Module:
    defaults = SIFT.default_conf
    changed = [f"{key}={conf[key]}" for key in KORNIA_FIXED if conf[key] != defaults[key]]
    if conf.nms_radius is not None and int(conf.nms_radius) > 0:
        changed.append(f"nms_radius={conf.nms_radius}")
    if changed:
        raise ValueError(f"{name}: the kornia backend ranks the DoG extrema of its own scale space by |DoG| "
                         f"(no edge test, one point per extremum); it cannot honour {', '.join(changed)}")
    if conf.max_num_keypoints is None or int(conf.max_num_keypoints) <= 0:
        raise ValueError(f"{name}: the kornia backend needs max_num_keypoints > 0, got {conf.max_num_keypoints}")
    from kornia.feature import SIFTFeatureScaleSpace

    # kornia applies RootSIFT itself; plain SIFT descriptors come back L2-normalised
    return SIFTFeatureScaleSpace(num_features=int(conf.max_num_keypoints), rootsift=bool(conf.rootsift),
                                 descriptor_backend="pyramid", descriptor_layout="opencv")


def _run_kornia(sift: torch.nn.Module, image: torch.Tensor, conf: DictConfig) -> Features:
    """One (1, H, W) image in [0, 1] (or uint8) -> features in this module's conventions."""
    from kornia.feature import get_laf_center, get_laf_orientation, get_laf_scale

    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    # in fp32 even under the pipeline's autocast: kornia's scale space mixes dtypes otherwise,
    # and a half-precision DoG would move the sub-pixel extrema
    with torch.autocast(image.device.type, enabled=False), exact_fp32_convolutions(image.device):  # no TF32 blurs
        lafs, responses, descriptors = sift(image[None])
    responses = responses.reshape(-1).float()
    # kornia always returns max_num_keypoints points, padded with zero responses on flat images
    keep = responses > float(conf.detection_threshold)
    oris = -torch.deg2rad(get_laf_orientation(lafs).reshape(-1)[keep])
    oris = torch.where(oris <= -math.pi, oris + 2 * math.pi, oris)  # (-pi, pi], as OpenCV's converted
    descriptors = descriptors.reshape(-1, 128)[keep].float()
    return {
        "keypoints": get_laf_center(lafs).reshape(-1, 2)[keep].float(),
        "keypoint_scores": responses[keep],
        "descriptors": descriptors if conf.rootsift else F.normalize(descriptors, p=2, dim=-1),
        "scales": get_laf_scale(lafs).reshape(-1)[keep].float() / 3.0,  # 6 sigma -> the diameter 2 sigma
        "oris": oris,
    }


# ---- OpenCV ----------------------------------------------------------------------------

def _create_opencv_sift(conf: DictConfig):
    # OpenCV compares |DoG| (image in [0, 1]) with contrastThreshold / nOctaveLayers, COLMAP
    # with peak_threshold directly: hence the factor (with it, 99 % of OpenCV's keypoints are
    # COLMAP keypoints). The LightGlue reference passes the COLMAP value unchanged and
    # num_octaves as nOctaveLayers, i.e. a 4x lower threshold than COLMAP's.
    return cv2.SIFT_create(
        nfeatures=0,  # set per image by _run_opencv
        nOctaveLayers=LEVELS_PER_OCTAVE,
        contrastThreshold=float(conf.detection_threshold) * LEVELS_PER_OCTAVE,
        edgeThreshold=float(conf.edge_threshold),
        sigma=1.6,
        descriptorType=cv2.CV_32F,
        enable_precise_upscale=True,
    )


def _opencv_octave(packed: np.ndarray) -> np.ndarray:
    """Octave index of cv2.KeyPoint.octave (low byte, signed: -1 is the upsampled octave)."""
    return ((packed & 0xFF) ^ 0x80) - 0x80


class CandidateBudget:
    """How much of OpenCV's detection the next image needs for k selected keypoints.

    Two savings, both learned from the previous image (consecutive frames of a camera are
    alike) and neither able to change the result (see :func:`_run_opencv`):

    - ``ratio``: describe only k times this many of the strongest candidates. The octave range
      and the co-located filter remove 20-35 % of the candidates (640x480 photos), so it is the
      ratio of candidates to selected points seen last time, plus 5 %.
    - ``response_floor``: detect with a contrast threshold at 80 % of the k-th selected
      response of the previous image instead of COLMAP's low threshold: OpenCV refines and
      orients every extremum above the threshold, which at COLMAP's value took ~40 % of the
      extraction on textured 640x480 frames. 0 (the configured threshold) until an image
      has had k points.
    """

    MARGIN = 0.8

    def __init__(self, ratio: float = 1.5) -> None:
        self.ratio = ratio
        self.response_floor = 0.0

    def for_keypoints(self, k: int) -> int:
        return max(1, math.ceil(k * self.ratio))

    def update(self, limit: int, selected: int) -> None:
        """After a pass that described the ``limit`` strongest candidates, of which ``selected``
        passed the filters: the ratio of the strongest candidates is what the next image needs."""
        self.ratio = min(4.0, max(1.0, 1.05 * limit / max(selected, 1)))

    def update_floor(self, det: Detections, k: int) -> None:
        """After a complete selection: the weakest of k selected responses (0 if fewer than k)."""
        scores = det["scores"]
        self.response_floor = self.MARGIN * float(scores.min()) if len(scores) >= k else 0.0


def _run_opencv(sift, gray: np.ndarray, conf: DictConfig, budget: CandidateBudget) -> Detections:
    """Detect, select (octave range, co-located filter, top-k) and describe in one pass.

    OpenCV's ``detectAndCompute`` builds the scale space once; with ``nfeatures = N`` it keeps
    the N strongest candidates (and all ties at the N-th response) before describing them, and
    with a contrast threshold T it finds only extrema whose response reaches T / nOctaveLayers.
    Either way the candidates are the strongest ones, so whenever at least k selected points
    remain, the selection equals the selection from every extremum above the configured
    threshold: every point whose score reaches the k-th selected score is a candidate, and a
    point that suppresses another (NMS, same pixel) has a higher score. When fewer remain, the
    pass is repeated at the configured threshold, then with all candidates, so the result never
    depends on the budget.
    """
    k = conf.max_num_keypoints
    base = float(conf.detection_threshold) * LEVELS_PER_OCTAVE
    if k is None:
        passes = [(base, 0)]
    else:
        limit = budget.for_keypoints(int(k))
        raised = budget.response_floor * LEVELS_PER_OCTAVE
        passes = ([(raised, limit)] if raised > base else []) + [(base, limit), (base, 0)]
    for threshold, limit in passes:
        sift.setContrastThreshold(threshold)
        sift.setNFeatures(limit)
        keypoints, descriptors = sift.detectAndCompute(gray, None)
        det, selected = _select_described(keypoints, descriptors, gray.shape, conf)
        complete = limit == 0 or len(keypoints) < limit  # nothing was cut before describing
        if not complete:
            budget.update(limit, selected)
        enough = k is not None and len(det["scores"]) >= int(k)
        if enough or (complete and threshold == base):
            if k is not None:
                budget.update_floor(det, int(k))
            return det
    raise AssertionError("unreachable: the last pass keeps every candidate")  # pragma: no cover


def _select_described(keypoints, descriptors, shape: tuple[int, int],
                      conf: DictConfig) -> tuple[Detections, int]:
    """The selection of :func:`select` on described OpenCV keypoints, and how many points passed
    the octave range and the co-located filter (before the top-k)."""
    if not keypoints:
        return _no_detections(), 0
    # OpenCV always starts at octave -1 and uses every octave the image allows; keep COLMAP's
    # range [first_octave, first_octave + num_octaves) so that both back ends agree.
    octave = _opencv_octave(np.array([kp.octave for kp in keypoints], dtype=np.int64))
    first = int(conf.first_octave)
    inside = (octave >= first) & (octave < first + int(conf.num_octaves))
    det = {
        "keypoints": np.array([kp.pt for kp in keypoints], dtype=np.float32),
        "scores": np.array([kp.response for kp in keypoints], dtype=np.float32),
        "scales": np.array([kp.size for kp in keypoints], dtype=np.float32),
        "oris": wrap_angle(np.deg2rad(np.array([kp.angle for kp in keypoints], dtype=np.float64))),
        "descriptors": descriptors,
    }
    det = {key: v[inside] for key, v in det.items()}
    filtered = _filter(det, shape, conf)
    return _canonical_order(_top_k(filtered, conf.max_num_keypoints)), len(filtered["scores"])


def _canonical_order(det: Detections) -> Detections:
    """Strongest first, ties by position and orientation: OpenCV's order depends on how many
    candidates it kept, and the output must not (the budget depends on the previous image)."""
    order = np.lexsort((det["oris"], det["keypoints"][:, 0], det["keypoints"][:, 1], -det["scores"]))
    return {key: v[order] for key, v in det.items()}


def _no_detections() -> Detections:
    return {
        "keypoints": np.zeros((0, 2), np.float32), "scores": np.zeros((0,), np.float32),
        "scales": np.zeros((0,), np.float32), "oris": np.zeros((0,), np.float32),
        "descriptors": np.zeros((0, 128), np.float32),
    }


# ---- pycolmap --------------------------------------------------------------------------

def _create_pycolmap_sift(conf: DictConfig):
    try:
        import pycolmap
    except ImportError as err:  # pragma: no cover - pycolmap is a dependency
        raise ImportError("SIFT backend 'pycolmap' needs pycolmap (pip install pycolmap), "
                          "or use backend='opencv'") from err
    options = pycolmap.FeatureExtractionOptions()
    sift = options.sift
    sift.peak_threshold = float(conf.detection_threshold)
    sift.edge_threshold = float(conf.edge_threshold)
    sift.first_octave = int(conf.first_octave)
    sift.num_octaves = int(conf.num_octaves)
    sift.octave_resolution = LEVELS_PER_OCTAVE
    # COLMAP counts points before assigning orientations and cuts at whole scale levels, keeping
    # the coarse ones: at least k distinct positions remain for the co-located filter (measured
    # 438 for k=300, 4350 for k=4096).
    k = conf.max_num_keypoints
    sift.max_num_features = (1 << 30) if k is None else int(k)
    # plain L2 SIFT: RootSIFT is applied the same way for both back ends
    sift.normalization = pycolmap.Normalization.L2
    options.num_threads = -1
    return pycolmap.FeatureExtractor.create(options=options, device=pycolmap.Device.cpu)


def _run_pycolmap(extractor, gray: np.ndarray) -> Detections:
    keypoints, descriptors = extractor.extract_from_uint8_array(np.ascontiguousarray(gray))
    if len(keypoints) == 0:
        return _no_detections()
    frames = np.array([(kp.x, kp.y, kp.compute_scale(), kp.compute_orientation()) for kp in keypoints],
                      dtype=np.float64)
    xy = frames[:, :2] - 0.5  # COLMAP: origin at the top-left pixel's corner
    h, w = gray.shape
    # COLMAP can return points just outside the image; drop them
    inside = (xy[:, 0] >= -0.5) & (xy[:, 1] >= -0.5) & (xy[:, 0] < w - 0.5) & (xy[:, 1] < h - 0.5)
    scales = 2.0 * frames[:, 2]
    det = {
        "keypoints": xy.astype(np.float32),
        "scores": scales.astype(np.float32),
        "scales": scales.astype(np.float32),
        "oris": wrap_angle(frames[:, 3]).astype(np.float32),
        "descriptors": np.asarray(descriptors.data, dtype=np.float32),
    }
    return {k: v[inside] for k, v in det.items()}

