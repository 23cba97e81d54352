"""Relative pose and match correctness on held-out rendered 3D scenes (depth ground truth).

    python -m featmatch_core.eval.scenes --conf sift+nn data.root=../shared/data/train_photos
        [data.num_pairs=200] [data.first_pair=0] [eval.estimator=poselib] [eval.min_score=0.2]

The pairs come from ``SceneEvalPairs``: rooms with occluders, photo/generated/repeated textures,
two posed cameras, rendered with depth, from seeds that no training split uses, textured by the
photos the training recipe holds out (``data.root``; generated textures only without it).
``data.first_pair=1000`` gives a disjoint set for choosing thresholds.

Metrics as ETH3D: pose AUC@5/10/20 deg, and from the depth maps the precision, recall, number
of correct matches (reprojection error < ``eval.pos_th`` px) and AP of the point matches.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

from ..datasets.scenes import SceneEvalPairs
from . import eth3d, runner

TABLE_KEYS = ("point_correct", "point_precision", "point_recall", "point_AP", "pose_error_auc@5",
              "pose_error_auc@10", "pose_error_auc@20", "num_keypoints", "num_matches", "time_ms", "num_pairs")

BENCHMARK = replace(eth3d.BENCHMARK, name="scenes", make_dataset=lambda conf: SceneEvalPairs(conf),
                    table_keys=TABLE_KEYS)


def main(argv: Sequence[str] | None = None) -> int:
    return runner.cli(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
