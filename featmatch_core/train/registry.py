"""What the trainer can train: names -> "module:callable", imported only when used.

Same design as :mod:`featmatch_core.models`: a static, greppable table instead of
import-time registration.

- A **model** entry is a class (or factory) called with the ``model`` config section (an
  OmegaConf DictConfig, ``name`` included). It returns an ``nn.Module`` with
  ``forward(batch: dict) -> pred: dict`` and ``loss(pred, batch) -> (losses, metrics)``,
  two dicts of (B,) tensors, ``losses["total"]`` being the one optimised. Optional:
  ``set_gradient_checkpointing(bool)``, and ``check_conf(model_section)`` on the class, which
  validates the section without building anything (called with the config checks, before
  any folder is written).
- A **data** entry is called with the ``data`` config section and returns
  ``(train_dataset, val_dataset)``: torch Datasets of dicts of tensors, batched with
  ``torch.utils.data.default_collate``. It must raise on a missing folder or a bad config
  (it runs before any training step). Optional: ``train_dataset.set_epoch(epoch)``, called
  at the start of each epoch (e.g. to resample pairs). A ``features`` mapping in the ``data``
  section is taken to be the config of a frozen extractor and checked with the config.
- Where that extractor runs (:func:`place_extractor`): ``data.features_in: dataset`` (default)
  in the dataset, i.e. in the DataLoader workers; ``model``: the dataset yields images and the
  model runs ``model.extractor`` on the training device, which is ``data.features`` unless set;
  ``auto`` (the recipes): ``model`` when training on CUDA, ``dataset`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import ConfigError, ConfLike, merge_strict, to_container

AUTO_FEATURES_IN = "auto"  # data.features_in resolved by the training device (place_extractor)

MODELS: dict[str, str] = {
    "two_view": "featmatch_core.train.two_view:TwoViewModel",
    "toy": "featmatch_core.train.toy:ToyRegression",
}

DATASETS: dict[str, str] = {
    "homographies": "featmatch_core.datasets.homographies:build_homography_datasets",
    "megadepth": "featmatch_core.datasets.megadepth_train:build_megadepth_datasets",
    "scenes": "featmatch_core.datasets.scenes:build_scene_datasets",
    "mixed": "featmatch_core.datasets.scenes:build_mixed_datasets",
    "toy": "featmatch_core.train.toy:build_toy_datasets",
}


def resolve_callable(spec: str, what: str = "callable") -> Callable[..., Any]:
    """Import ``"package.module:attribute"``; errors name the spec."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"{what} '{spec}' must be of the form 'package.module:function'")
    module_name, attr = spec.split(":")
    try:
        module = import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{what} '{spec}': cannot import {module_name}: {err}") from err
    if not hasattr(module, attr):
        raise ConfigError(f"{what} '{spec}': {module_name} has no attribute '{attr}'")
    return getattr(module, attr)


def _entry(table: dict[str, str], section: str, conf: ConfLike) -> str:
    plain = to_container(conf)
    name = plain.get("name")
    if not name:
        raise ConfigError(f"the '{section}' config needs a 'name', one of {sorted(table)}")
    if name not in table:
        raise ConfigError(f"unknown {section} name '{name}', expected one of {sorted(table)}")
    return table[name]


def check_component(kind: str, conf: ConfLike, where: str) -> None:
    """An ``extractor`` / ``matcher`` config names a registered model and only keys of its
    defaults, with the right types (checked without importing weights or building it)."""
    from ..models import REGISTRY, get_model

    plain = to_container(conf)
    name = plain.get("name")
    if name not in REGISTRY[kind]:
        raise ConfigError(f"{where}.name: unknown {kind} {name!r}, expected one of {sorted(REGISTRY[kind])}")
    merge_strict(get_model(kind, name).full_default_conf(), plain, owner=f"{where} ({name})")


def check_names(conf: ConfLike) -> None:
    """Fail fast (before any folder is created) on unknown model or data names, on a model
    section its class's ``check_conf`` rejects, and on a bad ``data.features`` extractor."""
    plain = to_container(conf)
    data = plain.get("data") or {}
    _entry(DATASETS, "data", data)
    if isinstance(data.get("features"), Mapping):  # before the model, whose extractor may be a copy of it
        check_component("extractor", data["features"], "data.features")
    model = plain.get("model") or {}
    checker = getattr(resolve_callable(_entry(MODELS, "model", model), "model"), "check_conf", None)
    if callable(checker):
        checker(model)


def place_extractor(conf: DictConfig, device: torch.device) -> None:
    """``data.features_in`` (a bad value raises): ``auto`` becomes ``model`` when training runs
    on CUDA (the frozen extractor on the GPU, as Glue Factory does it) and ``dataset`` elsewhere.
    With ``model``, ``model.extractor`` defaults to ``data.features`` (written into ``conf``,
    hence into the experiment's config.yaml) and must equal it when both are given (the
    benchmarks and the recipe's signature use ``data.features``); without it,
    ``model.extractor`` would never run and is refused."""
    from ..datasets.homographies import features_in_model

    data, model = conf.data, conf.model
    extractor, features = model.get("extractor"), data.get("features")
    if data.get("features_in") == AUTO_FEATURES_IN:
        data.features_in = "model" if device.type == "cuda" else "dataset"
    if "features_in" in data and features_in_model(data.features_in):
        if extractor is None:
            if not isinstance(features, Mapping):
                raise ConfigError("data.features_in=model: the batches hold images and the model extracts the "
                                  "features: set data.features (or model.extractor) to the frozen extractor")
            model.extractor = OmegaConf.create(to_container(features))
        elif isinstance(features, Mapping) and to_container(extractor) != to_container(features):
            raise ConfigError(f"data.features_in=model: model.extractor {to_container(extractor)} differs from "
                              f"data.features {to_container(features)}; leave model.extractor unset (it is "
                              "data.features) or make them equal")
    elif extractor is not None:
        raise ConfigError("model.extractor is set but the batches hold features (data.features_in is not "
                          "'model'): set data.features_in=model (homographies, scenes, mixed data) or drop "
                          "model.extractor")


def _section(conf: ConfLike, key: str) -> DictConfig:
    """A mutable copy of one section, as DictConfig (a Mapping with attribute access)."""
    return OmegaConf.create(to_container(conf).get(key) or {})


def build_train_model(conf: ConfLike) -> nn.Module:
    """Instantiate ``conf.model.name`` with the ``model`` section."""
    spec = _entry(MODELS, "model", _section(conf, "model"))
    model = resolve_callable(spec, "model")(_section(conf, "model"))
    for method in ("forward", "loss"):
        if not callable(getattr(model, method, None)):
            raise ConfigError(f"model '{spec}' has no {method}() method: a trainable model needs "
                              "forward(batch) -> pred and loss(pred, batch) -> (losses, metrics)")
    return model


def build_train_datasets(conf: ConfLike) -> tuple[Any, Any]:
    """``(train, val)`` datasets of ``conf.data.name`` built from the ``data`` section."""
    spec = _entry(DATASETS, "data", _section(conf, "data"))
    result = resolve_callable(spec, "dataset builder")(_section(conf, "data"))
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ConfigError(f"dataset builder '{spec}' must return (train_dataset, val_dataset)")
    return result
