"""Feature extractors: output contract, SuperPoint post-processing, SIFT back ends, checkpoints.

Networks have random weights (nothing is downloaded); images are generated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from featmatch_core.models import get_model
from featmatch_core.models.extractors import superpoint as superpoint_module
from featmatch_core.models.extractors.aliked import ALIKED
from featmatch_core.models.extractors.disk import DISK
from featmatch_core.models.extractors.sift import SIFT, filter_colocated, rootsift, wrap_angle
from featmatch_core.models.extractors.superpoint import (
    SuperPoint,
    max_filter,
    nms,
    remove_borders,
    sample_descriptors,
    vgg_block,
)

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# ---- generated images ------------------------------------------------------------------

def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Multi-scale smooth noise, uint8 (H, W): blobs and corners at many scales."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for sigma in (2, 4, 8):
        img += cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), sigma) * sigma
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def blobs(h: int, w: int, centres: list[tuple[float, float]], sigma: float) -> np.ndarray:
    """Bright Gaussian blobs centred at sub-pixel (x, y) in pixel-centre coordinates."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for cx, cy in centres:
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return np.round(img / img.max() * 255).astype(np.uint8)


def batch(*images: np.ndarray, rgb: bool = False) -> torch.Tensor:
    """uint8 (H, W) images -> (B, 1 or 3, H, W) float in [0, 1]."""
    x = torch.stack([torch.from_numpy(i).float() / 255 for i in images])[:, None]
    return x.expand(-1, 3, -1, -1).contiguous() if rgb else x


def image_driven_superpoint(conf: dict) -> SuperPoint:
    """Random SuperPoint without biases: a black region gives all-zero logits, hence the
    uniform score 1/65 (below a 0.02 threshold), so keypoint counts follow the image."""
    model = SuperPoint({"resize": None, "detection_threshold": 0.02, **conf}).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * math.sqrt(2 / fan_in))
                module.bias.zero_()
    return model


def build(kind: str, **conf) -> torch.nn.Module:
    if kind == "superpoint":
        return image_driven_superpoint(conf)
    if kind in ("sift-opencv", "sift-pycolmap", "sift-torch", "sift-kornia"):
        return SIFT({"resize": None, "backend": kind.split("-")[1], **conf}).eval()
    torch.manual_seed(0)
    if kind == "aliked":  # caps the per-keypoint deformable descriptor head, the slow part
        return ALIKED({"resize": None, "max_num_keypoints": 128, **conf}).eval()
    return DISK({"resize": None, **conf}).eval()


def silence(model: torch.nn.Module) -> torch.nn.Module:
    """Make a network's score map constant, so that it has no (strict) maximum anywhere."""
    with torch.no_grad():
        if isinstance(model, ALIKED):
            model.model.score_head[-1].weight.zero_()  # sigmoid(0) everywhere
        elif isinstance(model, DISK):
            last = model.model.unet.path_up[-1].conv[-1]
            last.weight.zero_()
            last.bias.zero_()  # heatmap logits 0, not above the 0.0 threshold
    return model


EXTRACTORS = ["superpoint", "sift-opencv", "sift-pycolmap", "sift-torch", "sift-kornia", "aliked", "disk"]


def run(model: torch.nn.Module, images: torch.Tensor) -> dict:
    with torch.inference_mode():
        return model({"image": images})


def check_contract(model, pred: dict, images: torch.Tensor) -> None:
    b, _, h, w = images.shape
    n = pred["keypoints"].shape[1]
    dim = model.descriptor_dim
    assert pred["keypoints"].shape == (b, n, 2) and pred["keypoints"].dtype == torch.float32
    assert pred["keypoint_scores"].shape == (b, n) and pred["keypoint_scores"].dtype == torch.float32
    assert pred["descriptors"].shape == (b, n, dim) and pred["descriptors"].dtype == torch.float32
    assert pred["keypoint_mask"].shape == (b, n) and pred["keypoint_mask"].dtype == torch.bool
    assert torch.equal(pred["image_size"], torch.tensor([[w, h]] * b, dtype=torch.float32))
    assert ("scales" in pred) == ("oris" in pred) == model.has_scale_ori
    if model.has_scale_ori:
        assert pred["scales"].shape == (b, n) and pred["oris"].shape == (b, n)
    mask = pred["keypoint_mask"]
    kpts = pred["keypoints"][mask]
    assert torch.isfinite(kpts).all()
    assert (kpts >= -0.5).all() and (kpts[:, 0] <= w - 0.5).all() and (kpts[:, 1] <= h - 0.5).all()
    norms = pred["descriptors"][mask].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
    if model.has_scale_ori:
        assert (pred["scales"][mask] > 0).all()
        assert (pred["oris"][mask].abs() <= math.pi + 1e-6).all()
    for key in ("keypoints", "descriptors", "keypoint_scores"):  # padding is zeros
        assert not pred[key][~mask].any()
    for i in range(b):  # no duplicate keypoints within an image
        own = pred["keypoints"][i][mask[i]]
        assert len(torch.unique(own, dim=0)) == len(own)


