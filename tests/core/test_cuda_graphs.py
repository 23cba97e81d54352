"""CUDA graphs of static-shape work (GraphedCalls) and the extractors that replay their dense
part through it. On CPUs the buffered path (``use_graphs=False``: inputs copied into fixed
buffers, outputs copied out) stands in for the graphs; the CUDA tests replay real graphs."""

from __future__ import annotations

import copy
import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featmatch_core.models import cuda_graphs
from featmatch_core.models.cuda_graphs import GraphedCalls, function_identity
from featmatch_core.models.extractors.aliked import ALIKED
from featmatch_core.models.extractors.disk import DISK
from featmatch_core.models.extractors.sift import SIFT
from featmatch_core.models.extractors.superpoint import SuperPoint

pytestmark = pytest.mark.timeout(120)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scaled": x * self.weight, "parts": [x + 1, x.sum()]}


def buffered(module: nn.Module, **kwargs) -> GraphedCalls:
    return GraphedCalls(module, use_graphs=False, **kwargs)


def test_buffered_calls_follow_their_inputs_and_return_copies():
    module = Scale()
    calls = buffered(module)
    with torch.inference_mode():
        first = calls(module.run, torch.ones(3))
        second = calls(module.run, torch.full((3,), 5.0))
        assert calls.captures == 1  # same signature: the buffers were reused
        assert torch.equal(first["scaled"], torch.full((3,), 2.0))  # not overwritten by the second call
        assert torch.equal(second["scaled"], torch.full((3,), 10.0))
        assert torch.equal(second["parts"][0], torch.full((3,), 6.0)) and second["parts"][1].item() == 15.0
        second["scaled"].zero_()
        assert torch.equal(calls(module.run, torch.full((3,), 5.0))["scaled"], torch.full((3,), 10.0))


def test_a_new_signature_for_shapes_keys_autocast_and_replaced_weights():
    module = Scale()
    calls = buffered(module)
    with torch.inference_mode():
        calls(module.run, torch.ones(3))
        calls(module.run, torch.ones(4))  # shape
        calls(module.run, torch.ones(4, dtype=torch.float64))  # dtype
        calls(module.run, torch.ones(4), key=("radius", 3))  # settings
        with torch.autocast("cpu", dtype=torch.bfloat16):
            calls(module.run, torch.ones(4))
        assert calls.captures == 5
        module.weight = nn.Parameter(torch.tensor(3.0))  # a replaced parameter: other memory
        assert torch.equal(calls(module.run, torch.ones(4))["scaled"], torch.full((4,), 3.0))
        assert calls.captures == 6
        with torch.no_grad():
            module.weight.fill_(4.0)  # updated in place: the same memory, read at each replay
        assert torch.equal(calls(module.run, torch.ones(4))["scaled"], torch.full((4,), 4.0))
        assert calls.captures == 6


def test_plain_calls_with_autograd_and_bounded_cache():
    module = Scale()
    calls = buffered(module, max_cached=2)
    out = calls(module.run, torch.ones(3))  # autograd on: eager, gradients flow
    out["scaled"].sum().backward()
    assert module.weight.grad.item() == 3.0 and calls.captures == 0
    with torch.inference_mode():
        for n in (1, 2, 3):
            calls(module.run, torch.ones(n))
    assert calls.captures == 3 and len(calls.replays) == 2  # the least recently used was dropped
    assert GraphedCalls(module).use_graphs is None
    with torch.inference_mode():  # by default, CPU tensors take plain calls: no buffers, no copies
        default = GraphedCalls(module)
        default(module.run, torch.ones(3))
        assert default.captures == 0


def test_chained_calls_read_lent_outputs_where_they_are():
    """A graph's own outputs (copy_outputs=False) keep their memory across replays, and a later
    call reads them in place; any other tensor among its in-place inputs is copied as usual."""
    calls = buffered(Scale())

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    with torch.inference_mode():
        produced = calls(double, torch.ones(3), copy_outputs=False)
        again = calls(double, torch.full((3,), 2.0), copy_outputs=False)
        assert again.data_ptr() == produced.data_ptr() and torch.equal(produced, torch.full((3,), 4.0))
        total = calls(add, again, torch.ones(3), in_place=1)
        assert torch.equal(total, torch.full((3,), 5.0))
        calls(double, torch.full((3,), 3.0), copy_outputs=False)  # rewrites the read-in-place input
        assert torch.equal(calls(add, again, torch.ones(3), in_place=1), torch.full((3,), 7.0))
        eager = torch.full((3,), 10.0)  # not lent by the cache: copied
        assert torch.equal(calls(add, eager, torch.ones(3), in_place=1), torch.full((3,), 11.0))
    directs = [replay.direct for replay in calls.replays.values()]
    assert directs == [(False,), (True, False), (False, False)] and calls.captures == 3


