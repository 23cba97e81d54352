"""Homography benchmark on synthetic pairs of held-out photos (the pre-training data's test split).

    python -m featmatch_core.eval.homographies --conf sift+nn data.root=PHOTOS
        [data.num_pairs=200] [eval.estimator=opencv|poselib|pycolmap|dlt] [eval.ransac_th=1.0 | -1]

``data.root``, ``data.val_fraction``/``data.val_images`` and ``data.seed`` as in the training
recipe select the photos that training held out (see ``SyntheticHomographies``). Same metrics
as HPatches. Results go to outputs/results/homographies/.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

from ..datasets.homographies import SyntheticHomographies
from . import hpatches, runner

BENCHMARK = replace(hpatches.BENCHMARK, name="homographies", data_conf={},
                    make_dataset=lambda conf: SyntheticHomographies(conf))


def main(argv: Sequence[str] | None = None) -> int:
    return runner.cli(BENCHMARK, argv)


if __name__ == "__main__":
    sys.exit(main())
