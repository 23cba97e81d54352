"""LightGlue: structure, adaptivity, masking, precision and checkpoint compatibility (CPU, small models)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from featmatch_core.models import get_model
from featmatch_core.models.matchers.lightglue import (
    LightGlue,
    from_release_layout,
    mutual_matches,
    mutual_matches_from_similarity,
    sigmoid_log_double_softmax,
    to_release_layout,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lightglue_official_keys.json"
SMALL = {"descriptor_dim": 64, "input_dim": 64, "num_heads": 4, "n_layers": 4, "filter_threshold": 0.0}
Feats = dict[str, torch.Tensor]


def small_model(**overrides) -> LightGlue:
    torch.manual_seed(0)
    return LightGlue({**SMALL, **overrides}).eval()


def random_features(n: int, dim: int = 64, seed: int = 0, batch: int = 1, scale_ori: bool = False) -> Feats:
    g = torch.Generator().manual_seed(seed)
    feats = {
        "keypoints": torch.rand(batch, n, 2, generator=g) * torch.tensor([640.0, 480.0]),
        "descriptors": torch.nn.functional.normalize(torch.randn(batch, n, dim, generator=g), dim=-1),
        "image_size": torch.tensor([[640.0, 480.0]]).expand(batch, 2).clone(),
    }
    if scale_ori:
        feats["scales"] = torch.rand(batch, n, generator=g) * 4 + 1
        feats["oris"] = (torch.rand(batch, n, generator=g) - 0.5) * 6
    return feats


def permuted_copy(feats: Feats, seed: int = 1) -> dict[str, Feats]:
    """A pair whose second image is a shuffled copy of the first: the true matches are known."""
    n = feats["keypoints"].shape[1]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    other = {k: (v[:, perm] if v.ndim >= 2 and k != "image_size" else v.clone()) for k, v in feats.items()}
    return {"image0": feats, "image1": other, "perm": perm}


def run(model: LightGlue, data: dict[str, Feats]) -> dict:
    with torch.inference_mode():
        return model({"image0": data["image0"], "image1": data["image1"]})


def make_layer_pass_through(model: LightGlue, layer: int) -> None:
    """Zero the update MLPs of a layer so its output equals its input (the descriptors)."""
    with torch.no_grad():
        for block in (model.transformers[layer].self_attn, model.transformers[layer].cross_attn):
            block.ffn[3].weight.zero_()
            block.ffn[3].bias.zero_()


def set_head(linear: torch.nn.Linear, bias: float, weight: torch.Tensor | None = None) -> None:
    with torch.no_grad():
        linear.weight.zero_()
        if weight is not None:
            linear.weight[0] = weight
        linear.bias.fill_(bias)


def channel(dim: int, index: int, gain: float) -> torch.Tensor:
    w = torch.zeros(dim)
    w[index] = gain
    return w


# ---- structure & config -----------------------------------------------------------------------
def test_registry_presets_and_conf_validation():
    assert get_model("matcher", "lightglue") is LightGlue
    sift = LightGlue({"features": "sift"})
    assert (sift.conf.input_dim, sift.conf.add_scale_ori, sift.conf.weights) == (128, True, "sift_lightglue")
    assert isinstance(sift.input_proj, torch.nn.Linear)
    assert LightGlue({"features": "superpoint", "weights": None}).conf.weights is None
    with pytest.raises(ValueError, match="unknown features"):
        LightGlue({"features": "orb"})
    with pytest.raises(ValueError, match="pruning_min_keypoints"):
        LightGlue({"pruning_min_keypoints": "auto"})
    with pytest.raises(ValueError, match="depth_confidence"):
        LightGlue({"depth_confidence": 1.5})


# ---- equivariance, determinism, full depth ---------------------------------------------------
def test_permuting_keypoints_permutes_matches():
    model = small_model()
    data = permuted_copy(random_features(96))
    base = run(model, data)
    assert (base["matches0"] >= 0).sum() > 50  # the pair is easy: most points match
    p0 = torch.randperm(96, generator=torch.Generator().manual_seed(5))
    p1 = torch.randperm(96, generator=torch.Generator().manual_seed(6))
    shuffled = {"image0": {k: (v[:, p0] if k != "image_size" else v) for k, v in data["image0"].items()},
                "image1": {k: (v[:, p1] if k != "image_size" else v) for k, v in data["image1"].items()}}
    out = run(model, shuffled)
    inv1 = torch.argsort(p1)
    old = base["matches0"][0, p0]
    expected = torch.where(old >= 0, inv1[old.clamp(min=0)], old)
    assert torch.equal(out["matches0"][0], expected)
    torch.testing.assert_close(out["matching_scores0"][0], base["matching_scores0"][0, p0],
                               atol=1e-5, rtol=1e-5)


def test_fp32_cpu_is_deterministic():
    model = small_model()
    data = permuted_copy(random_features(80))
    a, b = run(model, data), run(model, data)
    assert torch.equal(a["matches0"], b["matches0"])
    assert torch.equal(a["matching_scores0"], b["matching_scores0"])


def test_adaptivity_off_runs_all_layers():
    model = small_model(depth_confidence=-1, width_confidence=-1)
    out = run(model, permuted_copy(random_features(64)))
    assert out["stop"] == 4
    assert (out["prune0"] == 4).all() and (out["prune1"] == 4).all()
    assert out["num_pruned0"].tolist() == [0] and out["num_pruned1"].tolist() == [0]


# ---- adaptive depth -------------------------------------------------------------------------
def test_confident_pair_exits_early_and_unsure_pair_does_not():
    data = permuted_copy(random_features(64))
    model = small_model(width_confidence=-1)
    for head in model.token_confidence:
        set_head(head.token[0], bias=20.0)  # confidence ~1 for every point after every layer
    out = run(model, data)
    assert out["stop"] == 1
    # the result comes from layer 0's assignment head: a 1-layer model with the same weights agrees
    one_layer = small_model(n_layers=1)
    first_layer = ("posenc", "transformers.0.", "log_assignment.0.")
    one_layer.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(first_layer)},
                              strict=False)
    assert torch.equal(run(one_layer, data)["matches0"], out["matches0"])

    for head in model.token_confidence:
        set_head(head.token[0], bias=-20.0)
    assert run(model, data)["stop"] == 4

    set_head(model.token_confidence[2].token[0], bias=20.0)
    assert run(model, data)["stop"] == 3


def paper_thresholds(n_layers: int) -> list[float]:
    return pytest.approx([0.8 + 0.1 * math.exp(-4 * i / n_layers) for i in range(n_layers)])


def test_min_layers_and_threshold_schedule_set_where_the_pass_may_stop():
    data = permuted_copy(random_features(64))
    model = small_model(width_confidence=-1, min_layers=3)
    for head in model.token_confidence:
        set_head(head.token[0], bias=20.0)  # every point confident after every layer
    assert run(model, data)["stop"] == 3  # not 1: exits are only considered from layer 3 on

    # confidence sigmoid(1) ~ 0.73: below the paper's schedule (>= 0.8) but above 0.7
    schedule = small_model(width_confidence=-1, confidence_thresholds=[0.99, 0.7, 0.99])
    for head in schedule.token_confidence:
        set_head(head.token[0], bias=1.0)
    assert run(schedule, data)["stop"] == 2
    schedule.conf.confidence_thresholds = [0.99, 0.99, 0.7]  # read at every call, like depth_confidence
    assert run(schedule, data)["stop"] == 3
    assert schedule.confidence_thresholds.tolist() == paper_thresholds(4)  # the state dict keeps the paper's
    paper = small_model(width_confidence=-1)
    for head in paper.token_confidence:
        set_head(head.token[0], bias=1.0)
    assert run(paper, data)["stop"] == 4

    with pytest.raises(ValueError, match=r"confidence_thresholds must be None or 3 numbers"):
        small_model(confidence_thresholds=[0.9, 0.9])
    with pytest.raises(ValueError, match=r"confidence_thresholds must be None or 3 numbers"):
        small_model(confidence_thresholds=[0.9, 0.9, 1.2])
    with pytest.raises(ValueError, match=r"min_layers must be an int >= 1"):
        small_model(min_layers=0)
    assert run(small_model(width_confidence=-1, min_layers=9), data)["stop"] == 4  # never exits early


def test_max_layers_bounds_the_depth_and_returns_that_layers_matches():
    data = permuted_copy(random_features(64))
    model = small_model(depth_confidence=-1, width_confidence=-1, max_layers=2)
    out = run(model, data)
    assert out["stop"] == 2
    # the matches are those of layer 2's head: a 2-layer model with the same weights agrees
    two_layers = small_model(n_layers=2, depth_confidence=-1, width_confidence=-1)
    first = ("posenc", "transformers.0.", "transformers.1.", "log_assignment.0.", "log_assignment.1.",
             "token_confidence.0.")
    two_layers.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(first)},
                               strict=False)
    expected = run(two_layers, data)
    assert torch.equal(expected["matches0"], out["matches0"])
    assert torch.equal(expected["matching_scores0"], out["matching_scores0"])

    model.conf.max_layers = None  # read at every call
    assert run(model, data)["stop"] == 4
    model.conf.max_layers = 7  # more than the model has: all of them
    assert run(model, data)["stop"] == 4
    model.conf.max_layers, model.conf.return_all_layers = 1, True  # collecting runs every layer
    assert len(run(model, data)["log_assignment"]) == 4
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"max_layers must be None or an int >= 1"):
            small_model(max_layers=bad)


def test_exit_filter_factors_scale_the_threshold_of_the_layer_the_pass_stops_at():
    data = permuted_copy(random_features(64))
    fixed = {"depth_confidence": -1, "width_confidence": -1, "max_layers": 2}
    scores = run(small_model(**fixed, filter_threshold=0.0), data)["matching_scores0"][0]
    high, low = (float(v) for v in torch.quantile(scores[scores > 0], torch.tensor([0.8, 0.2])))
    model = small_model(**fixed, filter_threshold=high, exit_filter_factors=[1.0, low / high, 1.0])
    out = run(model, data)
    assert out["stop"] == 2
    assert torch.equal(out["matches0"], run(small_model(**fixed, filter_threshold=low), data)["matches0"])
    strict = run(small_model(**fixed, filter_threshold=high), data)["matches0"]
    assert (out["matches0"] >= 0).sum() > (strict >= 0).sum() > 0
    # a pass that runs to the last layer keeps filter_threshold
    model.conf.max_layers = None
    unscaled = small_model(**{**fixed, "max_layers": None}, filter_threshold=high)
    assert torch.equal(run(model, data)["matches0"], run(unscaled, data)["matches0"])
    for bad in ([1.0, 1.0], [1.0, 0.0, 1.0], [1.0, -1.0, 1.0], 0.5):
        with pytest.raises(ValueError, match=r"exit_filter_factors must be None or 3 positive numbers"):
            small_model(exit_filter_factors=bad)


def test_exit_ratio_ignores_padding():
    """Valid points are confident, padded ones are not: the ratio must count valid points only."""
    model = small_model(width_confidence=-1)
    make_layer_pass_through(model, 0)
    for head in model.token_confidence:
        set_head(head.token[0], bias=0.0, weight=channel(64, 0, 50.0))  # confident iff descriptor[0] > 0
    feats = random_features(60, seed=3)
    feats["descriptors"][..., 0] = 0.5
    alone = run(model, permuted_copy(feats))
    assert alone["stop"] == 1
    padded = {k: (torch.cat([v, v[:, :40]], 1) if k != "image_size" else v) for k, v in feats.items()}
    padded["descriptors"][:, 60:, 0] = -0.5  # padding would be unconfident
    padded["keypoint_mask"] = torch.arange(100)[None] < 60
    data = {"image0": padded, "image1": permuted_copy(feats)["image1"]}
    out = run(model, data)
    assert out["stop"] == 1
    assert torch.equal(out["matches0"][:, :60], alone["matches0"]) and (out["matches0"][:, 60:] == -1).all()


# ---- adaptive width -------------------------------------------------------------------------
def pruning_model(**overrides) -> LightGlue:
    """Layer 0 passes descriptors through; points whose descriptor[0] < 0 are confidently unmatchable."""
    model = small_model(**{"depth_confidence": -1, "pruning_min_keypoints": 0, **overrides})
    make_layer_pass_through(model, 0)
    set_head(model.token_confidence[0].token[0], bias=20.0)
    set_head(model.log_assignment[0].matchability, bias=0.0, weight=channel(64, 0, 200.0))
    return model


def test_pruned_points_are_unmatched_in_original_indexing():
    feats = random_features(80, seed=4)
    feats["descriptors"][..., 0] = torch.where(torch.arange(80) % 3 == 0, -0.3, 0.3)
    data = permuted_copy(feats)
    out = run(pruning_model(), data)
    pruned0 = feats["descriptors"][0, :, 0] < 0
    pruned1 = data["image1"]["descriptors"][0, :, 0] < 0
    assert out["num_pruned0"].tolist() == [int(pruned0.sum())]
    assert out["num_pruned1"].tolist() == [int(pruned1.sum())]
    assert (out["prune0"][0, pruned0] == 1).all() and (out["prune0"][0, ~pruned0] == 4).all()
    assert (out["matches0"][0, pruned0] == -1).all() and (out["matching_scores0"][0, pruned0] == 0).all()
    assert (out["matches1"][0, pruned1] == -1).all()
    # the surviving points still find their true partners, reported in the input indexing
    truth1 = torch.argsort(data["perm"])  # image0 point i is image1 point truth1[i]
    m0 = out["matches0"][0]
    matched = m0 >= 0
    assert matched.sum() > 30
    assert torch.equal(m0[matched], truth1[matched])
    assert torch.equal(out["matches1"][0, m0[matched]], torch.nonzero(matched).squeeze(1))
    assert torch.equal(out["matches"][0][:, 0], torch.nonzero(matched).squeeze(1))


def test_pruning_that_removes_nothing_changes_nothing():
    data = permuted_copy(random_features(80, seed=2))
    model = small_model(depth_confidence=-1, pruning_min_keypoints=0)
    for head in model.log_assignment:
        set_head(head.matchability, bias=20.0)  # everything clearly matchable: nothing to prune
    with_pruning = run(model, data)
    model.conf.width_confidence = -1
    without = run(model, data)
    assert with_pruning["num_pruned0"].item() == 0
    for key in ("matches0", "matches1", "matching_scores0", "matching_scores1"):
        assert torch.equal(with_pruning[key], without[key])


def test_pruning_respects_min_keypoints_and_may_prune_everything():
    feats = random_features(80, seed=4)
    feats["descriptors"][..., 0] = -0.3  # everything prunable
    out = run(pruning_model(pruning_min_keypoints=100), permuted_copy(feats))
    assert out["num_pruned0"].item() == 0 and out["stop"] == 4
    out = run(pruning_model(), permuted_copy(feats))
    assert out["stop"] == 1 and out["num_pruned0"].item() == 80 and (out["matches0"] == -1).all()
    assert out["matches"][0].shape == (0, 2)


@pytest.mark.parametrize("bucket", [16, 32])
def test_pruning_bucket_prunes_a_subset_and_keeps_bucketed_sizes(bucket):
    feats = random_features(100, seed=5)
    feats["descriptors"][..., 0] = torch.where(torch.arange(100) % 3 == 0, -0.3, 0.3)  # 34 prunable
    data = permuted_copy(feats)
    exact = run(pruning_model(pruning_bucket=1), data)
    bucketed = run(pruning_model(pruning_bucket=bucket), data)
    kept = 100 - bucketed["num_pruned0"].item()
    assert kept == min(100, -(-(100 - exact["num_pruned0"].item()) // bucket) * bucket)
    pruned_exact, pruned_bucketed = exact["prune0"][0] < 4, bucketed["prune0"][0] < 4
    assert not (pruned_bucketed & ~pruned_exact).any()  # only points the exact rule prunes
    m0 = bucketed["matches0"][0]  # the retained points still find their true partners
    correct = m0[m0 >= 0] == torch.argsort(data["perm"])[m0 >= 0]
    assert (m0 >= 0).sum() > 30 and correct.float().mean() > 0.9


def test_pruning_bucket_that_retains_everything_equals_no_pruning():
    feats = random_features(100, seed=5)
    feats["descriptors"][..., 0] = torch.where(torch.arange(100) % 3 == 0, -0.3, 0.3)
    data = permuted_copy(feats)
    bucketed = run(pruning_model(pruning_bucket=64), data)  # 66 kept -> 128 > 100: all retained
    unpruned = run(pruning_model(width_confidence=-1), data)
    assert bucketed["num_pruned0"].item() == 0
    for key in ("matches0", "matches1", "matching_scores0"):
        assert torch.equal(bucketed[key], unpruned[key])


def test_cpu_bf16_pads_point_sets_to_the_bucket_and_crops_the_outputs():
    """Odd sizes run padded to 64 (masked) under CPU bf16; outputs keep the input sizes and agree
    with the unpadded bf16 run."""
    model = small_model(depth_confidence=-1, width_confidence=-1)
    feats = random_features(100, seed=8)
    shuffled = permuted_copy(feats)["image1"]  # image1: 77 of image0's points, shuffled
    data = {"image0": feats, "image1": {k: v[:, :77] if k != "image_size" else v for k, v in shuffled.items()}}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = run(model, data)
        model.conf.pruning_bucket = 1  # no padding
        plain = run(model, data)
    assert padded["matches0"].shape == (1, 100) and padded["matches1"].shape == (1, 77)
    assert padded["prune0"].shape == (1, 100) and int(padded["matches0"].max()) < 77
    assert (padded["matches0"] >= 0).sum() > 30
    assert (padded["matches0"] == plain["matches0"]).float().mean() > 0.95


def test_pruning_bucket_is_automatic_only_for_cpu_bf16_inference():
    feats = random_features(200, seed=5)
    feats["descriptors"][..., 0] = torch.where(torch.arange(200) % 3 == 0, -0.3, 0.3)  # 67 prunable
    data = permuted_copy(feats)
    fp32 = run(pruning_model(), data)
    assert fp32["num_pruned0"].item() == 67
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = run(pruning_model(), data)
    assert bf16["num_pruned0"].item() == 200 - 192  # 133 kept, rounded up to 3 buckets of 64
    with pytest.raises(ValueError, match="pruning_bucket"):
        small_model(pruning_bucket=0)


def test_batched_pruning_matches_single_pairs():
    """Unpadded batch of 2 whose items keep different numbers of points."""
    model = pruning_model()
    pairs = []
    for seed, every in ((7, 2), (8, 5)):
        feats = random_features(60, seed=seed)
        feats["descriptors"][..., 0] = torch.where(torch.arange(60) % every == 0, -0.3, 0.3)
        pairs.append(permuted_copy(feats, seed=seed))
    batch = {side: {k: torch.cat([p[side][k] for p in pairs]) for k in pairs[0][side]}
             for side in ("image0", "image1")}
    out = run(model, batch)
    for k, pair in enumerate(pairs):
        alone = run(model, pair)
        assert torch.equal(out["matches0"][k], alone["matches0"][0])
        assert torch.equal(out["prune1"][k], alone["prune1"][0])
        torch.testing.assert_close(out["matching_scores0"][k], alone["matching_scores0"][0],
                                   atol=1e-5, rtol=1e-5)


# ---- batches, padding, empty, invalid inputs ---------------------------------------------------
def pad(feats: Feats, n: int, seed: int) -> Feats:
    """Pad to n points with random garbage (not zeros) and a keypoint_mask."""
    garbage = random_features(n - feats["keypoints"].shape[1], seed=seed)
    out = {k: torch.cat([v, garbage[k]], 1) for k, v in feats.items() if k != "image_size"}
    out["image_size"] = feats["image_size"]
    out["keypoint_mask"] = torch.arange(n)[None] < feats["keypoints"].shape[1]
    return out


def stack(items):
    return {k: torch.cat([f[k] for f in items]) for k in items[0]}


def test_masked_batch_equals_pairs_alone():
    model = small_model()
    pairs = [permuted_copy(random_features(50, seed=11), seed=1),
             permuted_copy(random_features(70, seed=12), seed=2)]
    pairs[1]["image1"] = {k: (v[:, :45] if k != "image_size" else v) for k, v in pairs[1]["image1"].items()}
    batch = {"image0": stack([pad(pairs[0]["image0"], 70, 21), pad(pairs[1]["image0"], 70, 22)]),
             "image1": stack([pad(pairs[0]["image1"], 50, 23), pad(pairs[1]["image1"], 50, 24)])}
    out = run(model, batch)
    assert out["stop"] == 4
    for k, pair in enumerate(pairs):
        alone = run(model, pair)
        m, n = alone["matches0"].shape[1], alone["matches1"].shape[1]
        assert torch.equal(out["matches0"][k, :m], alone["matches0"][0])
        assert torch.equal(out["matches1"][k, :n], alone["matches1"][0])
        assert (out["matches0"][k, m:] == -1).all() and (out["matches1"][k, n:] == -1).all()
        torch.testing.assert_close(out["matching_scores0"][k, :m], alone["matching_scores0"][0],
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(out["matches"][k], alone["matches"][0])


def test_zero_keypoints():
    model = small_model()
    full = random_features(30)
    empty = random_features(0)
    for data in ({"image0": empty, "image1": full}, {"image0": full, "image1": empty}):
        out = run(model, data)
        assert (out["matches0"] == -1).all() and (out["matches1"] == -1).all()
        assert out["matches"][0].shape == (0, 2) and out["scores"][0].shape == (0,)
        assert out["matches0"].dtype == torch.int64 and out["stop"] == 0
    # one item of a batch without valid points
    feats1 = pad(random_features(30, seed=1), 30, 2)
    feats1["keypoint_mask"] = torch.zeros(1, 30, dtype=torch.bool)
    batch = {"image0": stack([full, full]),
             "image1": stack([pad(random_features(30, seed=1), 30, 2), feats1])}
    out = run(model, batch)
    assert (out["matches0"][1] == -1).all() and out["matches"][1].shape == (0, 2)
    alone = run(model, {"image0": full, "image1": random_features(30, seed=1)})
    assert torch.equal(out["matches0"][0], alone["matches0"][0])


def test_invalid_inputs_raise():
    model = small_model()
    data = permuted_copy(random_features(20))
    bad = dict(data["image0"], descriptors=torch.randn(1, 20, 32))
    with pytest.raises(ValueError, match="dimension 32, expected 64"):
        run(model, {"image0": bad, "image1": data["image1"]})
    nan = {k: v.clone() for k, v in data["image1"].items()}
    nan["keypoints"][0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        run(model, {"image0": data["image0"], "image1": nan})
    with pytest.raises(ValueError, match="scales"):
        run(small_model(add_scale_ori=True), data)


# ---- match extraction ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 300, 200), (2, 64, 97), (1, 1, 5)])
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("spread", [4.0, 0.05])  # a flat similarity: the matchability decides
def test_mutual_matches_from_similarity_equals_the_log_assignment_route(shape, threshold, spread):
    g = torch.Generator().manual_seed(sum(shape))
    sim = torch.randn(shape, generator=g) * spread
    z0, z1 = torch.randn(shape[:2], generator=g) * 2, torch.randn(shape[0], shape[2], generator=g) * 2
    expected = mutual_matches(sigmoid_log_double_softmax(sim, z0, z1), threshold)
    got = mutual_matches_from_similarity(sim, z0, z1, threshold)
    for e, o in zip(expected[:2], got[:2], strict=True):
        assert torch.equal(e, o)
    for e, o in zip(expected[2:], got[2:], strict=True):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-6)
    assert (expected[0] >= 0).any() or threshold > 0  # the case is not vacuous


@pytest.mark.parametrize("spread", [4.0, 0.05])
def test_mutual_matches_from_similarity_with_padding_equals_the_log_assignment_route(spread):
    g = torch.Generator().manual_seed(3)
    sim = torch.randn((2, 40, 30), generator=g) * spread
    z0, z1 = torch.randn((2, 40), generator=g), torch.randn((2, 30), generator=g)
    valid0 = torch.arange(40)[None] < torch.tensor([[40], [25]])
    valid1 = torch.arange(30)[None] < torch.tensor([[17], [30]])
    expected = mutual_matches(sigmoid_log_double_softmax(sim, z0, z1, valid0, valid1), 0.0, valid0, valid1)
    got = mutual_matches_from_similarity(sim, z0, z1, 0.0, valid0, valid1)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    torch.testing.assert_close(got[2], expected[2], rtol=1e-5, atol=1e-6)
    assert (got[0][~valid0] == -1).all() and (got[1][~valid1] == -1).all()


def test_mutual_matches_from_similarity_keeps_one_to_one_on_exact_ties():
    """Two identical rows tie for the same column: only one of them may be matched to it."""
    sim = torch.tensor([[[5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])
    z = torch.full((1, 3), 4.0)
    m0, m1, s0, s1 = mutual_matches_from_similarity(sim, z, z, 0.0)
    assert int((m0[0] == 0).sum()) == 1 and m0[0, 2] == 2
    assert m1[0, 0] in (0, 1) and m0[0, m1[0, 0]] == 0 and m1[0, 1] == -1
    assert s1[0, 0] == s0[0, m1[0, 0]] and s0[0, 1 - m1[0, 0]] == 0


# ---- per-image states: a video frame's own work is done once --------------------------------------
def frames_of_a_video(n: int = 90, count: int = 3) -> list[Feats]:
    """Feature sets of consecutive frames: the same points, shuffled and slightly moved."""
    first = random_features(n, seed=11, scale_ori=True)
    frames = [first]
    for i in range(1, count):
        shuffled = permuted_copy(frames[-1], seed=20 + i)["image1"]
        shuffled["keypoints"] = shuffled["keypoints"] + 2.0
        frames.append(shuffled)
    return frames


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_image_states_reuse_each_frames_encoding_and_change_nothing(precision, adaptive):
    adaptivity = {} if adaptive else {"depth_confidence": -1, "width_confidence": -1}
    model = small_model(add_scale_ori=True, **adaptivity)
    frames = frames_of_a_video()
    states = [{} for _ in frames]
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with context, torch.inference_mode():
        for i in range(len(frames) - 1):
            data = {"image0": frames[i], "image1": frames[i + 1]}
            plain = model(data)
            reused_before = states[i].get("lightglue")
            out = model(data, image_states=(states[i], states[i + 1]))
            if i > 0:  # frame i was the second image of the pair before: its encoding is reused
                assert states[i]["lightglue"] is reused_before
            assert out["stop"] == plain["stop"]
            assert torch.equal(out["matches0"], plain["matches0"]) and torch.equal(out["matches1"], plain["matches1"])
            assert (out["matches0"] >= 0).sum() > 60
            tolerance = 1e-5 if precision == "fp32" else 2e-2
            torch.testing.assert_close(out["matching_scores0"], plain["matching_scores0"], atol=tolerance, rtol=0)


def test_image_states_are_recomputed_when_features_weights_or_precision_change():
    model = small_model(add_scale_ori=True, depth_confidence=-1, width_confidence=-1)
    frame0, frame1 = frames_of_a_video(count=2)
    data = {"image0": frame0, "image1": frame1}
    states = ({}, {})
    with torch.inference_mode():
        model(data, image_states=states)
        first = states[0]["lightglue"]
        model(data, image_states=states)
        assert states[0]["lightglue"] is first  # unchanged inputs: reused
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(data, image_states=states)
        assert states[0]["lightglue"] is not first  # another precision
        in_bf16 = states[0]["lightglue"]
        model(data, image_states=states)
        assert states[0]["lightglue"] is not in_bf16
    frame0["descriptors"].mul_(-1)  # the features changed in place
    with torch.inference_mode():
        before = states[0]["lightglue"]
        out = model(data, image_states=states)
        assert states[0]["lightglue"] is not before
        assert torch.equal(out["matches0"], model(data)["matches0"])
    frame1["descriptors"][0, [0, 1]] = frame1["descriptors"][0, [1, 0]].clone()  # two points swapped in place
    with torch.inference_mode():
        before = states[1]["lightglue"]
        out = model(data, image_states=states)
        assert states[1]["lightglue"] is not before
        assert torch.equal(out["matches0"], model(data)["matches0"])
    frame1["keypoints"].add_(3.0)  # moved points: a new rotary encoding
    with torch.inference_mode():
        before = states[1]["lightglue"]
        out = model(data, image_states=states)
        assert states[1]["lightglue"] is not before
        assert torch.equal(out["matches0"], model(data)["matches0"])
    with torch.no_grad():
        model.transformers[0].self_attn.Wqkv.weight.mul_(0.5)  # new weights
    with torch.inference_mode():
        before = states[1]["lightglue"]
        out = model(data, image_states=states)
        assert states[1]["lightglue"] is not before
        assert torch.equal(out["matches0"], model(data)["matches0"])
    # with gradients (training) nothing is stored or reused
    model.conf.return_all_layers = True
    fresh = ({}, {})
    model(data, image_states=fresh)
    assert fresh == ({}, {})


# ---- precision & training ---------------------------------------------------------------------
def test_bf16_autocast_agrees_with_fp32():
    model = small_model(add_scale_ori=True)
    data = permuted_copy(random_features(128, scale_ori=True))
    ref = run(model, data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, data)
    assert out["matching_scores0"].dtype == torch.float32 and out["scores"][0].dtype == torch.float32
    agree = (out["matches0"] == ref["matches0"]).float().mean()
    assert agree > 0.9, agree


def test_padded_training_batch_gives_finite_log_assignments():
    model = small_model().train()
    batch = {
        "image0": stack([pad(random_features(20, seed=1), 30, 2), pad(random_features(30, seed=3), 30, 4)]),
        "image1": stack([pad(random_features(25, seed=5), 25, 6), pad(random_features(10, seed=7), 25, 8)]),
    }
    out = model(batch)
    scores = out["log_assignment"][-1]
    assert scores.shape == (2, 31, 26) and torch.isfinite(scores).all()
    assert (scores[0, 20:30] == -1e4).all() and (scores[1, :, 10:25] == -1e4).all()
    # each real row's match probabilities (without the dustbin) sum to at most 1
    assert (scores[0, :20, :25].exp().sum(-1) <= 1 + 1e-5).all()


def toy_loss(out: dict) -> torch.Tensor:
    """Touches the last layer's assignment and the first layer's dustbin."""
    last, first = out["log_assignment"][-1], out["log_assignment"][0]
    return -last[0, :-1, :-1].diagonal().mean() - first[0, -1, :-1].mean()


def test_training_returns_every_layer_and_backpropagates():
    model = small_model()
    model.train()
    data = permuted_copy(random_features(40))
    out = model({"image0": data["image0"], "image1": data["image1"]})
    assert len(out["log_assignment"]) == 4 and out["stop"] == 4
    assert out["log_assignment"][0].shape == (1, 41, 41)
    assert len(out["token_confidence0"]) == 3 and out["token_confidence0"][0].shape == (1, 40)
    toy_loss(out).backward()
    grad = model.transformers[0].self_attn.Wqkv.weight.grad.clone()
    assert grad.abs().sum() > 0
    # gradient checkpointing recomputes the layers: same gradients
    model.zero_grad()
    model.set_gradient_checkpointing(True)
    toy_loss(model({"image0": data["image0"], "image1": data["image1"]})).backward()
    torch.testing.assert_close(model.transformers[0].self_attn.Wqkv.weight.grad, grad)


# ---- checkpoints ----------------------------------------------------------------------------------
def official_fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("features", ["superpoint", "disk", "aliked", "sift"])
def test_keys_match_official_checkpoints(features):
    entry = official_fixture()[features]
    model = LightGlue({"features": features})
    params = {k: list(p.shape) for k, p in to_release_layout(dict(model.named_parameters())).items()}
    assert params == entry["parameters"]
    buffers = {k: list(b.shape) for k, b in model.named_buffers()}
    assert buffers == entry["derived_buffers"]
    # a file in the released layout (with an unused extra entry) loads unchanged
    checkpoint = {k: torch.full(shape, 0.5) for k, shape in entry["parameters"].items()}
    checkpoint["unrelated.step"] = torch.tensor(3)
    model.load_checkpoint_state_dict(checkpoint, origin=f"{features}_lightglue.pth")
    assert (model.transformers[8].cross_attn.to_qk.weight == 0.5).all()


def test_release_layout_round_trip_reproduces_outputs():
    source = small_model()
    release = to_release_layout(source.state_dict())
    assert not any(k.startswith("transformers.") for k in release) and "self_attn.0.Wqkv.weight" in release
    assert from_release_layout(release).keys() == source.state_dict().keys()
    del release["confidence_thresholds"]  # derived, may be absent
    torch.manual_seed(123)
    target = LightGlue(SMALL).eval()
    target.load_checkpoint_state_dict(release)
    data = permuted_copy(random_features(64))
    a, b = run(source, data), run(target, data)
    assert torch.equal(a["matches0"], b["matches0"])
    assert torch.equal(a["matching_scores0"], b["matching_scores0"])


def test_from_pretrained_reads_a_release_file(tmp_path):
    source = small_model()
    path = tmp_path / "custom_lightglue.pth"
    torch.save(to_release_layout(source.state_dict()), path)
    loaded = LightGlue.from_pretrained(SMALL, weights=str(path))
    assert not loaded.training
    data = permuted_copy(random_features(32))
    assert torch.equal(run(source, data)["matches0"], run(loaded, data)["matches0"])


def test_checkpoint_errors():
    fixture = official_fixture()
    sift = {k: torch.zeros(shape) for k, shape in fixture["sift"]["parameters"].items()}
    with pytest.raises(ValueError, match="another feature type.*128-d descriptors with scale/orientation"):
        LightGlue({"features": "superpoint"}).load_checkpoint_state_dict(sift, origin="sift_lightglue.pth")
    superpoint = {k: torch.zeros(shape) for k, shape in fixture["superpoint"]["parameters"].items()}
    with pytest.raises(ValueError, match="another feature type"):
        LightGlue({"features": "sift"}).load_checkpoint_state_dict(superpoint)
    with pytest.raises(ValueError, match="7 layers"):
        LightGlue({"features": "superpoint", "n_layers": 7}).load_checkpoint_state_dict(superpoint)
    missing = dict(superpoint)
    del missing["cross_attn.3.to_v.bias"]
    with pytest.raises(ValueError, match="missing 1 keys"):
        LightGlue({"features": "superpoint"}).load_checkpoint_state_dict(missing)
    misshaped = dict(superpoint, **{"self_attn.2.out_proj.weight": torch.zeros(256, 128)})
    with pytest.raises(ValueError, match="shape mismatch"):
        LightGlue({"features": "superpoint"}).load_checkpoint_state_dict(misshaped)


def test_input_checks_take_one_read_of_the_device(monkeypatch):
    """Finiteness of every input and both padding masks' all/any: one read, not one per tensor."""
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or original(t))
    partial = torch.tensor([[True, False]])
    full, empty = torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.bool)
    checks = [("image0 fine", torch.tensor(True)), ("image1 fine", torch.tensor(True))]
    (mask0, mask1), real = LightGlue.read_checks(checks, (partial, full))
    assert mask0 is partial and mask1 is None and real and reads == [(6,)]
    assert LightGlue.read_checks([], (None, empty)) == ((None, empty), False)
    assert LightGlue.read_checks([], (None, None)) == ((None, None), True) and len(reads) == 2  # nothing to read
    with pytest.raises(ValueError, match="second bad"):
        LightGlue.read_checks([("first", torch.tensor(True)), ("second bad", torch.tensor(False))], (None, None))
    model = LightGlue({"input_dim": 8, "descriptor_dim": 16, "num_heads": 2, "n_layers": 1}).eval()
    data = {f"image{i}": {"keypoints": torch.rand(1, 5, 2) * 10, "descriptors": torch.randn(1, 5, 8),
                          "image_size": torch.tensor([[10.0, 10.0]])} for i in (0, 1)}
    data["image1"]["descriptors"][0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="image1 'descriptors' contains NaN"):
        model(data)
