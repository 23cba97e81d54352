"""LightGlue's static-shape pass (lightglue_static).

On the CPU its steps run eagerly: it must give what the dynamic pass gives, take no host sync
inside its steps, and reuse its buffers per padded size. On CUDA (skipped here) the same steps
are replayed as CUDA graphs and must equal the dynamic pass there.
"""

from __future__ import annotations

import inspect
import shutil

import pytest
import test_lightglue as dynamic  # tests/core is on sys.path
import torch
from test_lightglue import permuted_copy, pruning_model, random_features, run, set_head, small_model
from test_sift_torch import synchronizations
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from featmatch_core.models.matchers.lightglue import LightGlue, warm_up_sizes
from featmatch_core.models.matchers.lightglue_static import (
    MAX_CACHED_PASSES,
    WARM_UP_HEADROOM,
    StaticPass,
    static_key,
)

STATIC = {"static_shapes": True, "static_bucket": 16}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Behaviour tests of the dynamic pass that do not apply to the static one, and why.
NOT_STATIC = {
    "test_image_states_are_recomputed_when_features_weights_or_precision_change":
        "the static pass does not keep per-image states",
    "test_image_states_reuse_each_frames_encoding_and_change_nothing": "the same",
    "test_pruning_bucket_prunes_a_subset_and_keeps_bucketed_sizes":
        "pruning_bucket rounds dynamic set sizes; static sizes are fixed",
    "test_pruning_bucket_that_retains_everything_equals_no_pruning": "the same",
    "test_pruning_bucket_is_automatic_only_for_cpu_bf16_inference": "the same",
    "test_cpu_bf16_pads_point_sets_to_the_bucket_and_crops_the_outputs": "the dynamic pass's CPU bf16 padding",
    "test_pruning_respects_min_keypoints_and_may_prune_everything":
        "an emptied image ends the pass at the next exit check, not at once (checked below)",
    "test_mutual_matches_from_similarity_equals_the_log_assignment_route": "a function, not a pass",
    "test_mutual_matches_from_similarity_with_padding_equals_the_log_assignment_route": "the same",
    "test_mutual_matches_from_similarity_keeps_one_to_one_on_exact_ties": "the same",
    "test_keys_match_official_checkpoints": "checkpoint keys, not a pass",
    "test_from_pretrained_reads_a_release_file": "the same",
    "test_training_returns_every_layer_and_backpropagates": "training takes the dynamic pass",
    "test_padded_training_batch_gives_finite_log_assignments": "the same",
    "test_input_checks_take_one_read_of_the_device":
        "the dynamic pass's input checks; the static pass checks finiteness with its results",
}
BEHAVIOUR = sorted(name for name in dir(dynamic) if name.startswith("test_") and name not in NOT_STATIC)


def test_every_behaviour_test_is_rerun_or_excused():
    """A new dynamic-pass test is rerun below unless it is excused here; tests that take
    arguments cannot be rerun, so they must be excused."""
    assert not set(NOT_STATIC) - set(dir(dynamic)), "excused tests that no longer exist"
    for name in BEHAVIOUR:
        assert not inspect.signature(getattr(dynamic, name)).parameters, f"{name} takes arguments: excuse it"


@pytest.mark.parametrize("name", BEHAVIOUR)
def test_static_pass_keeps_the_dynamic_behaviour(name, monkeypatch):
    """The dynamic pass's behaviour tests, with every small model on the static pass."""
    for key, value in STATIC.items():
        monkeypatch.setitem(dynamic.SMALL, key, value)
    getattr(dynamic, name)()


def both_passes(model: LightGlue) -> tuple[LightGlue, LightGlue]:
    """The model (dynamic) and a copy with the same weights on the static pass."""
    model.conf.static_shapes = False
    static = LightGlue({**dict(model.conf), **STATIC}).eval()
    static.load_state_dict(model.state_dict())
    return model, static


