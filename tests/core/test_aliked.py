"""ALIKED: the official detection and the grid-sample deformable convolution, each against an
independent oracle (the official algorithm written out plainly; kornia's gather-based
deformable convolution; torchvision's where it is installed). Random weights, generated maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kornia.feature import ALIKED as KorniaALIKED
from kornia.feature.aliked import deform_conv2d as kornia_deform_conv2d
from kornia.feature.aliked.aliked import DeformableConv2d

from featmatch_core.models.extractors.aliked import (
    ALIKED,
    GridSampleDeformableConv2d,
    deform_conv2d,
    dense_maps,
    describe,
    detect_keypoints,
    refine,
    suppressed_scores,
    threshold_selection,
)
from featmatch_core.models.extractors.superpoint import nms_torch

pytestmark = pytest.mark.timeout(120)


def official_detection(score_map: torch.Tensor, radius: int, top_k: int, threshold: float, limit: int):
    """The official DKD (ALIKED, as cvg/LightGlue ships it), written out: simple_nms, border,
    selection, then soft-argmax over ``unfold`` windows and a bilinear score lookup."""
    b, _, h, w = score_map.shape
    suppressed = nms_torch(score_map[:, 0], radius)[:, None].clone()
    suppressed[:, :, :radius] = 0
    suppressed[:, :, :, :radius] = 0
    suppressed[:, :, -radius:] = 0
    suppressed[:, :, :, -radius:] = 0
    if top_k > 0:
        indices = list(torch.topk(suppressed.view(b, -1), top_k).indices)
    else:
        masks = suppressed > threshold
        if masks.sum() == 0:
            masks = suppressed > score_map.reshape(b, -1).mean(dim=1).reshape(b, 1, 1, 1)
        indices = []
        for mask, scores in zip(masks.reshape(b, -1), score_map.reshape(b, -1), strict=True):
            found = mask.nonzero()[:, 0]
            if len(found) > limit:
                found = found[scores[found].sort(descending=True)[1][:limit]]
            indices.append(found)
    size = 2 * radius + 1
    patches = F.unfold(score_map, size, padding=radius)
    steps = torch.linspace(-radius, radius, size)
    grid = torch.stack(torch.meshgrid([steps, steps], indexing="ij")).view(2, -1).t()[:, [1, 0]]
    wh = torch.tensor([w - 1, h - 1])
    out = []
    for i, found in enumerate(indices):
        window = patches[i].t()[found]
        weights = ((window - window.max(dim=1).values[:, None]) / 0.1).exp()
        residual = weights @ grid / weights.sum(dim=1)[:, None]
        xy = torch.stack([found % w, torch.div(found, w, rounding_mode="trunc")], dim=1) + residual
        normalised = xy / wh * 2 - 1
        scores = F.grid_sample(score_map[i][None], normalised.view(1, 1, -1, 2), mode="bilinear",
                               align_corners=True)[0, 0, 0]
        out.append((normalised, scores))
    return out


def smooth_scores(b: int, h: int, w: int, seed: int, plateau: bool = False) -> torch.Tensor:
    """Score maps in (0, 1) with many local maxima; ``plateau`` adds a constant square."""
    gen = torch.Generator().manual_seed(seed)
    maps = F.avg_pool2d(torch.rand(b, 1, h, w, generator=gen), 5, 1, 2)
    maps = torch.sigmoid((maps - 0.5) * 40)
    if plateau:
        maps[:, :, 10:20, 10:30] = 0.9
    return maps


@pytest.mark.parametrize("top_k, threshold, limit", [(300, -1.0, 300), (-1, 0.2, 20000), (-1, 0.5, 50),
                                                     (-1, 0.999, 20000)])
@pytest.mark.parametrize("radius", [1, 2, 3])
def test_detection_is_the_official_one(top_k, threshold, limit, radius):
    score_map = smooth_scores(2, 60, 80, seed=radius, plateau=True)
    ours = detect_keypoints(score_map, radius, top_k, threshold, limit)
    official = official_detection(score_map, radius, top_k, threshold, limit)
    for (keypoints, scores), (expected_keypoints, expected_scores) in zip(ours, official, strict=True):
        assert len(keypoints) > 0
        assert keypoints.shape == expected_keypoints.shape
        torch.testing.assert_close(keypoints, expected_keypoints, rtol=0, atol=1e-6)
        torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("threshold, limit", [(0.5, 50), (0.2, 20000), (0.95, 10), (2.0, 30)])
def test_threshold_selection_is_the_detection_in_fixed_shapes(threshold, limit):
    """The GPU's padded selection (one graph, no reads) keeps the eager detection's pixels in
    its order: raster order, by score past the limit (ties on the plateau in raster order), the
    mean-score fallback where nothing passes (threshold 2)."""
    maps = smooth_scores(3, 40, 60, seed=7, plateau=True)
    expected = detect_keypoints(maps, 2, -1, threshold, limit)
    indices, counts = threshold_selection(*suppressed_scores(maps, 2), threshold, limit)
    assert indices.shape == (3, min(limit, 40 * 60))
    for i, (keypoints, scores) in enumerate(expected):
        n = int(counts[i])
        assert n == len(keypoints) > 0
        found, found_scores = refine(maps[i], indices[i, :n], 2)
        assert torch.equal(found, keypoints) and torch.equal(found_scores, scores)
        assert (indices[i, n:] == 0).all()  # padding: pixel 0


def test_detection_selection_rules():
    score_map = smooth_scores(1, 40, 50, seed=7, plateau=True)
    radius = 2
    (top, _), = detect_keypoints(score_map, radius, 25, -1.0, 25)
    assert len(top) == 25
    pixels = (top + 1) / 2 * torch.tensor([49.0, 39.0])
    assert (pixels >= radius - 1).all() and (pixels[:, 0] <= 49 - radius + 1).all()  # no border maxima
    (limited, _), = detect_keypoints(score_map, radius, -1, 0.2, 10)
    (unlimited, _), = detect_keypoints(score_map, radius, -1, 0.2, 20000)
    assert len(limited) == 10 < len(unlimited)
    # the limit keeps the best by score: every kept point is one of the unlimited ones
    assert (limited[:, None] - unlimited[None]).norm(dim=-1).min(dim=1).values.max() < 1e-6
    # none above the threshold: the points above the image's mean score instead
    (fallback, _), = detect_keypoints(score_map * 0.5, radius, -1, 0.6, 20000)
    assert len(fallback) > 0
    constant = torch.full((1, 1, 30, 30), 0.5)
    (none, _), = detect_keypoints(constant, radius, -1, 0.6, 20000)  # nothing above the mean either
    assert none.shape == (0, 2)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (17, 12)])
@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv2d_equals_the_gather_implementation(size, modulated):
    torch.manual_seed(0)
    h, w = size
    x = torch.randn(2, 6, h, w)
    weight, bias = torch.randn(5, 6, 3, 3), torch.randn(5)
    offset = torch.randn(2, 18, h, w) * 4  # many taps land outside the map
    mask = torch.rand(2, 9, h, w) if modulated else None
    expected = kornia_deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, 1, mask), expected, rtol=1e-4, atol=1e-4)
    zero = torch.zeros_like(offset)  # without offsets: a plain convolution
    torch.testing.assert_close(deform_conv2d(x, zero, weight, bias, 1), F.conv2d(x, weight, bias, padding=1),
                               rtol=1e-4, atol=1e-4)


def test_deform_conv2d_equals_torchvision():
    ops = pytest.importorskip("torchvision.ops")
    torch.manual_seed(1)
    x = torch.randn(1, 8, 15, 20)
    weight = torch.randn(4, 8, 3, 3)
    offset, mask = torch.randn(1, 18, 15, 20) * 3, torch.rand(1, 9, 15, 20)
    for m in (None, mask):
        torch.testing.assert_close(deform_conv2d(x, offset, weight, None, 1, m),
                                   ops.deform_conv2d(x, offset, weight, None, padding=1, mask=m),
                                   rtol=1e-4, atol=1e-4)


def test_deform_conv2d_rejects_what_it_does_not_implement():
    x, weight = torch.randn(1, 4, 8, 8), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="do not fit one group"):
        deform_conv2d(x, torch.zeros(1, 18, 4, 4), weight)  # offsets of a strided convolution
    with pytest.raises(ValueError, match="do not fit one group"):
        deform_conv2d(x, torch.zeros(1, 18, 8, 8), torch.randn(2, 2, 3, 3))  # grouped weight


def test_network_is_kornias_with_grid_sample_deformable_convolutions():
    torch.manual_seed(0)
    ours = ALIKED({"resize": None, "max_num_keypoints": 64, "weights": None}).eval()
    swapped = [m for m in ours.model.modules() if isinstance(m, DeformableConv2d)]
    assert len(swapped) == 4 and all(type(m) is GridSampleDeformableConv2d for m in swapped)
    kornia_model = KorniaALIKED("aliked-n16").eval()
    kornia_model.load_state_dict(ours.model.state_dict())  # same parameters and buffers
    image = torch.rand(1, 3, 70, 90)
    with torch.inference_mode():
        features, scores = dense_maps(ours.model, image)
        expected_features, expected_scores = kornia_model.extract_dense_map(image)
    torch.testing.assert_close(features, expected_features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        pred = ours({"image": image})
    assert pred["keypoints"].shape == (1, 64, 2) and pred["descriptors"].shape == (1, 64, 128)


def test_batched_descriptor_head_equals_kornias_per_image_loop():
    torch.manual_seed(0)
    model = ALIKED({"resize": None, "weights": None}).eval()
    gen = torch.Generator().manual_seed(4)
    image = torch.rand(3, 3, 64, 96, generator=gen)
    with torch.inference_mode():
        features, scores = model.model.extract_dense_map(image)
        keypoints = [found for found, _ in detect_keypoints(scores, 2, -1, 0.5, 100)]
        keypoints[1] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.999, -0.999], [0.0, 0.0]])  # corners, centre
        keypoints[2] = torch.zeros(0, 2)  # an image without points
        ours = describe(model.model.desc_head, features, keypoints)
        expected, _ = model.model.desc_head(features, keypoints)
    assert [len(d) for d in ours] == [len(k) for k in keypoints] and len(ours[0]) > 10
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_deform_conv2d_samples_at_float32_positions_under_autocast():
    """A map alternating 0 and 1 along x turns a position error into the same value error; at
    x = 600, bf16 positions would be off by up to 2.5 px (and fp16 ones by 0.3)."""
    w = 640
    x = (torch.arange(w) % 2).float().expand(1, 1, 4, w).contiguous()
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0  # the output is the centre tap's sample
    offset = torch.zeros(1, 18, 4, w)
    offset[:, 9] = 0.3  # the centre tap's dx: 0.3 px to the right
    expected = deform_conv2d(x, offset, weight)
    torch.testing.assert_close(expected[0, 0, 1, 600:602], torch.tensor([0.3, 0.7]), rtol=0, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = deform_conv2d(x.bfloat16(), offset.bfloat16(), weight)
    torch.testing.assert_close(mixed.float(), expected, rtol=0, atol=0.01)  # bf16 output rounding only


def test_mixed_precision_keeps_the_points_and_descriptors():
    """Under bf16 autocast (the coarsest), the score head and every sampling position stay in
    float32: before, only 18 % of a 640x480 image's points were within 1 px of float32's."""
    torch.manual_seed(0)
    model = ALIKED({"resize": None, "max_num_keypoints": 512, "detection_threshold": -1, "weights": None}).eval()
    gen = torch.Generator().manual_seed(5)
    image = F.avg_pool2d(torch.rand(1, 3, 240, 320, generator=gen), 5, 1, 2)
    with torch.inference_mode():
        full = model({"image": image})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, scores = dense_maps(model.model, image)
            mixed = model({"image": image})
    assert scores.dtype == torch.float32
    nearest, index = torch.cdist(mixed["keypoints"][0], full["keypoints"][0]).min(dim=1)
    same = nearest <= 1.0
    assert same.float().mean() > 0.85
    cosine = F.cosine_similarity(mixed["descriptors"][0][same], full["descriptors"][0][index[same]], dim=-1)
    assert cosine.min() > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_keeps_the_points_of_fp32():
    """ALIKED's and DISK's networks run under CUDA's fp16 autocast (autocast_devices)."""
    from featmatch_core.models.extractors.disk import DISK

    gen = torch.Generator().manual_seed(3)
    image = F.avg_pool2d(torch.rand(1, 3, 240, 320, generator=gen), 5, 1, 2).cuda()
    for extractor in (ALIKED, DISK):
        torch.manual_seed(0)
        model = extractor({"resize": None, "max_num_keypoints": 512, "weights": None}).eval().cuda()
        with torch.inference_mode():
            full = model({"image": image})
            with torch.autocast("cuda", dtype=torch.float16):
                mixed = model({"image": image})
        nearest = torch.cdist(mixed["keypoints"][0], full["keypoints"][0]).min(dim=1).values
        assert (nearest <= 1.0).float().mean() > 0.9, extractor.__name__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_aliked_on_cuda_equals_cpu():
    torch.manual_seed(0)
    model = ALIKED({"resize": None, "max_num_keypoints": 256, "weights": None}).eval()
    gen = torch.Generator().manual_seed(3)
    image = F.avg_pool2d(torch.rand(1, 3, 120, 160, generator=gen), 3, 1, 1)
    with torch.inference_mode():
        cpu = model({"image": image})
        gpu = {k: v.cpu() for k, v in model.cuda()({"image": image.cuda()}).items()}
    distance = (gpu["keypoints"][0][:, None] - cpu["keypoints"][0][None]).norm(dim=-1)
    nearest, index = distance.min(dim=1)
    same = nearest < 1e-2
    assert same.float().mean() > 0.9  # near-ties of a random network's scores may swap
    torch.testing.assert_close(gpu["descriptors"][0][same], cpu["descriptors"][0][index[same]], atol=1e-3, rtol=1e-3)
