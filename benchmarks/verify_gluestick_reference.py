"""Check our GlueStick against the reference implementation (cvg/GlueStick) on identical weights.

    python benchmarks/verify_gluestick_reference.py --reference /tmp/gluestick_ref

``--reference`` is a checkout of https://github.com/cvg/GlueStick (only its
``gluestick/models/gluestick.py`` and ``base_model.py`` are imported, at run time; nothing of it
is part of this repository). The reference model is built with its seeded random
initialisation, its batch-norm statistics and dustbin scores are randomised too, and its state
dict, wrapped as in the released ``checkpoint_GlueStick_MD.tar`` (``{"model": {"matcher.<key>":
...}}``), is loaded into ours with ``load_checkpoint_state_dict``. Both then match the same
synthetic wireframe pair (junctions first, then free keypoints, lines joining junctions) in
float32, in eval mode.

Random weights wash out the descriptors and put little mass on any match, so (identically in
both models) the residual updates are damped (last layer x 0.2) and the final projections scaled
by ``--sharpen``, to give real point and line matches.

Requirement: identical point and line matches (matches0/1, line_matches0/1) and
max |difference| of the log assignments and match scores <= 1e-4. Exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featmatch_core.models.matchers.gluestick import GlueStick

TOLERANCE = 1e-4
CASES = {  # name: (junctions, lines, free keypoints)
    "small": (12, 10, 30),
    "medium": (120, 100, 400),
    "large": (400, 250, 1000),
}


def import_reference(checkout: Path):
    if not (checkout / "gluestick" / "models" / "gluestick.py").is_file():
        raise SystemExit(f"{checkout} is not a checkout of cvg/GlueStick (no gluestick/models/gluestick.py)")
    sys.path.insert(0, str(checkout))
    from gluestick.models.gluestick import GlueStick as Reference

    return Reference


def wireframe_view(junctions: torch.Tensor, lines_idx: torch.Tensor, free: torch.Tensor, dim: int,
                   gen: torch.Generator) -> dict[str, torch.Tensor]:
    keypoints = torch.cat([junctions, free], 0)
    desc = torch.nn.functional.normalize(torch.randn(len(keypoints), dim, generator=gen), dim=-1)
    return {
        "keypoints": keypoints[None],
        "descriptors": desc[None],
        "keypoint_scores": torch.rand(1, len(keypoints), generator=gen),
        "image_size": torch.tensor([[640.0, 480.0]]),
        "lines": junctions[lines_idx][None],
        "lines_junc_idx": lines_idx[None],
        "line_scores": torch.rand(1, len(lines_idx), generator=gen),
    }


def synthetic_pair(num_junctions: int, num_lines: int, num_free: int, dim: int, seed: int) -> dict:
    """View 1 = view 0 moved a little, its descriptors noisy, its points and lines shuffled."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([640.0, 480.0])
    junctions = torch.rand(num_junctions, 2, generator=gen) * (size - 1)
    free = torch.rand(num_free, 2, generator=gen) * (size - 1)
    first = torch.randint(0, num_junctions, (num_lines,), generator=gen)
    step = torch.randint(1, num_junctions, (num_lines,), generator=gen)
    lines_idx = torch.stack([first, (first + step) % num_junctions], -1)  # two distinct junctions
    view0 = wireframe_view(junctions, lines_idx, free, dim, gen)

    perm_j = torch.randperm(num_junctions, generator=gen)
    perm_f = torch.randperm(num_free, generator=gen)
    inverse_j = torch.argsort(perm_j)
    perm_l = torch.randperm(num_lines, generator=gen)
    lines_idx1 = inverse_j[lines_idx][perm_l]
    flip = torch.rand(num_lines, generator=gen) < 0.5
    lines_idx1 = torch.where(flip[:, None], lines_idx1.flip(-1), lines_idx1)
    shift = torch.tensor([3.0, -2.0])
    view1 = wireframe_view((junctions[perm_j] + shift).clamp(0, 639), lines_idx1,
                           (free[perm_f] + shift).clamp(0, 479), dim, gen)
    order = torch.cat([perm_j, num_junctions + perm_f])
    noise = 0.3 * torch.randn(view1["descriptors"].shape, generator=gen)
    view1["descriptors"] = torch.nn.functional.normalize(view0["descriptors"][:, order] + noise, dim=-1)
    view1["keypoint_scores"] = view0["keypoint_scores"][:, order]
    view1["line_scores"] = view0["line_scores"][:, perm_l]
    return {"image0": view0, "image1": view1}


