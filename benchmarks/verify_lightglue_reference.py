"""Check our LightGlue against the reference implementation (cvg/LightGlue) on identical weights.

    python benchmarks/verify_lightglue_reference.py --reference /tmp/lightglue_ref

``--reference`` is a checkout of https://github.com/cvg/LightGlue; its ``lightglue/lightglue.py``
is imported at run time (nothing of it is part of this repository). For each setting the
reference model is built with ``features=None`` (no download) and its own seeded random
initialisation, its state dict is converted to the layout of the officially released
checkpoints (flat ``self_attn.{i}`` / ``cross_attn.{i}`` keys) and loaded into ours with
``load_checkpoint_state_dict``; both then match the same synthetic pair in float32.

Plain random weights give no match above the default filter_threshold and never trigger
adaptivity (all confidences are near 0.5), so the assignment and confidence heads are
rescaled (:func:`calibrate`), identically in both models, to give real matches and, with
adaptivity on, pruning at every layer and an early exit.

Requirement: in float32, identical matches (matches0, matches1, matches, and the mutual
nearest neighbours before the filter_threshold), the same exit layer and pruned points, and
|score difference| <= 1e-5. For scale, the table also gives the reference's own float32
error (against itself in float64) and the difference of the two implementations when both
run in float64, which separates rounding from formula differences. The reference cannot run
in float64 once it prunes, so those cells are n/a with adaptivity on.
Exits with status 1 if any row fails.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_code import import_source_file  # benchmarks/ is on sys.path as the script's folder
from featmatch_core.models.matchers.lightglue import LightGlue, to_release_layout

SETTINGS = {
    "superpoint-like": {"input_dim": 256, "add_scale_ori": False},
    "sift-like": {"input_dim": 128, "add_scale_ori": True},
}
SCORE_TOLERANCE = 1e-5


def import_reference(checkout: Path) -> ModuleType:
    """Import ``lightglue/lightglue.py`` alone (the package __init__ pulls in extractor deps)."""
    return import_source_file(checkout, "lightglue/lightglue.py", "reference_lightglue", "cvg/LightGlue")


def calibrate(state: dict[str, torch.Tensor], n_layers: int) -> None:
    """Make random heads behave a little like trained ones (same change for both models).

    Sharper similarities (final_proj x2) and a wide matchability spread give matches above
    the default filter_threshold; confidence growing with depth (and spread) makes the
    adaptive rows prune points at every layer and exit early.
    """
    for i in range(n_layers):
        state[f"log_assignment.{i}.final_proj.weight"] *= 2.0
        state[f"log_assignment.{i}.final_proj.bias"] *= 2.0
        state[f"log_assignment.{i}.matchability.weight"] *= 20.0
        state[f"log_assignment.{i}.matchability.bias"] += 8.0
    for i in range(n_layers - 1):
        state[f"token_confidence.{i}.token.0.weight"] *= 5.0
        state[f"token_confidence.{i}.token.0.bias"] += 0.5 * i - 1.0


def synthetic_pair(n: int, dim: int, scale_ori: bool, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Image 1 is a shuffled, perturbed copy of image 0 with 25% of its points replaced by outliers."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([[1024.0, 768.0]])

    def random_points(count: int) -> dict[str, torch.Tensor]:
        feats = {
            "keypoints": torch.rand(1, count, 2, generator=g) * size,
            "descriptors": torch.nn.functional.normalize(torch.randn(1, count, dim, generator=g), dim=-1),
            "image_size": size.clone(),
        }
        if scale_ori:
            feats["scales"] = torch.rand(1, count, generator=g) * 8 + 1
            feats["oris"] = (torch.rand(1, count, generator=g) * 2 - 1) * torch.pi
        return feats

    image0 = random_points(n)
    perm = torch.randperm(n, generator=g)
    image1 = {k: (v[:, perm].clone() if k != "image_size" else v.clone()) for k, v in image0.items()}
    image1["keypoints"] += torch.randn(1, n, 2, generator=g) * 2.0
    image1["descriptors"] = torch.nn.functional.normalize(
        image1["descriptors"] + 0.1 * torch.randn(1, n, dim, generator=g), dim=-1)
    outliers = random_points(n // 4)
    for key, value in outliers.items():
        if key != "image_size":
            image1[key][:, : n // 4] = value
    return {"image0": image0, "image1": image1}


def pruned_layers(prune: torch.Tensor, survivors: int) -> torch.Tensor:
    """Layer index at which each point was pruned, ``-1`` for survivors."""
    return torch.where(prune.long() < survivors, prune.long(), torch.full_like(prune.long(), -1))


SCORE_KEYS = ("matching_scores0", "matching_scores1")


def max_score_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in SCORE_KEYS)


def same_matches(a: dict, b: dict) -> bool:
    """Same thresholded matches and the same mutual nearest neighbours (pairs with a score > 0)."""
    return (all(torch.equal(a[k], b[k]) for k in ("matches0", "matches1"))
            and all(torch.equal(x, y) for x, y in zip(a["matches"], b["matches"], strict=True))
            and all(torch.equal(a[k] > 0, b[k] > 0) for k in SCORE_KEYS))


def count_matches(out: dict) -> str:
    """'thresholded (mutual nearest neighbours)'."""
    return f"{int((out['matches0'] >= 0).sum())} ({int((out['matching_scores0'] > 0).sum())})"


def same_pruning(a: dict, b: dict, n_layers: int) -> bool:
    # the reference marks surviving points with the number of layers they ran through, we with n_layers
    return a["stop"] == b["stop"] and all(
        torch.equal(pruned_layers(a[key], a["stop"]), pruned_layers(b[key], n_layers))
        for key in ("prune0", "prune1"))


def in_float64(model: torch.nn.Module, data: dict) -> dict:
    data64 = {side: {k: v.double() for k, v in feats.items()} for side, feats in data.items()}
    return copy.deepcopy(model).double()(data64)


def compare(reference: ModuleType, setting: dict, adaptive: bool, n: int, seed: int) -> dict:
    conf = dict(setting)
    if not adaptive:
        conf.update(depth_confidence=-1, width_confidence=-1)
    torch.manual_seed(seed)
    ref = reference.LightGlue(features=None, **conf).eval()
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    calibrate(state, ref.conf.n_layers)
    ref.load_state_dict(state)
    ours = LightGlue(conf).eval()
    # exactly what a released *_lightglue.pth holds: no confidence_thresholds (a later buffer),
    # one unused log_assignment.{i}.r per layer (tests/fixtures/released_files.json)
    release = to_release_layout(state)
    release.pop("confidence_thresholds", None)
    release.update({f"log_assignment.{i}.r": torch.ones(1) for i in range(ref.conf.n_layers)})
    ours.load_checkpoint_state_dict(release, origin="reference (release layout)")
    n_layers = ours.conf.n_layers

    data = synthetic_pair(n, setting["input_dim"], setting["add_scale_ori"], seed)
    with torch.inference_mode():
        a, b = ref(data), ours(data)
        # the reference cannot run in float64 once it prunes (it scatters into float32 buffers)
        a64, b64 = (None, None) if adaptive else (in_float64(ref, data), in_float64(ours, data))
    matches_ok = same_matches(a, b)
    pruning_ok = same_pruning(a, b, n_layers)
    score_diff = max_score_difference(a, b)
    return {
        "stop": (a["stop"], b["stop"]),
        "pruned": (sum(int((pruned_layers(a[f"prune{i}"], a["stop"]) >= 0).sum()) for i in (0, 1)),
                   int(b["num_pruned0"] + b["num_pruned1"])),
        "matches": (count_matches(a), count_matches(b)),
        "same_matches": matches_ok and pruning_ok,
        "score_diff": score_diff,
        "ref_noise": None if a64 is None else f"{max_score_difference(a, a64):.1e}",
        "diff64": None if a64 is None else f"{max_score_difference(a64, b64):.1e}",
        "same64": None if a64 is None else same_matches(a64, b64) and same_pruning(a64, b64, n_layers),
        "ok": matches_ok and pruning_ok and score_diff <= SCORE_TOLERANCE,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of cvg/LightGlue")
    parser.add_argument("--num-keypoints", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reference = import_reference(args.reference)
    torch.set_grad_enabled(False)

    columns = ["setting", "kpts", "adaptivity", "stop ref/ours", "pruned ref/ours",
               "matches (mutual) ref/ours", "identical (fp32)", "max |d score| fp32", "ref fp32 error",
               "identical (fp64)", "max |d score| fp64", "ok"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
    all_ok = True
    for name, setting in SETTINGS.items():
        for n in args.num_keypoints:
            for adaptive in (False, True):
                r = compare(reference, setting, adaptive, n, args.seed)
                all_ok &= r["ok"]
                cells = [name, str(n), "on" if adaptive else "off", "{}/{}".format(*r["stop"]),
                         "{}/{}".format(*r["pruned"]), "{}/{}".format(*r["matches"]), str(r["same_matches"]),
                         f"{r['score_diff']:.1e}", str(r["ref_noise"] or "n/a"), str(r["same64"] or "n/a"),
                         str(r["diff64"] or "n/a"),
                         "yes" if r["ok"] else "NO"]
                row = " | ".join(f"{c:>{len(h)}}" for c, h in zip(cells, columns, strict=True))
                print(f"| {row} |", flush=True)
    print("all settings agree" if all_ok else "MISMATCH: see rows marked NO")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