def assert_same_result(a: dict, b: dict) -> None:
    for key in ("matches0", "matches1", "prune0", "prune1", "num_pruned0", "num_pruned1"):
        assert torch.equal(a[key], b[key]), key
    assert a["stop"] == b["stop"]
    torch.testing.assert_close(a["matching_scores0"], b["matching_scores0"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["matching_scores1"], b["matching_scores1"], atol=1e-5, rtol=1e-5)
    for x, y in zip(a["matches"], b["matches"], strict=True):
        assert torch.equal(x, y)


def confident_after(model: LightGlue, layer: int) -> LightGlue:
    for index, head in enumerate(model.token_confidence):
        set_head(head.token[0], bias=20.0 if index == layer else -20.0)
    return model


def half_prunable(n: int, seed: int, every: int = 3, scale_ori: bool = False) -> dict:
    feats = random_features(n, seed=seed, scale_ori=scale_ori)
    feats["descriptors"][..., 0] = torch.where(torch.arange(n) % every == 0, -0.3, 0.3)
    return permuted_copy(feats, seed=seed)


def stacked(pairs: list[dict]) -> dict:
    return {side: {k: torch.cat([p[side][k] for p in pairs]) for k in pairs[0][side]} for side in ("image0", "image1")}


CASES = {
    "full depth, odd sizes": lambda: (small_model(depth_confidence=-1, width_confidence=-1),
                                      permuted_copy(random_features(37, seed=3))),
    "full depth, sets fill the bucket": lambda: (small_model(depth_confidence=-1, width_confidence=-1),
                                                 permuted_copy(random_features(48, seed=3))),
    "exits, no pruning below its minimum": lambda: (confident_after(small_model(pruning_min_keypoints=64), 2),
                                                    permuted_copy(random_features(64, seed=8))),
    "paper adaptivity": lambda: (small_model(), permuted_copy(random_features(70, seed=4))),
    "exit after layer 2": lambda: (confident_after(small_model(width_confidence=-1), 1),
                                   permuted_copy(random_features(50, seed=5))),
    "exit not before min_layers": lambda: (confident_after(small_model(width_confidence=-1, min_layers=3), 0),
                                           permuted_copy(random_features(50, seed=5))),
    "pruning": lambda: (pruning_model(), half_prunable(80, seed=6)),
    "pruning then exit": lambda: (confident_after(pruning_model(depth_confidence=0.9), 1), half_prunable(64, 7)),
    "pruning, batch of 2": lambda: (pruning_model(), stacked([half_prunable(60, 8, 2), half_prunable(60, 9, 5)])),
    "scale and orientation": lambda: (small_model(add_scale_ori=True),
                                      permuted_copy(random_features(90, seed=2, scale_ori=True))),
    "max_layers and exit factors": lambda: (small_model(max_layers=2, exit_filter_factors=[1.0, 0.5, 1.0],
                                                        filter_threshold=0.001), permuted_copy(random_features(40))),
}


@pytest.mark.parametrize("case", CASES)
def test_static_pass_equals_the_dynamic_pass(case):
    model, data = CASES[case]()
    dynamic_model, static_model = both_passes(model)
    expected = run(dynamic_model, data)
    assert (expected["matches0"] >= 0).sum() > 5  # the comparison covers real matches
    assert_same_result(run(static_model, data), expected)


def test_masks_only_where_points_are_padding_or_may_be_pruned():
    key = lambda model, m, n, padding=False: static_key(  # noqa: E731
        model, 1, m, n, torch.device("cpu"), torch.float32, caller_padding=padding)
    full_depth = small_model(depth_confidence=-1, width_confidence=-1, **STATIC)
    assert not key(full_depth, 48, 32).masked  # sets that fill the bucket: attention without masks
    assert key(full_depth, 47, 32).masked and key(full_depth, 48, 32, padding=True).masked
    assert (key(full_depth, 47, 32).size0, key(full_depth, 47, 32).size1) == (48, 32)
    small_sets = small_model(pruning_min_keypoints=64, **STATIC)
    assert not key(small_sets, 64, 48).prune and not key(small_sets, 64, 48).masked
    assert key(small_sets, 65, 48).prune and key(small_sets, 65, 48).masked  # 80 > 64: may be pruned


def test_caller_padding_matches_like_the_dynamic_pass():
    dynamic_model, static_model = both_passes(small_model())
    pairs = [permuted_copy(random_features(50, seed=11), seed=1), permuted_copy(random_features(70, seed=12), seed=2)]
    batch = {side: dynamic.stack([dynamic.pad(pair[side], 70, seed) for pair, seed in zip(pairs, seeds, strict=True)])
             for side, seeds in (("image0", (21, 22)), ("image1", (23, 24)))}
    assert_same_result(run(static_model, batch), run(dynamic_model, batch))


def test_an_emptied_image_matches_nothing_and_ends_at_the_next_exit_check():
    feats = random_features(80, seed=4)
    feats["descriptors"][..., 0] = -0.3  # every point prunable after layer 0
    out = run(pruning_model(depth_confidence=0.99, min_layers=2, **STATIC), permuted_copy(feats))
    assert out["num_pruned0"].item() == 80 and (out["prune0"] == 1).all()
    assert (out["matches0"] == -1).all() and out["matches"][0].shape == (0, 2)
    assert out["stop"] == 2  # the dynamic pass stops at 1; layer 2 is the first exit check


class HostReads(TorchDispatchMode):
    """Counts the reads that make the host wait for the device: Python scalars or lists from a
    tensor, and data-dependent shapes (``nonzero``). Enter it inside ``inference_mode``."""

    READS = ("__bool__", "__int__", "__float__", "item", "tolist")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.count = 0
        for name in self.READS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, original=original, **kwargs):
                self.count += 1
                return original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in (torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default)
        return func(*args, **(kwargs or {}))


