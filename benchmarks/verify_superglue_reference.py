"""Check our SuperGlue against the reference implementation (magicleap/SuperGluePretrainedNetwork).

    python benchmarks/verify_superglue_reference.py --reference /tmp/superglue_ref

``--reference`` is a checkout of https://github.com/magicleap/SuperGluePretrainedNetwork; its
``models/superglue.py`` (it needs only torch) is imported at run time, nothing of it is part of
this repository. The reference constructor insists on loading ``weights/superglue_*.pth``,
which cannot be downloaded here, so it is built with that one load stubbed out; its seeded
random initialisation, with random BatchNorm statistics, is then the state dict that both
models load (ours through ``load_checkpoint_state_dict``, the path of an official checkpoint),
and both match the same synthetic pair in float32 and in float64.

Plain random weights give nearly uniform assignments and no match above the default
match_threshold, so the final projection is scaled up (:func:`calibrate`), identically for
both models.

Requirement: identical matches (matches0, matches1 and the mutual nearest neighbours below
the threshold) and, in float32, a |score difference| no larger than 1e-5 or than the
reference's own float32 error (against itself in float64), whichever is larger: sharp
assignments amplify rounding through 100 Sinkhorn iterations. The float64 columns separate
rounding from formula differences. Exits with status 1 if any row fails.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_code import import_source_file  # benchmarks/ is on sys.path as the script's folder
from featmatch_core.models.matchers.superglue import SuperGlue

SCORE_TOLERANCE = 1e-5
IMAGE_SIZE = (640, 480)  # (W, H)


def import_reference(checkout: Path) -> ModuleType:
    return import_source_file(checkout, "models/superglue.py", "reference_superglue",
                              "magicleap/SuperGluePretrainedNetwork")


def build_reference(reference: ModuleType, conf: dict, seed: int) -> torch.nn.Module:
    """The reference model with its own random initialisation (its weight file load stubbed out)."""
    torch.manual_seed(seed)
    with mock.patch.object(torch, "load", return_value={}), \
            mock.patch.object(reference.SuperGlue, "load_state_dict", return_value=None):
        model = reference.SuperGlue(conf)
    return model.eval()


def calibrate(state: dict[str, torch.Tensor], seed: int) -> None:
    """Random BatchNorm statistics (the initial ones are the identity) and a sharper final
    projection (x20), so that the assignment has confident matches; same change for both models."""
    g = torch.Generator().manual_seed(seed + 1)
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.copy_(torch.randn(value.shape, generator=g) * 0.1)
        elif key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=g) + 0.5)
    state["final_proj.weight"] *= 20.0


def synthetic_pair(n: int, dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Image 1: a shuffled, perturbed copy of image 0 with 25% of its points replaced by outliers."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor(IMAGE_SIZE, dtype=torch.float32)

    def random_points(count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keypoints = torch.rand(1, count, 2, generator=g) * size
        descriptors = torch.nn.functional.normalize(torch.randn(1, count, dim, generator=g), dim=-1)
        return keypoints, descriptors, torch.rand(1, count, generator=g)

    kpts0, desc0, scores0 = random_points(n)
    perm = torch.randperm(n, generator=g)
    kpts1 = kpts0[:, perm] + torch.randn(1, n, 2, generator=g) * 2.0
    desc1 = torch.nn.functional.normalize(desc0[:, perm] + 0.1 * torch.randn(1, n, dim, generator=g), dim=-1)
    scores1 = scores0[:, perm].clone()
    out_k, out_d, out_s = random_points(n // 4)
    kpts1[:, : n // 4], desc1[:, : n // 4], scores1[:, : n // 4] = out_k, out_d, out_s
    return {"keypoints0": kpts0, "descriptors0": desc0, "scores0": scores0,
            "keypoints1": kpts1, "descriptors1": desc1, "scores1": scores1}


def reference_input(pair: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's layout: channel-first descriptors; image tensors only give the size."""
    w, h = IMAGE_SIZE
    return {"keypoints0": pair["keypoints0"], "keypoints1": pair["keypoints1"],
            "descriptors0": pair["descriptors0"].transpose(1, 2), "descriptors1": pair["descriptors1"].transpose(1, 2),
            "scores0": pair["scores0"], "scores1": pair["scores1"],
            "image0": torch.empty(1, 1, h, w), "image1": torch.empty(1, 1, h, w)}


