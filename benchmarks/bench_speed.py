"""Speed benchmark: feature extraction on 640x480 and LightGlue matching at 512/1024/2048 keypoints.

    python benchmarks/bench_speed.py [--repeats 5] [--out outputs/benchmarks/speed.json]
        [--devices cpu cuda] [--precisions fp32 bf16] [--extractors superpoint sift:kornia ...]
        [--keypoints 512 1024 2048] [--no-matching]

Every case runs in a fresh subprocess so that its peak memory is its own (CPU: peak RSS of
the process; CUDA: torch's peak allocated memory). Models use random weights (official
weights cannot be assumed offline), so "adaptive" measures LightGlue's adaptive-depth/width
bookkeeping on pairs where it does not exit early; with trained weights it exits earlier.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages, as every benchmark

EXTRACTORS = ["superpoint", "sift:opencv", "sift:pycolmap", "sift:torch", "sift:kornia", "aliked", "disk"]
KEYPOINTS = [512, 1024, 2048]


def _timed(fn, repeats: int, device) -> list[float]:
    from time_lightglue import timed  # torch is imported in the case's subprocess only

    fn()  # warm-up (allocations, kernels)
    return [timed(fn, device) for _ in range(repeats)]


def run_case(case: dict) -> dict:
    import torch

    from featmatch_core.datasets.synthetic import random_texture
    from featmatch_core.device import autocast
    from featmatch_core.image import to_tensor_image
    from featmatch_core.models import build_model
    from featmatch_core.models.extractors.base import autocast_allowed

    torch.manual_seed(0)
    device = torch.device(case["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if case["kind"] == "extract":
        name, _, backend = case["model"].partition(":")
        conf = {"name": name, "resize": None, "weights": None}
        if backend:
            conf["backend"] = backend
        if name in ("superpoint", "aliked", "disk", "sift"):
            conf["max_num_keypoints"] = 2048
        model = build_model("extractor", conf, pretrained=False).to(device).eval()
        image = to_tensor_image(random_texture(480, 640, seed=1)).to(device)
        precision = case["precision"] if autocast_allowed(model, device) else "fp32"

        def step():
            with torch.inference_mode(), autocast(device, precision):
                model({"image": image})
    else:
        n, dim = case["keypoints"], 256
        conf = {"name": "lightglue", "features": None, "input_dim": dim, "weights": None}
        if not case["adaptive"]:
            conf.update(depth_confidence=-1.0, width_confidence=-1.0)
        model = build_model("matcher", conf, pretrained=False).to(device).eval()
        gen = torch.Generator().manual_seed(0)

        def feats():
            kpts = torch.rand(1, n, 2, generator=gen) * torch.tensor([640.0, 480.0])
            desc = torch.nn.functional.normalize(torch.randn(1, n, dim, generator=gen), dim=-1)
            return {"keypoints": kpts.to(device), "descriptors": desc.to(device),
                    "image_size": torch.tensor([[640.0, 480.0]], device=device)}

        data = {"image0": feats(), "image1": feats()}

        def step():
            with torch.inference_mode(), autocast(device, case["precision"]):
                model(data)
    times = _timed(step, case["repeats"], device)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**case, "median_ms": statistics.median(times), "min_ms": min(times), "peak_mem_mb": peak_mb}


def cases(repeats: int, devices: list[str], precisions: list[str], extractors: list[str],
          keypoints: list[int]) -> list[dict]:
    out = []
    for device in devices:
        for precision in precisions:
            out += [{"kind": "extract", "model": m, "device": device, "precision": precision,
                     "repeats": repeats} for m in extractors]
            out += [{"kind": "match", "keypoints": n, "adaptive": a, "device": device,
                     "precision": precision, "repeats": repeats}
                    for n in keypoints for a in (False, True)]
    return out


def print_table(results: list[dict]) -> None:
    print(f"{'case':42s} {'device':6s} {'prec':5s} {'median ms':>10s} {'min ms':>8s} {'peak MB':>8s}")
    for r in results:
        if "error" in r:
            label = r.get("model") or f"lightglue n={r.get('keypoints')}"
            print(f"{label:42s} {r['device']:6s} {r['precision']:5s} error: {r['error']}")
            continue
        if r["kind"] == "extract":
            label = f"extract {r['model']} 640x480"
        else:
            label = f"lightglue {r['keypoints']} kpts {'adaptive' if r['adaptive'] else 'full depth'}"
        print(f"{label:42s} {r['device']:6s} {r['precision']:5s} {r['median_ms']:10.1f} "
              f"{r['min_ms']:8.1f} {r['peak_mem_mb']:8.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/speed.json"))
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--extractors", nargs="+", default=EXTRACTORS, help="NAME or NAME:BACKEND")
    parser.add_argument("--keypoints", nargs="+", type=int, default=KEYPOINTS, help="LightGlue point counts")
    parser.add_argument("--no-matching", dest="matching", action="store_false", help="extractors only")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0

    import torch
    from tqdm import tqdm

    from featmatch_core.files import save_json

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    keypoints = args.keypoints if args.matching else []
    results = []
    for case in tqdm(cases(args.repeats, devices, args.precisions, args.extractors, keypoints),
                     desc="benchmark cases"):
        proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            results.append({**case, "error": proc.stderr.strip().splitlines()[-1][:120]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print_table(results)
    save_json(args.out, {"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
