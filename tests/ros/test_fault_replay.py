"""Fault injection: a generated bag with every bad kind (bad encoding, bad calibration, time jumps,
too few matches) between good frames (some in Bayer and YUV encodings), replayed with
``--rate max`` and ``--rate realtime`` into sqlite3 and MCAP output bags."""

import json

import pytest
from rosbags.highlevel import AnyReader

from lightglue_ros import faults, replay


@pytest.fixture(scope="module")
def fault_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "fault_bag"
    counts = faults.write_fault_bag(path)
    assert counts["/camera/image_raw"] == faults.expected_counts()["frames"]
    return path


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("rate", ["max", "realtime"])
def test_every_injected_fault_is_counted_and_the_replay_goes_on(fault_bag, tmp_path, storage, rate, capsys):
    out_dir = tmp_path / "out"
    code = replay.main(faults.replay_arguments(fault_bag, rate, storage, out_dir))
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err + captured.out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert faults.counted(summary) == faults.expected_counts()
    assert summary["frames_dropped"] == 0 and summary["worker_errors"] == 0
    assert summary["warnings"]["duplicate_stamp"] == summary["warnings"]["bad_depth"] == 0  # nothing else
    # the good frames around the bad ones: every pair of good frames gives the true rotation; the
    # only pairs without a pose are the blank frame's and the uncalibrated (refused K) frame's
    pairs = json.loads((out_dir / "pairs.json").read_text())
    with_gt = [p for p in pairs if "rotation_error" in p]
    assert len(with_gt) >= 12 and all(p["success"] and p["rotation_error"] < 3.0 for p in with_gt)
    assert sum(not p["success"] for p in pairs) == 2
    # the output bag (written from one thread: sqlite3 refuses others) is complete and readable
    with AnyReader([out_dir / "out_bag"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    processed, first_frames = summary["frames_processed"], 1 + summary["resets"]
    assert counts["/odometry"] == processed and counts["/matches"] == processed - first_frames
    assert counts == summary["out_topics"]
