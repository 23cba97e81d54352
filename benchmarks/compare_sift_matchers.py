"""SIFT+NN against SIFT+LightGlue weights on every evaluation built from allowed data.

    python benchmarks/compare_sift_matchers.py --data ../shared/data \
        [--weights old=sift_lightglue_cpu new=outputs/v2_best.pth] [--min_scores 0.1 0.2 0.3] \
        [--benchmarks sequence hpatches homographies scenes scenes_calib video video_calib] [--out outputs/compare]
        [--modes adaptive= full=model.matcher.depth_confidence=-1,model.matcher.width_confidence=-1]
        [--no-baseline]

Same keypoints for every matcher: OpenCV SIFT, at most 2048 per image, native resolution.
Each LightGlue variant (weights x adaptive/full depth) is exported once at filter_threshold
0.01 and evaluated at every ``--min_scores`` value (``eval.min_score``: exactly the matcher's
filter_threshold, see featmatch_core/eval/runner.py), so the threshold can be chosen on the
calibration scenes (``scenes_calib``: pairs 1000-1099, disjoint from the 200 evaluation scenes)
and read off elsewhere. ``video`` / ``video_calib``: consecutive frames of generated room
sequences (``eval.video``, 1024 keypoints; evaluation seeds 10-12, calibration seeds 1-3).
``--modes`` names the LightGlue settings compared (default: the config's
adaptive depth/width and full depth), e.g. a sweep of ``model.matcher.depth_confidence``.
Predictions are cached under outputs/results by the benchmark runner: rerunning only re-evaluates.
Prints one markdown table per benchmark and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from featmatch_core.eval import hpatches, homographies, runner, scenes, sequence, video  # noqa: E402
from featmatch_core.files import save_json  # noqa: E402

SAME_KEYPOINTS = ["model.extractor.resize=null", "model.extractor.max_num_keypoints=2048"]
BUNDLED = "sift_lightglue_cpu"  # the weights of the sift+lightglue-cpu config
FULL_DEPTH = ["model.matcher.depth_confidence=-1", "model.matcher.width_confidence=-1"]
DEFAULT_MODES = ["adaptive=", "full=" + ",".join(FULL_DEPTH)]

# columns of the benchmarks that score against a homography / against depth and poses
HOMOGRAPHY_COLUMNS = ("correct@3px", "precision@3px", "num_matches", "corner_error_auc@1", "corner_error_auc@3",
                      "corner_error_auc@5")
DEPTH_COLUMNS = ("point_correct", "point_precision", "point_recall", "num_matches", "pose_error_auc@5",
                 "pose_error_auc@10", "pose_error_auc@20")
VIDEO_KEYPOINTS = "model.extractor.max_num_keypoints=1024"  # a robot camera's budget

# name: (module, data folder under --data (None: generated), extra data overrides, columns)
BENCHMARKS = {
    "sequence": (sequence, "castle_simu", [],
                 ("pose_error_auc@5", "pose_error_auc@10", "pose_error_auc@20", "epipolar_precision@1e-4",
                  "num_matches", "num_inliers")),
    "hpatches": (hpatches, "hpatches_format", [], HOMOGRAPHY_COLUMNS),
    "homographies": (homographies, "train_photos", [], HOMOGRAPHY_COLUMNS),
    "scenes": (scenes, "train_photos", [], DEPTH_COLUMNS),
    "scenes_calib": (scenes, "train_photos", ["data.first_pair=1000", "data.num_pairs=100"], DEPTH_COLUMNS),
    "video": (video, None, [VIDEO_KEYPOINTS], DEPTH_COLUMNS),
    "video_calib": (video, None, [VIDEO_KEYPOINTS, "data.seeds=[1,2,3]"], DEPTH_COLUMNS),
}


def variants(weights: dict[str, str], modes: dict[str, list[str]],
             baseline: bool = True) -> list[tuple[str, str, list[str]]]:
    """(label, named config, overrides) of every matcher compared."""
    out = [("sift+nn", "sift+nn", [])] if baseline else []
    for name, path in weights.items():
        base = ["model.matcher.filter_threshold=0.01"]
        if path != BUNDLED:  # the config's own weights: no override, so its cached predictions are reused
            base.append(f"model.matcher.weights={path}")
        for mode, overrides in modes.items():
            out.append((f"lightglue {name} {mode}", "sift+lightglue-cpu", base + overrides))
    return out


def parse_modes(items: list[str]) -> dict[str, list[str]]:
    """``name=key=value,key=value`` (or ``name=``) -> {name: [overrides]}; a value may be a list
    ``[a,b,c]``."""
    modes = {}
    for item in items:
        name, sep, overrides = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--modes: expected name=override,override (or name=), got {item!r}")
        modes[name] = [o for o in re.split(r",(?![^\[]*\])", overrides) if o]  # no split inside [...]
    return modes


def evaluate(bench_name: str, data_root: Path, conf: str, overrides: list[str], min_score: float) -> dict:
    module, folder, extra, _ = BENCHMARKS[bench_name]
    data = [] if folder is None else [f"data.root={data_root / folder}"]
    args = ["--conf", conf, *data, *SAME_KEYPOINTS, *extra, *overrides,
            f"eval.min_score={min_score}"]
    with contextlib.redirect_stdout(io.StringIO()):  # the runner prints a table per call
        return runner.main(module.BENCHMARK, args)


def fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--weights", nargs="+", default=[f"bundled={BUNDLED}"],
                        help="name=weights (an id of the registry or a path)")
    parser.add_argument("--min_scores", nargs="+", type=float, default=[0.1])
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES,
                        help="name=override,override: LightGlue settings (default: adaptive and full depth)")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="include sift+nn (--no-baseline: only the LightGlue variants)")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare"))
    args = parser.parse_args()
    weights = dict(item.split("=", 1) for item in args.weights)
    modes = parse_modes(args.modes)
    results: dict[str, list[dict]] = {}
    for bench_name in args.benchmarks:
        columns = BENCHMARKS[bench_name][3]
        rows = []
        for label, conf, overrides in variants(weights, modes, args.baseline):
            scores = [0.0] if conf == "sift+nn" else args.min_scores
            for min_score in scores:
                summary = evaluate(bench_name, args.data, conf, overrides, min_score)
                rows.append({"matcher": label, "min_score": min_score, "time_ms": summary.get("time_ms"),
                             "match_ms": summary.get("match_ms"), "layers": summary.get("stop_layer"),
                             **{k: summary.get(k) for k in columns}})
        results[bench_name] = rows
        print(f"\n### {bench_name}\n")
        extra = ("layers", "match_ms", "time_ms")
        print("| matcher | min score | " + " | ".join(columns + extra) + " |")
        print("|---|---|" + "---|" * (len(columns) + len(extra)))
        for row in rows:
            cells = [fmt(row[k]) if row[k] is not None else "-" for k in columns + extra]
            print(f"| {row['matcher']} | {row['min_score']:g} | " + " | ".join(cells) + " |")
        sys.stdout.flush()
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(args.out / "compare_sift_matchers.json", results)
    print(f"\nwrote {args.out / 'compare_sift_matchers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
