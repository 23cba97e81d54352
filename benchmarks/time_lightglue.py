"""Time our LightGlue (float32 and bf16/fp16 autocast) and optionally the reference, same harness.

On CUDA the columns are the reference (fp32 and its ``mp`` fp16), our dynamic pass (fp32) and our
default there, the static pass replayed as CUDA graphs (fp32, fp16, bf16); on the CPU our fp32
and bf16 autocast.

    python benchmarks/time_lightglue.py --reference /tmp/lightglue_ref --num-keypoints 512 1024 2048

Batch 1, random weights (identical in all models; ``--kornia`` adds kornia's port), all layers (adaptivity off unless
``--adaptive``), random keypoints; the size of the reference's models by default (256-d, 9 layers),
``--dim 128 --layers 6`` for the size of the bundled ``sift_lightglue_cpu``. Runs of the models are interleaved so
that load from other processes affects them alike; the table gives the median and the
minimum over ``--repeat`` runs after ``--warmup`` runs. Uses torch's default thread count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.models.matchers.lightglue import LightGlue, to_release_layout  # noqa: I001
from verify_lightglue_reference import import_reference


def random_pair(n: int, dim: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)

    def image() -> dict[str, torch.Tensor]:
        return {"keypoints": torch.rand(1, n, 2, generator=g) * torch.tensor([1024.0, 768.0]),
                "descriptors": torch.nn.functional.normalize(torch.randn(1, n, dim, generator=g), dim=-1),
                "image_size": torch.tensor([[1024.0, 768.0]])}

    return {"image0": image(), "image1": image()}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call, the device's queue empty before and after (shared by the
    time_* and bench_* scripts)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def milliseconds(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=None, help="checkout of cvg/LightGlue (optional)")
    parser.add_argument("--num-keypoints", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--adaptive", action="store_true", help="keep depth/width adaptivity on")
    parser.add_argument("--kornia", action="store_true", help="also time kornia.feature.LightGlue (fp32)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=256, help="descriptor and transformer width")
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--compile", action="store_true", help="CUDA: also the graphs of compiled steps (fp16)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    device = torch.device(args.device)

    conf = {} if args.adaptive else {"depth_confidence": -1, "width_confidence": -1}
    size = {"input_dim": args.dim, "descriptor_dim": args.dim, "n_layers": args.layers}
    torch.manual_seed(0)
    ours = LightGlue({**conf, **size}).eval().to(device)
    runners: dict[str, Callable[[dict], object]] = {}
    if args.reference is not None:
        reference = import_reference(args.reference).LightGlue(features=None, **conf, **size).eval().to(device)
        ours.load_checkpoint_state_dict(to_release_layout(reference.state_dict()))
        runners["reference fp32"] = reference
        if device.type == "cuda":  # the reference's own mixed precision (fp16 autocast in its layers)
            reference_mp = import_reference(args.reference).LightGlue(features=None, mp=True, **conf, **size)
            reference_mp.load_state_dict(reference.state_dict())
            runners["reference mp fp16"] = reference_mp.eval().to(device)
    if args.kornia:
        from kornia.feature import LightGlue as KorniaLightGlue

        kornia_model = KorniaLightGlue(features=None, **conf, **size).eval().to(device)
        if args.reference is not None:  # same weights for all (kornia keeps the reference's layout)
            kornia_model.load_state_dict(reference.state_dict())
        runners["kornia fp32"] = kornia_model

    def autocast(model: LightGlue, dtype: torch.dtype) -> Callable[[dict], object]:
        def run(data: dict) -> object:
            with torch.autocast(device.type, dtype=dtype):
                return model(data)
        return run

    if device.type == "cuda":  # the static pass (CUDA graphs) is the default there; the dynamic one for comparison
        dynamic = LightGlue({**conf, **size, "static_shapes": False}).eval().to(device)
        dynamic.load_state_dict(ours.state_dict())
        runners["ours dynamic fp32"] = dynamic
        runners["ours graphs fp32"] = ours
        runners["ours graphs fp16"] = autocast(ours, torch.float16)
        runners["ours graphs bf16"] = autocast(ours, torch.bfloat16)
        if args.compile:  # the layers through torch.compile before the capture
            compiled = LightGlue({**conf, **size, "static_compile": True}).eval().to(device)
            compiled.load_state_dict(ours.state_dict())
            runners["ours graphs+compile fp16"] = autocast(compiled, torch.float16)
    else:
        runners["ours fp32"] = ours
        runners["ours bf16 autocast"] = autocast(ours, torch.bfloat16)

    adaptivity = "on" if args.adaptive else "off"
    print(f"threads: {torch.get_num_threads()}, device: {device}, adaptivity: {adaptivity}, "
          f"{args.dim}-d, {args.layers} layers")
    print("| keypoints | " + " | ".join(f"{name} median (min) ms" for name in runners) + " |")
    print("|---|" + "---|" * len(runners))
    for n in args.num_keypoints:
        data = random_pair(n, args.dim, seed=n)
        data = {k: {kk: vv.to(device) for kk, vv in v.items()} for k, v in data.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for i in range(args.warmup + args.repeat):
            for name, run in runners.items():
                ms = timed(lambda run=run, data=data: run(data), device)
                if i >= args.warmup:
                    times[name].append(ms)
        cells = [f"{milliseconds(statistics.median(t))} ({milliseconds(min(t))})" for t in times.values()]
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)
    if device.type == "cuda":
        print_gpu_work(ours, args.num_keypoints, args.dim, device)
    return 0


def print_gpu_work(model: LightGlue, sizes: list[int], dim: int, device: torch.device) -> None:
    """Kernels and GPU time of one fp16 call of the static pass run eagerly: what a graph replay
    still executes (its floor), against the wall time measured above."""
    from torch.profiler import ProfilerActivity, profile

    eager = LightGlue({**dict(model.conf), "cuda_graphs": False}).eval().to(device)
    eager.load_state_dict(model.state_dict())
    print("| keypoints | kernels per call (static pass, fp16) | GPU kernel time ms |")
    print("|---|---|---|")
    for n in sizes:
        data = {k: {kk: vv.to(device) for kk, vv in v.items()} for k, v in random_pair(n, dim, seed=n).items()}
        with torch.autocast("cuda", dtype=torch.float16):
            eager(data)  # builds the pass
            torch.cuda.synchronize(device)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                eager(data)
                torch.cuda.synchronize(device)
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_us = sum(e.time_range.elapsed_us() for e in kernels)
        print(f"| {n} | {len(kernels)} | {busy_us / 1e3:.3f} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
