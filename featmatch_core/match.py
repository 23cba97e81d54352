"""Match two images and write a picture of the matches.

    python -m featmatch_core.match                              # bundled graffiti pair, sift+nn
    python -m featmatch_core.match IMG0 IMG1 --conf sift+lightglue model.matcher.depth_confidence=0.9

Prints keypoint/match counts and timings; with a ground-truth homography (given with
--homography, or the bundled pair's) also the RANSAC inliers and the corner error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from .config import ConfigError, list_named_configs, load_config
from .estimators.homography import opencv_homography
from .files import save_image
from .geometry.homography import corner_error
from .image import read_image
from .models.pipeline import Pipeline, TwoViewMatches
from .viz import draw_matches
from .weights import WeightsUnavailableError

DEFAULT_CONF = "sift+nn"


def bundled_pair() -> tuple[Path, Path, Path]:
    root = Path(str(resources.files("featmatch_core") / "assets" / "graffiti"))
    return root / "1.png", root / "2.png", root / "H_1_2"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m featmatch_core.match", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="IMG0 IMG1 (default: bundled graffiti pair), then "
                        "key=value overrides such as model.extractor.max_num_keypoints=1024")
    parser.add_argument("--conf", default=DEFAULT_CONF,
                        help=f"named config ({', '.join(list_named_configs())}) or a YAML path")
    parser.add_argument("--out", type=Path, default=None, help="match picture (default outputs/match/…png)")
    parser.add_argument("--homography", type=Path, default=None,
                        help="ground-truth 3x3 homography file mapping IMG0 to IMG1")
    parser.add_argument("--ransac_th", type=float, default=3.0, help="RANSAC threshold in pixels")
    parser.add_argument("--offline", action="store_true", help="never download weights")
    args = parser.parse_args(argv)
    args.overrides = [a for a in args.inputs if "=" in a]
    images = [a for a in args.inputs if "=" not in a]
    if len(images) not in (0, 2):
        parser.error(f"give two images or none (bundled pair), got {len(images)}: {images}")
    if images:
        args.image0, args.image1 = map(Path, images)
    else:
        args.image0, args.image1, bundled_h = bundled_pair()
        args.homography = args.homography or bundled_h
    return args


def report(pred: TwoViewMatches, H_gt: np.ndarray | None, size0: tuple[int, int],
           ransac_th: float) -> tuple[list[str], np.ndarray | None]:
    lines = [f"keypoints: {len(pred.keypoints0)} / {len(pred.keypoints1)}",
             f"matches:   {len(pred.matches)}"]
    if "stop_layer" in pred.info:
        lines.append(f"lightglue layers run: {pred.info['stop_layer']}")
    lines.append("timings:   " + ", ".join(f"{k} {v:.1f} ms" for k, v in pred.timings.items()))
    est = opencv_homography(pred.points0, pred.points1, threshold=ransac_th)
    inliers = est["inliers"] if est["success"] else None
    if est["success"]:
        lines.append(f"RANSAC inliers: {int(est['inliers'].sum())} ({ransac_th:g} px)")
    else:
        lines.append("RANSAC: failed (too few matches)")
    if H_gt is not None:
        err = corner_error(est["model"], H_gt, size0) if est["success"] else float("inf")
        lines.append(f"homography corner error vs ground truth: {err:.2f} px")
    return lines, inliers


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        conf = load_config(args.conf, args.overrides)
        pipe = Pipeline.from_conf(conf.model, download=not args.offline)
    except (ConfigError, WeightsUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    image0, image1 = read_image(args.image0), read_image(args.image1)
    pred = pipe.match(image0, image1)
    H_gt = np.loadtxt(args.homography) if args.homography else None
    lines, inliers = report(pred, H_gt, (image0.shape[1], image0.shape[0]), args.ransac_th)
    print(f"{args.image0.name} <-> {args.image1.name} with {args.conf} on {pipe.device}")
    print("\n".join("  " + line for line in lines))
    out = args.out or Path("outputs/match") / f"{args.image0.stem}_{args.image1.stem}_{Path(args.conf).stem}.png"
    title = f"{Path(args.conf).stem}: {len(pred.matches)} matches"
    if inliers is not None:
        title += f", {int(inliers.sum())} inliers"
    picture = draw_matches(image0, image1, pred.keypoints0, pred.keypoints1, pred.matches,
                           scores=pred.scores, correct=inliers, title=title)
    save_image(out, picture)
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
