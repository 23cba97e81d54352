"""The node's relative pose with and without PnP on the reference's depth, under depth noise.

    python benchmarks/pose_from_depth.py [--frames 40] [--conf sift+lightglue] [--step 0.06]

Renders the room sequence (640x480, known poses and exact depth), spoils each depth image as a
consumer RGB-D sensor would (noise of standard deviation ``k z^2`` metres, millimetre steps,
16x16-pixel holes at a given rate, no depth across depth edges), writes each case as a bag
(``make_bag``) and replays it through the node's core (``lightglue_ros.replay``, node
defaults) with three pose models: the essential matrix (``pose_from_depth`` and
``planar_homography`` false), the homography of the room's wall (``pose_from_depth`` false),
both scaled by the depth, and PnP on the depth (the default). Prints the replay's
relative-pose AUC against the ground truth, its median error and which model gave the poses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightglue_ros import replay  # noqa: E402
from lightglue_ros.make_bag import synthetic_frames, write_bag  # noqa: E402

HOLE_CELL = 16  # pixels
MODES = {  # the node parameters of each pose model (also benchmarks/pose_covariance.py's)
    "essential": {"pose_from_depth": False, "planar_homography": False},
    "planar": {"pose_from_depth": False},
    "pnp (default)": {},
}


def spoiled(depth: np.ndarray, rng: np.random.Generator, k: float, hole_rate: float) -> np.ndarray:
    """``depth`` with noise ``k z^2``, millimetre steps, square holes and no depth on its edges."""
    noisy = depth + rng.normal(0.0, 1.0, depth.shape) * k * depth**2
    noisy = np.round(noisy / 0.001) * 0.001
    h, w = depth.shape
    cells = rng.random((-(-h // HOLE_CELL), -(-w // HOLE_CELL))) < hole_rate
    holes = np.kron(cells, np.ones((HOLE_CELL, HOLE_CELL), bool))[:h, :w]
    gy, gx = np.gradient(depth)
    holes |= np.hypot(gx, gy) > 0.05  # a jump of 5 cm between neighbours: a depth edge
    noisy[holes] = 0.0
    return noisy.astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--step", type=float, default=0.06, help="camera motion per frame, metres")
    parser.add_argument("--conf", default="sift+lightglue", help="the replay's --conf")
    parser.add_argument("--noise", nargs="+", default=["0:0", "0.0015:0.1", "0.005:0.3"], metavar="K:HOLES",
                        help="depth noise k (sigma = k z^2 m) and hole rate per case")
    args = parser.parse_args(argv)
    cases = [(float(k), float(h)) for k, h in (case.split(":") for case in args.noise)]
    rng = np.random.default_rng(0)
    rows = []
    total = len(MODES) * len(cases)
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=total, desc="cases", unit="case") as progress:
        for k, hole_rate in cases:
            bag = Path(tmp) / f"room_{k:g}_{hole_rate:g}"
            frames = synthetic_frames(args.frames, 640, 480, fps=10.0, seed=0, step=args.step)
            spoilt = (dataclasses.replace(frame, depth=spoiled(frame.depth, rng, k, hole_rate)) for frame in frames)
            write_bag(spoilt, bag, total=args.frames)
            for mode, params in MODES.items():
                out = Path(tmp) / f"{bag.name}_{mode}"
                node_params = [arg for name, value in params.items() for arg in ("-p", f"{name}={str(value).lower()}")]
                replay.run(replay.parse_args([str(bag), "--conf", args.conf, *node_params,
                                              "--no-plots", "--no-bag", "--quiet", "--out-dir", str(out)]))
                summary = json.loads((out / "summary.json").read_text())
                used = ", ".join(f"{model} {count}" for model, count in summary["pose_models"].items())
                auc = " / ".join(f"{100 * summary[f'pose_auc@{t}']:.1f}" for t in (5, 10, 20))
                rows.append(f"| {k:g} z^2 | {hole_rate:.0%} | {mode} | {auc} | "
                            f"{summary['pose_error_median']:.2f} | {used} |")
                progress.update()
    print(f"\n{args.frames} frames 640x480, {args.step} m per frame, {args.conf}\n")
    print("| depth noise (m) | holes | parameters | AUC@5 / 10 / 20 % | median error (deg) | poses by |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
