"""Time LightGlue on onnxruntime (CPU) against our PyTorch model in float32 and bf16, one process.

    python benchmarks/bench_onnx.py [--num-keypoints 512 1024 2048] [--repeat 5] [--adaptive]

Batch 1, random weights (the official 9-layer, 256-d architecture), random keypoints and
descriptors, all layers unless ``--adaptive``. The runs are interleaved (every runner once per
round) so that load from other processes affects them alike; the table gives the median and
the minimum over ``--repeat`` rounds after ``--warmup``, plus whether each runner's matches
equal PyTorch float32's (``same``: identical matches0, max |score difference|; every mutual
nearest neighbour counts, ``filter_threshold=0``). onnxruntime
gets as many intra-op threads as torch uses. ``ort colmap`` is the single fixed-depth graph,
``ort full`` the per-layer stages with the adaptive runner (``model.matcher.backend=onnx``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.export import export_lightglue  # noqa: I001
from featmatch_core.models.matchers.lightglue import LightGlue
from featmatch_core.models.matchers.onnx_runtime import OnnxLightGlue
from time_lightglue import random_pair

Runner = Callable[[dict], dict]


def build_runners(conf: dict, folder: Path) -> dict[str, Runner]:
    torch.manual_seed(0)
    model = LightGlue(conf).eval()

    def bf16(data: dict) -> dict:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(data)

    runners: dict[str, Runner] = {"torch fp32": model, "torch bf16": bf16}
    formats = ("full",) if conf.get("depth_confidence", 0.95) > 0 else ("colmap", "full")
    for fmt in formats:
        path = export_lightglue(model, folder / f"lightglue_{fmt}.onnx", fmt)
        runners[f"ort {fmt}"] = OnnxLightGlue({**conf, "onnx_file": str(path)})
    return runners


def overlapping_pair(n: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Two random images of ``n`` points whose second half of image 1 repeats (shuffled, with
    0.5 px noise) points of image 0, so that there is something to match."""
    data = random_pair(n, 256, seed)
    g = torch.Generator().manual_seed(seed + 1)
    picked, half = torch.randperm(n, generator=g)[: n // 2], n - n // 2
    for key in ("keypoints", "descriptors"):
        data["image1"][key][:, half:] = data["image0"][key][:, picked]
    data["image1"]["keypoints"][:, half:] += 0.5 * torch.randn(1, n // 2, 2, generator=g)
    return data


def agreement(reference: dict, other: dict) -> str:
    same = torch.equal(reference["matches0"], other["matches0"])
    delta = float((reference["matching_scores0"] - other["matching_scores0"]).abs().max())
    return f"{'yes' if same else 'NO'} ({delta:.0e})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-keypoints", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--adaptive", action="store_true", help="keep depth/width adaptivity on")
    parser.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0: torch's default)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # filter_threshold 0: random weights give low probabilities; compare every mutual neighbour
    conf = {"filter_threshold": 0.0, **({} if args.adaptive else {"depth_confidence": -1, "width_confidence": -1})}
    with tempfile.TemporaryDirectory() as folder:
        runners = build_runners(conf, Path(folder))
        print(f"threads: {torch.get_num_threads()}, adaptivity: {'on' if args.adaptive else 'off'}, "
              f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("| keypoints | " + " | ".join(f"{name} ms" for name in runners)
              + " | " + " | ".join(f"{name} same" for name in list(runners)[1:]) + " |")
        print("|---|" + "---|" * (2 * len(runners) - 1))
        for n in args.num_keypoints:
            data = overlapping_pair(n, seed=n)
            times: dict[str, list[float]] = {name: [] for name in runners}
            outputs: dict[str, dict] = {}
            for i in range(args.warmup + args.repeat):
                for name, run in runners.items():
                    start = time.perf_counter()
                    outputs[name] = run(data)
                    if i >= args.warmup:
                        times[name].append((time.perf_counter() - start) * 1e3)
            cells = [f"{statistics.median(t):.0f} ({min(t):.0f})" for t in times.values()]
            same = [agreement(outputs["torch fp32"], outputs[name]) for name in list(runners)[1:]]
            print(f"| {n} | " + " | ".join(cells + same) + " |", flush=True)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