# ---- registry and contract -------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [("superpoint", SuperPoint), ("sift", SIFT), ("aliked", ALIKED),
                                       ("disk", DISK)])
def test_registry_returns_class(name, cls):
    assert get_model("extractor", name) is cls


@pytest.mark.parametrize("kind", EXTRACTORS)
def test_batch_with_different_counts_is_padded(kind):
    full = texture(64, 96, seed=1)
    partial = full.copy()
    partial[:, 32:] = 0  # most of the second image is flat
    # ALIKED, random weights: scores near 0.5 everywhere, above the threshold; the official
    # suppression keeps every pixel of a plateau, so the flat half gives more points, not fewer
    model = build(kind, max_num_keypoints=None) if kind == "aliked" else build(kind)
    images = batch(full, partial, rgb=not model.grayscale)
    pred = run(model, images)
    check_contract(model, pred, images)
    counts = pred["keypoint_mask"].sum(1).tolist()
    assert counts[0] > 0 and counts[0] != counts[1]
    # each image alone gives the same features as in the batch
    for i in range(2):
        alone = run(model, images[i:i + 1])
        n = counts[i]
        assert alone["keypoints"].shape[1] == n
        assert torch.allclose(alone["keypoints"][0], pred["keypoints"][i, :n], atol=1e-4)
        assert torch.allclose(alone["descriptors"][0], pred["descriptors"][i, :n], atol=1e-4)


@pytest.mark.parametrize("kind", EXTRACTORS)
def test_flat_images_give_zero_keypoints(kind):
    # ALIKED's silenced map is 0.5 everywhere: a plateau, kept whole by the official suppression
    # unless below the threshold; then no pixel is above the mean either (the fallback)
    model = silence(build(kind, detection_threshold=0.6) if kind == "aliked" else build(kind))
    images = batch(np.full((64, 80), 0 if kind == "superpoint" else 128, np.uint8),
                   np.zeros((64, 80), np.uint8))
    pred = run(model, images)
    dim = model.descriptor_dim
    assert pred["keypoints"].shape == (2, 0, 2)
    assert pred["keypoint_scores"].shape == (2, 0)
    assert pred["descriptors"].shape == (2, 0, dim)
    assert pred["keypoint_mask"].shape == (2, 0)
    if model.has_scale_ori:
        assert pred["scales"].shape == (2, 0) and pred["oris"].shape == (2, 0)


@pytest.mark.parametrize("kind", EXTRACTORS)
def test_grayscale_and_rgb_inputs_agree(kind):
    image = texture(64, 96, seed=2)
    model = build(kind)
    gray = run(model, batch(image))
    rgb = run(model, batch(image, rgb=True))
    assert gray["keypoints"].shape[1] > 0
    assert gray["keypoints"].shape == rgb["keypoints"].shape
    assert torch.allclose(gray["keypoints"], rgb["keypoints"], atol=1e-3)
    assert torch.allclose(gray["descriptors"], rgb["descriptors"], atol=1e-3)


@pytest.mark.parametrize("kind", ["superpoint", "aliked", "disk"])
def test_resize_maps_keypoints_to_original_pixels(kind):
    """Extracting with resize=64 from a 96x128 image equals extracting from the image the
    front end resizes, with keypoints mapped by x = (x' + 0.5) * 2 - 0.5."""
    image = batch(texture(96, 128, seed=4))
    model = build(kind, resize=64)
    pred = run(model, image if model.grayscale else image.expand(-1, 3, -1, -1))
    small = model.preprocess(image if model.grayscale else image.expand(-1, 3, -1, -1))
    assert small.shape[-2:] == (48, 64)
    model.conf.resize = None
    direct = run(model, small)
    assert pred["keypoints"].shape == direct["keypoints"].shape
    assert torch.allclose(pred["keypoints"], (direct["keypoints"] + 0.5) * 2 - 0.5, atol=1e-4)
    assert pred["keypoints"][..., 0].max() > 64  # in original pixels, beyond the resized width


