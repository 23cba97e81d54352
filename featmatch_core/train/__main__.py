"""Train a model.

    python -m featmatch_core.train EXPERIMENT --conf training/<recipe>.yaml [key=value ...]
        [--restore] [--distributed] [--run_benchmarks]

Outputs go to outputs/training/EXPERIMENT/ (config.yaml, checkpoint_last.tar,
checkpoint_best.tar, metrics.csv, TensorBoard events). ``--restore`` continues the
experiment exactly from its latest checkpoint, with its saved config.yaml (a --conf file
and overrides given with --restore are merged on top of it, e.g. train.epochs=60).
``--distributed`` runs train.world_size processes (default: every GPU, or 2 on CPU).
``--run_benchmarks`` calls the train.run_benchmarks functions after each epoch.

Examples:
    python -m featmatch_core.train sp_lg_homography --conf training/<recipe>.yaml
    python -m featmatch_core.train sp_lg_homography --restore
    python -m featmatch_core.train toy_run model.name=toy data.name=toy train.epochs=3
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import ConfigError
from .checkpoints import CONFIG, CheckpointError
from .distributed import DistributedWorkerError
from .trainer import TRAINING_ROOT, NonFiniteLossError, check_experiment_dir, load_config, train


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m featmatch_core.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="name of the run: outputs go to outputs/training/EXPERIMENT/")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.lr=1e-4")
    parser.add_argument("--conf", type=Path, default=None,
                        help="training recipe (YAML with data, model, train)")
    parser.add_argument("--restore", action="store_true",
                        help="continue EXPERIMENT from its latest checkpoint")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over train.world_size processes (gloo on CPU, nccl on CUDA)")
    parser.add_argument("--run_benchmarks", action="store_true",
                        help="call the train.run_benchmarks functions after each epoch")
    args = parser.parse_intermixed_args(argv)
    if "/" in args.experiment or args.experiment in ("", ".", ".."):
        parser.error(f"EXPERIMENT must be a plain name, got '{args.experiment}'")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must be key=value, got {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    exp_dir = TRAINING_ROOT / args.experiment
    try:
        base = None
        if args.restore:
            if not (exp_dir / CONFIG).is_file():
                raise CheckpointError(f"--restore: no {CONFIG} in {exp_dir}")
            base = load_config(exp_dir / CONFIG)
        elif args.conf is None and not args.overrides:
            raise ConfigError("give a training recipe with --conf training/<recipe>.yaml")
        conf = load_config(args.conf, args.overrides, base=base)
        check_experiment_dir(exp_dir, args.restore)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with logging_redirect_tqdm():
            train(exp_dir, conf, restore=args.restore, distributed_run=args.distributed,
                  run_benchmarks=args.run_benchmarks)
    except (NonFiniteLossError, CheckpointError, ConfigError, FileNotFoundError,
            DistributedWorkerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
