"""The benchmark runner shared by every ``python -m featmatch_core.eval.<benchmark>``.

Two stages, so that re-evaluating with another estimator or threshold never re-runs the
matcher:

1. **export**: run the pipeline on every pair of the dataset and cache the predictions
   (keypoints, matches, scores, timings) in ``predictions.h5``. The file is written as
   ``predictions.h5.partial`` and renamed when complete; an interrupted export resumes.
2. **evaluate**: per-pair metrics from the cached predictions and the ground truth, then a
   summary (AUCs, precisions, means) written as JSON and printed.

Results live in ``outputs/results/<benchmark>/<tag>/`` where the tag is the config name
(plus a hash of the overrides when there are any).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ..config import ConfigError, load_named_config, merge_strict, parse_dotlist, to_container
from ..files import save_json
from ..models.matchers.lightglue import exit_filter_threshold
from ..models.pipeline import Pipeline
from .metrics import summarize

RESULTS_ROOT = Path("outputs/results")
# ``eval`` keys that every benchmark understands, besides its own
COMMON_EVAL_CONF: dict[str, Any] = {
    # keep only matches scored above this before evaluation: one export at a low matcher threshold
    # (e.g. model.matcher.filter_threshold=0.01) then evaluates every higher threshold exactly, as
    # LightGlue's filter is "mutual best and score > threshold"
    "min_score": 0.0,
}
PairEvaluator = Callable[[Mapping[str, Any], Mapping[str, np.ndarray], DictConfig, float], dict[str, Any]]


@dataclass(frozen=True)
class Benchmark:
    """What differs between benchmarks; everything else is shared."""

    name: str
    data_conf: dict[str, Any]  # default ``data`` section, validated by the dataset itself
    eval_conf: dict[str, Any]  # default ``eval`` section (estimator, ransac_th, ...)
    make_dataset: Callable[[DictConfig], Sequence[Mapping[str, Any]]]
    evaluate_pair: PairEvaluator
    auc_keys: dict[str, tuple[float, ...]]
    sweep: tuple[float, ...]  # RANSAC thresholds tried when eval.ransac_th = -1
    main_key: str  # the AUC summary key that ranks thresholds and configs, e.g. corner_error_auc_mean
    table_keys: tuple[str, ...]  # columns of the results table
    # dataset-level metrics (e.g. AP over the matches of all pairs) from the per-pair results; per-pair
    # fields whose name starts with '_' are for it only (arrays) and are dropped before saving
    aggregate: Callable[[list[dict[str, Any]]], dict[str, float]] | None = None
    # dense ground truth of the items to cache as well (e.g. depth0/depth1), stored float32 and compressed,
    # once per image when the item names it (``<key>_id``, e.g. depth0_id); off by default: large maps
    # (MegaDepth at 1600 px) would make the cache huge
    cached_maps: tuple[str, ...] = ()


# ---- configuration -------------------------------------------------------------------
def build_conf(bench: Benchmark, conf_name: str, overrides: Sequence[str]) -> DictConfig:
    """Named pipeline config + benchmark defaults + command-line overrides, validated."""
    named = load_named_config(conf_name)
    base = OmegaConf.create({"model": to_container(named.get("model", {})),
                             "data": dict(bench.data_conf), "eval": dict(bench.eval_conf)})
    for key, section in (("data", named.get("data")), ("eval", named.get("eval"))):
        if section is not None:
            base[key] = OmegaConf.merge(base[key], section)
    user = parse_dotlist(overrides) if overrides else OmegaConf.create({})
    unknown = set(user.keys()) - {"model", "data", "eval"}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; expected model, data or eval")
    merged = OmegaConf.merge(base, user)
    merged.eval = merge_strict({**COMMON_EVAL_CONF, **bench.eval_conf}, merged.eval, owner=f"{bench.name} eval")
    return merged


def results_tag(conf_name: str, overrides: Sequence[str]) -> str:
    """Config name, plus a short hash of the model/data overrides that change predictions.

    ``data.root`` is left out: the benchmark name already says which data, and the cache
    fingerprint refuses predictions made from another root.
    """
    changing = sorted(o for o in overrides if not o.startswith(("eval.", "data.root=")))
    stem = Path(conf_name).stem
    if not changing:
        return stem
    return f"{stem}-{hashlib.sha1(' '.join(changing).encode()).hexdigest()[:8]}"


def _prediction_fingerprint(conf: DictConfig) -> str:
    """What the cached predictions depend on: the model and the data config."""
    return json.dumps({"model": to_container(conf.model), "data": to_container(conf.data)}, sort_keys=True)


# ---- stage 1: export -----------------------------------------------------------------
GT_KEYS = ("H_0to1", "K0", "K1", "T_0to1", "image_size0", "image_size1")
LINE_KEYS = ("lines0", "lines1", "line_matches", "line_match_scores")  # from a matcher with lines


def _group_name(pair_name: str) -> str:
    return pair_name.replace("/", "|")


def pair_names(dataset: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of all pairs, without reading images when the dataset can say them directly."""
    if hasattr(dataset, "pair_name"):
        return [dataset.pair_name(i) for i in range(len(dataset))]
    return [dataset[i]["name"] for i in range(len(dataset))]