def test_function_identity_of_methods_and_partials():
    a, b = Scale(), Scale()
    assert function_identity(a.run) == function_identity(b.run)  # one computation; the cache is per module
    def pad(size: int) -> functools.partial:
        return functools.partial(F.pad, pad=(size, size))

    assert function_identity(pad(1)) == function_identity(pad(1)) != function_identity(pad(2))


def extractors() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "superpoint": SuperPoint({"resize": None, "weights": None, "max_num_keypoints": 256}),
        "aliked": ALIKED({"resize": None, "weights": None, "max_num_keypoints": 256}),
        # top-k mode: the whole extraction is one graph
        "aliked-topk": ALIKED({"resize": None, "weights": None, "max_num_keypoints": 256, "detection_threshold": -1}),
        "disk": DISK({"resize": None, "weights": None, "max_num_keypoints": 256}),
        "sift-torch": SIFT({"resize": None, "backend": "torch", "max_num_keypoints": 256}),
    }


def textures(seed: int, size: tuple[int, int] = (120, 152)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(1, 3, *size, generator=gen), 3, 1, 1)


@pytest.mark.parametrize("name", ["superpoint", "aliked", "aliked-topk", "disk", "sift-torch"])
def test_extractors_through_the_buffers_equal_plain_calls(name):
    model = extractors()[name].eval()
    model.graphed_calls.use_graphs = False
    plain = copy.deepcopy(model)
    assert "_graphed_calls" not in plain.__dict__  # copies start without the original's buffers
    plain.conf.cuda_graphs = False
    with torch.inference_mode():
        for seed in (1, 2, 1):  # the buffers hold each new image
            ours, expected = model({"image": textures(seed)}), plain({"image": textures(seed)})
            assert ours.keys() == expected.keys() and len(expected["keypoints"][0]) > 20
            for key, value in expected.items():
                # SIFT's graphed descriptors take every point's votes in the largest window
                # (masked to its own): sums over more zeros, in another order
                atol = 1e-6 if (name, key) == ("sift-torch", "descriptors") else 0
                torch.testing.assert_close(ours[key], value, rtol=0, atol=atol, msg=f"{name}: {key}")
    assert model.graphed_calls.captures >= 1 and plain.graphed_calls.captures == 0


def test_disk_equals_kornias_forward():
    model = extractors()["disk"].eval()
    image = textures(3, (100, 130))  # padded to 112 x 144 for the U-Net
    with torch.inference_mode():
        ours = model({"image": image})
        (theirs,) = model.model(image, n=256, window_size=5, score_threshold=0.0, pad_if_not_divisible=True)
    torch.testing.assert_close(ours["keypoints"][0], theirs.keypoints.float())
    torch.testing.assert_close(ours["descriptors"][0], theirs.descriptors)
    torch.testing.assert_close(ours["keypoint_scores"][0], theirs.detection_scores)


@needs_cuda
@pytest.mark.parametrize("name", ["superpoint", "aliked", "aliked-topk", "disk", "sift-torch"])
def test_cuda_graph_replays_equal_eager_calls(name):
    model = extractors()[name].eval().cuda()
    eager = copy.deepcopy(model)
    eager.conf.cuda_graphs = False
    with torch.inference_mode():
        for seed in (1, 2, 3):
            image = textures(seed).cuda()
            ours, expected = model({"image": image}), eager({"image": image})
            for key, value in expected.items():
                torch.testing.assert_close(ours[key], value, msg=f"{name}: {key}")
    captured = [replay for replay in model.graphed_calls.replays.values() if replay is not None]
    assert len(captured) == model.graphed_calls.captures >= 1  # every signature captured, once


