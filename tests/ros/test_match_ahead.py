"""``match_ahead``: a third stage matches frame n+1 while frame n is tracked, against the
reference frame n+1 is expected to get; ``track`` checks the guess and matches again after a
wrong one, so the results are those of the two-stage path whatever the guesses."""

import threading

import numpy as np
import pytest
import torch

from test_frame_matcher import FAST, H, W, _msgs  # tests/ros is on sys.path

from featmatch_core.datasets import room as synthetic
from lightglue_ros import params as P
from lightglue_ros import stages as S
from lightglue_ros.frame_matcher import FrameMatcher, FramePipeline


@pytest.fixture(scope="module")
def frames():
    return synthetic.sequence(6, W, H, step=0.1, seed=1)


def _sequential(values, messages):
    fm = FrameMatcher(values)
    return fm, [fm.process(*msg) for msg in messages]


def _three_stages_interleaved(values, messages):
    """The order of the three stages when each holds a frame: frame n+1 is extracted and
    matched ahead before frame n is tracked (deterministic, on one thread)."""
    fm = FrameMatcher(values)
    matched = []
    original = fm._match
    fm._match = lambda f0, f1: (matched.append((f0.index, f1.index)), original(f0, f1))[1]
    results, pending = [], None
    for msg in messages:
        frame = fm.match_ahead(fm.prepare_and_extract(*msg))
        if pending is not None:
            results.append(fm.finish(pending))
        pending = frame
    results.append(fm.finish(pending))
    return fm, results, matched


