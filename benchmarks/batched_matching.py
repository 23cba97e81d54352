"""Pairs per second of LightGlue matching one pair per call against padded batches (SfM on a GPU).

    python benchmarks/batched_matching.py [--device auto] [--precision auto] [--batches 1 8 32]
        [--keypoints 1024 2048] [--pairs 64] [--out outputs/benchmarks/batched_matching.json]

``Pipeline.match_features_batch`` at full depth (random weights, the reference's size: 256-d,
9 layers), on pairs whose images have 75-100 % of ``--keypoints`` points each, so that every
batch is padded. Batch 1 is ``match_features`` pair by pair. Each batch size runs once to warm
up, then over all ``--pairs`` pairs (timed with the device synchronised). Also checks that
every batch gives the pair-by-pair matches (``same matches``: share of pairs whose matches are
identical; under reduced precision a near-tie may flip). Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from featmatch_core.files import save_json  # noqa: E402
from featmatch_core.models.pipeline import Pipeline  # noqa: E402


def random_features(n: int, dim: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    descriptors = torch.nn.functional.normalize(torch.randn(1, n, dim, generator=generator), dim=-1)
    return {"keypoints": (torch.rand(1, n, 2, generator=generator) * torch.tensor([640.0, 480.0])).to(device),
            "keypoint_scores": torch.rand(1, n, generator=generator).to(device),
            "descriptors": descriptors.to(device),
            "image_size": torch.tensor([[640.0, 480.0]], device=device)}


def make_pairs(count: int, keypoints: int, dim: int, device: torch.device, seed: int = 0) -> list[tuple[dict, dict]]:
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(int(0.75 * keypoints), keypoints + 1, (count, 2), generator=generator).tolist()
    return [(random_features(n0, dim, generator, device), random_features(n1, dim, generator, device))
            for n0, n1 in sizes]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(pipeline: Pipeline, pairs: list, batch: int) -> tuple[float, list[np.ndarray]]:
    """(seconds for all pairs, matches of each pair)."""
    def one_pass() -> list[np.ndarray]:
        if batch == 1:
            return [pipeline.match_features(f0, f1).matches for f0, f1 in pairs]
        out = []
        for start in range(0, len(pairs), batch):
            out += [r.matches for r in pipeline.match_features_batch(pairs[start:start + batch])]
        return out

    one_pass()  # warm-up: kernels, allocator, autotuning
    sync(pipeline.device)
    start = time.perf_counter()
    matches = one_pass()
    sync(pipeline.device)
    return time.perf_counter() - start, matches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--keypoints", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/batched_matching.json"))
    args = parser.parse_args()

    conf = {"extractor": {"name": "superpoint", "weights": None},
            "matcher": {"name": "lightglue", "features": None, "input_dim": 256, "weights": None,
                        "depth_confidence": -1, "width_confidence": -1},
            "device": args.device, "precision": args.precision}
    pipeline = Pipeline.from_conf(conf, pretrained=False)
    if not pipeline.batches_pairs():
        raise SystemExit("batched_matching: the pipeline does not batch pairs (full-depth LightGlue expected)")
    print(f"device {pipeline.device}, precision {pipeline.conf.precision}, LightGlue 256-d 9 layers, "
          f"random weights, {args.pairs} pairs")
    rows = []
    for keypoints in args.keypoints:
        pairs = make_pairs(args.pairs, keypoints, 256, pipeline.device)
        reference = None
        for batch in args.batches:
            seconds, matches = run(pipeline, pairs, batch)
            if reference is None:
                reference = matches
            same = np.mean([np.array_equal(a, b) for a, b in zip(reference, matches, strict=True)])
            rows.append({"keypoints": keypoints, "batch": batch, "pairs_per_s": len(pairs) / seconds,
                         "ms_per_pair": 1e3 * seconds / len(pairs), "same_matches": float(same)})
    print("| keypoints (75-100 %) | batch | pairs/s | ms per pair | same matches as batch 1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['keypoints']} | {r['batch']} | {r['pairs_per_s']:.1f} | {r['ms_per_pair']:.2f} | "
              f"{r['same_matches']:.3f} |")
    save_json(args.out, {"device": str(pipeline.device), "precision": pipeline.conf.precision, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
