"""Adaptive against full-depth LightGlue on consecutive video frames: time, layers, matches.

    python benchmarks/adaptive_speed.py --images ../shared/data/castle_simu/images \
        [--conf sift+lightglue-cpu] [--keypoints 1024 2048] [--weights PATH] [--repeat 3] \
        [--modes full=model.matcher.depth_confidence=-1,model.matcher.width_confidence=-1 adaptive=]

Every frame's features are extracted once (the config's extractor, native resolution); then each
pair of consecutive frames is matched by every mode, the modes interleaved per pair so that load
from other processes affects them alike, ``--repeat`` times after one warm-up pair. Reports the
median and mean matcher time (the pipeline's own "match" timer: LightGlue only), the mean number
of layers run, matches, and each mode's speed-up over the first mode and the fraction of its
matches that the first mode also finds. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import featmatch_core  # noqa: E402
from featmatch_core.files import save_json  # noqa: E402
from featmatch_core.image import read_image  # noqa: E402
from compare_sift_matchers import FULL_DEPTH, parse_modes  # noqa: E402,I001

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".tif", ".tiff"}


def frame_paths(folder: Path, max_frames: int | None) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < 2:
        raise SystemExit(f"--images {folder}: needs at least 2 images, found {len(paths)}")
    return paths[:max_frames] if max_frames else paths


def match_set(matches: np.ndarray) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in np.asarray(matches).reshape(-1, 2)}


def run(args: argparse.Namespace, num_keypoints: int, modes: dict[str, list[str]]) -> list[dict]:
    base = ["extractor.resize=null", f"extractor.max_num_keypoints={num_keypoints}"]
    if args.weights:
        base.append(f"matcher.weights={args.weights}")
    # the modes are written as evaluation overrides (model.*), as in compare_sift_matchers
    pipelines = {name: featmatch_core.load(args.conf, base + [o.removeprefix("model.") for o in overrides])
                 for name, overrides in modes.items()}
    first = next(iter(pipelines.values()))
    paths = frame_paths(args.images, args.max_frames)
    features = [first.extract(read_image(p)) for p in tqdm(paths, desc=f"extract {num_keypoints}", unit="frame")]
    pairs = list(zip(features[:-1], features[1:], strict=True))
    for pipeline in pipelines.values():  # warm-up
        pipeline.match_features(*pairs[0])
    stats: dict[str, dict[str, list]] = {name: {"ms": [], "layers": [], "matches": [], "sets": []} for name in modes}
    for _ in range(args.repeat):
        for feats0, feats1 in tqdm(pairs, desc=f"match {num_keypoints}", unit="pair"):
            for name, pipeline in pipelines.items():
                pred = pipeline.match_features(feats0, feats1)
                stats[name]["ms"].append(pred.timings["match"])
                stats[name]["layers"].append(pred.info.get("stop_layer", np.nan))
                stats[name]["matches"].append(len(pred.matches))
                if len(stats[name]["sets"]) < len(pairs):
                    stats[name]["sets"].append(match_set(pred.matches))
    ref_name = next(iter(modes))
    ref = stats[ref_name]
    rows = []
    for name, s in stats.items():
        shared = [len(a & b) / max(len(b), 1) for a, b in zip(s["sets"], ref["sets"], strict=True)]
        rows.append({
            "keypoints": num_keypoints, "mode": name, "pairs": len(pairs),
            "match_ms_median": statistics.median(s["ms"]), "match_ms_mean": statistics.fmean(s["ms"]),
            "layers_mean": float(np.nanmean(s["layers"])), "matches_mean": statistics.fmean(s["matches"]),
            "speedup": statistics.median(ref["ms"]) / statistics.median(s["ms"]),
            f"matches_of_{ref_name}_kept": statistics.fmean(shared),
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of frames in order")
    parser.add_argument("--conf", default="sift+lightglue-cpu")
    parser.add_argument("--weights", default=None, help="matcher weights (registry id or path)")
    parser.add_argument("--keypoints", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--modes", nargs="+", default=["full=" + ",".join(FULL_DEPTH), "adaptive="])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/adaptive_speed.json"))
    args = parser.parse_args()
    modes = parse_modes(args.modes)
    rows = [row for k in args.keypoints for row in run(args, k, modes)]
    keys = [k for k in rows[0] if k not in ("keypoints", "mode")]
    print("\n| keypoints | mode | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        print(f"| {row['keypoints']} | {row['mode']} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_json(args.out, {"conf": args.conf, "weights": args.weights, "images": str(args.images), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
