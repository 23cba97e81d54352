"""Accuracy and run time of the point+line homography estimator on synthetic correspondences.

    python benchmarks/point_line_homography.py [--num 50] [--outlier_ratio 0.4] [--out outputs/benchmarks/...]

For each of ``--num`` random homographies (image corners of 640x480 moved by up to 20 %),
points and line segments are generated as in tests/core/test_point_line_homography.py
(0.5 px noise; segment endpoints of image 1 slid along the line, so only the lines
correspond), ``--outlier_ratio`` of them replaced by random ones. Scenarios: points only,
lines only, a mix, and sparse points with and without lines; the point-only estimators
(OpenCV USAC-MAGSAC, PoseLib) see the points of the same scenes. Reports the median corner
error (pixels), failures (no model or corner error > 10 px) and the median run time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from featmatch_core.estimators import get_estimator
from featmatch_core.files import save_json
from featmatch_core.geometry.homography import corner_error

# the scene generators of the tests, so that the benchmark measures what the tests check
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))
from test_point_line_homography import SIZE, points_scene, random_homography, segments_scene  # noqa: E402

SCENARIOS = {  # name: (points, lines)
    "points only (100 pts)": (100, 0),
    "lines only (100 lines)": (0, 100),
    "mixed (50 pts + 50 lines)": (50, 50),
    "sparse points (8 pts)": (8, 0),
    "sparse points + lines (8 pts + 40 lines)": (8, 40),
}
ESTIMATORS = ("point_line", "opencv", "poselib")


def run(name: str, num_points: int, num_lines: int, num: int, outlier_ratio: float, th: float) -> dict[str, float]:
    estimator = get_estimator("homography", {"name": name, "ransac_th": th})
    errors, times = [], []
    for i in range(num):
        rng = np.random.default_rng(1000 + i)
        H = random_homography(rng)
        p0, p1, _ = points_scene(H, num_points, rng, outlier_ratio=outlier_ratio)
        l0, l1, _ = segments_scene(H, num_lines, rng, outlier_ratio=outlier_ratio)
        data = {"m_kpts0": p0, "m_kpts1": p1}
        if name == "point_line":
            data.update(m_lines0=l0, m_lines1=l1)
        start = time.perf_counter()
        result = estimator(data)
        times.append(1000 * (time.perf_counter() - start))
        errors.append(corner_error(result["model"], H, SIZE) if result["success"] else np.inf)
    errors = np.asarray(errors)
    return {"median_corner_error": float(np.median(errors)), "failures": int((errors > 10).sum()),
            "median_ms": float(np.median(times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=50)
    parser.add_argument("--outlier_ratio", type=float, default=0.4)
    parser.add_argument("--ransac_th", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/point_line_homography.json"))
    args = parser.parse_args()
    rows = []
    print(f"{args.num} random homographies, {args.outlier_ratio:.0%} outliers, 0.5 px noise, "
          f"ransac_th {args.ransac_th} px")
    print("| scenario | estimator | median corner error (px) | failures | median time (ms) |\n|---|---|---|---|---|")
    for scenario, (num_points, num_lines) in SCENARIOS.items():
        for name in ESTIMATORS:
            if name != "point_line" and num_points == 0:
                continue  # nothing for a point-only estimator
            stats = run(name, num_points, num_lines, args.num, args.outlier_ratio, args.ransac_th)
            label = name if name == "point_line" else f"{name} (points only)"
            rows.append({"scenario": scenario, "estimator": label, **stats})
            print(f"| {scenario} | {label} | {stats['median_corner_error']:.3f} | {stats['failures']}/{args.num} | "
                  f"{stats['median_ms']:.1f} |", flush=True)
    save_json(args.out, {"num": args.num, "outlier_ratio": args.outlier_ratio, "ransac_th": args.ransac_th,
                         "rows": rows})


if __name__ == "__main__":
    main()
