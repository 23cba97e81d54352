"""Time and accuracy of the node's pose stage per frame, by scene relief and pose model.

    python benchmarks/estimation_cost.py [--frames 30] [--matches 500] [--reliefs 0 0.25 1 2]

Draws two-view scenes like those of a camera stream (points 4 m in front of the camera, each
at a depth spread by ``relief`` times that distance; a motion of 1-2 deg and 5-10 cm between
the frames; 0.5 px of noise; 6 % of the matches wrong) and runs ``stages.estimate_relative_pose``
with the node's default estimators (``stages.pose_estimators``) as the node does:

- ``monocular``: the essential matrix and the plane check (a homography told the share of
  inliers it needs to count, ``min_inlier_ratio``);
- ``monocular, unbounded plane search``: the same with the homography's RANSAC running to its
  stopping rule or ``max_iters`` (the node before ``min_inlier_ratio``);
- ``essential only``: ``planar_homography`` false;
- ``pnp``: with the reference's depth (exact), the node's default where there is depth.

Prints per relief and case the median and 95th percentile of the stage's time, the pose models
it chose, and the median rotation and translation-direction errors against the truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.geometry.epipolar import relative_pose_error  # noqa: E402
from lightglue_ros import params as P  # noqa: E402
from lightglue_ros import stages as S  # noqa: E402

K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
SIZE = (640, 480)


class UnboundedPlaneSearch:
    """A homography estimator that ignores ``min_inlier_ratio`` (the node's former plane check)."""

    def __init__(self, estimator):
        self.estimator, self.conf = estimator, estimator.conf

    def __call__(self, data, min_inlier_ratio=None):
        return self.estimator(data)


def scene(rng: np.random.Generator, num: int, relief: float):
    """Matches (pixels of both frames), the reference's points with depth and the true pose."""
    depth = 4.0 * (1.0 + relief * rng.uniform(-0.5, 0.5, num))
    pixels0 = rng.uniform([0, 0], SIZE, (num, 2))
    X0 = S.bearings(pixels0, K) * depth[:, None]
    rvec = rng.normal(size=3)
    rvec *= np.deg2rad(rng.uniform(1, 2)) / np.linalg.norm(rvec)
    t = rng.normal(size=3)
    t *= rng.uniform(0.05, 0.10) / np.linalg.norm(t)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = cv2.Rodrigues(rvec)[0], t
    X1 = X0 @ T[:3, :3].T + t
    pixels1 = (X1 @ K.T)[:, :2] / X1[:, 2:] + rng.normal(0, 0.5, (num, 2))
    pixels0 = pixels0 + rng.normal(0, 0.5, (num, 2))
    wrong = rng.random(num) < 0.06
    pixels1[wrong] = rng.uniform([0, 0], SIZE, (int(wrong.sum()), 2))
    return pixels0, pixels1, S.DepthPoints(X0, np.ones(num, bool)), T


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30, help="scenes per relief")
    parser.add_argument("--matches", type=int, default=500)
    parser.add_argument("--reliefs", type=float, nargs="+", default=[0.0, 0.25, 1.0, 2.0])
    args = parser.parse_args(argv)
    params = P.defaults("matcher")
    node = S.pose_estimators(params)
    min_matches = params["min_matches"]
    cases = {
        "monocular": (node.homography, None),
        "monocular, unbounded plane search": (UnboundedPlaneSearch(node.homography), None),
        "essential only": (None, None),
        "pnp": (node.homography, node.absolute),
    }
    rows = []
    for relief in args.reliefs:
        rng = np.random.default_rng(0)
        scenes = [scene(rng, args.matches, relief) for _ in range(args.frames)]
        for name, (homography, absolute) in cases.items():
            times, models, errors = [], Counter(), []
            for pts0, pts1, lifted, T in tqdm(scenes, desc=f"relief {relief} {name}", leave=False):
                start = time.perf_counter()
                estimate = S.estimate_relative_pose(
                    pts0, pts1, K, node.essential, node.uncalibrated, min_matches,
                    lifted if absolute is not None else None, absolute, homography)
                times.append((time.perf_counter() - start) * 1e3)
                models[estimate.model] += 1
                if estimate.T_0to1 is not None:
                    errors.append(relative_pose_error(T, estimate.T_0to1[:3, :3], estimate.T_0to1[:3, 3]))
            rotation, translation = np.median(np.array(errors), axis=0) if errors else (np.nan, np.nan)
            rows.append((relief, name, np.percentile(times, 50), np.percentile(times, 95),
                         ", ".join(f"{m} {n}" for m, n in models.most_common()), rotation, translation))
    print(f"\n{args.frames} scenes per relief, {args.matches} matches, node defaults (estimator "
          f"{params['estimator']}, ransac_min_iterations {params['ransac_min_iterations']})\n")
    print("| relief | case | estimate p50 / p95 ms | pose models | rotation / translation error median, deg |")
    print("|---|---|---|---|---|")
    for relief, name, p50, p95, models, rotation, translation in rows:
        print(f"| {relief:g} | {name} | {p50:.2f} / {p95:.2f} | {models} | {rotation:.3f} / {translation:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
