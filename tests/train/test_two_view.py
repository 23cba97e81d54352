"""Training data, ground truth and LightGlue's loss (the trainer itself is tested elsewhere)."""

import cv2
import numpy as np
import pytest
import torch

from featmatch_core.config import ConfigError
from featmatch_core.datasets.homographies import build_homography_datasets, make_pair
from featmatch_core.geometry.homography import warp_points
from featmatch_core.train.losses import assignment_nll, binary_cross_entropy, confidence_loss
from featmatch_core.train.two_view import TwoViewModel

MATCHER = {"name": "lightglue", "features": None, "input_dim": 128, "add_scale_ori": True, "weights": None,
           "descriptor_dim": 64, "num_heads": 2, "n_layers": 3}


def data_conf(root, **kw):
    return {"root": str(root), "image_size": [192, 256], "train_pairs": 4, "val_pairs": 2,
            "features": {"name": "sift", "max_num_keypoints": 128, "resize": None}, **kw}


def test_views_follow_their_homography(photo_dir):
    train, _ = build_homography_datasets(data_conf(photo_dir))
    rng = np.random.default_rng(0)
    train.conf.photometric.enable = False
    view0, view1, H = make_pair(train.photo(0), rng, train.conf)
    # warping view 0 by H reproduces view 1 where both see the photo
    warped = cv2.warpPerspective(view0, H, (256, 192))
    inside = cv2.warpPerspective(np.full_like(view0, 255), H, (256, 192)) == 255
    inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5))) > 0
    assert inside.mean() > 0.3
    assert np.abs(warped.astype(float) - view1)[inside].mean() < 6


def test_split_holds_out_whole_images(photo_dir):
    train, val = build_homography_datasets(data_conf(photo_dir, val_fraction=0.25))
    assert len(val.images) == 1 and not set(val.images) & set(train.images)
    item = train[0]
    assert item["keypoints0"].shape == (128, 2) and item["descriptors1"].shape == (128, 128)
    assert item["keypoint_mask0"].dtype == torch.bool
    np.testing.assert_allclose(train[1]["H_0to1"], train[1]["H_0to1"])  # deterministic per index


def test_feature_cache_round_trip(photo_dir, tmp_path):
    train, _ = build_homography_datasets(data_conf(photo_dir, cache_dir=str(tmp_path / "cache")))
    first = train[2]
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 1
    train._extractor = "must not be used"  # a cache hit never extracts
    again = train[2]
    for key in first:
        torch.testing.assert_close(first[key], again[key])


def test_missing_folder_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="neither an image folder"):
        build_homography_datasets(data_conf(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="rooot"):
        build_homography_datasets({"rooot": str(tmp_path)})


def test_gt_labels_on_synthetic_homography(photo_dir):
    train, _ = build_homography_datasets(data_conf(photo_dir))
    model = TwoViewModel({"matcher": MATCHER, "pretrained": False})
    batch = torch.utils.data.default_collate([train[0]])
    gt = model.ground_truth(batch)
    pos = gt["gt_matches0"][0] >= 0
    assert pos.sum() > 10
    proj = warp_points(batch["keypoints0"][0][pos].double(), batch["H_0to1"][0].double())
    err = (proj - batch["keypoints1"][0][gt["gt_matches0"][0][pos]].double()).norm(dim=-1)
    assert err.max() < 3.0
    assert (gt["gt_matches0"][0][~batch["keypoint_mask0"][0]] == -2).all()  # padding is ignored


def test_gt_labels_are_computed_in_full_precision_under_autocast(photo_dir):
    """The trainer runs the whole forward under bf16 autocast (``mixed_precision: bf16``): the
    labels must not change with it (in bf16 the homography moved points by up to ~6 px)."""
    train, _ = build_homography_datasets(data_conf(photo_dir, image_size=[480, 640],
                                                   features={"name": "sift", "max_num_keypoints": 512,
                                                             "resize": None}))
    model = TwoViewModel({"matcher": MATCHER, "pretrained": False}).eval()
    batch = torch.utils.data.default_collate([train[0], train[1]])
    full = model(batch)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = model(batch)
    assert (full["gt_matches0"] >= 0).sum() > 50
    torch.testing.assert_close(mixed["gt_matches0"], full["gt_matches0"])
    torch.testing.assert_close(mixed["gt_matches1"], full["gt_matches1"])


def test_nll_hand_computed():
    la = torch.log(torch.tensor([[[0.5, 0.2, 0.3], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]]]))
    out = assignment_nll(la, torch.tensor([[0, -1]]), torch.tensor([[0, -2]]), balancing=0.5)
    expected = 0.5 * -np.log(0.5) + 0.5 * -np.log(0.3)  # point 1 of image 0 -> dustbin
    assert out["total"].item() == pytest.approx(expected, rel=1e-6)


