"""SIFT in torch (``backend: torch``) against OpenCV's SIFT, which it reimplements: each stage
(upscale, blur, kernel) and the whole detection on the bundled graffiti image and a generated
texture, the back end's selection against the numpy one, and its settings."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from featmatch_core.datasets.synthetic import random_texture
from featmatch_core.image import to_tensor_image
from featmatch_core.models.extractors import sift_torch
from featmatch_core.models.extractors.aliked import ALIKED
from featmatch_core.models.extractors.superpoint import SuperPoint
from featmatch_core.models.extractors.sift import (
    SIFT,
    _canonical_order,
    rootsift,
    select,
    select_padded,
    select_torch,
    wrap_angle,
    wrap_angle_torch,
)

pytestmark = pytest.mark.timeout(120)

GRAFFITI = Path(__file__).resolve().parents[2] / "featmatch_core" / "assets" / "graffiti" / "1.png"


def graffiti(width: int = 320) -> np.ndarray:
    image = cv2.imread(str(GRAFFITI), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(image, (width, round(width * image.shape[0] / image.shape[1])), interpolation=cv2.INTER_AREA)


def opencv_sift():
    return cv2.SIFT_create(nfeatures=0, nOctaveLayers=3, contrastThreshold=0.02, edgeThreshold=10, sigma=1.6,
                           descriptorType=cv2.CV_32F, enable_precise_upscale=True)


def test_kernel_blur_and_upscale_are_opencvs():
    for sigma in (0.8, 1.2490, 2.5, 4.1):
        expected = cv2.getGaussianKernel(int(round(sigma * 8 + 1)) | 1, sigma, cv2.CV_64F)[:, 0]
        np.testing.assert_allclose(sift_torch.gaussian_kernel(sigma), expected, rtol=1e-6, atol=1e-8)
    rng = np.random.default_rng(0)
    for h, w in ((40, 52), (7, 9), (1, 3)):  # also maps smaller than the kernel radius
        image = (rng.random((h, w)) * 255).astype(np.float32)
        expected = cv2.GaussianBlur(image, (0, 0), 2.0, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(sift_torch.blur(torch.from_numpy(image)[None], 2.0)[0].numpy(), expected, atol=1e-3)
        half = np.float32([[0.5, 0, 0], [0, 0.5, 0]])
        expected = cv2.warpAffine(image, half, (2 * w, 2 * h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT)
        np.testing.assert_allclose(sift_torch.upsample2x(torch.from_numpy(image)[None])[0].numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("image", ["graffiti", "texture"])
def test_detections_and_descriptors_are_opencvs(image):
    gray = graffiti() if image == "graffiti" else random_texture(180, 240, seed=3)
    settings = sift_torch.SiftSettings()
    with torch.inference_mode():
        found, dx, dy = sift_torch.detect(torch.from_numpy(gray).float()[None], settings)
        ours = sift_torch.descriptors(dx, dy, found, settings)
    keypoints, theirs = opencv_sift().detectAndCompute(gray, None)
    octave = np.array([((k.octave & 255) ^ 0x80) - 0x80 for k in keypoints])
    keypoints = [k for k, o in zip(keypoints, octave, strict=True) if o < 3]  # the 4 octaves computed
    theirs = theirs[octave < 3]
    xy = np.array([k.pt for k in keypoints])
    angle = np.array([k.angle for k in keypoints])
    assert len(keypoints) > 300
    assert abs(len(found.xy) - len(keypoints)) <= 0.03 * len(keypoints)
    # each OpenCV point: the nearest of ours with the same orientation (within 1 degree)
    distance, index = cKDTree(found.xy.numpy()).query(xy, k=6)
    same_angle = np.abs((found.angle.numpy()[index] - angle[:, None] + 180) % 360 - 180) < 1.0
    distance = np.where(same_angle, distance, np.inf)
    best = index[np.arange(len(xy)), distance.argmin(1)]
    found_again = distance.min(1) < 0.01
    assert found_again.mean() > 0.99
    size = np.array([k.size for k in keypoints])[found_again]
    response = np.array([k.response for k in keypoints])[found_again]
    np.testing.assert_allclose(found.size.numpy()[best[found_again]], size, rtol=1e-3)
    np.testing.assert_allclose(found.response.numpy()[best[found_again]], response, rtol=1e-2)
    cosine = (rootsift(ours[best[found_again]]) * rootsift(torch.from_numpy(theirs[found_again]))).sum(1)
    assert cosine.median() > 0.999 and cosine.min() > 0.98


def test_closed_form_solve_equals_lu_and_flags_singular_matrices():
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(500, 3, 3, generator=gen)
    rhs = torch.randn(500, 3, generator=gen)
    matrix[:3] = 0.0  # flat regions' Hessians: singular, no step
    matrix[2, 0, 0] = 1.0  # a rank-one one
    solution, regular = sift_torch.solve3x3(matrix, rhs)
    expected = torch.linalg.solve(matrix[3:].double(), rhs[3:].double()[..., None])[..., 0]
    assert not regular[:3].any() and regular[3:].all()
    torch.testing.assert_close(solution[3:].double(), expected, rtol=1e-3, atol=1e-4)


def test_dropping_settled_candidates_first_changes_nothing(monkeypatch):
    """Flat regions (here: constant squares and a smooth ramp, like rendered frames) give many tie
    extrema; dropping those that settle and fail at the first step leaves the same points."""
    gray = graffiti(240).astype(np.float32)
    gray[20:80, 20:120] = 128
    gray[100:150] = np.linspace(0, 255, gray.shape[1])[None]
    image = torch.from_numpy(gray.round())[None]
    settings = sift_torch.SiftSettings()
    results = []
    for threshold in (0, 10**12):  # always, never
        monkeypatch.setattr(sift_torch, "PREFILTER_CANDIDATES", threshold)
        with torch.inference_mode():
            results.append(sift_torch.detect(image, settings)[0])
    always, never = results
    assert len(always.xy) > 50
    for name in ("xy", "size", "angle", "response"):
        assert torch.equal(getattr(always, name), getattr(never, name))


def test_windows_in_small_chunks_give_the_same_points(monkeypatch):
    image = torch.from_numpy(graffiti(160)).float()[None]
    settings = sift_torch.SiftSettings()
    results = []
    for budget in (1 << 20, 5000):  # one chunk; a few points per chunk (bounded memory on large images)
        monkeypatch.setitem(sift_torch.WINDOW_CHUNK_ELEMENTS, "cpu", budget)
        with torch.inference_mode():
            found, dx, dy = sift_torch.detect(image, settings)
            results.append((found, sift_torch.descriptors(dx, dy, found, settings)))
    (whole, whole_desc), (chunked, chunked_desc) = results
    assert len(whole.xy) > 100
    assert torch.equal(whole.angle, chunked.angle) and torch.equal(whole.xy, chunked.xy)
    torch.testing.assert_close(whole_desc, chunked_desc, rtol=1e-5, atol=1e-6)


def test_backend_selects_what_the_opencv_backend_selects():
    image = to_tensor_image(graffiti(400))
    conf = {"resize": None, "max_num_keypoints": 500}
    with torch.inference_mode():
        ours = SIFT({"backend": "torch", **conf})({"image": image})
        theirs = SIFT({"backend": "opencv", **conf})({"image": image})
    assert ours["keypoints"].shape == theirs["keypoints"].shape == (1, 500, 2)
    same = (ours["keypoints"][0] - theirs["keypoints"][0]).abs().max(dim=1).values < 0.01
    assert same.float().mean() > 0.9  # the same points in the same order (strongest first)
    near, _ = cKDTree(theirs["keypoints"][0].numpy()).query(ours["keypoints"][0].numpy())
    assert (near < 0.01).mean() > 0.97
    for key, tolerance in (("scales", 1e-3), ("keypoint_scores", 1e-2)):
        np.testing.assert_allclose(ours[key][0][same], theirs[key][0][same], rtol=tolerance)
    cosine = (ours["descriptors"][0][same] * theirs["descriptors"][0][same]).sum(1)
    assert cosine.median() > 0.999


def random_detections(seed: int, n: int = 300) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 20, (n, 2)).astype(np.float32)
    xy[100:200] = xy[:100] + rng.uniform(-0.3, 0.3, (100, 2)).astype(np.float32)  # co-located points
    scores = rng.choice(np.linspace(0.1, 1.0, 50), n).astype(np.float32)  # with ties
    oris = wrap_angle(rng.uniform(-4, 4, n)).astype(np.float32)
    return {"keypoints": xy, "scores": scores, "oris": oris, "scales": scores, "descriptors": np.eye(n, 128)}


@pytest.mark.parametrize("nms_radius, k", [(0, 40), (None, 40), (0, None)])
def test_torch_selection_equals_the_numpy_selection_per_image(nms_radius, k):
    """Two images' points, interleaved: each image's selection is the numpy one, images in order."""
    images = [random_detections(1), random_detections(2)]
    conf = SIFT({"nms_radius": nms_radius, "max_num_keypoints": k}).conf
    expected = [_canonical_order(select(det, (20, 20), conf)) for det in images]
    # interleaved, each image's points keeping their order (ties are broken by it)
    slots = np.random.default_rng(3).permutation(np.repeat([0, 1], 300))
    interleave = np.empty(600, np.int64)
    interleave[slots == 0], interleave[slots == 1] = np.arange(300), np.arange(300, 600)
    merged = {key: np.concatenate([det[key] for det in images])[interleave] for key in ("keypoints", "scores", "oris")}
    image = torch.from_numpy(slots)
    order = select_torch(torch.from_numpy(merged["keypoints"]), torch.from_numpy(merged["scores"]),
                         torch.from_numpy(merged["oris"]), image, (20, 20), conf).numpy()
    assert np.all(np.diff(image.numpy()[order]) >= 0)
    for i, det in enumerate(expected):
        mine = order[image.numpy()[order] == i]
        np.testing.assert_array_equal(merged["keypoints"][mine], det["keypoints"])
        np.testing.assert_array_equal(merged["oris"][mine], det["oris"])
    angles = torch.linspace(-10, 10, 101)
    np.testing.assert_allclose(wrap_angle_torch(angles).numpy(), wrap_angle(angles.numpy()), atol=1e-6)


@pytest.mark.parametrize("nms_radius, k", [(0, 40), (None, 40), (0, None), (0, 1000)])
def test_padded_selection_equals_the_selection(nms_radius, k):
    """The GPU's fixed-shape selection (a table of each image's rows, the padding never chosen)
    keeps the eager selection's points in its order; a third image has no points."""
    images = [random_detections(1), random_detections(2)]
    slots = torch.from_numpy(np.random.default_rng(3).permutation(np.repeat([0, 1], 300)))
    merged = {key: torch.from_numpy(np.concatenate([det[key] for det in images]))
              for key in ("keypoints", "scores", "oris")}
    conf = SIFT({"nms_radius": nms_radius, "max_num_keypoints": k}).conf
    expected = select_torch(merged["keypoints"], merged["scores"], merged["oris"], slots, (20, 20), conf)
    padded = [torch.cat((t, t[-1:].expand(1024 - 600, *t.shape[1:]))) for t in
              (merged["keypoints"], merged["scores"], merged["oris"], slots)]
    valid = torch.arange(1024) < 600
    table, counts = select_padded(*padded, valid, (20, 20), 3, nms_radius, k)
    assert table.shape == (3, 1024 if k is None else min(k, 1024)) and counts[2] == 0
    mine = torch.cat([table[i, :counts[i]] for i in range(3)])
    assert torch.equal(mine, expected) and (table[:, counts.max():] == 0).all()