@needs_cuda
def test_cuda_capture_of_a_device_read_falls_back_to_eager():
    """In a process of its own: before pytorch#180395 (torch 2.12) a failed capture leaves the
    caching allocator believing a capture is under way, which would fail later CUDA tests."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{__file__}::test_failed_capture_body"],
        capture_output=True, text=True, timeout=110, env={**os.environ, FAILED_CAPTURE_BODY: "1"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]


FAILED_CAPTURE_BODY = "FEATMATCH_FAILED_CAPTURE_BODY"


@pytest.mark.skipif(os.environ.get(FAILED_CAPTURE_BODY) != "1" or not torch.cuda.is_available(),
                    reason="run in a process of its own by test_cuda_capture_of_a_device_read_falls_back_to_eager")
def test_failed_capture_body(caplog):
    module = Scale().cuda()
    stream = torch.cuda.current_stream()
    calls = GraphedCalls(module)

    def reads(x: torch.Tensor) -> torch.Tensor:
        return x[: int(x.sum().item())]  # a read: not capturable

    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        out = calls(reads, torch.ones(4, device="cuda"))
        again = calls(reads, torch.ones(4, device="cuda"))
    assert len(out) == 4 and len(again) == 4 and calls.captures == 1
    assert "runs uncaptured" in caplog.text
    assert torch.cuda.current_stream() == stream  # not left on the failed capture's stream

    # a capturable function after the failure: before torch 2.12 it is not captured (the next
    # capture would abort the process), from 2.12 it is
    def doubles(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    with torch.inference_mode():
        out = calls(doubles, torch.ones(4, device="cuda"))
    torch.cuda.synchronize()
    assert torch.equal(out, torch.full((4,), 2.0, device="cuda")) and calls.captures == 2
    captured = [replay for replay in calls.replays.values() if replay is not None]
    assert len(captured) == (1 if cuda_graphs.CAPTURE_AFTER_FAILURE else 0)


def test_graphs_only_for_small_batches_with_cuda_graphs_on():
    """Training batches are bound by arithmetic: a graph would only pin their activations."""
    from featmatch_core.models.extractors.base import GRAPH_MAX_BATCH

    model = extractors()["superpoint"].eval()
    model.graphed_calls.use_graphs = False
    with torch.inference_mode():
        model({"image": torch.rand(GRAPH_MAX_BATCH + 1, 1, 64, 64)})
        assert model.graphed_calls.captures == 0
        model({"image": torch.rand(2, 1, 64, 64)})
        assert model.graphed_calls.captures == 1  # the whole extraction (max_num_keypoints set)
        model.conf.cuda_graphs = False
        model({"image": torch.rand(2, 1, 48, 48)})
        assert model.graphed_calls.captures == 1


def test_superpoint_keeps_its_dense_maps_for_a_caller_that_records_them():
    """Wireframe records SuperPoint's descriptor map through dense_outputs: while it does, the
    network and the suppression are graphed apart, and the map reaches it."""
    from featmatch_core.models.lines.wireframe import capture_dense_descriptors

    model = extractors()["superpoint"].eval()
    model.graphed_calls.use_graphs = False
    image = textures(6)[:, :1]
    with torch.inference_mode():
        whole = model({"image": image})
        with capture_dense_descriptors(model) as captured:
            apart = model({"image": image})
    assert len(captured) == 1 and captured[0].shape == (1, 256, 15, 19)
    assert model.graphed_calls.captures == 3  # the whole extraction; the network; the suppression
    for key, value in whole.items():
        torch.testing.assert_close(apart[key], value, rtol=0, atol=0)


def test_sift_warm_up_captures_every_bucket_a_frame_then_uses():
    from featmatch_core.models.extractors import sift as sift_module
    from featmatch_core.models.extractors.sift_torch import POINT_BUCKET_MIN

    model = extractors()["sift-torch"].eval()
    model.graphed_calls.use_graphs = False
    images = textures(4)
    buckets = (sift_module.WARM_UP_POINTS // POINT_BUCKET_MIN).bit_length()  # 4096, 8192, ... 65536
    # the scale space; the refinement, histograms and selection per bucket; the described points
    assert model.warm_up(images) == 1 + 3 * buckets + 1
    with torch.inference_mode():
        found = model({"image": images})
    assert model.graphed_calls.captures == 1 + 3 * buckets + 1 and len(found["keypoints"][0]) > 20
    opencv = SIFT({"resize": None, "backend": "auto"})  # OpenCV on the CPU: nothing to capture
    assert opencv.warm_up(images) == 0 and "_graphed_calls" not in opencv.__dict__


@needs_cuda
def test_cuda_graphs_under_fp16_autocast_cast_the_current_weights_at_each_replay():
    """Captured without autocast's cache of weight casts (which is freed when each autocast
    region ends): later replays, in other regions, after other allocations and after the
    weights change in place, give what eager calls give."""
    model = extractors()["superpoint"].eval().cuda()
    eager = copy.deepcopy(model)
    eager.conf.cuda_graphs = False
    with torch.inference_mode():
        for seed in (1, 2, 3):
            image = textures(seed).cuda()
            with torch.autocast("cuda", dtype=torch.float16):
                ours = model({"image": image})
            with torch.autocast("cuda", dtype=torch.float16):
                expected = eager({"image": image})
            torch.testing.assert_close(ours["descriptors"], expected["descriptors"], atol=1e-3, rtol=1e-3)
            torch.testing.assert_close(ours["keypoints"], expected["keypoints"])
            garbage = [torch.randn(1 << 20, device="cuda") for _ in range(8)]  # reuse of freed blocks
            del garbage
            with torch.no_grad():  # new weights, in place: the graphs read them at the next replay
                for mine, theirs in zip(model.parameters(), eager.parameters(), strict=True):
                    new = torch.randn_like(mine) * mine.std()
                    mine.copy_(new)
                    theirs.copy_(new)
    assert model.graphed_calls.captures == 1  # the whole extraction, once


def test_holding_constants_collects_made_and_reused_cached_constants():
    from featmatch_core.device import device_constant, holding_constants

    cpu = torch.device("cpu")
    outside = device_constant((3.0, 1.0), cpu)
    with holding_constants() as held:
        made = device_constant((1.0, 2.0, 123.0), cpu)
        with holding_constants() as inner:
            reused = device_constant((1.0, 2.0, 123.0), cpu)  # a cache hit: collected as well
    device_constant((4.0,), cpu)  # after the block: not collected
    assert made is reused and [id(t) for t in held] == [id(made)] * 2 and [id(t) for t in inner] == [id(made)]
    assert not any(t is outside for t in held)


@needs_cuda
def test_cuda_graphs_keep_their_constants_when_the_caches_drop_them():
    from featmatch_core.device import device_constant
    from featmatch_core.models.extractors import aliked, sift_torch

    model = extractors()["sift-torch"].eval().cuda()
    eager = copy.deepcopy(model)
    eager.conf.cuda_graphs = False
    image = textures(5).cuda()
    with torch.inference_mode():
        model({"image": image})  # captured
        for cache in (device_constant, sift_torch.reflect101, sift_torch.difference_operator, aliked.tap_grid):
            cache.cache_clear()
        garbage = [torch.full((1 << 16,), 7.0, device="cuda") for _ in range(64)]  # reuse freed blocks
        ours, expected = model({"image": image}), eager({"image": image})
        del garbage
    for key, value in expected.items():
        torch.testing.assert_close(ours[key], value)


@needs_cuda
def test_captures_never_run_on_a_stage_stream():
    """torch's stream pool hands out 32 streams per priority in turn: however many stage streams
    and captures a process makes, no capture runs on a stream a stage works on (it would record
    the stage's kernels), and every capture on a device runs on the same stream."""
    from featmatch_core.device import own_stream
    from featmatch_core.models.cuda_graphs import capture, capture_stream

    if cuda_graphs._failed_capture is not None:  # torch < 2.12 after a failed capture in this process
        pytest.skip("captures are off in this process after a failed one")
    device = torch.device("cuda")
    stage_streams = set()
    for _ in range(40):  # more than a pool holds
        with own_stream(device) as stream:
            stage_streams.add(stream.cuda_stream)
    seen = []
    x = torch.ones(8, device=device)
    out = torch.empty_like(x)

    def double() -> None:
        seen.append(torch.cuda.current_stream().cuda_stream)
        out.copy_(x * 2)

    for _ in range(3):
        replay = capture(double, device)
    replay()
    torch.cuda.synchronize()
    assert torch.equal(out, x * 2)
    assert set(seen) == {capture_stream(device).cuda_stream}
    assert capture_stream(device).cuda_stream not in stage_streams
