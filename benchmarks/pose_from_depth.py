"""The node's relative pose with and without PnP on the reference's depth, under depth noise.

    python benchmarks/pose_from_depth.py [--frames 40] [--matcher lightglue|nn] [--step 0.06]

Renders the room sequence (640x480, known poses and exact depth), spoils each depth image as a
consumer RGB-D sensor would (noise of standard deviation ``k z^2`` metres, millimetre steps,
16x16-pixel holes at a given rate, no depth across depth edges), runs every frame through
``FrameMatcher`` (the node's core, its defaults) with ``pose_from_depth`` false (the essential
matrix, scaled by the depth) and true (PnP on the depth), and prints the relative-pose AUC
(error = max of the rotation and translation-direction angles, degrees) against the ground
truth, the median error, and which model gave the poses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.datasets import room  # noqa: E402
from featmatch_core.eval.metrics import pose_auc  # noqa: E402
from featmatch_core.geometry.epipolar import relative_pose_error  # noqa: E402
from lightglue_ros import conversions as cv  # noqa: E402
from lightglue_ros.frame_matcher import FrameMatcher  # noqa: E402

THRESHOLDS = (5.0, 10.0, 20.0)
HOLE_CELL = 16  # pixels


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


def run(frames, depths, values) -> tuple[list[float], list[str]]:
    """Pose errors (inf where no pose) and pose models of every frame after the first."""
    types = cv.rosbags_types()
    matcher = FrameMatcher(values)
    stamps = {f.stamp_ns: f for f in frames}
    errors, models = [], []
    for i, (frame, depth) in enumerate(zip(frames, depths, strict=True)):
        height, width = frame.image.shape[:2]
        header = cv.make_header(types, frame.stamp_ns, "camera")
        result = matcher.process(cv.numpy_to_image(types, frame.image, "mono8", header),
                                 cv.make_camera_info(types, header, width, height, frame.K),
                                 cv.numpy_to_image(types, depth, "32FC1", header))
        if i == 0:
            continue
        record = result.record
        if record.get("T_0to1") is None:
            errors.append(float("inf"))
            continue
        reference = stamps[record["ref_stamp_ns"]]
        T_gt = frame.T_cam_world @ np.linalg.inv(reference.T_cam_world)
        err_R, err_t = relative_pose_error(T_gt, record["T_0to1"][:3, :3], record["T_0to1"][:3, 3])
        errors.append(max(float(err_R), float(err_t)))
        models.append(record["pose_model"])
    return errors, models


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--step", type=float, default=0.06, help="camera motion per frame, metres")
    parser.add_argument("--matcher", default="lightglue", help="the node's 'matcher' (extractor: its default, SIFT)")
    parser.add_argument("--noise", nargs="+", default=["0:0", "0.0015:0.1", "0.005:0.3"], metavar="K:HOLES",
                        help="depth noise k (sigma = k z^2 m) and hole rate per case")
    args = parser.parse_args(argv)
    frames = room.sequence(args.frames, 640, 480, step=args.step, seed=0)
    rng = np.random.default_rng(0)
    rows = []
    cases = [(float(k), float(h)) for k, h in (case.split(":") for case in args.noise)]
    with tqdm(total=2 * len(cases), desc="cases", unit="case") as progress:
        for k, hole_rate in cases:
            depths = [spoiled(f.depth, rng, k, hole_rate) for f in frames]
            for from_depth in (False, True):
                errors, models = run(frames, depths, {"matcher": args.matcher, "pose_from_depth": from_depth})
                auc = pose_auc(errors, THRESHOLDS)
                used = ", ".join(f"{m} {models.count(m)}" for m in sorted(set(models)))
                rows.append(f"| {k:g} z^2 | {hole_rate:.0%} | {str(from_depth).lower()} | "
                            + " / ".join(f"{100 * a:.1f}" for a in auc)
                            + f" | {np.median(errors):.2f} | {used} |")
                progress.update()
    print(f"\n{args.frames} frames 640x480, {args.step} m per frame, matcher {args.matcher}\n")
    print("| depth noise (m) | holes | pose_from_depth | AUC@5 / 10 / 20 % | median error (deg) | poses by |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