def test_a_batch_equals_its_images_one_by_one():
    images = [graffiti(240)[:180], random_texture(180, 240, seed=5), np.zeros((180, 240), np.uint8)]
    model = SIFT({"backend": "torch", "resize": None, "max_num_keypoints": 150})
    batch = torch.stack([to_tensor_image(image)[0] for image in images])
    with torch.inference_mode():
        together = model({"image": batch})
        for i, image in enumerate(images):
            alone = model({"image": to_tensor_image(image)})
            n = int(together["keypoint_mask"][i].sum())
            assert n == alone["keypoints"].shape[1] == (0 if i == 2 else 150)
            for key in ("keypoints", "descriptors", "scales", "oris", "keypoint_scores"):
                torch.testing.assert_close(together[key][i, :n], alone[key][0], atol=1e-4, rtol=1e-4)


def test_auto_backend_is_opencv_on_the_cpu_and_torch_elsewhere():
    image = to_tensor_image(graffiti(200))
    with torch.inference_mode():
        auto = SIFT({"resize": None, "max_num_keypoints": 100})({"image": image})
        opencv = SIFT({"backend": "opencv", "resize": None, "max_num_keypoints": 100})({"image": image})
    for key in auto:
        assert torch.equal(auto[key], opencv[key])
    assert SIFT().conf.backend == "auto" and SIFT()._settings is not None
    assert SIFT({"nms_radius": 3})._settings is None  # only OpenCV honours it: OpenCV everywhere


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_backend_on_cuda_is_the_torch_backend():
    image = to_tensor_image(graffiti(200)).cuda()
    with torch.inference_mode():
        auto = SIFT({"resize": None, "max_num_keypoints": 100})({"image": image})
        ours = SIFT({"backend": "torch", "resize": None, "max_num_keypoints": 100})({"image": image})
    assert auto["keypoints"].is_cuda
    # the same computation; CUDA's atomic additions (orientation histograms) may differ in the last bits
    assert abs(auto["keypoints"].shape[1] - ours["keypoints"].shape[1]) <= 2
    n = min(auto["keypoints"].shape[1], ours["keypoints"].shape[1])
    same = (auto["keypoints"][0, :n] - ours["keypoints"][0, :n]).abs().max(dim=1).values < 1e-3
    assert same.float().mean() > 0.95