def test_sift_resize_finds_the_same_blobs_in_original_pixels():
    rng = np.random.default_rng(0)
    centres = [(60 + 110 * i + rng.random(), 60 + 110 * j + rng.random()) for i in range(4) for j in range(3)]
    image = batch(blobs(384, 512, centres, sigma=8.0))
    full = run(SIFT({"resize": None}), image)
    half = run(SIFT({"resize": 256}), image)
    for pred in (full, half):
        kpts = pred["keypoints"][0].numpy()
        dist, idx = cKDTree(kpts).query(np.array(centres))
        assert (dist < 2.0).all(), dist
    # the same blob has the same size in original pixels at both resolutions
    sizes = []
    for pred in (full, half):
        _, idx = cKDTree(pred["keypoints"][0].numpy()).query(np.array(centres))
        sizes.append(pred["scales"][0].numpy()[idx])
    np.testing.assert_allclose(sizes[1] / sizes[0], 1.0, atol=0.15)


@pytest.mark.parametrize("kind, size", [("superpoint", (6, 40)), ("disk", (16, 16))])
def test_too_small_images_are_refused_clearly(kind, size):
    model = build(kind)
    with pytest.raises(ValueError, match="at least|larger than"):
        run(model, torch.rand(1, 1 if model.grayscale else 3, *size))


def test_constructor_rejects_bad_config():
    with pytest.raises(ValueError, match="backend"):
        SIFT({"backend": "vlfeat"})
    with pytest.raises(ValueError, match="nms_radius"):
        SuperPoint({"nms_radius": -1})
    with pytest.raises(ValueError, match="model_name"):
        ALIKED({"model_name": "aliked-x99"})
    with pytest.raises(ValueError, match="nms_window_size"):
        DISK({"nms_window_size": 4})
    with pytest.raises(ValueError, match="max_num_keypoints"):
        SuperPoint({"max_num_keypoints": 0})
    with pytest.raises(ValueError, match="detection_treshold"):  # misspelt key
        SuperPoint({"detection_treshold": 0.1})


# ---- SuperPoint: NMS, borders, descriptor sampling ----------------------------------------

def reference_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """The reference semantics written plainly with full 2D max pooling (slow but obvious)."""
    def pool(x):
        return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)
    x = scores[:, None]
    keep = x == pool(x)
    for _ in range(2):
        suppressed = pool(keep.float()) > 0
        rest = torch.where(suppressed, torch.zeros_like(x), x)
        keep = keep | ((rest == pool(rest)) & ~suppressed)
    return torch.where(keep, x, torch.zeros_like(x))[:, 0]


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4, 5])
def test_max_filter_equals_max_pool(radius):
    x = torch.rand(2, 1, 37, 53)
    assert torch.equal(max_filter(x, radius), F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius))


