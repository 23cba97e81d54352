"""LoFTR through kornia, wrapped as a two-view model: contract, coordinates, errors, evaluation.

Random weights only (no download): with a match threshold of 0 a random LoFTR still returns its
mutual nearest neighbours, which is enough to check shapes and coordinates.
"""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest
import torch

import featmatch_core
from featmatch_core import weights
from featmatch_core.config import ConfigError
from featmatch_core.datasets.synthetic import random_texture, sample_homography, warp_image
from featmatch_core.eval import hpatches
from featmatch_core.models import build_model, get_model
from featmatch_core.models.dense.loftr import LoFTR, multiple_of_stride_size
from featmatch_core.models.dense.two_view import DenseTwoView
from featmatch_core.models.pipeline import FeatureStream, Pipeline, TwoViewMatches

RANDOM = ["dense.weights=null", "dense.match_threshold=0.0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def texture_pair(h: int = 90, w: int = 124) -> tuple[np.ndarray, np.ndarray]:
    base = random_texture(h, w, seed=3)
    H = sample_homography((w, h), seed=4, max_angle_deg=5, scale_range=(0.95, 1.05))
    return cv2.cvtColor(base, cv2.COLOR_GRAY2BGR), warp_image(base, H, (w, h))


class FakeNet(torch.nn.Module):
    """Stands in for kornia's network: records its inputs, returns given points in its frame."""

    def __init__(self, points0: torch.Tensor, points1: torch.Tensor, confidence: torch.Tensor,
                 batch_indexes: torch.Tensor) -> None:
        super().__init__()
        self.out = {"keypoints0": points0, "keypoints1": points1, "confidence": confidence,
                    "batch_indexes": batch_indexes}
        self.inputs: dict = {}

    def forward(self, data):
        self.inputs = data
        return self.out


def test_resize_rounds_to_multiples_of_8_and_maps_points_back():
    assert multiple_of_stride_size(480, 640, None) == (480, 640)
    assert multiple_of_stride_size(90, 124, None) == (88, 128)
    assert multiple_of_stride_size(480, 640, 840) == (632, 840)
    model = LoFTR({"weights": None, "resize": 64})
    # resized sizes: image0 100x150 -> 40x64, image1 80x60 -> 64x48; the LoFTR frame puts pixel
    # centres at +0.5, so its (0, 0) is the top-left corner of the image and (W', H') the bottom-right one
    points0 = torch.tensor([[0.0, 0.0], [64.0, 40.0], [32.0, 20.0]])
    points1 = torch.tensor([[0.0, 0.0], [48.0, 64.0], [24.0, 32.0]])
    model.net = FakeNet(points0, points1, torch.tensor([0.5, 0.9, 0.7]), torch.tensor([0, 1, 1]))
    image0, image1 = torch.rand(2, 3, 100, 150), torch.rand(2, 1, 80, 60)
    out = model({"image0": image0, "image1": image1})
    assert model.net.inputs["image0"].shape == (2, 1, 40, 64) and model.net.inputs["image1"].shape == (2, 1, 64, 48)
    corner, centre = -0.5, lambda w, h: [(w - 1) / 2, (h - 1) / 2]
    # pair 1 has two matches, sorted by confidence; pair 0 one match and padding
    torch.testing.assert_close(out["image0"]["keypoints"][1], torch.tensor([[149.5, 99.5], centre(150, 100)]))
    torch.testing.assert_close(out["image1"]["keypoints"][1], torch.tensor([[59.5, 79.5], centre(60, 80)]))
    torch.testing.assert_close(out["image0"]["keypoints"][0, 0], torch.tensor([corner, corner]))
    assert out["image0"]["keypoint_mask"].tolist() == [[True, False], [True, True]]
    assert out["matches0"].tolist() == [[0, -1], [0, 1]] and torch.equal(out["matches1"], out["matches0"])
    torch.testing.assert_close(out["matching_scores0"], torch.tensor([[0.5, 0.0], [0.9, 0.7]]))
    assert out["matches"][0].tolist() == [[0, 0]] and out["matches"][1].tolist() == [[0, 0], [1, 1]]
    assert out["image1"]["image_size"].tolist() == [[60.0, 80.0]] * 2

    capped = LoFTR({"weights": None, "resize": None, "max_num_matches": 1})
    capped.net = model.net
    out = capped({"image0": torch.rand(2, 1, 40, 64), "image1": torch.rand(2, 1, 64, 48)})
    assert out["matches0"].tolist() == [[0], [0]]
    torch.testing.assert_close(out["matching_scores0"][:, 0], torch.tensor([0.5, 0.9]))


@torch.no_grad()
def test_load_gives_a_two_view_model_with_random_weights():
    assert get_model("dense", "loftr") is LoFTR
    pipe = featmatch_core.load("loftr", RANDOM + ["dense.resize=96"])
    assert isinstance(pipe, DenseTwoView) and pipe.conf.dense.resize == 96 and not pipe.model.net.training
    image0, image1 = texture_pair()
    result = pipe.match(image0, image1)
    assert isinstance(result, TwoViewMatches) and len(result.matches) > 0
    k = len(result.matches)
    assert result.keypoints0.shape == (k, 2) and result.keypoints1.shape == (k, 2) and result.scores.shape == (k,)
    assert (result.matches == np.arange(k)[:, None]).all() and np.all(np.diff(result.scores) <= 0)
    assert set(result.timings) == {"match", "total"}
    # coordinates in original pixels: the coarse points of image 0 sit on the 1/8 grid of the
    # resized image (96 x 72 for 124 x 90), i.e. at 8 * cell / scale - 0.5, inside the image
    scale = np.array([96 / 124, 72 / 90])
    cells = (result.keypoints0 + 0.5) * scale / 8
    np.testing.assert_allclose(cells, np.round(cells), atol=1e-4)
    for points in (result.keypoints0, result.keypoints1):
        assert (points >= -0.5).all() and (points <= np.array([124, 90]) - 0.5).all()

    batched = pipe({"image0": torch.rand(2, 1, 64, 64), "image1": torch.rand(2, 3, 64, 80)})
    for side in ("image0", "image1"):
        feats = batched[side]
        b, width = feats["keypoint_mask"].shape
        assert b == 2 and feats["keypoints"].shape == (2, width, 2) and feats["keypoint_scores"].shape == (2, width)
    assert len(batched["matches"]) == 2 and batched["matches0"].shape == (2, width)


def test_per_image_extraction_is_refused_with_a_clear_message():
    pipe = Pipeline.from_conf(featmatch_core.models.pipeline.pipeline_conf("loftr", RANDOM))
    with pytest.raises(ConfigError, match="dense .*no per-image features.*extractor \\+ matcher"):
        pipe.extract(np.zeros((32, 32), np.uint8))
    with pytest.raises(ConfigError, match="'loftr' is a dense"):
        FeatureStream(pipe)  # what the ROS nodes and the replay build at start-up
    with pytest.raises(ConfigError, match="unknown config key"):
        featmatch_core.load("loftr", ["dense.resise=100"])


def test_official_checkpoint_layout_and_offline_message(tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = LoFTR({"weights": None})
    state = {f"matcher.{k}": v.clone() for k, v in source.net.state_dict().items()}  # original layout
    path = tmp_path / "loftr_outdoor.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = build_model("dense", {"name": "loftr", "weights": str(path)})
    assert all(torch.equal(v, state[f"matcher.{k}"]) for k, v in model.net.state_dict().items())
    with pytest.raises(ValueError, match="not a LoFTR checkpoint"):
        model.load_checkpoint_state_dict({"bin_score": torch.tensor(1.0)}, "sg.pth")

    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "torch_hub_checkpoint_dir", lambda: tmp_path / "hub")
    with pytest.raises(weights.WeightsUnavailableError, match="loftr_outdoor.ckpt"):
        featmatch_core.load("loftr")


def test_runs_through_the_evaluation_runner(tmp_path):
    folder = tmp_path / "data" / "hpatches-sequences-release" / "v_tiny"
    folder.mkdir(parents=True)
    base = random_texture(120, 160, seed=11)
    H = sample_homography((160, 120), seed=12, max_angle_deg=5, scale_range=(0.95, 1.05))
    cv2.imwrite(str(folder / "1.ppm"), cv2.cvtColor(base, cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(folder / "2.ppm"), cv2.cvtColor(warp_image(base, H, (160, 120)), cv2.COLOR_GRAY2BGR))
    np.savetxt(folder / "H_1_2", H)
    conf = tmp_path / "loftr_random.yaml"
    conf.write_text("model:\n  dense: {name: loftr, weights: null, resize: 96, match_threshold: 0.0}\n"
                    "  device: cpu\n")
    results = tmp_path / "results"
    summary = hpatches.runner.main(hpatches.BENCHMARK, ["--conf", str(conf), "--results_root", str(results),
                                                        f"data.root={tmp_path / 'data'}"])
    assert summary["num_pairs"] == 1 and summary["pairs_matched"] == 1 and summary["num_matches"] > 0
    with h5py.File(results / "hpatches" / "loftr_random" / "predictions.h5") as f:
        group = f[next(iter(f))]
        k = len(group["matches"])
        assert group["keypoints0"].shape == (k, 2) and (group["matches"][()] == np.arange(k)[:, None]).all()
        assert group.attrs["match_ms"] > 0
