"""Relative pose and match correctness on consecutive frames of generated room sequences.

    python -m featmatch_core.eval.video --conf sift+lightglue-cpu [data.seeds=[10,11,12]]
        [data.num_frames=40] [data.step=0.06] [data.gap=1] [eval.estimator=poselib]

The pairs come from ``RoomVideoPairs`` (:mod:`featmatch_core.datasets.room`): frame i and i + gap
of a camera moving through a textured room, rendered with exact depth and poses, nothing read
from disk. Metrics as ``eval.scenes``: pose AUC@5/10/20 deg, and from the depth maps the
precision, recall and number of correct matches (reprojection error < ``eval.pos_th`` px). This
is where adaptive depth should save the most time: consecutive frames are easy pairs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

from ..datasets.room import RoomVideoPairs
from . import eth3d, runner, scenes

BENCHMARK = replace(eth3d.BENCHMARK, name="video", make_dataset=lambda conf: RoomVideoPairs(conf),
                    table_keys=scenes.TABLE_KEYS)


def main(argv: Sequence[str] | None = None) -> int:
    return runner.cli(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
