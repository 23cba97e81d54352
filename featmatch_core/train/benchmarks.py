"""Benchmarks for ``--run_benchmarks``: evaluate the model being trained after each epoch.

List them in the recipe, e.g. ``train.run_benchmarks: [featmatch_core.train.benchmarks:homographies]``.
Each function receives the bare training model and the experiment config and returns
scalars (logged to TensorBoard and metrics.csv under ``benchmark/``). The matcher is copied
into an inference pipeline (adaptive depth/width as configured, not the all-layers training
mode) behind the frozen extractor of ``data.features``, then scored with the evaluation code
of :mod:`featmatch_core.eval`; nothing is cached between epochs.

- ``homographies``: synthetic pairs of the photos the recipe holds out (``SyntheticHomographies``
  with the recipe's ``data.root``/split/seed), ``BENCHMARK_PAIRS`` of them.
- ``hpatches`` / ``megadepth1500``: the full benchmarks from their default folders (or
  ``$FEATMATCH_DATA_DIR``); they download on first use like the evaluation CLIs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..config import to_container
from ..datasets.homographies import BENCHMARK_KEYS, SyntheticHomographies
from ..eval import runner
from ..models import build_model
from ..models.pipeline import Pipeline

BENCHMARK_PAIRS = 50  # per epoch: enough for a trend, cheap next to an epoch


def inference_pipeline(model: nn.Module, conf: DictConfig) -> Pipeline:
    """The training model's matcher (a copy, in inference mode) behind the recipe's extractor."""
    features = to_container(conf.data.get("features") or {})
    if not features:
        raise ValueError("run_benchmarks: the recipe has no data.features (the frozen extractor)")
    matcher_conf = {**to_container(conf.model.matcher), "weights": None}
    matcher = build_model("matcher", matcher_conf, pretrained=False)
    matcher.load_state_dict(model.matcher.state_dict())
    extractor = build_model("extractor", features)
    device = next(model.parameters()).device
    return Pipeline(extractor, matcher, {"device": str(device)})


def evaluate(bench: runner.Benchmark, dataset, pipeline: Pipeline) -> dict[str, float]:
    """Match every pair, score with the benchmark's default estimator, return its table keys."""
    eval_conf = OmegaConf.create({"eval": {**runner.COMMON_EVAL_CONF, **bench.eval_conf}})  # as runner.build_conf
    with tempfile.TemporaryDirectory(prefix="featmatch-bench-") as tmp:
        path, _ = runner.export_predictions(lambda: pipeline, dataset, Path(tmp) / "predictions.h5",
                                            fingerprint="training benchmark", overwrite=True)
        summary, _, _ = runner.sweep_thresholds(bench, dataset, path, eval_conf)
    keys = [k for k in bench.table_keys if k not in ("ransac_th", "num_pairs")] + [bench.main_key]
    return {k: float(summary[k]) for k in keys if k in summary}


def homographies(model: nn.Module, conf: DictConfig) -> dict[str, Any]:
    from ..eval import homographies as bench

    data = {k: to_container(conf.data)[k] for k in ("root", *BENCHMARK_KEYS) if k in conf.data}
    dataset = SyntheticHomographies({**data, "num_pairs": BENCHMARK_PAIRS})
    return evaluate(bench.BENCHMARK, dataset, inference_pipeline(model, conf))


def hpatches(model: nn.Module, conf: DictConfig) -> dict[str, Any]:
    from ..datasets.hpatches import HPatches
    from ..eval import hpatches as bench

    return evaluate(bench.BENCHMARK, HPatches(bench.BENCHMARK.data_conf), inference_pipeline(model, conf))


def megadepth1500(model: nn.Module, conf: DictConfig) -> dict[str, Any]:
    from ..datasets.megadepth import MegaDepth1500
    from ..eval import megadepth1500 as bench

    dataset = MegaDepth1500(bench.BENCHMARK.data_conf)
    return evaluate(bench.BENCHMARK, dataset, inference_pipeline(model, conf))
