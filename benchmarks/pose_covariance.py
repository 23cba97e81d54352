"""Is the node's relative-pose covariance right? Its error against the ground truth, normalised.

    python benchmarks/pose_covariance.py [--frames 40] [--conf sift+lightglue]
        [--sequence ../shared/data/castle_simu]

Runs the node's core (``FrameMatcher``, node defaults) over the generated room (640x480, 6 cm
per frame, exact depth) or a posed sequence with depth, once per pose model: PnP on the depth
(the default), the homography or the essential matrix scaled by the depth. For every pose it
takes the published ``relative_pose`` (the current camera in the reference one, ROS
covariance: position, then rotation about the reference's axes) and its error against the
ground truth, ``delta = (p - p_gt, rotvec(R R_gt^T))``, and the normalised squared error
``delta^T C^-1 delta``. A covariance that is right gives a mean of 6 (the degrees of freedom),
95 % of the poses under 12.59 (chi-square, 6 degrees of freedom, 95 %). Beside it, the same
for the covariance the node published before (an isotropic guess: (threshold / focal)^2 over
the inlier count, for the rotation and, times the scale squared, the position).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightglue_ros import conversions as cv  # noqa: E402
from lightglue_ros.frame_matcher import FrameMatcher  # noqa: E402
from lightglue_ros.make_bag import bag_topics, frame_messages, sequence_frames, synthetic_frames  # noqa: E402
from pose_from_depth import MODES  # noqa: E402  (benchmarks/ is on sys.path as the script's folder)

CHI2_6DOF_95 = 12.59


def ros_error(T_ref_cur: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    position = T_ref_cur[:3, 3] - T_gt[:3, 3]
    rotation = Rotation.from_matrix(T_ref_cur[:3, :3] @ T_gt[:3, :3].T).as_rotvec()
    return np.concatenate([position, rotation])


def isotropic_guess(record: dict, K: np.ndarray, ransac_px: float) -> np.ndarray:
    """The covariance the node published before this benchmark existed, for comparison."""
    var_rot = (ransac_px / float(np.mean(np.diag(K)[:2]))) ** 2 / max(record["inliers"], 1)
    return np.diag([var_rot * record["scale"] ** 2] * 3 + [var_rot] * 3)


def nees(errors: list[np.ndarray], covariances: list[np.ndarray]) -> np.ndarray:
    return np.array([e @ np.linalg.solve(c, e) for e, c in zip(errors, covariances, strict=True)])


def run(frames: list, conf: str, params: dict) -> dict[str, np.ndarray]:
    types = cv.rosbags_types()
    extractor, matcher_name = conf.split("+", 1)
    matcher = FrameMatcher({"extractor": extractor, "matcher": matcher_name, **params})
    topics = bag_topics("camera")
    by_stamp = {frame.stamp_ns: frame for frame in frames}
    errors, published, guessed, models = [], [], [], []
    for frame in frames:
        msgs = {topic: msg for topic, _, _, msg in frame_messages(frame, types, topics, "camera_optical", None)}
        result = matcher.process(msgs[topics["image"]], msgs.get(topics["info"]), msgs.get(topics["depth"]))
        if result.relative_pose is None:
            continue
        reference = by_stamp[result.record["ref_stamp_ns"]]
        T_gt = np.linalg.inv(reference.T_world_cam) @ frame.T_world_cam  # current camera in the reference
        errors.append(ros_error(result.relative_pose.T_ref_cur, T_gt))
        published.append(result.relative_pose.covariance)
        guessed.append(isotropic_guess(result.record, frame.K, matcher.params["ransac_threshold"]))
        models.append(result.record["pose_model"])
    return {"published": nees(errors, published), "guessed": nees(errors, guessed), "models": np.array(models)}


def row(name: str, values: np.ndarray) -> str:
    return (f"{name} | {np.mean(values):.1f} | {np.median(values):.1f} | "
            f"{100 * np.mean(values < CHI2_6DOF_95):.0f} %")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--conf", default="sift+lightglue")
    parser.add_argument("--sequence", type=Path, default=None, help="a posed sequence with depth (castle_simu layout)")
    args = parser.parse_args(argv)
    if args.sequence is not None:
        frames = list(sequence_frames(args.sequence, fps=10.0, start_ns=10**9, with_depth=True))[: args.frames]
        source = args.sequence.name
    else:
        frames = list(synthetic_frames(args.frames, 640, 480, fps=10.0, seed=0, step=0.06))
        source = "the generated room, 6 cm per frame"
    lines = []
    for mode, params in tqdm(MODES.items(), desc="pose models", unit="model"):
        out = run(frames, args.conf, params)
        used = ", ".join(f"{m} {n}" for m, n in zip(*np.unique(out["models"], return_counts=True), strict=True))
        lines.append(f"| {mode} ({used}) | " + row("published", out["published"]) + " |")
        lines.append(f"| {mode} | " + row("isotropic guess (before)", out["guessed"]) + " |")
    print(f"\n{len(frames)} frames of {source}, {args.conf}, node defaults; normalised squared error "
          f"of the relative pose (ideal: mean 6, 95 % under {CHI2_6DOF_95})\n")
    print("| pose model (poses by) | covariance | mean | median | under 12.59 |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
