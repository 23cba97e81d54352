"""``data.features_in: model``: the dataset yields images, TwoViewModel runs the frozen extractor.

Tiny generated photos (128x160 views), 64 keypoints, SIFT or SuperPoint with random weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import default_collate

from featmatch_core.config import ConfigError
from featmatch_core.datasets.homographies import build_homography_datasets
from featmatch_core.datasets.scenes import build_mixed_datasets, build_scene_datasets
from featmatch_core.train import export as export_module
from featmatch_core.train.__main__ import main
from featmatch_core.train.checkpoints import load_checkpoint
from featmatch_core.train.registry import place_extractor
from featmatch_core.train.trainer import Trainer, load_config, validate_config
from featmatch_core.train.two_view import TwoViewModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

TRAINING = Path(__file__).parents[2] / "training"
EXTRACTORS = {
    "sift": {"name": "sift", "max_num_keypoints": 64, "resize": None},
    "superpoint": {"name": "superpoint", "max_num_keypoints": 64, "detection_threshold": 0.0, "resize": None,
                   "weights": None},
}
BUILDERS = {"homographies": build_homography_datasets, "scenes": build_scene_datasets,
            "mixed": build_mixed_datasets}
NUM_PAIRS = 4


def data_conf(root: Path, extractor: str, **kw) -> dict:
    return {"root": str(root), "image_size": [128, 160], "train_pairs": NUM_PAIRS, "val_pairs": 2,
            "features": dict(EXTRACTORS[extractor]), **kw}


def two_view(extractor: str | None) -> TwoViewModel:
    matcher = {"name": "lightglue", "features": None, "input_dim": 128 if extractor != "superpoint" else 256,
               "add_scale_ori": extractor == "sift", "weights": None, "descriptor_dim": 32, "num_heads": 2,
               "n_layers": 2}
    return TwoViewModel({"matcher": matcher, "pretrained": False,
                         "extractor": EXTRACTORS[extractor] if extractor else None})


def share_extractor(dataset, extractor) -> None:
    """The dataset's lazily built extractor replaced by the model's (random weights: the same ones)."""
    for part in (dataset.scenes, dataset.homographies) if hasattr(dataset, "scenes") else (dataset,):
        part._extractor = extractor


# the scene datasets share FeaturePairs with the homographies: one extractor is enough for them
@pytest.mark.parametrize(("data_name", "extractor"), [("homographies", "sift"), ("homographies", "superpoint"),
                                                      ("scenes", "sift"), ("mixed", "sift")])
def test_model_features_equal_dataset_features(photo_dir, data_name, extractor):
    build = BUILDERS[data_name]
    with_features, _ = build(data_conf(photo_dir, extractor))
    with_images, _ = build(data_conf(photo_dir, extractor, features_in="model"))
    model = two_view(extractor).train()
    share_extractor(with_features, model.extractor)
    expected = default_collate([with_features[i] for i in range(NUM_PAIRS)])
    batch = default_collate([with_images[i] for i in range(NUM_PAIRS)])

    assert batch["image0"].shape == (NUM_PAIRS, 1, 128, 160) and batch["image0"].dtype == torch.float32
    assert 0.0 <= float(batch["image0"].min()) and float(batch["image1"].max()) <= 1.0
    assert "keypoints0" not in batch and not any(k.startswith("descriptors") for k in batch)
    geometry = sorted(k for k in expected if k in batch)  # H_0to1 / depth, K, T_0to1, image_size, ...
    assert sorted(batch) == sorted(geometry + ["image0", "image1"])
    for key in geometry:
        torch.testing.assert_close(batch[key], expected[key], rtol=0, atol=0)

    features = model.extract(batch)
    assert sorted(features) == sorted(set(expected) - set(geometry) | {"image_size0", "image_size1"})
    for key, value in features.items():
        torch.testing.assert_close(value.cpu(), expected[key], msg=key)
    mask = features["keypoint_mask0"]
    assert mask.shape == (NUM_PAIRS, 64) and mask.dtype == torch.bool and mask.any()
    padded = ~features["keypoint_mask1"]
    assert (features["descriptors1"][padded] == 0).all() and (features["keypoints1"][padded] == 0).all()

    # the model's forward and loss see the extracted features: the same losses as on the features batch
    torch.manual_seed(0)
    ref_losses, _ = model.loss(model(expected), expected)
    torch.manual_seed(0)
    losses, _ = model.loss(model(batch), batch)
    torch.testing.assert_close(losses["total"], ref_losses["total"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("extractor", sorted(EXTRACTORS))
def test_extraction_runs_on_the_batch_device_cuda(photo_dir, extractor):
    with_features, _ = build_homography_datasets(data_conf(photo_dir, extractor))
    with_images, _ = build_homography_datasets(data_conf(photo_dir, extractor, features_in="model"))
    model = two_view(extractor)
    share_extractor(with_features, model.extractor)
    expected = default_collate([with_features[i] for i in range(NUM_PAIRS)])  # on the CPU
    model = model.to("cuda")
    batch = {k: v.cuda() for k, v in default_collate([with_images[i] for i in range(NUM_PAIRS)]).items()}
    features = model.extract(batch)
    assert all(v.device.type == "cuda" for v in features.values())
    for key in ("keypoint_mask0", "image_size1"):
        assert features[key].shape == expected[key].shape
    if extractor == "sift":  # backend auto: the torch port on the GPU, OpenCV in the dataset
        for i in (0, 1):
            for b in range(NUM_PAIRS):
                ours = features[f"keypoints{i}"][b][features[f"keypoint_mask{i}"][b]].cpu().double()
                theirs = expected[f"keypoints{i}"][b][expected[f"keypoint_mask{i}"][b]].double()
                assert abs(len(ours) - len(theirs)) <= max(2, 0.05 * len(theirs))
                if len(ours) and len(theirs):  # the same points, but for a few near-ties of the top-k
                    nearest = (ours[:, None] - theirs[None]).norm(dim=-1).min(dim=1).values
                    assert (nearest < 0.01).double().mean() > 0.9
    pred = model(batch)
    assert torch.isfinite(model.loss(pred, batch)[0]["total"]).all()


def gpu_recipe_conf(photo_dir: Path, *extra: str):
    """superpoint+lightglue-homography.yaml with the documented override, sized for the CPU."""
    return load_config(TRAINING / "superpoint+lightglue-homography.yaml", [
        "data.features_in=model", f"data.root={photo_dir}", "data.image_size=[128,160]", "data.train_pairs=4",
        "data.val_pairs=2", "data.features.max_num_keypoints=64", "data.features.weights=null",
        "train.epochs=1", "train.max_steps=2", "train.batch_size=2", "train.val_batch_size=2",
        "train.num_workers=0", "train.max_val_batches=1", "train.log_every_iter=1", "train.device=cpu",
        *extra])


def test_training_steps_with_the_extractor_in_the_model(photo_dir, tmp_path):
    conf = gpu_recipe_conf(photo_dir)
    assert conf.model.extractor == conf.data.features  # model.extractor is data.features
    exp = tmp_path / "exp"
    trainer = Trainer(conf, exp)
    trainer.setup()
    extractor = trainer.model.extractor
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    assert before and not any(p.requires_grad for p in extractor.parameters())
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in extractor.parameters()}
    assert in_optimizer == {id(p) for p in trainer.model.matcher.parameters()}

    summary = trainer.fit()
    assert summary["steps"] == 2
    assert trainer.model.training and not extractor.training  # trainer.train() leaves it in eval mode
    for key, value in extractor.state_dict().items():
        assert torch.equal(value, before[key]), key
    for name in ("checkpoint_last.tar", "checkpoint_best.tar"):
        state = load_checkpoint(exp / name)
        assert state["model"] and all(k.startswith("matcher.") for k in state["model"]), name
        assert len(state["optimizer"]["param_groups"][0]["params"]) == len(list(trainer.model.matcher.parameters()))

    out = tmp_path / "matcher.pth"
    export_module.export("exp", "last", out, root=tmp_path)
    exported = torch.load(out, weights_only=True)
    assert set(exported) == set(trainer.model.matcher.state_dict())


def test_features_in_auto_follows_the_training_device(photo_dir):
    path = TRAINING / "superpoint+lightglue-homography.yaml"
    assert OmegaConf.load(path).data.features_in == "auto"
    on_cpu = load_config(path, [f"data.root={photo_dir}", "train.device=cpu"])  # validated: resolved
    assert on_cpu.data.features_in == "dataset" and on_cpu.model.get("extractor") is None
    on_gpu = OmegaConf.load(path)
    place_extractor(on_gpu, torch.device("cuda"))  # decides from the device alone (no GPU needed)
    assert on_gpu.data.features_in == "model" and on_gpu.model.extractor == on_gpu.data.features


def test_features_in_typos_and_contradictions_raise(photo_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="data.features_in must be one of"):
        gpu_recipe_conf(photo_dir, "data.features_in=modle")
    with pytest.raises(ConfigError, match="data.features_in must be one of"):
        build_homography_datasets(data_conf(photo_dir, "sift", features_in="models"))
    with pytest.raises(ConfigError, match="feature_in"):
        build_homography_datasets(data_conf(photo_dir, "sift", feature_in="model"))
    with pytest.raises(ConfigError, match="cache_dir"):
        build_scene_datasets(data_conf(photo_dir, "sift", features_in="model", cache_dir=str(tmp_path / "c")))
    with pytest.raises(ConfigError, match="differs from data.features"):
        gpu_recipe_conf(photo_dir, "model.extractor.max_num_keypoints=32")
    with pytest.raises(ConfigError, match="max_num_keypoint"):
        gpu_recipe_conf(photo_dir, "data.features.max_num_keypoint=32")
    with pytest.raises(ConfigError, match="model.extractor is set but the batches hold features"):
        validate_config({"data": data_conf(photo_dir, "sift", name="homographies"),
                         "model": {"name": "two_view", "extractor": EXTRACTORS["sift"]}})
    with pytest.raises(ConfigError, match="max_num_keypoints must be a positive integer"):
        TwoViewModel.check_conf({"extractor": {"name": "sift"}})

    monkeypatch.chdir(tmp_path)  # the command line: exit code 2 and the message, nothing written
    recipe = str(TRAINING / "superpoint+lightglue-homography.yaml")
    assert main(["typo", "--conf", recipe, f"data.root={photo_dir}", "data.features_in=modle"]) == 2
    assert "data.features_in must be one of ['dataset', 'model']" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_batches_without_features_need_the_extractor(photo_dir):
    with_images, _ = build_homography_datasets(data_conf(photo_dir, "sift", features_in="model"))
    batch = default_collate([with_images[0]])
    with pytest.raises(KeyError, match="set model.extractor"):
        two_view(None)(batch)
