"""MegaDepth-1500 relative pose benchmark.

    python -m featmatch_core.eval.megadepth1500 --conf superpoint+lightglue [data.root=...]
        [eval.estimator=opencv|poselib|pycolmap] [eval.ransac_th=1.0 | -1 to sweep]

Metrics: pose error = max(rotation, translation-direction angle) with AUC at 5/10/20 deg and
mAA, epipolar precision (normalised, 1e-4), keypoints, matches, inliers, time.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..datasets.megadepth import MegaDepth1500
from . import runner
from .metrics import POSE_AUC_THRESHOLDS
from .two_view import evaluate_pose_pair

POSE_TABLE_KEYS = ("pose_error_auc@5", "pose_error_auc@10", "pose_error_auc@20", "pose_error_mAA",
                   "epipolar_precision@1e-4", "num_keypoints", "num_matches", "num_inliers", "inlier_ratio",
                   "ransac_th", "time_ms", "num_pairs")
POSE_SWEEP = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)

BENCHMARK = runner.Benchmark(
    name="megadepth1500",
    data_conf={},
    eval_conf={"estimator": "opencv", "ransac_th": 1.0},
    make_dataset=lambda conf: MegaDepth1500(conf),
    evaluate_pair=evaluate_pose_pair,
    auc_keys={"pose_error": POSE_AUC_THRESHOLDS},
    sweep=POSE_SWEEP,
    main_key="pose_error_auc_mean",
    table_keys=POSE_TABLE_KEYS,
)


def main(argv: Sequence[str] | None = None) -> int:
    return runner.cli(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
