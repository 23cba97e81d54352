"""Time the project's SIFT against plain OpenCV SIFT on the same 640x480 image and keypoint budget.

    python benchmarks/time_sift.py [--images A.jpg B.png ...] [--num-keypoints 512 1024 2048]

"plain" is ``cv2.SIFT_create(nfeatures=k).detectAndCompute`` with OpenCV's defaults; "ours" is
``SIFT({"max_num_keypoints": k, "resize": None})`` end to end (COLMAP's thresholds, octave
range, one point per pixel, top-k, RootSIFT, tensors). Runs alternate between the two so that
load from other processes affects both alike; the table gives medians over ``--repeat`` runs
per image, one OpenCV/torch thread. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from featmatch_core.models.extractors.sift import SIFT  # noqa: E402

DEFAULT_IMAGES = [ROOT / "featmatch_core" / "assets" / "graffiti" / "1.png",
                  ROOT / "featmatch_core" / "assets" / "graffiti" / "2.png"]


def load_gray(path: Path) -> cv2.typing.MatLike:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise SystemExit(f"cannot read image {path}")
    return cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA)


def ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, nargs="+", default=DEFAULT_IMAGES)
    parser.add_argument("--num-keypoints", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "sift.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    images = [load_gray(p) for p in args.images]
    rows = []
    for k in args.num_keypoints:
        plain = cv2.SIFT_create(nfeatures=k)
        ours = SIFT({"max_num_keypoints": k, "resize": None})
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        counts, plain_counts = [], []
        for image in images:
            tensor = torch.from_numpy(image)[None, None].float() / 255
            # warm-up of both, and of our candidate budget
            plain_counts.append(len(plain.detectAndCompute(image, None)[0]))
            counts.append(int(ours({"image": tensor})["keypoints"].shape[1]))
            for _ in range(args.repeat):
                times["plain"].append(ms(lambda: plain.detectAndCompute(image, None)))  # noqa: B023
                times["ours"].append(ms(lambda: ours({"image": tensor})))  # noqa: B023
        plain_ms, ours_ms = statistics.median(times["plain"]), statistics.median(times["ours"])
        rows.append({"keypoints": k, "plain_ms": plain_ms, "ours_ms": ours_ms, "ratio": ours_ms / plain_ms,
                     "ours_keypoints_mean": statistics.mean(counts),
                     "plain_keypoints_mean": statistics.mean(plain_counts)})
    print(f"images: {', '.join(p.name for p in args.images)} at 640x480; one thread")
    # plain OpenCV's default threshold may find fewer points than the budget (and do less work)
    print("| keypoints | plain OpenCV ms | ours ms | ours / plain | plain keypoints | ours keypoints |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['keypoints']} | {r['plain_ms']:.0f} | {r['ours_ms']:.0f} | {r['ratio']:.2f} | "
              f"{r['plain_keypoints_mean']:.0f} | {r['ours_keypoints_mean']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"images": [str(p) for p in args.images], "rows": rows}, indent=1))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
