"""Run times of SuperGlue (matching only, 640x480-like keypoints) and LoFTR (640x480 pair) on one device.

    python benchmarks/time_superglue_loftr.py [--reference /tmp/superglue_ref] [--device cpu]

Random weights (official ones cannot be assumed offline; the run time does not depend on the
values, except that LoFTR's fine stage runs once per coarse match: LoFTR matches a textured
image with itself at ``match_threshold 0``, where a random LoFTR keeps thousands of mutual nearest
neighbours, as a trained one does on a real pair). SuperGlue runs the official configuration (18 layers,
100 Sinkhorn iterations); with ``--reference`` (a checkout of
magicleap/SuperGluePretrainedNetwork) the reference implementation is timed on the same
input. Median of ``--repeat`` runs after one warm-up, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.datasets.synthetic import random_texture
from featmatch_core.models.dense.loftr import LoFTR
from featmatch_core.models.matchers.superglue import SuperGlue
from time_lightglue import timed


def median_ms(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    return statistics.median(timed(fn, device) for _ in range(repeat))


def superglue_input(n: int, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(n)
    size = torch.tensor([[640.0, 480.0]])
    return {f"image{i}": {"keypoints": (torch.rand(1, n, 2, generator=g) * size).to(device),
                          "descriptors": torch.nn.functional.normalize(torch.randn(1, n, 256, generator=g),
                                                                       dim=-1).to(device),
                          "keypoint_scores": torch.rand(1, n, generator=g).to(device),
                          "image_size": size.to(device)} for i in (0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=None,
                        help="checkout of magicleap/SuperGluePretrainedNetwork (optional)")
    parser.add_argument("--num-keypoints", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--loftr-repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    print(f"device {device}, torch threads {torch.get_num_threads()}")

    torch.manual_seed(0)
    ours = SuperGlue({"weights": None}).eval().to(device)
    reference = None
    if args.reference is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from verify_superglue_reference import build_reference, import_reference

        reference = build_reference(import_reference(args.reference), {}, 0).to(device)
        reference.load_state_dict(ours.state_dict())
    for n in args.num_keypoints:
        data = superglue_input(n, device)
        ours_ms = median_ms(lambda d=data: ours(d), args.repeat, device)
        line = f"SuperGlue {n} keypoints per image: ours {ours_ms:.0f} ms"
        if reference is not None:
            ref_data = {"keypoints0": data["image0"]["keypoints"], "keypoints1": data["image1"]["keypoints"],
                        "descriptors0": data["image0"]["descriptors"].transpose(1, 2),
                        "descriptors1": data["image1"]["descriptors"].transpose(1, 2),
                        "scores0": data["image0"]["keypoint_scores"], "scores1": data["image1"]["keypoint_scores"],
                        "image0": torch.empty(1, 1, 480, 640), "image1": torch.empty(1, 1, 480, 640)}
            line += f", reference {median_ms(lambda d=ref_data: reference(d), args.repeat, device):.0f} ms"
        print(line, flush=True)

    loftr = LoFTR({"weights": None, "resize": None, "match_threshold": 0.0}).eval().to(device)
    # the same textured image twice: identical features give a random LoFTR many mutual matches,
    # so that its fine stage runs as often as a trained one's on a real pair
    texture = torch.from_numpy(random_texture(480, 640, seed=0)).float().div(255)[None, None].to(device)
    images = {"image0": texture, "image1": texture.clone()}
    num_matches = len(loftr(images)["matches"][0])
    ms = median_ms(lambda: loftr(images), args.loftr_repeat, device)
    print(f"LoFTR 640x480 pair: {ms:.0f} ms ({num_matches} matches)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
