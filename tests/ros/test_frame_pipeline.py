"""FramePipeline: two or three stages on as many threads, in order, dropping only at the entrance."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lightglue_ros.frame_matcher import FramePipeline, FrameWorker, cpu_threads


def test_blocking_submit_keeps_every_item_in_order() -> None:
    seen: list[int] = []
    pipe = FramePipeline(lambda i: i * 10, lambda x: (time.sleep(0.002), seen.append(x)))
    for i in range(30):
        assert pipe.submit(i, block=True)
    pipe.stop(drain=True, timeout=10)
    assert seen == [i * 10 for i in range(30)]
    counters = pipe.counters()
    assert counters["frames_in"] == 30 and counters["frames_processed"] == 30
    assert counters["frames_dropped"] == 0 and counters["worker_errors"] == 0


def test_stages_overlap_on_two_threads() -> None:
    """The front works on item n+1 while the back still holds item n."""
    back_busy = threading.Event()
    overlapped = []

    def front(i: int) -> int:
        time.sleep(0.01)  # extraction takes time: the back has taken the previous item meanwhile
        overlapped.append(back_busy.is_set())
        return i

    def back(i: int) -> None:
        back_busy.set()
        time.sleep(0.05)
        back_busy.clear()

    pipe = FramePipeline(front, back)
    for i in range(4):
        pipe.submit(i, block=True)
    pipe.stop(drain=True, timeout=10)
    assert any(overlapped[1:])


def test_extraction_runs_at_most_one_frame_ahead_of_tracking() -> None:
    """Rendezvous hand-over: when item n starts extracting, item n-2 has finished tracking
    (with a queue between the stages the front would run two items ahead)."""
    extract_started: dict[int, float] = {}
    track_finished: dict[int, float] = {}

    def front(i: int) -> int:
        extract_started[i] = time.monotonic()
        return i

    def back(i: int) -> None:
        time.sleep(0.03)  # tracking is the slow stage
        track_finished[i] = time.monotonic()

    pipe = FramePipeline(front, back)
    for i in range(8):
        pipe.submit(i, block=True)
    pipe.stop(drain=True, timeout=10)
    assert sorted(track_finished) == list(range(8))
    for i in range(2, 8):
        assert extract_started[i] >= track_finished[i - 2], i


def test_three_stages_keep_every_item_in_order_and_overlap() -> None:
    """A middle stage (matching ahead) works on item n+1 while the last stage holds item n, and
    runs at most one item ahead of it (rendezvous), as the front does of the middle."""
    track_busy = threading.Event()
    overlapped: list[bool] = []
    matched_started: dict[int, float] = {}
    track_finished: dict[int, float] = {}
    seen: list[int] = []

    def middle(i: int) -> int:
        matched_started[i] = time.monotonic()
        time.sleep(0.01)
        overlapped.append(track_busy.is_set())
        return i * 10

    def back(x: int) -> None:
        track_busy.set()
        time.sleep(0.03)
        seen.append(x)
        track_finished[x // 10] = time.monotonic()
        track_busy.clear()

    pipe = FramePipeline(lambda i: i, middle, back)
    for i in range(8):
        assert pipe.submit(i, block=True)
    pipe.stop(drain=True, timeout=10)
    assert seen == [i * 10 for i in range(8)]
    assert any(overlapped[1:])
    for i in range(2, 8):
        assert matched_started[i] >= track_finished[i - 2], i
    counters = pipe.counters()
    assert counters["frames_in"] == counters["frames_processed"] == 8 and counters["frames_dropped"] == 0


def test_a_pipeline_has_at_least_two_stages() -> None:
    with pytest.raises(ValueError, match="at least two stages, got 1"):
        FramePipeline(lambda i: i)


def test_wait_ready_returns_when_a_new_frame_would_start_at_once() -> None:
    release = threading.Event()
    pipe = FramePipeline(lambda i: (release.wait(5), i)[1], lambda x: None)
    pipe.submit(0)
    assert not pipe.wait_ready(timeout=0.05)  # extracting item 0
    release.set()
    assert pipe.wait_ready(timeout=5)
    pipe.stop(drain=True, timeout=10)
    worker = FrameWorker(lambda x: None)
    assert worker.wait_ready(timeout=5)
    worker.stop()


def test_live_submit_drops_oldest_at_the_entrance_only() -> None:
    release = threading.Event()
    tracked: list[int] = []
    pipe = FramePipeline(lambda i: (release.wait(5), i)[1], tracked.append, queue_size=1)
    pipe.submit(0)
    time.sleep(0.05)  # the front holds item 0 now
    for i in range(1, 6):
        pipe.submit(i)  # the front is stuck on item 0: the waiting slot keeps the newest
    release.set()
    pipe.stop(drain=True, timeout=10)
    counters = pipe.counters()
    assert tracked[0] == 0 and tracked[-1] == 5
    assert counters["frames_dropped"] == 6 - len(tracked)
    assert tracked == sorted(tracked)


def test_a_failing_stage_is_counted_and_the_pipeline_goes_on() -> None:
    tracked: list[int] = []

    def back(i: int) -> None:
        if i == 2:
            raise ValueError("bad frame")
        tracked.append(i)

    pipe = FramePipeline(lambda i: i, back)
    for i in range(5):
        pipe.submit(i, block=True)
    pipe.stop(drain=True, timeout=10)
    assert tracked == [0, 1, 3, 4]
    assert pipe.counters()["worker_errors"] == 1


def test_blocked_submit_returns_false_when_stopped_without_draining() -> None:
    release = threading.Event()
    worker = FrameWorker(lambda i: release.wait(5), queue_size=1)
    worker.submit(0)
    time.sleep(0.05)
    worker.submit(1)  # fills the queue while item 0 is in hand
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(worker.submit(2, block=True)))
    t.start()
    time.sleep(0.05)
    worker.stop(drain=False, timeout=0.1)
    t.join(5)
    release.set()
    assert result == [False]


@pytest.mark.parametrize(("cores", "expected"), [(1, (1, 1)), (2, (1, 1)), (8, (4, 4)), (3, (1, 2))])
def test_pipelined_cpu_threads_split_the_cores(cores: int, expected: tuple[int, int]) -> None:
    assert cpu_threads(True, cores) == expected
    assert cpu_threads(False, cores) == (cores, cores)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_each_stage_has_its_own_stream_on_cuda(device: str) -> None:
    """On CUDA the two stages' GPU work goes to two streams of their own (they overlap there);
    what the front stage made is complete when the back stage reads it."""
    streams: dict[str, set] = {"front": set(), "back": set()}
    results: list[float] = []

    def front(i: int) -> torch.Tensor:
        streams["front"].add(torch.cuda.current_stream().cuda_stream if device == "cuda" else None)
        x = torch.full((512, 512), float(i), device=device)
        return (x @ x).sum()  # queued, not yet done, when the stage returns

    def back(total: torch.Tensor) -> None:
        streams["back"].add(torch.cuda.current_stream().cuda_stream if device == "cuda" else None)
        results.append(float(total))

    pipe = FramePipeline(front, back, device=torch.device(device))
    for i in range(5):
        pipe.submit(i, block=True)
    pipe.stop(drain=True, timeout=30)
    assert results == [float(i * i * 512 * 512 * 512) for i in range(5)]
    if device == "cuda":
        default = torch.cuda.default_stream().cuda_stream
        assert len(streams["front"]) == len(streams["back"]) == 1  # one stream per stage, for good
        assert streams["front"] != streams["back"] and default not in streams["front"] | streams["back"]


def test_startup_objects_are_frozen_for_the_stream_only() -> None:
    """Inside the block a full collection does not scan what existed before it (the model);
    objects made inside are collected as usual, and everything is unfrozen after."""
    import gc

    from lightglue_ros.frame_matcher import startup_objects_frozen

    before = [object() for _ in range(10)]
    with startup_objects_frozen():
        assert gc.get_freeze_count() > 0
        tracked = {id(o) for o in gc.get_objects()}
        assert id(before) not in tracked
        made = [[] for _ in range(3)]
        assert id(made) in {id(o) for o in gc.get_objects()}
    assert gc.get_freeze_count() == 0
    assert id(before) in {id(o) for o in gc.get_objects()}
