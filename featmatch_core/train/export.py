"""Export a trained matcher from a training checkpoint as a plain state dict.

    python -m featmatch_core.train.export EXPERIMENT [--which best|last] \
        [--out featmatch_core/weights/sift_lightglue_cpu.pth]

The file holds only the matcher's tensors (the keys LightGlue's ``load_checkpoint_state_dict``
reads), so it loads like any other weights file: ``model.matcher.weights=PATH``. The export
is checked by loading it into a matcher built from the experiment's config, and written
atomically; its size and sha256 are printed for the model card / registry.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..files import atomic_write_bytes
from ..models import build_model
from .checkpoints import load_checkpoint
from .trainer import TRAINING_ROOT

MATCHER_PREFIX = "matcher."


def matcher_state_dict(model_state: dict) -> dict:
    state = {k[len(MATCHER_PREFIX):]: v.float().clone() for k, v in model_state.items()
             if k.startswith(MATCHER_PREFIX)}
    if not state:
        raise ValueError("the checkpoint has no 'matcher.*' tensors: not a two_view training checkpoint")
    return state


def export(experiment: str, which: str, out: Path, root: Path = TRAINING_ROOT) -> Path:
    exp_dir = root / experiment
    checkpoint = load_checkpoint(exp_dir / f"checkpoint_{which}.tar")
    state = matcher_state_dict(checkpoint["model"])
    conf = OmegaConf.load(exp_dir / "config.yaml")
    matcher_conf = {**OmegaConf.to_container(conf.model.matcher, resolve=True), "weights": None}
    matcher = build_model("matcher", matcher_conf, pretrained=False)
    matcher.load_checkpoint_state_dict(state, origin=str(exp_dir))  # refuses anything incomplete
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out, buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    print(f"exported {which} checkpoint of {experiment} (step {checkpoint.get('step')}, "
          f"epoch {checkpoint.get('epoch')}) to {out}: {len(buf.getvalue()) / 2**20:.2f} MiB, sha256 {digest}")
    print("matcher config: " + OmegaConf.to_yaml(OmegaConf.create(matcher_conf)).replace("\n", "; "))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featmatch_core.train.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--which", choices=("best", "last"), default="best")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--training_root", type=Path, default=TRAINING_ROOT)
    args = parser.parse_args(argv)
    export(args.experiment, args.which, args.out, args.training_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