def test_settings_the_backend_cannot_honour():
    with pytest.raises(ValueError, match="nms_radius 0"):
        SIFT({"backend": "torch", "nms_radius": 2})
    with pytest.raises(ValueError, match="first_octave -1 or 0"):
        SIFT({"backend": "torch", "first_octave": 1})
    fewer = SIFT({"backend": "torch", "resize": None, "num_octaves": 2, "max_num_keypoints": None})
    every = SIFT({"backend": "torch", "resize": None, "max_num_keypoints": None})
    image = to_tensor_image(graffiti(200))
    with torch.inference_mode():
        assert 0 < fewer({"image": image})["keypoints"].shape[1] < every({"image": image})["keypoints"].shape[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_sift_on_cuda_equals_cpu():
    image = to_tensor_image(graffiti())
    model = SIFT({"backend": "torch", "resize": None, "max_num_keypoints": 300})
    with torch.inference_mode():
        cpu = model({"image": image})
        gpu = {k: v.cpu() for k, v in model({"image": image.cuda()}).items()}
    near, index = cKDTree(gpu["keypoints"][0].numpy()).query(cpu["keypoints"][0].numpy())
    same = near < 1e-3
    assert same.mean() > 0.97
    cosine = (gpu["descriptors"][0][index[same]] * cpu["descriptors"][0][same]).sum(1)
    assert cosine.min() > 0.999


def synchronizations(call) -> int:
    """How many times ``call`` makes the host wait for the GPU (CUDA's sync debug mode)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_extraction_on_cuda_waits_only_for_its_counts():
    """SIFT (torch) reads three counts, the descriptor windows and the per-image counts; SuperPoint
    its keypoints per image; ALIKED in top-k mode nothing. Constants are made once, not copied at
    every call."""
    image = to_tensor_image(graffiti()).cuda()
    sift = SIFT({"backend": "torch", "resize": None, "max_num_keypoints": 300})
    superpoint = SuperPoint({"weights": None, "resize": None, "max_num_keypoints": 300}).cuda().eval()
    aliked = ALIKED({"weights": None, "resize": None, "max_num_keypoints": 300, "detection_threshold": -1})
    # SIFT reads 6 counts; the margin is for library internals (batched LU). A per-call host copy of
    # a constant, which this guards against, would add about 20 (one per blur)
    for model, most in ((sift, 12), (superpoint, 2), (aliked.cuda().eval(), 1)):
        with torch.inference_mode():
            model({"image": image})  # first call: constants made
            assert synchronizations(lambda model=model: model({"image": image})) <= most