def test_static_steps_never_wait_for_the_host(monkeypatch):
    model = confident_after(pruning_model(depth_confidence=0.9, **STATIC), 2)
    data = half_prunable(64, 7)
    key = static_key(model, 1, 64, 64, torch.device("cpu"), torch.float32, caller_padding=False)
    # under fake tensors any read of a value (bool, item, tolist, nonzero) raises
    with torch.inference_mode(), FakeTensorMode(allow_non_fake_inputs=True):
        static_pass = StaticPass(model, key)
        assert len(static_pass.steps) == 1 + 4 + 4  # encode, 4 layers, the heads of the 4 layers a pass may end at
        for step in static_pass.steps.values():
            step()
        with pytest.raises(DataDependentOutputException):
            bool(static_pass.exit_flags[0])  # (the detector works)
    # a whole call reads once per exit check that ran (after layers 1, 2, 3), and once for the
    # finiteness and the number of matches together (compacting the matches reads nothing more)
    pairs = {"image0": data["image0"], "image1": data["image1"]}
    with torch.inference_mode(), HostReads(monkeypatch) as reads:
        assert model(pairs)["stop"] == 3
    assert reads.count == 3 + 1
    model.conf.static_shapes = False
    with torch.inference_mode(), HostReads(monkeypatch) as reads:
        assert model(pairs)["stop"] == 3
    assert reads.count > 3 + 1  # the dynamic pass also reads at validation (once) and at compactions


