"""Look at benchmark results: curves, error histograms and the matches of single pairs.

    python -m featmatch_core.eval.inspect hpatches sift+nn superpoint+lightglue          # interactive
    python -m featmatch_core.eval.inspect sequence_castle_simu sift+nn --save outputs/inspect

Interactive mode shows a scatter of the pairs (matches vs error, one colour per config);
click a point to see that pair's matches coloured by correctness (green within
``--px`` pixels of the ground truth, red otherwise). ``--save DIR`` writes PNGs instead:
cumulative error curves, per-pair error histograms and the match pictures of the
``--num_pairs`` worst and best pairs of each config. Run an evaluation first
(``python -m featmatch_core.eval.<benchmark>``); this tool reads its outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from omegaconf import OmegaConf

from ..files import save_figure, save_image
from ..geometry.homography import sym_transfer_error
from ..viz import draw_matches
from . import runner
from .metrics import epipolar_errors


def benchmark_by_name(name: str) -> runner.Benchmark:
    from dataclasses import replace

    from . import homographies, hpatches, megadepth1500, sequence

    if name == "hpatches":
        return hpatches.BENCHMARK
    if name == "megadepth1500":
        return megadepth1500.BENCHMARK
    if name == "homographies":
        return homographies.BENCHMARK
    if name.startswith("sequence_"):
        return replace(sequence.BENCHMARK, name=name)
    raise ValueError(f"unknown benchmark '{name}': hpatches, megadepth1500, homographies or sequence_<folder>")


class RunResults:
    """One evaluated config: per-pair metrics, the prediction cache and the data config."""

    def __init__(self, bench: runner.Benchmark, tag: str, root: Path, estimator: str | None) -> None:
        self.bench, self.tag = bench, tag
        self.dir = root / bench.name / tag
        candidates = sorted(self.dir.glob("pairs_*.json"), key=lambda p: p.stat().st_mtime)
        if estimator:
            candidates = [p for p in candidates if p.stem.removeprefix("pairs_").startswith(estimator)]
        if not candidates:
            raise FileNotFoundError(
                f"no results in {self.dir}; run `python -m featmatch_core.eval.{bench.name.split('_')[0]} "
                f"--conf {tag}` first")
        self.pairs_file = candidates[-1]
        self.pairs: list[dict[str, Any]] = json.loads(self.pairs_file.read_text())
        self.error_key = next(iter(bench.auc_keys))
        self.conf = OmegaConf.create(json.loads((self.dir / "config.json").read_text()))
        self._dataset = None

    @property
    def label(self) -> str:
        return f"{self.tag} ({self.pairs_file.stem.removeprefix('pairs_')})"

    def errors(self) -> np.ndarray:
        return np.array([p[self.error_key] for p in self.pairs], dtype=np.float64)

    def prediction(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        with h5py.File(self.dir / "predictions.h5", "r") as f:
            return runner.read_prediction(f, name)

    def images(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if self._dataset is None:
            self._dataset = self.bench.make_dataset(self.conf.data)
        index = runner.pair_names(self._dataset).index(name)
        item = self._dataset[index]
        return item["image0"], item["image1"]


def correct_matches(gt: dict[str, Any], pred: dict[str, Any], px: float) -> np.ndarray:
    """Matches within ``px`` pixels of the ground truth (transfer or Sampson error)."""
    matches = np.asarray(pred.get("matches", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
    if len(matches) == 0:
        return np.zeros(0, dtype=bool)
    p0 = np.asarray(pred["keypoints0"])[matches[:, 0]]
    p1 = np.asarray(pred["keypoints1"])[matches[:, 1]]
    if "H_0to1" in gt:
        errors = np.asarray(sym_transfer_error(p0, p1, gt["H_0to1"]))
    else:
        errors = epipolar_errors(p0, p1, (gt["K0"], gt["K1"], gt["T_0to1"]), unit="pixel")
    return errors < px


def match_picture(run: RunResults, name: str, px: float) -> np.ndarray:
    gt, pred = run.prediction(name)
    image0, image1 = run.images(name)
    if image0 is None or image1 is None or "matches" not in pred:
        raise ValueError(f"pair {name} has no images or predictions (load error: {pred.get('load_error')})")
    correct = correct_matches(gt, pred, px)
    pair = next(p for p in run.pairs if p["name"] == name)
    title = (f"{run.tag} {name}: {int(correct.sum())}/{len(correct)} correct (<{px:g}px), "
             f"{run.error_key} {pair[run.error_key]:.2f}")
    return draw_matches(image0, image1, pred["keypoints0"], pred["keypoints1"], pred["matches"],
                        correct=correct, title=title)


def plot_curves(runs: Sequence[RunResults], path: Path) -> None:
    import matplotlib.pyplot as plt

    limit = max(max(run.bench.auc_keys[run.error_key]) for run in runs) * 1.5
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        errors = np.sort(run.errors())
        recall = np.arange(1, len(errors) + 1) / len(errors)
        finite = errors <= limit
        ax.step(np.r_[0, errors[finite]], np.r_[0, recall[finite]], where="post", label=run.label)
    for th in runs[0].bench.auc_keys[runs[0].error_key]:
        ax.axvline(th, color="gray", lw=0.5, ls="--")
    ax.set(xlim=(0, limit), ylim=(0, 1), xlabel=runs[0].error_key, ylabel="fraction of pairs",
           title=f"{runs[0].bench.name}: cumulative error")
    ax.legend(fontsize=8)
    save_figure(path, fig, dpi=120)


def plot_histograms(runs: Sequence[RunResults], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    cap = max(max(run.bench.auc_keys[run.error_key]) for run in runs) * 2
    bins = np.linspace(0, cap, 30)
    for run in runs:
        ax.hist(np.minimum(run.errors(), cap), bins=bins, alpha=0.5, label=f"{run.label} (failures at {cap:g})")
    ax.set(xlabel=runs[0].error_key, ylabel="pairs", title=f"{runs[0].bench.name}: per-pair error")
    ax.legend(fontsize=8)
    save_figure(path, fig, dpi=120)


def save_all(runs: Sequence[RunResults], out: Path, num_pairs: int, px: float) -> list[Path]:
    written = [out / "curves.png", out / "histograms.png"]
    plot_curves(runs, written[0])
    plot_histograms(runs, written[1])
    for run in runs:
        order = np.argsort(run.errors(), kind="stable")
        chosen = list(order[:num_pairs]) + list(order[::-1][:num_pairs])
        for rank, i in enumerate(dict.fromkeys(chosen)):
            name = run.pairs[i]["name"]
            try:
                picture = match_picture(run, name, px)
            except (ValueError, FileNotFoundError) as err:
                print(f"skipping {name}: {err}")
                continue
            kind = "best" if rank < num_pairs else "worst"
            path = out / run.tag / f"{kind}_{name.replace('/', '_')}.png"
            save_image(path, picture)
            written.append(path)
    return written


def interactive(runs: Sequence[RunResults], px: float) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    artists = {}
    for run in runs:
        errors = np.minimum(run.errors(), 1e3)
        matches = [p.get("num_matches", 0) for p in run.pairs]
        artist = ax.scatter(matches, errors, s=12, picker=5, label=run.label)
        artists[artist] = run
    ax.set(xlabel="matches", ylabel=runs[0].error_key, yscale="symlog", title="click a pair to see its matches")
    ax.legend(fontsize=8)

    def on_pick(event):
        run = artists[event.artist]
        name = run.pairs[int(event.ind[0])]["name"]
        picture = match_picture(run, name, px)[..., ::-1]
        fig2, ax2 = plt.subplots(figsize=(12, 5))
        ax2.imshow(picture)
        ax2.axis("off")
        fig2.show()

    fig.canvas.mpl_connect("pick_event", on_pick)
    plt.show()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featmatch_core.eval.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", help="hpatches, megadepth1500, homographies or sequence_<folder>")
    parser.add_argument("configs", nargs="+", help="result tags (config names) to compare")
    parser.add_argument("--save", type=Path, default=None, help="write PNGs to this folder (headless)")
    parser.add_argument("--estimator", default=None, help="which evaluation (e.g. poselib); default newest")
    parser.add_argument("--num_pairs", type=int, default=3, help="best and worst pairs drawn per config")
    parser.add_argument("--px", type=float, default=3.0, help="correctness threshold in pixels")
    parser.add_argument("--results_root", type=Path, default=runner.RESULTS_ROOT)
    args = parser.parse_args(argv)
    try:
        bench = benchmark_by_name(args.benchmark)
        runs = [RunResults(bench, tag, args.results_root, args.estimator) for tag in args.configs]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.save is not None:
        for path in save_all(runs, args.save, args.num_pairs, args.px):
            print(f"wrote {path}")
        return 0
    import matplotlib

    if matplotlib.get_backend().lower() == "agg":
        print("error: no interactive display; use --save DIR", file=sys.stderr)
        return 2
    interactive(runs, args.px)
    return 0


if __name__ == "__main__":
    sys.exit(main())