def reference_inputs(pair: dict) -> dict[str, torch.Tensor]:
    data = {}
    for i in (0, 1):
        view = pair[f"image{i}"]
        data.update({f"keypoints{i}": view["keypoints"], f"descriptors{i}": view["descriptors"].transpose(1, 2),
                     f"keypoint_scores{i}": view["keypoint_scores"], f"image_size{i}": view["image_size"],
                     f"lines{i}": view["lines"], f"lines_junc_idx{i}": view["lines_junc_idx"],
                     f"line_scores{i}": view["line_scores"]})
    return data


def randomise(model: torch.nn.Module, sharpen: float, seed: int) -> None:
    """Random batch-norm statistics and dustbins; sharper final projections (in place)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        for name, param in model.named_parameters():
            if name.endswith("mlp.3.weight"):  # last layer of every residual update
                param.mul_(0.2)
        model.final_proj.weight.mul_(sharpen)
        model.final_line_proj.weight.mul_(sharpen)
        model.bin_score.fill_(2.0)
        model.line_bin_score.fill_(1.5)


def compare(reference_cls, case: tuple[int, int, int], sharpen: float, seed: int) -> dict:
    torch.manual_seed(seed)
    reference = reference_cls({}).eval()
    randomise(reference, sharpen, seed)
    ours = GlueStick({}).eval()
    released = {"model": {f"matcher.{k}": v for k, v in reference.state_dict().items()}, "epoch": 0}
    ours.load_checkpoint_state_dict(released, origin="reference state dict")
    pair = synthetic_pair(*case, dim=256, seed=seed)
    with torch.no_grad():
        ref = reference(reference_inputs(pair))
        out = ours(pair)
    delta = max(
        (ref["log_assignment"] - out["log_assignment"]).abs().max().item(),
        (ref["line_log_assignment"] - out["line_log_assignment"]).abs().max().item(),
        (ref["match_scores0"] - out["matching_scores0"]).abs().max().item(),
        (ref["line_match_scores0"] - out["line_matching_scores0"]).abs().max().item(),
    )
    same = all(torch.equal(ref[a], out[b]) for a, b in (("matches0", "matches0"), ("matches1", "matches1"),
                                                         ("line_matches0", "line_matches0"),
                                                         ("line_matches1", "line_matches1")))
    return {"points": int((out["matches0"] >= 0).sum()), "lines": int((out["line_matches0"] >= 0).sum()),
            "num_lines": case[1], "same": same, "delta": delta}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of cvg/GlueStick")
    parser.add_argument("--sharpen", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reference_cls = import_reference(args.reference)
    torch.set_grad_enabled(False)
    failed = False
    print("| case (junctions/lines/points) | point matches | line matches | identical matches | max abs diff |")
    print("|---|---|---|---|---|")
    for name, case in CASES.items():
        r = compare(reference_cls, case, args.sharpen, args.seed)
        ok = r["same"] and r["delta"] <= TOLERANCE
        failed |= not ok
        print(f"| {name} {case[0]}/{case[1]}/{case[2]} | {r['points']} | {r['lines']}/{r['num_lines']} | "
              f"{'yes' if r['same'] else 'NO'} | {r['delta']:.2e}{'' if ok else ' FAIL'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
