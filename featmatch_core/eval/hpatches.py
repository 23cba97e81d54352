"""HPatches homography benchmark.

    python -m featmatch_core.eval.hpatches --conf sift+nn [--overwrite] [data.root=...]
        [eval.estimator=opencv|poselib|pycolmap|dlt|point_line] [eval.ransac_th=1.0 | -1 to sweep]
        [eval.line_estimator=point_line|none]

Metrics (Glue Factory's definitions): AUC of the corner error at 1/3/5 px for the robust
estimate and for the DLT on all matches, match precision at 1/3 px, keypoints, matches,
inliers, inlier ratio, time. Predictions with line segments (GlueStick) are estimated with
``eval.line_estimator`` (point_line: LO-RANSAC on points and lines; ``none`` keeps
``eval.estimator`` on points only) and add line match precision / recall (labels from the GT
homography), line counts and line inliers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..datasets.hpatches import HPatches
from . import runner
from .metrics import HOMOGRAPHY_AUC_THRESHOLDS
from .two_view import evaluate_homography_pair

BENCHMARK = runner.Benchmark(
    name="hpatches",
    data_conf={},
    eval_conf={"estimator": "opencv", "ransac_th": 1.0, "line_estimator": "point_line"},
    make_dataset=lambda conf: HPatches(conf),
    evaluate_pair=evaluate_homography_pair,
    auc_keys={"corner_error": HOMOGRAPHY_AUC_THRESHOLDS, "corner_error_dlt": HOMOGRAPHY_AUC_THRESHOLDS},
    sweep=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0),
    main_key="corner_error_auc_mean",
    table_keys=("corner_error_auc@1", "corner_error_auc@3", "corner_error_auc@5",
                "corner_error_dlt_auc@1", "corner_error_dlt_auc@3", "corner_error_dlt_auc@5",
                "precision@1px", "precision@3px", "correct@3px", "num_keypoints", "num_matches", "num_inliers",
                "line_precision", "line_recall", "num_line_matches",
                "ransac_th",
                "num_pairs"),
)


def main(argv: Sequence[str] | None = None) -> int:
    return runner.cli(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