def test_confidence_loss_hand_computed():
    # two layers of a 2x2 pair: at layer 0 point 0 of image 0 already has its final match, point 1 not
    final = torch.log(torch.tensor([[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]]))
    early = torch.log(torch.tensor([[[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    c0, c1 = torch.tensor([[0.9, 0.3]]), torch.tensor([[0.6, 0.2]])
    valid = torch.ones(1, 2)
    loss = confidence_loss([c0], [c1], [early, final], valid, valid)
    # targets (arg-max at layer 0 == arg-max at the last layer): image 0 rows 0 -> 0 both times,
    # 1 -> 0 then 1 (not final); image 1 columns 0 -> 0 and 1 -> 1 both times
    t0, t1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    expected = (torch.nn.functional.binary_cross_entropy(c0, t0, reduction="sum")
                + torch.nn.functional.binary_cross_entropy(c1, t1, reduction="sum")) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_confidence_bce_runs_in_float32_under_autocast(device):
    """CUDA autocast refuses F.binary_cross_entropy; ours is plain float32 arithmetic there too."""
    p = torch.tensor([1e-9, 0.25, 0.5, 1.0], device=device, dtype=torch.bfloat16)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        bce = binary_cross_entropy(p, y)
    assert bce.dtype == torch.float32 and torch.isfinite(bce).all()
    expected = torch.nn.functional.binary_cross_entropy(p.float().clamp(1e-6, 1 - 1e-6), y, reduction="none")
    torch.testing.assert_close(bce, expected, rtol=1e-5, atol=1e-6)


def test_zero_keypoints_loss_is_finite_with_zero_gradients():
    model = TwoViewModel({"matcher": MATCHER, "pretrained": False}).train()
    empty = {"keypoints": torch.zeros(1, 0, 2), "descriptors": torch.zeros(1, 0, 128),
             "scales": torch.zeros(1, 0), "oris": torch.zeros(1, 0), "image_size": torch.tensor([[256., 192.]]),
             "keypoint_mask": torch.zeros(1, 0, dtype=torch.bool)}
    batch = {f"{k}{i}": v for i in (0, 1) for k, v in empty.items()}
    batch["H_0to1"] = torch.eye(3)[None]
    losses, _ = model.loss(model(batch), batch)
    losses["total"].mean().backward()
    assert torch.isfinite(losses["total"]).all()
    assert all(p.grad is not None and (p.grad == 0).all() for p in model.parameters())


def test_overfit_fixed_batch_reduces_loss(photo_dir):
    torch.manual_seed(0)
    train, _ = build_homography_datasets(data_conf(photo_dir))
    batch = torch.utils.data.default_collate([train[0], train[1]])
    model = TwoViewModel({"matcher": MATCHER, "pretrained": False}).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(25):
        losses, _ = model.loss(model(batch), batch)
        opt.zero_grad()
        losses["total"].mean().backward()
        opt.step()
        history.append(losses["total"].mean().item())
    assert history[-1] < 0.6 * history[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", [torch.bfloat16, torch.float16])
def test_cuda_autocast_training_steps_are_finite_and_learn(photo_dir, precision):
    """The recipes' mixed precision on CUDA (fp16 with a gradient scaler), as the trainer steps."""
    train, _ = build_homography_datasets(data_conf(photo_dir))
    batch = {k: v.cuda() for k, v in torch.utils.data.default_collate([train[0], train[1]]).items()}
    torch.manual_seed(0)
    model = TwoViewModel({"matcher": MATCHER, "pretrained": False}).cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
    history = []
    for _ in range(25):
        with torch.autocast("cuda", dtype=precision):
            losses, _ = model.loss(model(batch), batch)
        assert losses["total"].dtype == torch.float32 and torch.isfinite(losses["total"]).all()
        opt.zero_grad()
        scaler.scale(losses["total"].mean()).backward()
        scaler.step(opt)
        scaler.update()
        history.append(losses["total"].mean().item())
    assert history[-1] < 0.7 * history[0]


def test_run_benchmarks_scores_the_trained_matcher_on_held_out_photos(photo_dir):
    from omegaconf import OmegaConf

    from featmatch_core.train import benchmarks

    conf = OmegaConf.create({"data": {**data_conf(photo_dir, val_fraction=0.25), "name": "homographies"},
                             "model": {"name": "two_view", "matcher": MATCHER}})
    model = TwoViewModel({"matcher": MATCHER, "pretrained": False})
    pipe = benchmarks.inference_pipeline(model, conf)
    assert not pipe.matcher.conf.get("return_all_layers", False)  # inference mode, not training mode
    for key, value in model.matcher.state_dict().items():
        assert torch.equal(pipe.matcher.state_dict()[key], value)
    old = benchmarks.BENCHMARK_PAIRS
    benchmarks.BENCHMARK_PAIRS = 2
    try:
        results = benchmarks.homographies(model, conf)
    finally:
        benchmarks.BENCHMARK_PAIRS = old
    assert {"corner_error_auc@5", "precision@3px", "num_matches"} <= set(results)
    assert all(isinstance(v, float) for v in results.values())
