"""Count what one LightGlue call asks of the host: operator launches and device reads (syncs).

    python benchmarks/lightglue_launches.py --num-keypoints 512 1024 2048

On a GPU a small LightGlue pass is bound by these, not by arithmetic: every operator is a kernel
launch of several microseconds and every read of a device value stalls the host. This counts,
on the CPU (no GPU needed), the aten operators of one call and the reads, for the dynamic pass
and for the static pass, whose steps CUDA replays as graphs (one launch each). Batch 1, random
weights (256-d, 9 layers unless ``--dim`` / ``--layers``), adaptivity as configured
(``--adaptive``: the paper's, random weights rarely exit; default all layers).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.models.matchers.lightglue import LightGlue  # noqa: I001
from time_lightglue import random_pair

READS = ("__bool__", "__int__", "__float__", "item", "tolist")
DATA_DEPENDENT = (torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
                  torch.ops.aten.where.default)  # where(condition): nonzero, as inference mode dispatches it


class Counter(TorchDispatchMode):
    """aten operators outside the static pass's steps (``kernels``: those that are not views),
    steps run, and reads of device values."""

    def __init__(self) -> None:
        super().__init__()
        self.operators = self.kernels = self.reads = self.steps = 0
        self.in_step = False
        self.originals: dict[str, Callable] = {}

    def __enter__(self) -> Counter:
        for name in READS:
            original = self.originals[name] = getattr(torch.Tensor, name)

            def counted(tensor, *args, original=original, **kwargs):
                self.reads += not self.in_step
                return original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_step:
            self.operators += 1
            self.kernels += not func.is_view
            self.reads += func in DATA_DEPENDENT
        return func(*args, **(kwargs or {}))

    def one_launch(self, step: Callable[[], None]) -> Callable[[], None]:
        """``step`` counted as one launch (a graph replay on CUDA), nothing inside it."""
        step = getattr(step, "original", step)  # wrapped for an earlier counter

        def counted_step() -> None:
            self.steps += 1
            self.in_step = True
            try:
                step()
            finally:
                self.in_step = False

        counted_step.original = step
        return counted_step

    def wrap_steps(self, model: LightGlue) -> None:
        """Count each static step as one launch (a graph replay on CUDA) and nothing inside it."""
        for static_pass in model._static_passes.passes.values():
            for name, step in list(static_pass.steps.items()):
                static_pass.steps[name] = self.one_launch(step)


def count(model: LightGlue, data: dict) -> Counter:
    with torch.inference_mode():
        model(data)  # builds the static pass
        counter = Counter()
        if model._static_passes is not None:
            counter.wrap_steps(model)
        with counter:
            model(data)
    return counter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-keypoints", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--adaptive", action="store_true")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=9)
    args = parser.parse_args()
    conf = {"input_dim": args.dim, "descriptor_dim": args.dim, "n_layers": args.layers}
    if not args.adaptive:
        conf.update(depth_confidence=-1, width_confidence=-1)
    torch.manual_seed(0)
    dynamic = LightGlue({**conf, "static_shapes": False}).eval()
    static = LightGlue({**conf, "static_shapes": True}).eval()
    static.load_state_dict(dynamic.state_dict())
    print(f"{args.dim}-d, {args.layers} layers, adaptivity {'on' if args.adaptive else 'off'}; per call:")
    print("| keypoints | dynamic: operators | dynamic: reads | static: operators outside steps | "
          "static: steps (graph launches) | static: reads |")
    print("|---|---|---|---|---|---|")
    for n in args.num_keypoints:
        data = random_pair(n, args.dim, seed=n)
        a, b = count(dynamic, data), count(static, data)
        print(f"| {n} | {a.operators} | {a.reads} | {b.operators} | {b.steps} | {b.reads} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
