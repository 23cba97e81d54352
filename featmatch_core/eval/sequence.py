"""Relative pose benchmark on a posed sequence (images + depth + poses + intrinsics).

    python -m featmatch_core.eval.sequence --conf sift+nn data.root=../shared/data/castle_simu
        [data.pairs_from=gaps data.gaps=[1,2,4]] [eval.estimator=poselib] [eval.ransac_th=-1]

Same metrics as MegaDepth-1500. Results go to outputs/results/sequence_<folder name>/.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..config import ConfigError
from ..datasets.posed_sequence import PosedSequence
from . import runner
from .megadepth1500 import POSE_SWEEP, POSE_TABLE_KEYS
from .metrics import POSE_AUC_THRESHOLDS
from .two_view import evaluate_pose_pair

BENCHMARK = runner.Benchmark(
    name="sequence",
    data_conf={"load_depth": False},  # pose metrics need no depth; skip reading it
    eval_conf={"estimator": "opencv", "ransac_th": 1.0},
    make_dataset=lambda conf: PosedSequence(conf),
    evaluate_pair=evaluate_pose_pair,
    auc_keys={"pose_error": POSE_AUC_THRESHOLDS},
    sweep=POSE_SWEEP,
    main_key="pose_error_auc_mean",
    table_keys=POSE_TABLE_KEYS,
)


def _sequence_name(argv: Sequence[str]) -> str:
    roots = [a.split("=", 1)[1] for a in argv if a.startswith("data.root=")]
    if not roots:
        raise ConfigError("eval.sequence needs data.root=PATH (a folder with images/, poses/, K.txt)")
    return Path(roots[-1]).expanduser().resolve().name


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        bench = replace(BENCHMARK, name=f"sequence_{_sequence_name(argv)}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return runner.cli(bench, argv)


if __name__ == "__main__":
    sys.exit(main())