def test_passes_are_built_once_per_padded_size_precision_and_weights():
    model = small_model(**STATIC)
    passes = lambda: model._static_passes.captures  # noqa: E731
    run(model, permuted_copy(random_features(37)))
    run(model, permuted_copy(random_features(40, seed=2)))  # 37 and 40 both pad to 48
    assert passes() == 1
    run(model, permuted_copy(random_features(50, seed=3)))  # 64
    assert passes() == 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run(model, permuted_copy(random_features(40, seed=2)))
    assert passes() == 3
    model.conf.filter_threshold = 0.5  # a setting baked into the steps
    run(model, permuted_copy(random_features(40, seed=2)))
    assert passes() == 4 and len(model._static_passes.passes) == 4
    model.double()  # new parameter tensors: the old passes are dropped
    run(model, {side: {k: v.double() for k, v in f.items()} for side, f in
                permuted_copy(random_features(40, seed=2)).items() if side != "perm"})
    assert passes() == 5 and len(model._static_passes.passes) == 1


def test_in_place_weight_updates_make_new_passes_and_outputs_are_not_overwritten():
    model = small_model(depth_confidence=-1, width_confidence=-1, filter_threshold=0.1, **STATIC)
    data = permuted_copy(random_features(40, seed=1))
    first = run(model, data)
    kept = {k: first[k].clone() for k in ("matches0", "matching_scores0")}
    other = run(model, permuted_copy(random_features(41, seed=2)))  # same padded size: same buffers
    assert model._static_passes.captures == 1
    for key, value in kept.items():
        assert torch.equal(first[key], value), f"{key} of the first call changed"
    assert not torch.equal(other["matching_scores0"][:, :40], first["matching_scores0"])
    with torch.no_grad():
        for head in model.log_assignment:
            set_head(head.matchability, bias=-30.0)  # nothing matchable any more
    assert (run(model, data)["matches0"] == -1).all()
    assert model._static_passes.captures == 2 and len(model._static_passes.passes) == 1  # the old one dropped


def test_reduced_precision_runs_layer_copies_made_once_per_weights():
    """Under bf16 autocast the layers run wholly in bf16 from copies of the weights (no weight
    casts replayed in every call), shared by all passes and made again when the weights change."""
    model = small_model(add_scale_ori=True, **STATIC)
    data = permuted_copy(random_features(128, scale_ori=True))
    reference = run(model, data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, data)
        run(model, permuted_copy(random_features(100, seed=2, scale_ori=True)))  # another padded size
    passes = [p for p in model._static_passes.passes.values() if p.key.autocast == torch.bfloat16]
    assert len(passes) == 2 and passes[0].reduced == passes[1].reduced == torch.bfloat16
    assert passes[0].layers is passes[1].layers  # one copy of the weights for both
    assert all(p.dtype == torch.bfloat16 for p in passes[0].layers.parameters())
    assert out["matching_scores0"].dtype == torch.float32
    assert (out["matches0"] == reference["matches0"]).float().mean() > 0.9
    copies = passes[0].layers
    with torch.no_grad():
        model.transformers[0].self_attn.out_proj.weight.mul_(0.5)  # in place: new copies, new passes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run(model, data)
    now = next(reversed(model._static_passes.passes.values()))
    assert now.layers is not copies and len(model._static_passes.passes) == 1
    torch.testing.assert_close(now.layers[0].self_attn.out_proj.weight.float(),
                               model.transformers[0].self_attn.out_proj.weight, atol=1e-2, rtol=1e-2)


def test_warm_up_sizes_are_the_upper_block_and_a_band_of_neighbours_below():
    assert warm_up_sizes(1000, 256) == [(256, 256), (256, 512), (512, 256), (512, 512), (512, 768), (512, 1024),
                                        (768, 512), (768, 768), (768, 1024), (1024, 512), (1024, 768), (1024, 1024)]
    pairs = warm_up_sizes(4096, 256)
    assert {(m, n) for m in range(2048, 4097, 256) for n in range(2048, 4097, 256)} <= set(pairs)
    below = [(m, n) for m, n in pairs if min(m, n) < 2048]
    assert below and all(abs(m - n) <= 256 for m, n in below) and (256, 256) in below
    assert len(pairs) == 81 + 21  # 9 x 9 from 2048 up; below it 7 equal pairs and 14 of neighbours


