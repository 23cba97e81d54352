"""Accuracy against layers run, from a ``compare_sift_matchers.py --modes`` sweep: one PNG.

    python benchmarks/plot_adaptive_calibration.py outputs/calib/compare_sift_matchers.json [MORE.json ...] \
        [--benchmark scenes_calib] [--out docs/model_card/adaptive_calibration.png]

Each LightGlue mode of the sweep (full depth, and the adaptive settings tried) is one point at
its mean number of layers run; panels: correct matches, precision, pose AUC@10, and correct
matches against matching time (width pruning saves time without leaving layers out). ``sift+nn``
is drawn as a horizontal line where it has the metric. Also prints the rows as a markdown table
with each mode's share of the full-depth figures (the mode named ``full``), which is how the
adaptive thresholds are chosen. Several JSON files (sweeps run one after another) are read as
one; a matcher in more than one keeps its first row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from featmatch_core.files import save_figure  # noqa: E402

PANELS = {  # metric key: axis label, per benchmark family
    "scenes": (("point_correct", "correct matches"), ("point_precision", "precision"),
               ("pose_error_auc@10", "pose AUC@10"), ("match_ms", "matching ms")),
    "homographies": (("correct@3px", "correct matches (3 px)"), ("precision@3px", "precision"),
                     ("corner_error_auc@3", "corner AUC@3"), ("match_ms", "matching ms")),
}


def panels_for(benchmark: str) -> tuple[tuple[str, str], ...]:
    for family, panels in PANELS.items():
        if benchmark.startswith(family) or (family == "homographies" and benchmark == "hpatches"):
            return panels
    raise SystemExit(f"no panels defined for benchmark {benchmark!r}; known: scenes*, homographies, hpatches")


def share_table(rows: list[dict], panels: tuple[tuple[str, str], ...]) -> str:
    full = next((r for r in rows if r["matcher"].endswith(" full")), None)
    keys = [k for k, _ in panels]
    lines = ["| matcher | min score | layers | " + " | ".join(keys) + " | share of full (first 3) |",
             "|---|---|---|" + "---|" * (len(keys) + 1)]
    for row in rows:
        cells = ["-" if row.get(k) is None else f"{row[k]:.3f}" if abs(row[k]) < 1 else f"{row[k]:.1f}"
                 for k in keys]
        share = "-"
        if full is not None and row.get("layers") is not None:
            share = " / ".join(f"{row[k] / full[k]:.3f}" if full.get(k) else "-" for k in keys[:3])
        layers = "-" if row.get("layers") is None else f"{row['layers']:.2f}"
        lines.append(f"| {row['matcher']} | {row['min_score']:g} | {layers} | " + " | ".join(cells)
                     + f" | {share} |")
    return "\n".join(lines)


def plot(rows: list[dict], panels: tuple[tuple[str, str], ...], title: str, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learned = [r for r in rows if r.get("layers") is not None]
    baseline = next((r for r in rows if r["matcher"] == "sift+nn"), None)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, label) in zip(axes, panels, strict=True):
        # the time panel shows the first metric against time: pruning saves time at 6 layers too
        x_key, y_key = ("match_ms", panels[0][0]) if key == "match_ms" else ("layers", key)
        points = sorted((r[x_key], r[y_key], r["matcher"].split()[-1]) for r in learned
                        if r.get(x_key) is not None and r.get(y_key) is not None)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o", color="tab:blue")
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if baseline is not None and baseline.get(y_key) is not None:
            ax.axhline(baseline[y_key], color="tab:gray", linestyle="--", label="sift+nn")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("mean layers run" if x_key == "layers" else label)
        ax.set_ylabel(panels[0][1] if key == "match_ms" else label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(out, fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, nargs="+", help="compare_sift_matchers.json of --modes sweeps")
    parser.add_argument("--benchmark", default="scenes_calib")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare/adaptive_calibration.png"))
    args = parser.parse_args()
    rows: list[dict] = []
    for path in args.json:
        results = json.loads(path.read_text())
        if args.benchmark not in results:
            raise SystemExit(f"{path} has no benchmark {args.benchmark!r}; it has {sorted(results)}")
        seen = {(r["matcher"], r["min_score"]) for r in rows}
        rows += [r for r in results[args.benchmark] if (r["matcher"], r["min_score"]) not in seen]
    panels = panels_for(args.benchmark)
    print(share_table(rows, panels))
    plot(rows, panels, f"adaptive depth/width on {args.benchmark}", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