def _assert_same_tracking(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for key in ("matches", "inliers", "success", "ref_stamp_ns", "new_reference", "keypoints0", "first",
                    "scale", "metric_scale"):
            assert ra.record.get(key) == rb.record.get(key), (key, ra.record, rb.record)
        if ra.cloud is not None:
            np.testing.assert_allclose(ra.cloud.xyz, rb.cloud.xyz, atol=1e-9)
        if "T_0to1" in ra.record:
            np.testing.assert_allclose(ra.record["T_0to1"], rb.record["T_0to1"], atol=1e-9)
        if ra.odometry is not None:
            np.testing.assert_allclose(ra.odometry.T_odom_cam, rb.odometry.T_odom_cam, atol=1e-9)


def test_right_guesses_are_used_and_match_each_frame_once(frames, monkeypatch):
    messages = [_msgs(f) for f in frames]
    _, expected = _sequential(FAST, messages)
    threads = []
    estimate = S.estimate_relative_pose
    monkeypatch.setattr(S, "estimate_relative_pose",
                        lambda *a: (threads.append(threading.current_thread().name), estimate(*a))[1])
    fm, results, matched = _three_stages_interleaved(FAST, messages)
    # the poses of frames matched ahead are estimated beside the stages, not in ``track``
    assert len(threads) == len(frames) - 1 and all(t.startswith("lightglue_estimate") for t in threads)
    _assert_same_tracking(results, expected)
    assert all(r.record["metric_scale"] for r in results[1:])  # scaled by the depth of the guessed reference
    assert matched == [(i - 1, i) for i in range(1, len(frames))]  # each frame matched once, ahead
    assert fm.counts["rematched"] == 0 and fm.diagnostics()["values"]["frames_rematched"] == 0
    assert all(r.record["success"] for r in results[1:])


def test_a_frame_without_a_pose_costs_two_wrong_guesses(frames):
    """A blank frame gets no pose, so the reference stays the frame before it. The frame after
    it was matched ahead against the blank one (its predecessor became the reference) and is
    matched again against the reference; the frame after that was guessed to keep that
    reference (the blank frame failed), became its successor's reference, and is matched again."""
    messages = [_msgs(f) for f in frames]
    messages[2] = _msgs(frames[2], image=np.full((H, W), 128, np.uint8))
    _, expected = _sequential(FAST, messages)
    assert not expected[2].record["success"] and all(expected[i].record["success"] for i in (1, 3, 4, 5))
    fm, results, matched = _three_stages_interleaved(FAST, messages)
    _assert_same_tracking(results, expected)
    assert fm.counts["rematched"] == 2 and results[3].record["rematched"] and results[4].record["rematched"]
    # in stage order: frame n+1 is matched ahead before frame n is tracked (and maybe matched again)
    assert matched == [(0, 1), (1, 2), (2, 3), (1, 4), (1, 3), (4, 5), (3, 4)]
    assert results[3].record["ref_stamp_ns"] == frames[1].stamp_ns


def test_a_run_of_failures_keeps_guessing_the_reference(frames):
    """Frames that keep failing keep the reference (until ``max_failures`` in a row replace it):
    the guess follows, so a run of failures is not matched twice per frame."""
    blank = np.full((H, W), 128, np.uint8)
    messages = [_msgs(frames[0]), _msgs(frames[1])] + [_msgs(f, image=blank) for f in frames[2:]]
    _, expected = _sequential(FAST, messages)
    assert not any(r.record["success"] for r in expected[2:])
    fm, results, matched = _three_stages_interleaved(FAST, messages)
    _assert_same_tracking(results, expected)
    # frame 3 was guessed against frame 2 (frame 1 had a pose): wrong; frame 4 against the
    # reference, frame 1 (frame 2 failed): right; frame 5 against frame 1 too, but frame 4, the
    # third failure in a row, had replaced it: wrong
    assert fm.counts["rematched"] == 2 and len(matched) == len(messages) - 1 + 2


@pytest.mark.parametrize("min_inliers, rematched", [(5, 0), (100000, 3)])
def test_keyframe_policy_guesses_the_current_keyframe(frames, min_inliers, rematched):
    """'keyframe': the guess is the keyframe of the moment. With a keyframe that keeps its grip
    every guess is right; when every frame becomes the keyframe (too few inliers for the
    threshold), the guess for frame n+1 was made before frame n took over, and is wrong."""
    values = {**FAST, "keyframe_policy": "keyframe", "keyframe_min_inliers": min_inliers,
              "keyframe_max_flow": 1000.0}
    messages = [_msgs(f) for f in frames[:5]]
    _, expected = _sequential(values, messages)
    fm, results, _ = _three_stages_interleaved(values, messages)
    _assert_same_tracking(results, expected)
    assert fm.counts["rematched"] == rematched


def test_three_threads_give_the_two_stage_results(frames):
    messages = [_msgs(f) for f in frames]
    values = {**FAST, "match_ahead": "always"}
    _, expected = _sequential(values, messages)
    fm = FrameMatcher(values)
    assert fm.matches_ahead
    results = []
    pipe = FramePipeline(lambda msg: fm.prepare_and_extract(*msg), fm.match_ahead,
                         lambda frame: results.append(fm.finish(frame)))
    assert [w._thread.name for w in pipe.workers] == ["lightglue_extract", "lightglue_match", "lightglue_track"]
    for msg in messages:
        assert pipe.submit(msg, block=True)
    pipe.stop(drain=True, timeout=60)
    _assert_same_tracking(results, expected)
    assert pipe.counters()["frames_processed"] == len(frames) and pipe.counters()["worker_errors"] == 0
    assert fm.counts["rematched"] == 0


def test_runtime_changes_while_three_threads_run(frames):
    """Parameters changed from another thread (as a node's parameter callback does) while the
    stages run: no stage fails, every frame is tracked, and the changes reach the matcher."""
    messages = [_msgs(f) for f in frames] * 3
    fm = FrameMatcher({**FAST, "match_ahead": "always"})
    results = []
    pipe = FramePipeline(lambda msg: fm.prepare_and_extract(*msg), fm.match_ahead,
                         lambda frame: results.append(fm.finish(frame)))
    for i, msg in enumerate(messages):
        policy = ("previous", "keyframe")[i % 2]
        assert fm.set_params({"keyframe_policy": policy, "nn_ratio_threshold": 0.8 + 0.01 * (i % 5)})[0]
        pipe.submit(msg, block=True)
    pipe.stop(drain=True, timeout=60)
    assert pipe.counters()["worker_errors"] == 0 and len(results) == len(messages)
    assert fm.pipeline.matcher.conf.ratio_thresh == pytest.approx(0.8 + 0.01 * ((len(messages) - 1) % 5))
    assert sum(r.record.get("success", False) for r in results) >= len(frames) - 1


def test_a_runtime_change_reaches_the_next_frame_even_if_it_was_matched_ahead(frames):
    """Frame n+1 is matched and estimated ahead with the old parameters; a change staged before
    frame n+1 is tracked applies to it: its early work is redone, not used."""
    fm = FrameMatcher({**FAST, "match_ahead": "always"})
    messages = [_msgs(f) for f in frames[:3]]
    first = fm.match_ahead(fm.prepare_and_extract(*messages[0]))
    second = fm.match_ahead(fm.prepare_and_extract(*messages[1]))  # matched ahead against the first
    assert fm.finish(first).record["first"]
    assert fm.finish(second).record["success"]
    third = fm.match_ahead(fm.prepare_and_extract(*messages[2]))
    assert third.early is not None and third.early.params == fm.applied
    assert fm.set_params({"min_matches": 100000})[0]  # no frame can have a pose now
    result = fm.finish(third)
    assert result.record["rematched"] and not result.record["success"]
    assert "too few matches" in result.record["message"] and fm.counts["rematched"] == 1


@pytest.mark.parametrize("values, on", [
    ({"device": "cpu"}, False),  # auto: CUDA only
    ({"match_ahead": "always"}, True),
    ({"match_ahead": "always", "pipelined": False}, False),  # one stage: nothing to match ahead of
    ({"match_ahead": "never"}, False),
])
def test_match_ahead_parameter(values, on):
    assert FrameMatcher({**FAST, **values}).matches_ahead is on


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_match_ahead_is_on_by_default_with_cuda():
    assert FrameMatcher({**FAST, "device": "cuda"}).matches_ahead


def test_match_ahead_refuses_values_a_yaml_parser_would_turn_into_booleans():
    with pytest.raises(ValueError, match="match_ahead.*auto, always, never"):
        P.validate("matcher", {"match_ahead": "on"})