def our_input(pair: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    size = torch.tensor([IMAGE_SIZE], dtype=pair["keypoints0"].dtype)
    return {f"image{i}": {"keypoints": pair[f"keypoints{i}"], "descriptors": pair[f"descriptors{i}"],
                          "keypoint_scores": pair[f"scores{i}"], "image_size": size} for i in (0, 1)}


SCORE_KEYS = ("matching_scores0", "matching_scores1")


def max_score_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in SCORE_KEYS)


def same_matches(a: dict, b: dict) -> bool:
    return (all(torch.equal(a[k].long(), b[k].long()) for k in ("matches0", "matches1"))
            and all(torch.equal(a[k] > 0, b[k] > 0) for k in SCORE_KEYS))


def count_matches(out: dict) -> str:
    """'thresholded (mutual nearest neighbours)'."""
    return f"{int((out['matches0'] >= 0).sum())} ({int((out['matching_scores0'] > 0).sum())})"


def run_both(ref: torch.nn.Module, ours: torch.nn.Module, pair: dict[str, torch.Tensor],
             dtype: torch.dtype) -> tuple[dict, dict]:
    ref, ours = copy.deepcopy(ref).to(dtype), copy.deepcopy(ours).to(dtype)
    pair = {k: v.to(dtype) for k, v in pair.items()}
    return ref(reference_input(pair)), ours(our_input(pair))


def compare(reference: ModuleType, n: int, iterations: int, seed: int) -> dict:
    conf = {"sinkhorn_iterations": iterations}
    ref = build_reference(reference, conf, seed)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    calibrate(state, seed)
    ref.load_state_dict(state)
    ours = SuperGlue({"sinkhorn_iterations": iterations, "weights": None}).eval()
    ours.load_checkpoint_state_dict(state, origin="reference state dict")
    pair = synthetic_pair(n, 256, seed)
    with torch.inference_mode():
        a, b = run_both(ref, ours, pair, torch.float32)
        a64, b64 = run_both(ref, ours, pair, torch.float64)
    score_diff = max_score_difference(a, b)
    identical = same_matches(a, b)
    return {
        "matches": (count_matches(a), count_matches(b)),
        "identical": identical,
        "score_diff": score_diff,
        "ref_noise": max_score_difference(a, a64),
        "identical64": same_matches(a64, b64),
        "diff64": max_score_difference(a64, b64),
        "ok": identical and score_diff <= max(SCORE_TOLERANCE, max_score_difference(a, a64)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="checkout of magicleap/SuperGluePretrainedNetwork")
    parser.add_argument("--num-keypoints", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--sinkhorn-iterations", type=int, nargs="+", default=[100, 20])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reference = import_reference(args.reference)
    torch.set_grad_enabled(False)

    columns = ["kpts", "sinkhorn iters", "matches (mutual) ref/ours", "identical (fp32)", "max |d score| fp32",
               "ref fp32 error", "identical (fp64)", "max |d score| fp64", "ok"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
    all_ok = True
    for n in args.num_keypoints:
        for iterations in args.sinkhorn_iterations:
            r = compare(reference, n, iterations, args.seed)
            all_ok &= r["ok"]
            cells = [str(n), str(iterations), "{}/{}".format(*r["matches"]), str(r["identical"]),
                     f"{r['score_diff']:.1e}", f"{r['ref_noise']:.1e}", str(r["identical64"]),
                     f"{r['diff64']:.1e}", "yes" if r["ok"] else "NO"]
            row = " | ".join(f"{c:>{len(h)}}" for c, h in zip(cells, columns, strict=True))
            print(f"| {row} |", flush=True)
    print("all settings agree" if all_ok else "MISMATCH: see rows marked NO")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