def export_predictions(pipeline_factory: Callable[[], Pipeline], dataset: Sequence[Mapping[str, Any]],
                       path: Path, fingerprint: str, overwrite: bool = False, maps: Sequence[str] = ()
                       ) -> tuple[Path, dict[str, float]]:
    """Cache predictions of every pair (and the items' dense ``maps``, e.g. depth); returns the file and
    export statistics.

    The pipeline is built only when some pair is missing from the cache.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if overwrite:
        path.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    if path.exists():
        with h5py.File(path, "r") as f:
            if f.attrs.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{path} holds predictions of another model/data config; pass --overwrite to recompute"
                )
            if all(_group_name(name) in f for name in pair_names(dataset)):
                return path, {"exported": 0, "cached": len(dataset), "export_s": 0.0}
        os.replace(path, partial)  # some pairs missing (dataset grew): resume appending
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    exported = 0
    try:
        f = h5py.File(partial, "a")
    except OSError:  # a partial file left corrupt by a hard crash: start over
        partial.unlink()
        f = h5py.File(partial, "a")
    with f:
        if f.attrs.get("fingerprint", fingerprint) != fingerprint:
            raise ConfigError(f"{partial} was started with another config; pass --overwrite")
        f.attrs["fingerprint"] = fingerprint
        todo = [i for i, name in enumerate(pair_names(dataset)) if _group_name(name) not in f]
        pipeline = pipeline_factory() if todo else None
        for i in tqdm(todo, desc=f"matching {path.parent.name}", unit="pair"):
            item = dataset[i]
            _write_prediction(f, item, pipeline, maps)
            f.flush()
            exported += 1
    os.replace(partial, path)
    return path, {"exported": exported, "cached": len(dataset) - exported,
                  "export_s": time.perf_counter() - start}


def _write_prediction(f: h5py.File, item: Mapping[str, Any], pipeline: Pipeline | None,
                      maps: Sequence[str] = ()) -> None:
    grp = f.create_group(_group_name(item["name"]))
    # the ground truth travels with the predictions: evaluation then reads no image
    for key in GT_KEYS:
        if item.get(key) is not None:
            grp.create_dataset(f"gt_{key}", data=np.asarray(item[key], dtype=np.float64))
    for key in maps:
        if item.get(key) is not None:
            _write_map(f, grp, key, np.asarray(item[key], dtype=np.float32), item.get(f"{key}_id"))
    error = item.get("load_error")
    if error or item.get("image0") is None or item.get("image1") is None:
        grp.attrs["load_error"] = str(error or "image could not be read")
        return
    pred = pipeline.match(item["image0"], item["image1"])
    grp.create_dataset("keypoints0", data=pred.keypoints0.astype(np.float32))
    grp.create_dataset("keypoints1", data=pred.keypoints1.astype(np.float32))
    grp.create_dataset("matches", data=pred.matches.astype(np.int64))
    grp.create_dataset("scores", data=pred.scores.astype(np.float32))
    grp.attrs["time_ms"] = float(pred.timings.get("total", np.nan))
    grp.attrs["match_ms"] = float(pred.timings.get("match", np.nan))
    if getattr(pred, "lines0", None) is not None and getattr(pred, "lines1", None) is not None:
        for key, dtype in zip(LINE_KEYS, (np.float32, np.float32, np.int64, np.float32), strict=True):
            grp.create_dataset(key, data=np.asarray(getattr(pred, key), dtype=dtype))
    for key, value in pred.info.items():
        grp.attrs[key] = value


def _write_map(f: h5py.File, grp: h5py.Group, key: str, value: np.ndarray, map_id: str | None) -> None:
    """A dense map in the pair's group, or once in ``/maps`` (linked from every pair of that image)."""
    if map_id is None:
        grp.create_dataset(f"gt_{key}", data=value, compression="gzip")
        return
    path = f"maps/{_group_name(str(map_id))}"
    if path not in f:
        f.create_dataset(path, data=value, compression="gzip")
    grp[f"gt_{key}"] = h5py.SoftLink(f"/{path}")


