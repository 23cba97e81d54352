"""Correct matches after every LightGlue layer, and how sure the token-confidence heads are.

    python benchmarks/layer_accuracy.py [--conf sift+lightglue-cpu] [--weights PATH]
        [--sets scenes_calib=2048 video_calib=1024] [--photos ../shared/data/train_photos]
        [--max_pairs N] [--out outputs/layer_accuracy]

For each set (held-out rendered scenes ``scenes*`` from ``SceneEvalPairs``, consecutive room
frames ``video*`` from ``RoomVideoPairs``; ``_calib`` = the calibration pairs: scenes 1000-1099,
video seeds 1-3; ``=K`` the keypoint budget), every pair is matched at full depth with
``return_all_layers``, and the mutual matches of each layer's assignment head (at the config's
``filter_threshold``) are scored against the depth ground truth (3 px). Also per layer: the
median share of points whose token confidence reaches the layer's threshold (the quantity the
early exit compares with ``depth_confidence``). This is the accuracy an exit after that layer
can keep, whatever the thresholds, and is how ``min_layers`` and the threshold schedule of the
bundled weights were chosen (MODEL_CARD.md). Prints a markdown table, writes JSON and a PNG.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import featmatch_core  # noqa: E402
from featmatch_core.datasets.room import RoomVideoPairs  # noqa: E402
from featmatch_core.datasets.scenes import SceneEvalPairs  # noqa: E402
from featmatch_core.files import save_figure, save_json  # noqa: E402
from featmatch_core.geometry.gt_matches import gt_matches_from_depth  # noqa: E402
from featmatch_core.models.matchers.lightglue import LightGlue, mutual_matches  # noqa: E402

SETS = {  # name: dataset factory (photos folder or None)
    "scenes_calib": lambda photos: SceneEvalPairs({"root": photos, "first_pair": 1000, "num_pairs": 100}),
    "scenes": lambda photos: SceneEvalPairs({"root": photos, "num_pairs": 200}),
    "video_calib": lambda photos: RoomVideoPairs({"seeds": [1, 2, 3]}),
    "video": lambda photos: RoomVideoPairs(),
}


def lightglue_of(pipeline) -> LightGlue:
    found = [m for m in pipeline.matcher.modules() if isinstance(m, LightGlue)]
    if not found:
        raise SystemExit("layer_accuracy: the config's matcher is not LightGlue")
    return found[0]


def pair_layers(pipeline, model: LightGlue, item: dict) -> dict[str, np.ndarray]:
    """Per layer: matches, correct matches, share of sure points (None for the last layer)."""
    feats = [pipeline.extract(item[f"image{i}"]) for i in (0, 1)]
    with torch.inference_mode():
        out = pipeline.matcher({"image0": feats[0], "image1": feats[1]})
    kp0, kp1 = (f["keypoints"][0].cpu().numpy() for f in feats)
    gt = np.asarray(gt_matches_from_depth(kp0, kp1, item["depth0"], item["depth1"], item["K0"], item["K1"],
                                          item["T_0to1"])["gt_matches0"])
    thresholds = model.exit_thresholds().cpu().numpy()
    matches, correct, sure = [], [], []
    for layer, log_assignment in enumerate(out["log_assignment"]):
        matches0 = mutual_matches(log_assignment[:, :-1, :-1], float(model.conf.filter_threshold))[0][0].cpu().numpy()
        matched = matches0 >= 0
        matches.append(matched.sum())
        correct.append((matched & (matches0 == gt)).sum())
        if layer < len(out["token_confidence0"]):
            confidence = torch.cat([out["token_confidence0"][layer][0], out["token_confidence1"][layer][0]])
            sure.append(float((confidence.cpu().numpy() >= thresholds[layer]).mean()))
    return {"matches": np.array(matches), "correct": np.array(correct), "sure": np.array(sure)}


def run_set(args: argparse.Namespace, name: str, keypoints: int) -> dict:
    overrides = ["extractor.resize=null", f"extractor.max_num_keypoints={keypoints}",
                 "matcher.return_all_layers=true"]
    if args.weights:
        overrides.append(f"matcher.weights={args.weights}")
    pipeline = featmatch_core.load(args.conf, overrides)
    model = lightglue_of(pipeline)
    dataset = SETS[name](str(args.photos) if args.photos else None)
    count = len(dataset) if args.max_pairs is None else min(args.max_pairs, len(dataset))
    pairs = [pair_layers(pipeline, model, dataset[i]) for i in tqdm(range(count), desc=name, unit="pair")]
    correct = np.stack([p["correct"] for p in pairs]).astype(float)
    full = correct[:, -1].sum()
    per_pair_share = correct / np.maximum(correct[:, -1:], 1)
    return {
        "set": name, "keypoints": keypoints, "pairs": len(pairs),
        "correct_mean": correct.mean(0).tolist(),
        "share_of_full": (correct.sum(0) / max(full, 1)).tolist(),
        "share_of_full_p10": np.quantile(per_pair_share, 0.1, axis=0).tolist(),
        "matches_mean": np.stack([p["matches"] for p in pairs]).mean(0).tolist(),
        "sure_median": [statistics.median(p["sure"][i] for p in pairs) for i in range(len(pairs[0]["sure"]))],
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for row in rows:
        layers = np.arange(1, len(row["share_of_full"]) + 1)
        axes[0].plot(layers, row["share_of_full"], marker="o", label=f"{row['set']} ({row['keypoints']} kp)")
        axes[1].plot(layers[:-1], row["sure_median"], marker="o", label=row["set"])
    axes[0].axhline(0.98, color="grey", linestyle="--", linewidth=1)
    axes[0].set(xlabel="exit after layer", ylabel="share of full depth's correct matches", ylim=(0, 1.02))
    axes[1].set(xlabel="after layer (threshold of the schedule in force)", ylabel="median share of sure points",
                ylim=(0, 1.02))
    for ax in axes:
        ax.set_xticks(np.arange(1, len(rows[0]["share_of_full"]) + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(path, fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", default="sift+lightglue-cpu")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--sets", nargs="+", default=["scenes_calib=2048", "video_calib=1024"],
                        help=f"name=keypoints; names: {', '.join(SETS)}")
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "train_photos",
                        help="the training recipe's photos (scene textures; the held-out split is used)")
    parser.add_argument("--max_pairs", type=int, default=None, help="only the first N pairs of each set")
    parser.add_argument("--out", type=Path, default=Path("outputs/layer_accuracy"))
    args = parser.parse_args()
    rows = []
    for item in args.sets:
        name, _, keypoints = item.partition("=")
        if name not in SETS:
            raise SystemExit(f"--sets: unknown set {name!r}; known: {', '.join(SETS)}")
        rows.append(run_set(args, name, int(keypoints or 2048)))
    n_layers = len(rows[0]["share_of_full"])
    print("\n| set | " + " | ".join(f"layer {i + 1}" for i in range(n_layers)) + " |")
    print("|---|" + "---|" * n_layers)
    for row in rows:
        cells = [f"{c:.1f} ({s:.1%}, p10 {q:.1%})" for c, s, q in
                 zip(row["correct_mean"], row["share_of_full"], row["share_of_full_p10"], strict=True)]
        print(f"| {row['set']} {row['keypoints']} kp, correct | " + " | ".join(cells) + " |")
        print(f"| {row['set']}, median share sure | " + " | ".join(f"{s:.3f}" for s in row["sure_median"]) + " | - |")
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(args.out / "layer_accuracy.json", rows)
    plot(rows, args.out / "layer_accuracy.png")
    print(f"\nwrote {args.out / 'layer_accuracy.json'} and layer_accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