@pytest.mark.parametrize("radius", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # OpenCV path, torch path
def test_nms_equals_reference_semantics(radius, dtype):
    gen = torch.Generator().manual_seed(radius)
    smooth = F.avg_pool2d(torch.rand(2, 1, 43, 61, generator=gen), 5, stride=1, padding=2)[:, 0]
    quantised = torch.randint(0, 4, (2, 43, 61), generator=gen).float()  # many ties
    for scores in (smooth.to(dtype), quantised.to(dtype)):
        assert torch.equal(nms(scores, radius), reference_nms(scores, radius))


def test_nms_keeps_gradients_like_the_reference():
    scores = torch.rand(1, 20, 24, requires_grad=True)
    kept = nms(scores, 2)
    kept.sum().backward()
    assert torch.equal(scores.grad, (kept > 0).float())


def test_nms_keeps_separated_maxima_only():
    r = 2
    s = torch.zeros(1, 20, 20)
    s[0, 5, 5] = 1.0
    s[0, 5, 7] = 0.9  # within r of the stronger peak: suppressed
    s[0, 12, 5] = 0.8
    s[0, 12, 8] = 0.7  # 3 > r away: kept
    s[0, 16, 16] = 0.5
    s[0, 18, 18] = 0.5  # equal maxima within r: both kept (reference keeps ties)
    kept = {tuple(p) for p in torch.nonzero(nms(s, r)[0]).tolist()}
    assert kept == {(5, 5), (12, 5), (12, 8), (16, 16), (18, 18)}
    # any two kept keypoints with different scores are more than r apart
    out = nms(torch.rand(1, 30, 30), r)[0]
    pts = torch.nonzero(out)
    cheb = (pts[:, None] - pts[None]).abs().amax(-1)
    close = (cheb <= r) & (cheb > 0)
    assert not close.any()
    assert torch.equal(nms(s, 0), s)


def test_nms_adds_maxima_freed_by_suppression():
    """1-D case of the reference's two extra rounds: C is not a local maximum (B is in its
    window) but B is suppressed by A, so C is added."""
    r = 2
    s = torch.zeros(1, 1, 12)
    s[0, 0, 2], s[0, 0, 4], s[0, 0, 6] = 1.0, 0.8, 0.6  # A, B (within r of A), C (r from B)
    kept = torch.nonzero(nms(s, r)[0, 0]).flatten().tolist()
    assert kept == [2, 6]


def test_remove_borders():
    s = torch.ones(1, 12, 16)
    out = remove_borders(s, 4)
    assert (out[:, 4:-4, 4:-4] == 1).all()
    inside = torch.zeros_like(out, dtype=torch.bool)
    inside[:, 4:-4, 4:-4] = True
    assert (out[~inside] == -1).all()
    assert torch.equal(remove_borders(s, 0), s)


@pytest.mark.parametrize("h, w, strip_rows", [(37, 45, 3), (36, 44, 3), (36, 44, 1), (20, 30, 4), (9, 12, 2),
                                              (12, 16, 100)])
@pytest.mark.parametrize("channels", [1, 3])  # 1: conv1a's unfold + matmul path
def test_strip_block_equals_the_whole_block(monkeypatch, h, w, strip_rows, channels):
    gen = torch.Generator().manual_seed(h)
    x = torch.randn(2, channels, h, w, generator=gen)
    conv_a, conv_b = torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        expected = F.max_pool2d(F.relu(conv_b(F.relu(conv_a(x)))), 2)
        monkeypatch.setattr(superpoint_module, "STRIP_PIXELS", strip_rows * 2 * w)
        got = vgg_block(x.contiguous(memory_format=torch.channels_last), conv_a, conv_b)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_superpoint_postprocessing_on_a_crafted_score_map(monkeypatch):
    """NMS, threshold, border removal and top-k on a known score map, through _extract."""
    model = SuperPoint({"resize": None, "nms_radius": 2, "remove_borders": 4,
                        "detection_threshold": 0.1}).eval()
    h, w = 32, 48
    scores = torch.zeros(1, h, w)
    peaks = {(10, 20): 0.9, (10, 21): 0.5, (20, 30): 0.6, (3, 20): 0.95, (20, 45): 0.8, (25, 10): 0.05,
             (15, 8): 0.3}
    for (y, x), v in peaks.items():
        scores[0, y, x] = v
    desc = F.normalize(torch.randn(1, 256, h // 8, w // 8), dim=1)
    monkeypatch.setattr(model, "dense_outputs", lambda images: (scores, desc))
    out = model._extract(torch.zeros(1, 1, h, w))[0]
    # (10,21) suppressed by (10,20); (3,20) and (20,45) in the 4-px border; (25,10) below threshold
    pairs = zip(out["keypoints"].tolist(), out["keypoint_scores"].tolist(), strict=True)
    got = {(int(x), int(y)): s for (x, y), s in pairs}
    assert got == pytest.approx({(20, 10): 0.9, (30, 20): 0.6, (8, 15): 0.3})
    model.conf.max_num_keypoints = 2
    out = model._extract(torch.zeros(1, 1, h, w))[0]
    assert out["keypoints"].tolist() == [[20.0, 10.0], [30.0, 20.0]]  # best first
    assert out["descriptors"].shape == (2, 256)


def test_descriptor_sampling_convention():
    d, h, w = 16, 5, 7
    desc = torch.randn(d, h, w)
    unit = F.normalize(desc, dim=0)
    # the official convention puts descriptor (0, 0) at the first cell centre (3.5, 3.5) and
    # descriptor (h-1, w-1) at the last pixel; cell j in between at 3.5 + j (8w - 4.5) / (w - 1)
    xs = 3.5 + torch.arange(w) * (8 * w - 4.5) / (w - 1)
    ys = 3.5 + torch.arange(h) * (8 * h - 4.5) / (h - 1)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    sampled = sample_descriptors(grid, desc)
    torch.testing.assert_close(sampled, unit.permute(1, 2, 0).reshape(-1, d), atol=1e-5, rtol=1e-5)
    first = sample_descriptors(torch.tensor([[3.5, 3.5]]), desc)[0]
    torch.testing.assert_close(first, unit[:, 0, 0], atol=1e-6, rtol=1e-6)
    assert sample_descriptors(torch.zeros(0, 2), desc).shape == (0, d)


def test_superpoint_bf16_autocast_runs():
    model = image_driven_superpoint({})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = run(model, batch(texture(64, 80, seed=5)))
    assert pred["keypoints"].shape[1] > 0
    assert pred["descriptors"].dtype == torch.float32 and pred["keypoint_scores"].dtype == torch.float32


# ---- checkpoints ---------------------------------------------------------------------------

def official_superpoint_state_dict(dim: int = 256) -> dict[str, torch.Tensor]:
    shapes = json.loads((FIXTURES / "superpoint_v1_keys.json").read_text())
    state = {k: torch.randn(s) for k, s in shapes.items()}
    if dim != 256:
        state["convDb.weight"] = torch.randn(dim, 256, 1, 1)
        state["convDb.bias"] = torch.randn(dim)
    return state


def test_superpoint_state_dict_matches_official_keys():
    shapes = json.loads((FIXTURES / "superpoint_v1_keys.json").read_text())
    own = {k: list(v.shape) for k, v in SuperPoint().state_dict().items()}
    assert list(own) == list(shapes)
    assert own == shapes


def test_superpoint_loads_official_layout_and_rejects_wrong_shapes(tmp_path):
    state = official_superpoint_state_dict()
    path = tmp_path / "superpoint_v1.pth"
    torch.save(state, path)
    model = SuperPoint()
    model.load_weights(str(path))
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])

    wrong = tmp_path / "wrong.pth"
    torch.save(official_superpoint_state_dict(dim=128), wrong)
    with pytest.raises(ValueError, match="shape mismatch.*convDb"):
        SuperPoint().load_weights(str(wrong))
    with pytest.raises(ValueError, match="missing"):
        SuperPoint().load_checkpoint_state_dict({k: v for k, v in state.items() if k != "convPa.bias"})


def test_aliked_loads_the_kornia_state_dict():
    from kornia.feature import ALIKED as KorniaALIKED

    official = {k: v for k, v in KorniaALIKED("aliked-n16").state_dict().items() if k != "dkd.hw_grid"}
    model = ALIKED()
    assert isinstance(model.model, KorniaALIKED)
    model.load_checkpoint_state_dict(official)
    for k, v in official.items():
        assert torch.equal(model.model.state_dict()[k], v)
    model.load_checkpoint_state_dict(model.state_dict())  # our own layout, keys "model.*"
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_checkpoint_state_dict(KorniaALIKED("aliked-t16").state_dict())
    assert ALIKED({"model_name": "aliked-t16", "weights": "aliked-t16"}).descriptor_dim == 64
    with pytest.raises(ValueError, match="another model"):
        ALIKED({"model_name": "aliked-n16rot"})  # default weights aliked-n16


def test_disk_loads_nested_and_flat_checkpoints(tmp_path):
    from kornia.feature import DISK as KorniaDISK

    torch.manual_seed(1)
    flat = KorniaDISK().state_dict()
    path = tmp_path / "depth-save.pth"
    torch.save({"extractor": flat, "epoch": 10}, path)
    model = DISK()
    model.load_weights(str(path))
    for k, v in flat.items():
        assert torch.equal(model.model.state_dict()[k], v)
    DISK().load_checkpoint_state_dict(flat)
    with pytest.raises(ValueError, match="shape mismatch"):
        DISK({"desc_dim": 64}).load_checkpoint_state_dict(flat)


@pytest.mark.parametrize("n", [1, 7, 40, 5000])
def test_disk_padded_selection_is_kornias(n):
    """top_maxima (the GPU's fixed-shape selection) keeps kornia's points in kornia's order:
    strict maxima above the threshold, the n strongest with ties at the n-th score in raster
    order (quantised logits make many), raster order; an image without maxima keeps none."""
    from kornia.feature.disk.detector import heatmap_to_keypoints

    from featmatch_core.models.extractors.disk import top_maxima

    gen = torch.Generator().manual_seed(n)
    heatmaps = (torch.rand(3, 1, 30, 44, generator=gen) * 8).round() - 2  # logits in -2..6, ties
    heatmaps[2] = -1.0  # nothing above the threshold 0
    indices, counts = top_maxima(heatmaps, n, 3, 0.0)
    assert indices.shape == (3, n if n < 30 * 44 else 30 * 44)
    for i, expected in enumerate(heatmap_to_keypoints(heatmaps, n=n, window_size=3, score_threshold=0.0)):
        count = int(counts[i])
        assert count == len(expected.xys) and (count > 0) == (i < 2)
        xy = torch.stack((indices[i, :count] % 44, indices[i, :count] // 44), dim=1)
        assert torch.equal(xy, expected.xys) and (indices[i, count:] == 0).all()


def test_disk_rejects_unpadded_odd_sizes():
    model = build("disk", pad_if_not_divisible=False)
    with pytest.raises(ValueError, match="multiple of 16"):
        run(model, batch(texture(40, 50), rgb=True))


# ---- SIFT ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["opencv", "pycolmap", "kornia"])
def test_sift_keypoints_are_in_pixel_centre_convention(backend):
    centres = [(40.3, 50.7), (120.0, 45.0), (200.6, 130.2), (70.5, 150.25)]
    pred = run(SIFT({"backend": backend, "resize": None}), batch(blobs(200, 260, centres, sigma=5.0)))
    dist, idx = cKDTree(pred["keypoints"][0].numpy()).query(np.array(centres))
    assert (dist < 0.1).all(), dist
    # blob of std s has its DoG scale at about s, i.e. a keypoint size (2 sigma) near 2s
    sizes = pred["scales"][0].numpy()[idx]
    assert ((sizes > 8.0) & (sizes < 13.0)).all(), sizes


@pytest.mark.parametrize("backend", ["opencv", "pycolmap", "kornia"])
def test_sift_orientation_convention(backend):
    """Rotating the image counter-clockwise on screen by 30 degrees decreases oris by 30 degrees
    (angle from +x towards +y, y down), for both back ends."""
    image = texture(240, 240, seed=1)
    centre = (119.5, 119.5)
    rot = cv2.getRotationMatrix2D(centre, 30, 1.0)
    rotated = cv2.warpAffine(image, rot, (240, 240), flags=cv2.INTER_CUBIC)
    model = SIFT({"backend": backend, "resize": None})
    a, b = run(model, batch(image)), run(model, batch(rotated))
    ka, kb = a["keypoints"][0].numpy(), b["keypoints"][0].numpy()
    moved = ka @ rot[:, :2].T + rot[:, 2]
    central = np.linalg.norm(moved - centre, axis=1) < 80
    dist, idx = cKDTree(kb).query(moved[central])
    ok = dist < 1.0
    assert ok.sum() > 30
    delta = b["oris"][0].numpy()[idx[ok]] - a["oris"][0].numpy()[central][ok]
    delta = np.rad2deg(wrap_angle(delta))
    assert abs(np.median(delta) + 30) < 3, np.median(delta)


def test_sift_backends_agree():
    image = batch(texture(240, 320, seed=0))
    cv = run(SIFT({"backend": "opencv", "resize": None}), image)
    colmap = run(SIFT({"backend": "pycolmap", "resize": None}), image)
    kc, kp = cv["keypoints"][0].numpy(), colmap["keypoints"][0].numpy()
    dist, idx = cKDTree(kp).query(kc)
    near = dist < 1.0
    # measured on this image: 99 % of OpenCV's keypoints within 1 px of COLMAP's, 90 % the other way
    assert near.mean() >= 0.95
    assert np.median(dist) < 0.05  # same sub-pixel positions: the conventions match
    assert (cKDTree(kc).query(kp)[0] < 1.0).mean() >= 0.85
    ratio = cv["scales"][0].numpy()[near] / colmap["scales"][0].numpy()[idx[near]]
    dori = np.abs(wrap_angle(cv["oris"][0].numpy()[near] - colmap["oris"][0].numpy()[idx[near]]))
    similar = np.zeros_like(near)
    similar[near] = (np.abs(ratio - 1) < 0.1) & (dori < 0.2)
    # measured 0.89: the orientation histograms of the two implementations differ slightly
    assert similar.mean() >= 0.8, similar.mean()


def test_sift_kornia_backend_agrees_with_opencv_and_checks_its_config():
    """The torch (GPU-capable) back end: where both detect a point, same scale and orientation."""
    image = batch(texture(240, 320, seed=0))
    cv = run(SIFT({"backend": "opencv", "resize": None, "max_num_keypoints": 512}), image)
    kornia = run(SIFT({"backend": "kornia", "resize": None, "max_num_keypoints": 512}), image)
    assert kornia["keypoints"].shape == (1, 512, 2) and kornia["descriptors"].shape == (1, 512, 128)
    kc, kk = cv["keypoints"][0].numpy(), kornia["keypoints"][0].numpy()
    dist, idx = cKDTree(kk).query(kc)
    near = dist < 0.5
    assert near.mean() > 0.3  # measured 0.44 on graffiti: no edge test, its own ranking
    ratio = kornia["scales"][0].numpy()[idx[near]] / cv["scales"][0].numpy()[near]
    dori = np.abs(wrap_angle(cv["oris"][0].numpy()[near] - kornia["oris"][0].numpy()[idx[near]]))
    assert abs(np.median(ratio) - 1) < 0.05 and np.median(dori) < np.deg2rad(3)
    # RootSIFT in OpenCV's layout: co-located points have nearly the same descriptor
    same = (cv["descriptors"][0][torch.from_numpy(near)] * kornia["descriptors"][0][idx[near]]).sum(-1)
    assert same.median() > 0.9 and torch.allclose(kornia["descriptors"].norm(dim=-1), torch.tensor(1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the pipeline's precision: auto on a bf16 CPU
        in_autocast = run(SIFT({"backend": "kornia", "resize": None, "max_num_keypoints": 512}), image)
    assert torch.equal(in_autocast["keypoints"], kornia["keypoints"])
    # a flat image has no DoG extremum above the threshold: no points (kornia itself pads with zeros)
    flat_model = SIFT({"backend": "kornia", "resize": None, "max_num_keypoints": 64})
    flat = run(flat_model, batch(np.full((64, 80), 128, np.uint8)))
    assert flat["keypoints"].shape == (1, 0, 2)
    for conf in ({"edge_threshold": 5.0}, {"num_octaves": 3}, {"nms_radius": 2}):
        with pytest.raises(ValueError, match="kornia backend .* cannot honour"):
            SIFT({"backend": "kornia", **conf})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sift_kornia_backend_on_cuda_equals_cpu():
    image = batch(texture(240, 320, seed=2))
    cpu = run(SIFT({"backend": "kornia", "resize": None, "max_num_keypoints": 256}), image)
    model = SIFT({"backend": "kornia", "resize": None, "max_num_keypoints": 256}).cuda()
    gpu = {k: v.cpu() for k, v in run(model, image.cuda()).items()}
    dist, _ = cKDTree(gpu["keypoints"][0].numpy()).query(cpu["keypoints"][0].numpy())
    assert (dist < 0.01).mean() > 0.95


@pytest.mark.parametrize("k, threshold", [(None, 0.02), (20, 0.02), (500, 0.02), (20, 0.9)])
def test_superpoint_batched_selection_equals_the_per_image_one(k, threshold):
    """The GPU's selection (one read for the batch) keeps the CPU loop's points, order and scores."""
    model = image_driven_superpoint({"max_num_keypoints": k, "detection_threshold": threshold})
    flat = np.zeros((64, 96), np.uint8)
    images = batch(texture(64, 96, seed=1), texture(64, 96, seed=2), flat)
    with torch.inference_mode():
        per_image = model._extract(images)
        scores, descriptors = model.dense_outputs(images)
        scores = remove_borders(nms(scores, 4), 4)
        batched = model.select_batched(scores, descriptors, threshold)
    counts = [len(f["keypoints"]) for f in per_image]
    assert counts[2] == 0 and (threshold > 0.5 or counts[0] > 0)
    if k == 20 and threshold < 0.5:
        assert counts[:2] == [20, 20]
    for mine, theirs in zip(batched, per_image, strict=True):
        assert torch.equal(mine["keypoints"], theirs["keypoints"])
        assert torch.equal(mine["keypoint_scores"], theirs["keypoint_scores"])
        torch.testing.assert_close(mine["descriptors"], theirs["descriptors"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_superpoint_whole_image_path_on_cuda_equals_the_cpu_strips():
    torch.manual_seed(0)
    model = SuperPoint({"weights": None, "resize": None, "max_num_keypoints": 512,
                        "detection_threshold": 0.0}).eval()
    image = batch(texture(240, 320, seed=4))
    cpu = run(model, image)
    gpu = {k: v.cpu() for k, v in run(model.cuda(), image.cuda()).items()}
    dist, index = cKDTree(gpu["keypoints"][0].numpy()).query(cpu["keypoints"][0].numpy())
    same = dist == 0
    assert same.mean() > 0.95
    torch.testing.assert_close(gpu["descriptors"][0][index[same]], cpu["descriptors"][0][same], atol=1e-3, rtol=1e-3)


def test_sift_top_k_keeps_the_strongest():
    image = batch(texture(160, 200, seed=3))
    every = run(SIFT({"resize": None, "max_num_keypoints": None}), image)
    top = run(SIFT({"resize": None, "max_num_keypoints": 50}), image)
    assert top["keypoints"].shape[1] == 50 < every["keypoints"].shape[1]
    best = torch.sort(every["keypoint_scores"][0], descending=True).values[:50]
    torch.testing.assert_close(torch.sort(top["keypoint_scores"][0], descending=True).values, best)


@pytest.mark.parametrize("nms_radius", [0, 3])
def test_sift_one_pass_selection_does_not_depend_on_the_candidate_budget(nms_radius):
    """Describing only OpenCV's strongest candidates, found with a raised contrast threshold,
    gives exactly the selection from all of them, in the same order, whatever budget the
    previous image left (too small a ratio or too high a threshold: another pass)."""
    image = batch(texture(240, 320, seed=4))
    every = SIFT({"resize": None, "max_num_keypoints": None, "nms_radius": nms_radius})
    reference = run(every, image)
    for k in (40, 300):
        best = torch.sort(reference["keypoint_scores"][0], descending=True).values[:k]
        kth = float(best[-1])
        outputs = []
        for ratio, floor in ((1.0, 0.0), (1.5, 0.0), (4.0, 0.0), (1.5, 0.9 * kth), (1.0, 0.99 * kth),
                             (1.5, 1.5 * kth)):
            sift = SIFT({"resize": None, "max_num_keypoints": k, "nms_radius": nms_radius})
            sift._budget.ratio, sift._budget.response_floor = ratio, floor
            outputs.append(run(sift, image))
            assert sift._budget.response_floor == pytest.approx(0.8 * kth)  # learned for the next image
        for out in outputs:
            assert out["keypoints"].shape[1] == k
            for key in ("keypoints", "keypoint_scores", "scales", "oris", "descriptors"):
                assert torch.equal(out[key], outputs[0][key]), (k, key)
        torch.testing.assert_close(outputs[0]["keypoint_scores"][0], best)  # strongest first
        # the same points and descriptors as selecting from the full detection
        full = {tuple(p): d for p, d in zip(reference["keypoints"][0].tolist(), reference["descriptors"][0],
                                            strict=True)}
        for point, descriptor in zip(outputs[0]["keypoints"][0].tolist(), outputs[0]["descriptors"][0],
                                     strict=True):
            assert torch.equal(full[tuple(point)], descriptor)


def test_filter_colocated():
    kpts = np.array([[5.0, 5.0], [5.2, 4.9], [5.1, 5.1], [9.0, 5.0], [20.0, 20.0]])
    scores = np.array([1.0, 2.0, 2.0, 1.5, 0.5])
    oris = np.array([0.0, -2.0, 1.0, 0.0, 0.0])
    # per pixel the best score, ties broken by the smallest |orientation|
    assert filter_colocated(kpts, scores, oris, (30, 30), 0).tolist() == [2, 3, 4]
    # radius 4 also drops (9, 5): a stronger point lies 4 px away
    assert filter_colocated(kpts, scores, oris, (30, 30), 4).tolist() == [2, 4]
    assert filter_colocated(np.zeros((0, 2)), np.zeros(0), np.zeros(0), (30, 30), 0).shape == (0,)


def test_rootsift():
    x = torch.rand(10, 128) * 100
    r = rootsift(x)
    torch.testing.assert_close(r.norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(r, (x / x.sum(-1, keepdim=True)).sqrt(), atol=1e-5, rtol=1e-4)


def test_wrap_angle():
    a = np.array([0.0, np.pi, -np.pi, 3 * np.pi / 2, -3 * np.pi / 2, 2 * np.pi])
    np.testing.assert_allclose(wrap_angle(a), [0.0, np.pi, np.pi, -np.pi / 2, np.pi / 2, 0.0], atol=1e-12)



def test_sift_nms_radius_none_keeps_colocated_points():
    image = batch(texture(120, 160, seed=6))
    every = run(SIFT({"resize": None, "nms_radius": None, "max_num_keypoints": None}), image)
    one_per_pixel = run(SIFT({"resize": None, "nms_radius": 0, "max_num_keypoints": None}), image)
    thinned = run(SIFT({"resize": None, "nms_radius": 3, "max_num_keypoints": None}), image)
    counts = [p["keypoints"].shape[1] for p in (every, one_per_pixel, thinned)]
    assert counts[0] > counts[1] > counts[2] > 0