def read_prediction(f: h5py.File, pair_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ground truth, prediction) of one pair from the cache."""
    grp = f[_group_name(pair_name)]
    pred: dict[str, Any] = {k: grp[k][()] for k in grp if not k.startswith("gt_")}
    pred.update({k: v for k, v in grp.attrs.items()})
    gt = {k.removeprefix("gt_"): grp[k][()] for k in grp if k.startswith("gt_")}
    return {"name": pair_name, **gt}, pred


# ---- stage 2: evaluate ---------------------------------------------------------------
def keep_scores_above(pred: dict[str, Any], min_score: float) -> dict[str, Any]:
    """The prediction with only the matches whose score exceeds ``min_score`` (0: unchanged)."""
    if min_score <= 0 or "matches" not in pred:
        return pred
    keep = np.asarray(pred["scores"]).reshape(-1) > min_score
    return {**pred, "matches": np.asarray(pred["matches"]).reshape(-1, 2)[keep],
            "scores": np.asarray(pred["scores"]).reshape(-1)[keep]}


def matcher_min_score(pred: Mapping[str, Any], conf: DictConfig) -> float:
    """``eval.min_score`` as the matcher's own ``filter_threshold`` would have applied it: LightGlue
    scales it by ``exit_filter_factors`` of the layer an early-stopped pass ended at."""
    min_score = float(conf.eval.min_score)
    matcher = (conf.get("model") or {}).get("matcher") or {}  # the trainer's hook has no model section
    if min_score <= 0 or "stop_layer" not in pred or matcher.get("exit_filter_factors") is None:
        return min_score
    settings = {"filter_threshold": min_score, "exit_filter_factors": matcher["exit_filter_factors"],
                "n_layers": matcher["n_layers"]}
    return exit_filter_threshold(settings, int(pred["stop_layer"]) - 1)


def evaluate_predictions(bench: Benchmark, dataset: Sequence[Mapping[str, Any]], path: Path,
                         conf: DictConfig, ransac_th: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
    per_pair: list[dict[str, Any]] = []
    load_errors = 0
    with h5py.File(path, "r") as f:
        for name in pair_names(dataset):
            gt, pred = read_prediction(f, name)
            pred = keep_scores_above(pred, matcher_min_score(pred, conf))
            if "load_error" in pred:
                load_errors += 1
            result = bench.evaluate_pair(gt, pred, conf.eval, ransac_th)
            per_pair.append({"name": name, **result})
    dataset_level = bench.aggregate(per_pair) if bench.aggregate is not None else {}
    per_pair = [{k: v for k, v in pair.items() if not k.startswith("_")} for pair in per_pair]
    summary = summarize(per_pair, auc_keys=bench.auc_keys)
    summary.update(dataset_level)
    summary["num_load_errors"] = float(load_errors)
    summary["ransac_th"] = float(ransac_th)
    return summary, per_pair


def sweep_thresholds(bench: Benchmark, dataset, path: Path, conf: DictConfig
                     ) -> tuple[dict[str, float], list[dict[str, Any]], dict[float, float]]:
    """Evaluate at ``eval.ransac_th`` or, when it is -1, at every sweep value; keep the best."""
    ths = bench.sweep if float(conf.eval.ransac_th) < 0 else (float(conf.eval.ransac_th),)
    best: tuple[dict[str, float], list[dict[str, Any]]] | None = None
    scores: dict[float, float] = {}
    for th in ths:
        summary, per_pair = evaluate_predictions(bench, dataset, path, conf, th)
        scores[th] = summary[bench.main_key]
        if best is None or summary[bench.main_key] > best[0][bench.main_key]:
            best = (summary, per_pair)
    assert best is not None
    return best[0], best[1], scores


# ---- tables ----------------------------------------------------------------------------
def results_table(bench: Benchmark, root: Path = RESULTS_ROOT) -> str:
    """Markdown table of every summary of this benchmark under ``root``."""
    rows = []
    for summary_path in sorted((root / bench.name).glob("*/summary_*.json")):
        summary = json.loads(summary_path.read_text())
        tag = f"{summary_path.parent.name} ({summary_path.stem.removeprefix('summary_')})"
        rows.append([tag] + [_fmt(summary.get(k)) for k in bench.table_keys])
    header = "| config (estimator) | " + " | ".join(bench.table_keys) + " |"
    line = "|" + "---|" * (len(bench.table_keys) + 1)
    return "\n".join([header, line] + ["| " + " | ".join(r) + " |" for r in rows])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) < 1:
        return f"{value:.4f}"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


# ---- command line ----------------------------------------------------------------------
def parse_args(bench: Benchmark, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m featmatch_core.eval.{bench.name}",
        description=f"Evaluate a matching config on {bench.name}. Overrides: model.*, data.*, eval.* "
                    f"(e.g. data.root=/path eval.estimator=poselib eval.ransac_th=-1).")
    parser.add_argument("--conf", default="sift+nn", help="named config or YAML path")
    parser.add_argument("--overwrite", action="store_true", help="recompute cached predictions")
    parser.add_argument("--offline", action="store_true", help="never download weights or data")
    parser.add_argument("--results_root", type=Path, default=RESULTS_ROOT)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser.parse_args(argv)


def main(bench: Benchmark, argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(bench, argv)
    if args.offline:
        os.environ["FEATMATCH_OFFLINE"] = "1"
    conf = build_conf(bench, args.conf, args.overrides)
    dataset = bench.make_dataset(conf.data)  # a missing dataset fails here, before any model loads
    out_dir = args.results_root / bench.name / results_tag(args.conf, args.overrides)
    path, stats = export_predictions(lambda: Pipeline.from_conf(conf.model), dataset,
                                     out_dir / "predictions.h5", _prediction_fingerprint(conf), args.overwrite,
                                     bench.cached_maps)
    start = time.perf_counter()
    summary, per_pair, sweep = sweep_thresholds(bench, dataset, path, conf)
    eval_s = time.perf_counter() - start
    # the estimator(s) actually used, when the evaluation says (predictions with lines may use another)
    used = sorted({str(p["estimator"]) for p in per_pair if "estimator" in p}) or [str(conf.eval.estimator)]
    tag = f"{'+'.join(used)}_th{'sweep' if float(conf.eval.ransac_th) < 0 else conf.eval.ransac_th}"
    if float(conf.eval.min_score) > 0:
        tag += f"_score{float(conf.eval.min_score):g}"
    summary.update({"export_s": stats["export_s"], "eval_s": eval_s,
                    "pairs_matched": float(stats["exported"]), "pairs_from_cache": float(stats["cached"])})
    save_json(out_dir / f"summary_{tag}.json", summary)
    save_json(out_dir / f"pairs_{tag}.json", per_pair)
    save_json(out_dir / "config.json", to_container(conf))
    if len(sweep) > 1:
        print("RANSAC threshold sweep (" + bench.main_key + "): "
              + ", ".join(f"{th:g}px: {v:.4f}" for th, v in sweep.items()))
    print(f"{bench.name} / {out_dir.name} / {tag}: matched {stats['exported']} pairs "
          f"({stats['export_s']:.1f} s), {stats['cached']} from cache; evaluation {eval_s:.1f} s")
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
    print(results_table(bench, args.results_root))
    return summary


def cli(bench: Benchmark, argv: Sequence[str] | None = None) -> int:
    """``main`` for ``python -m``: a bad config, a missing dataset or missing weights print one
    clear message and exit 2 instead of a traceback."""
    from ..datasets.download import DatasetUnavailableError
    from ..weights import WeightsUnavailableError

    try:
        main(bench, argv)
    except (ConfigError, DatasetUnavailableError, WeightsUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