def test_warm_up_builds_the_sizes_a_camera_gives():
    model = small_model(static_shapes=True, static_bucket=256)
    assert model.warm_up(1000) == 12  # the pairs of warm_up_sizes (pruning: always masked)
    assert model._static_passes.captures == 12
    run(model, permuted_copy(random_features(700)))
    run(model, {"image0": random_features(1000, seed=1), "image1": random_features(600, seed=2)})
    # a stream whose count falls (a blank wall): its neighbouring sizes are ready too
    run(model, {"image0": random_features(300, seed=3), "image1": random_features(200, seed=4)})
    run(model, permuted_copy(random_features(100)))
    assert model._static_passes.captures == 12
    run(model, {"image0": random_features(700, seed=5), "image1": random_features(200, seed=6)})  # a jump
    assert model._static_passes.captures == 13  # captured when it first comes
    # without pruning, sets that fill the bucket have their own unmasked pass: 24, all kept
    unpruned = small_model(static_shapes=True, static_bucket=256, width_confidence=-1)
    assert unpruned.warm_up(1024) == 24 and len(unpruned._static_passes.passes) == 24
    run(unpruned, permuted_copy(random_features(1024)))
    run(unpruned, permuted_copy(random_features(1000)))
    run(unpruned, permuted_copy(random_features(256)))
    assert unpruned._static_passes.captures == 24
    # a 2048-point camera: more passes than the cache's floor (24), all kept, with room for more
    large = small_model(static_shapes=True, static_bucket=256, width_confidence=-1)
    built = large.warm_up(2048)
    assert built > MAX_CACHED_PASSES and len(large._static_passes.passes) == built
    assert large._static_passes.capacity == built + WARM_UP_HEADROOM
    run(large, permuted_copy(random_features(2048)))
    assert large._static_passes.captures == built


def test_static_settings_are_validated():
    with pytest.raises(ValueError, match="static_shapes"):
        LightGlue({"static_shapes": "yes"})
    with pytest.raises(ValueError, match="static_bucket"):
        LightGlue({"static_bucket": 0})
    with pytest.raises(ValueError, match="cuda_graphs"):
        LightGlue({"cuda_graphs": None})


def test_static_pass_is_for_inference_only():
    model = small_model(**STATIC)
    assert model.uses_static_pass(torch.device("cpu"), collect=False) is False  # gradients are on here
    with torch.no_grad():
        assert model.uses_static_pass(torch.device("cpu"), collect=False)
        assert not model.uses_static_pass(torch.device("cpu"), collect=True)
        model.conf.static_shapes = None  # automatic: CUDA only
        assert not model.uses_static_pass(torch.device("cpu"), collect=False)
        assert model.uses_static_pass(torch.device("cuda"), collect=False)


# ---- CUDA: the steps as graphs ------------------------------------------------------------------
def cuda_pair(data: dict) -> dict:
    return {side: {k: v.cuda() for k, v in data[side].items()} for side in ("image0", "image1")}


@needs_cuda
@pytest.mark.parametrize("case", ["full depth, odd sizes", "exit after layer 2", "pruning then exit",
                                  "pruning, batch of 2", "scale and orientation"])
def test_cuda_graph_pass_equals_the_dynamic_pass(case):
    model, data = CASES[case]()
    dynamic_model, static_model = both_passes(model.cuda())
    static_model.cuda()
    data = cuda_pair(data)
    expected = run(dynamic_model, data)
    for _ in range(2):  # the first call captures, the second replays
        assert_same_result(run(static_model, data), expected)
    static_pass = next(iter(static_model._static_passes.passes.values()))
    assert static_pass.key.use_graphs and static_model._static_passes.captures == 1


