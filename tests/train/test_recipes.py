"""Every recipe in training/ builds its model and data pipeline and trains one step.

The recipes run as written, on generated data (``data.root`` -> a tiny fixture) with only sizes
and step counts made small, extractors without pretrained weights (none can be downloaded here)
and the CPU. A new recipe is picked up by the glob; one with a new ``data.name`` needs a fixture
in DATA_OVERRIDES.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import pytest
import torch
from omegaconf import OmegaConf

from featmatch_core.config import ConfigError
from featmatch_core.datasets.megadepth_train import write_synthetic_megadepth
from featmatch_core.datasets.synthetic import random_texture
from featmatch_core.scripts.export_megadepth import METHODS, method_features
from featmatch_core.train import trainer as trainer_module
from featmatch_core.train.__main__ import main
from featmatch_core.train.checkpoints import load_checkpoint
from featmatch_core.train.trainer import Trainer, train

RECIPES = sorted((Path(__file__).parents[2] / "training").glob("*.yaml"))
MEGADEPTH_SCENES = {"0001": (4, (160, 120)), "0002": (4, (120, 160)), "0003": (3, (160, 120))}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    photos = tmp_path_factory.mktemp("photos")
    for i in range(4):
        cv2.imwrite(str(photos / f"p{i}.jpg"), random_texture(150, 200, seed=40 + i))
    megadepth = tmp_path_factory.mktemp("megadepth_root")
    write_synthetic_megadepth(megadepth, MEGADEPTH_SCENES)
    return {"homographies": photos, "mixed": photos, "megadepth": megadepth}


# per data.name: the fixture root and small sizes (never the model, the features' kind or the loss)
DATA_OVERRIDES = {
    "homographies": lambda root, tmp: {"root": str(root), "image_size": [64, 80], "train_pairs": 2,
                                       "val_pairs": 1, "cache_dir": str(tmp / "cache")},
    "mixed": lambda root, tmp: {"root": str(root), "image_size": [64, 80], "train_pairs": 2,
                                "val_pairs": 1, "cache_dir": str(tmp / "cache_mixed")},
    "megadepth": lambda root, tmp: {"root": str(root), "resize": 96, "train_split": ["0001", "0002"],
                               "val_split": ["0003"], "train_num_per_scene": 1, "val_num_per_scene": 1,
                               "load_features": {"do": False}},
}
TRAIN_OVERRIDES = {"epochs": 1, "max_steps": 1, "batch_size": 2, "val_batch_size": 1, "num_workers": 0,
                   "max_val_batches": 1, "log_every_iter": 1, "device": "cpu", "load_experiment": None}


def small_conf(recipe: Path, roots: dict, tmp: Path) -> dict:
    conf = OmegaConf.to_container(OmegaConf.load(recipe))
    name = conf["data"]["name"]
    if name not in DATA_OVERRIDES:
        pytest.fail(f"{recipe.name}: no test fixture for data.name '{name}': add one to DATA_OVERRIDES")
    features = {"max_num_keypoints": 64, "weights": None}  # random extractor weights: nothing to download
    overrides = {"data": {**DATA_OVERRIDES[name](roots[name], tmp), "features": features},
                 "model": {"pretrained": False}, "train": TRAIN_OVERRIDES}
    return OmegaConf.to_container(OmegaConf.merge(conf, overrides))


def metric_values(path: Path, key: str) -> list[float]:
    with open(path, newline="") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["key"] == key]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_trains_one_step(recipe, data_roots, tmp_path):
    conf = small_conf(recipe, data_roots, tmp_path)
    original = OmegaConf.to_container(OmegaConf.load(recipe))
    assert conf["model"]["matcher"] == original["model"]["matcher"]  # the recipe's very model
    summary = train(tmp_path / "exp", conf)
    assert summary["steps"] == 1
    losses = metric_values(tmp_path / "exp" / "metrics.csv", "loss/total")
    assert losses and all(math.isfinite(v) for v in losses)
    state = load_checkpoint(tmp_path / "exp" / "checkpoint_last.tar")
    assert state["step"] == 1 and any(k.startswith("matcher.") for k in state["model"])


IN_MODEL = [r for r in RECIPES if "data.features_in=model" in r.read_text()]


@pytest.mark.parametrize("recipe", IN_MODEL, ids=[r.stem for r in IN_MODEL])
def test_recipe_trains_with_the_extractor_in_the_model(recipe, data_roots, tmp_path):
    """The override the GPU recipes document: images in the batches, features extracted by the model."""
    conf = small_conf(recipe, data_roots, tmp_path)
    conf["data"].update(features_in="model", cache_dir=None)
    summary = train(tmp_path / "exp", conf)
    assert summary["steps"] == 1
    assert all(math.isfinite(v) for v in metric_values(tmp_path / "exp" / "metrics.csv", "loss/total"))
    state = load_checkpoint(tmp_path / "exp" / "checkpoint_last.tar")
    assert all(k.startswith("matcher.") for k in state["model"])
    assert OmegaConf.load(tmp_path / "exp" / "config.yaml").model.extractor == conf["data"]["features"]


def test_megadepth_stage_starts_from_the_homography_stage(data_roots, tmp_path):
    """Stage 1 then stage 2 with train.load_experiment: stage 2 starts from stage 1's weights."""
    training = Path(__file__).parents[2] / "training"
    stage1 = small_conf(training / "superpoint+lightglue-homography.yaml", data_roots, tmp_path)
    train(tmp_path / "sp+lg_homography", stage1)
    stage2 = small_conf(training / "superpoint+lightglue-megadepth.yaml", data_roots, tmp_path)
    stage2["train"]["load_experiment"] = "sp+lg_homography"  # resolved beside the new experiment
    trainer = Trainer(stage2, tmp_path / "sp+lg_megadepth")
    trainer.setup()
    first = load_checkpoint(tmp_path / "sp+lg_homography" / "checkpoint_best.tar")["model"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, first[key]), key
    assert trainer.fit()["steps"] == 1


