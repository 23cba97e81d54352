"""Training curves of an experiment (its metrics.csv) as one PNG and a table of the validations.

    python -m featmatch_core.train.curves EXPERIMENT [--out curves.png] [--training_root outputs/training]

Panels: the training loss (averages over each logging interval) with the validation loss on
the same axes, the validation match precision and recall, and the learning rate. The table
lists every validation step: loss, precision, recall, matches.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_write_bytes, figure_png
from .trainer import TRAINING_ROOT

Series = dict[tuple[str, str], list[tuple[int, float]]]
VAL_COLUMNS = ("loss/total", "match_precision", "match_recall", "num_matches")


def read_metrics(path: Path) -> Series:
    """{(split, key): [(step, value), ...]} of a metrics.csv, in step order."""
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file {path} (is the experiment name right?)")
    series: Series = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                series[(row["split"], row["key"])].append((int(row["step"]), float(row["value"])))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: malformed row {row}: {err}") from None
    for values in series.values():
        values.sort()
    return dict(series)


def validation_table(series: Series) -> str:
    steps = sorted({step for key in VAL_COLUMNS for step, _ in series.get(("val", key), [])})
    if not steps:
        return "no validation rows"
    lookup = {key: dict(series.get(("val", key), [])) for key in VAL_COLUMNS}
    lines = ["| step | " + " | ".join(VAL_COLUMNS) + " |", "|" + "---|" * (len(VAL_COLUMNS) + 1)]
    for step in steps:
        cells = [f"{lookup[k][step]:.3f}" if step in lookup[k] else "-" for k in VAL_COLUMNS]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(series: Series, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(ax, split: str, key: str, style: str, label: str) -> None:
        values = series.get((split, key), [])
        if values:
            ax.plot(*zip(*values, strict=True), style, lw=1, ms=4, label=label)

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    draw(axes[0], "train", "loss/total", "-", "train")
    draw(axes[0], "val", "loss/total", "o-", "validation")
    axes[0].set_title("loss")
    draw(axes[1], "val", "match_precision", "o-", "precision")
    draw(axes[1], "val", "match_recall", "s-", "recall")
    axes[1].set_title("validation matches")
    draw(axes[2], "train", "lr", "-", "learning rate")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return figure_png(fig, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featmatch_core.train.curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default EXPERIMENT/curves.png)")
    parser.add_argument("--training_root", type=Path, default=TRAINING_ROOT)
    args = parser.parse_args(argv)
    exp_dir = args.training_root / args.experiment
    try:
        series = read_metrics(exp_dir / "metrics.csv")
    except (FileNotFoundError, ValueError) as err:
        print(f"curves: error: {err}", file=sys.stderr)
        return 2
    out = args.out or exp_dir / "curves.png"
    atomic_write_bytes(out, plot_curves(series, args.experiment))
    print(validation_table(series))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