@needs_cuda
def test_cuda_graph_replays_follow_new_inputs_without_syncs():
    dynamic_model, static_model = both_passes(small_model(depth_confidence=-1, width_confidence=-1).cuda())
    static_model.cuda()
    for seed, n in ((1, 40), (2, 45), (3, 33)):  # one padded size: the same graphs
        data = cuda_pair(permuted_copy(random_features(n, seed=seed)))
        assert_same_result(run(static_model, data), run(dynamic_model, data))
    assert static_model._static_passes.captures == 1
    static_pass = next(iter(static_model._static_passes.passes.values()))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in static_pass.steps.values():
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@needs_cuda
def test_a_full_depth_cuda_call_waits_for_the_device_once():
    """The finiteness flags and the match counts come back in one read; compacting the matches
    (``nonzero_static`` with the counts given) adds no second wait."""
    model = small_model(depth_confidence=-1, width_confidence=-1).cuda().eval()
    model.conf.static_shapes = True
    data = cuda_pair(permuted_copy(random_features(40, seed=1)))
    expected = run(model, data)  # captures the graphs
    assert len(expected["matches"][0]) > 0
    got = {}
    assert synchronizations(lambda: got.update(run(model, data))) == 1
    assert torch.equal(got["matches"][0], expected["matches"][0])


@needs_cuda
def test_cuda_graph_pass_under_fp16_autocast_agrees_with_fp32():
    model = small_model(add_scale_ori=True, **STATIC).cuda()
    data = cuda_pair(permuted_copy(random_features(128, scale_ori=True)))
    reference = run(model, data)
    with torch.autocast("cuda", dtype=torch.float16):
        out = run(model, data)
    assert out["matching_scores0"].dtype == torch.float32
    assert (out["matches0"] == reference["matches0"]).float().mean() > 0.9


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's CPU code generation needs a C++ compiler")
def test_compiled_static_layers_equal_the_eager_ones():
    """``static_compile``: the transformer layers through torch.compile (fullgraph: no break,
    hence no hidden host sync), all of them one compiled graph, with the eager results."""
    from torch._dynamo.utils import counters

    model = small_model(n_layers=3, depth_confidence=0.5, width_confidence=0.6, confidence_thresholds=[0.3, 0.3],
                        pruning_min_keypoints=0, filter_threshold=0.01, **STATIC)
    data = half_prunable(40, seed=3)
    expected = run(model, data)
    model.conf.static_compile = True
    graphs_before = counters["stats"]["unique_graphs"]
    assert_same_result(run(model, data), expected)
    assert counters["stats"]["unique_graphs"] - graphs_before == 1  # three layers, one graph
    compiled = next(reversed(model._static_passes.passes.values()))
    assert compiled.key.compiled and {"layer0", "layer1", "layer2"} <= set(compiled.steps)


def test_a_failed_graph_capture_falls_back_to_uncaptured_steps(monkeypatch, caplog):
    """Where a capture fails (a driver, an operator that cannot be captured), the pass runs its
    steps one by one, with a warning, and gives the same matches."""
    import dataclasses

    from featmatch_core.models.matchers import lightglue_static

    def capturing_key(*args, **kwargs):  # as on CUDA
        return dataclasses.replace(static_key(*args, **kwargs), use_graphs=True)

    def failing_capture(run, device, pool=None):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    model = small_model(**STATIC)
    data = permuted_copy(random_features(40))
    expected = run(model, data)
    model._static_passes.clear()
    monkeypatch.setattr(lightglue_static, "static_key", capturing_key)
    monkeypatch.setattr(lightglue_static, "capture", failing_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)  # no CUDA here
    with caplog.at_level("WARNING"):
        assert_same_result(run(model, data), expected)
    assert "graph capture failed (CUDA error: operation not permitted" in caplog.text
    built = next(iter(model._static_passes.passes.values()))
    assert not built.key.use_graphs
    with pytest.raises(RuntimeError, match="not permitted"):  # off CUDA graphs nothing is swallowed
        StaticPass(model, capturing_key(model, 1, 48, 48, torch.device("cpu"), torch.float32, False))