def test_megadepth_recipes_match_their_feature_export():
    """``export_megadepth --method M`` writes exactly what each MegaDepth recipe reads back."""
    methods = {"superpoint": "sp", "sift": "sift", "aliked": "aliked", "disk": "disk"}
    # wireframe features (GlueStick) have no export method: always computed on the fly
    recipes = [r for r in RECIPES if OmegaConf.load(r).data.name == "megadepth"
               and OmegaConf.load(r).data.features.name != "wireframe"]
    assert len(recipes) == len(METHODS)
    for recipe in recipes:
        data = OmegaConf.to_container(OmegaConf.load(recipe).data)
        method = methods[data["features"]["name"]]
        assert data["features"] == method_features(method, 2048)
        assert data["load_features"]["path"] == f"outputs/exports/megadepth-r{data['resize']}-{method}-k2048"


def test_missing_dataset_or_unknown_model_fail_before_any_work(data_roots, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr(trainer_module, "build_train_model", no_model)
    recipe = str(Path(__file__).parents[2] / "training" / "superpoint+lightglue-megadepth.yaml")
    assert main(["md", "--conf", recipe, f"data.root={tmp_path / 'nothing'}"]) == 1
    error = capsys.readouterr().err
    assert "error: MegaDepth training data is not at" in error and "Undistorted_SfM.tar.gz" in error
    assert not list(tmp_path.rglob("checkpoint_*.tar"))
    assert main(["md2", "--conf", recipe, "model.matcher.name=lightglu"]) == 2
    assert "unknown matcher 'lightglu'" in capsys.readouterr().err
    assert main(["md3", "--conf", recipe, "model.matcher.n_layer=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["md4", "--conf", recipe, "data.features.name=superpiont"]) == 2
    assert "unknown extractor 'superpiont'" in capsys.readouterr().err
    made = sorted(p.name for p in (tmp_path / "outputs" / "training").iterdir())
    assert made == ["md"]  # bad configs write nothing; the missing data stopped md after its config.yaml
    with pytest.raises(ConfigError, match="unknown data name"):
        trainer_module.validate_config({"data": {"name": "megadeph"}, "model": {"name": "two_view"}})
