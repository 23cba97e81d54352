"""A bag of the generated room scene with bad frames injected, and the counts they must produce.

    python -m lightglue_ros.faults OUT_DIR [--storage sqlite3|mcap] [--rate max|realtime]

Good frames (mono8, plus the raw encodings real drivers publish: ``bayer_rggb8``, ``uyvy``)
with, between them, one frame of each bad kind:

- ``bad_encoding``: an unknown encoding (``nv21``); truncated image data;
- ``bad_calibration``: a plumb_bob camera_info with 3 coefficients (padded, then used); one
  whose K is not finite (refused: that frame is matched uncalibrated);
- ``time_jump``: a zero stamp (skipped); a late frame stamped 0.5 s before the previous one
  (time going back: reset); the camera clock jumping 60 s ahead for the rest of the bag (reset);
- ``too_few_matches``: a blank frame.

The bag times (the recorder's clock) stay regular, as a recorder writes them; only the header
stamps are bad. ``expected_counts()`` is what a replay must count; ``main`` makes the bag,
replays it and prints injected against counted, per kind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import conversions as cv
from . import problems
from .make_bag import IMAGE, INFO, BagFrame, bag_topics, frame_messages, synthetic_frames, write_messages

VIEW_FPS = 20.0  # rendered views per second: good frames at 10 Hz, injected ones between them
CLOCK_JUMP_NS = 60 * 10**9
FRAME_ID = "camera_optical"


@dataclass(frozen=True)
class Fault:
    kind: str  # problems reason the replay must count it under
    name: str
    skipped: bool  # the frame is not processed (as opposed to processed in a degraded way)
    resets: int = 0  # tracking restarts it causes
    adds_frame: bool = True  # False: it changes the good frames that follow instead


# after which good frame (index) each fault comes
FAULTS: dict[int, Fault] = {
    1: Fault("bad_encoding", "unknown encoding nv21", skipped=True),
    3: Fault("bad_calibration", "plumb_bob with 3 coefficients", skipped=False),
    5: Fault("time_jump", "zero stamp", skipped=True),
    7: Fault("too_few_matches", "blank frame", skipped=False),
    9: Fault("bad_encoding", "truncated data", skipped=True),
    11: Fault("bad_calibration", "K not finite", skipped=False),
    13: Fault("time_jump", "stamp 0.5 s before the previous frame", skipped=False, resets=1),
    15: Fault("time_jump", "clock jumps 60 s ahead", skipped=False, resets=1, adds_frame=False),
}
NUM_GOOD = 18
RAW_ENCODINGS = {4: "bayer_rggb8", 8: "uyvy"}  # good frames in a driver's raw encoding


def fault_kinds() -> list[str]:
    return [reason for reason in problems.REASONS if any(f.kind == reason for f in FAULTS.values())]


def expected_counts() -> dict[str, int]:
    """Warnings per kind, frames skipped and processed, resets, for a replay of the fault bag."""
    counts = {kind: sum(f.kind == kind for f in FAULTS.values()) for kind in fault_kinds()}
    skipped = sum(f.skipped for f in FAULTS.values())
    frames = NUM_GOOD + sum(f.adds_frame for f in FAULTS.values())
    return {
        **counts,
        "frames": frames,
        "frames_skipped": skipped,
        "frames_processed": frames - skipped,
        "resets": sum(f.resets for f in FAULTS.values()),
    }


def _raw_image(gray: np.ndarray, encoding: str) -> np.ndarray:
    """A gray scene in a raw encoding: its Bayer mosaic is itself; YUV with neutral chroma."""
    if encoding.startswith("bayer_"):
        return gray
    chroma = np.full(gray.shape + (1,), 128, np.uint8)
    return np.concatenate([chroma, gray[..., None]], axis=-1)  # uyvy: U Y0 V Y1


def _image(types: cv.MessageTypes, array: np.ndarray, encoding: str, stamp_ns: int) -> Any:
    return cv.numpy_to_image(types, array, encoding, cv.make_header(types, stamp_ns, FRAME_ID))


def _bad_frame(types: cv.MessageTypes, fault: Fault, view: BagFrame, previous_ns: int, topics: dict[str, str]):
    """The messages (topic, msgtype, message) of one injected frame showing ``view``."""
    stamp, (h, w) = view.stamp_ns, view.image.shape
    info = cv.make_camera_info(types, cv.make_header(types, stamp, FRAME_ID), w, h, view.K)
    image = _image(types, view.image, "mono8", stamp)
    if fault.name == "unknown encoding nv21":
        image.encoding = "nv21"
    elif fault.name == "truncated data":
        image.data = image.data[: len(image.data) // 3]
    elif fault.name == "plumb_bob with 3 coefficients":
        info.d = np.array([1e-4, 0.0, 0.0])
    elif fault.name == "K not finite":
        info.k = np.array([np.nan, 0, w / 2, 0, np.nan, h / 2, 0, 0, 1.0])
    elif fault.name == "zero stamp":
        image = _image(types, view.image, "mono8", 0)
        info = None
    elif fault.name == "blank frame":
        image = _image(types, np.full((h, w), 128, np.uint8), "mono8", stamp)
    elif fault.name == "stamp 0.5 s before the previous frame":
        image = _image(types, view.image, "mono8", previous_ns - 500_000_000)
        info = None  # the camera_info of the frames before it applies
    else:
        return []  # the clock jump shifts the good frames that follow (see fault_bag_messages)
    return ([(topics["info"], INFO, info)] if info is not None else []) + [(topics["image"], IMAGE, image)]


def fault_bag_messages(width: int = 256, height: int = 192, seed: int = 5) -> Iterator[tuple[str, str, int, Any]]:
    """The fault bag's messages ``(topic, msgtype, bag time ns, message)`` in bag-time order.

    The scene is rendered at twice the good frames' rate: the even views are the good frames,
    an odd view is what an injected frame shows (a real view between its neighbours, so that
    the frames around it are matched to it as to any other)."""
    types = cv.rosbags_types()
    topics = bag_topics("/camera")
    views = list(synthetic_frames(2 * NUM_GOOD, width, height, VIEW_FPS, seed=seed, step=0.05))
    shift = 0  # the camera clock's jump, once it happened
    for i in range(NUM_GOOD):
        good, between = views[2 * i], views[2 * i + 1]
        bag_ns = good.stamp_ns  # the recorder's clock stays regular whatever the header stamps say
        good.stamp_ns += shift
        good.depth = None  # monocular: unit steps; depth has its own tests
        for topic, msgtype, _, msg in frame_messages(good, types, topics, FRAME_ID, None):
            if topic == topics["image"] and i in RAW_ENCODINGS:
                msg = _image(types, _raw_image(good.image, RAW_ENCODINGS[i]), RAW_ENCODINGS[i], good.stamp_ns)
            yield topic, msgtype, bag_ns, msg
        if i in FAULTS:
            bag_ns = between.stamp_ns
            between.stamp_ns += shift
            for topic, msgtype, msg in _bad_frame(types, FAULTS[i], between, good.stamp_ns, topics):
                yield topic, msgtype, bag_ns, msg
            if FAULTS[i].name == "clock jumps 60 s ahead":
                shift += CLOCK_JUMP_NS


def write_fault_bag(out: Path, storage: str = "sqlite3", overwrite: bool = False) -> dict[str, int]:
    return write_messages(fault_bag_messages(), out, storage, overwrite)


def counted(summary: dict[str, Any]) -> dict[str, int]:
    """The replay summary's figures under ``expected_counts()``'s keys."""
    warnings = summary["warnings"]
    return {
        **{kind: warnings[kind] for kind in fault_kinds()},
        "frames": summary["frames_read"],
        "frames_skipped": summary["frames_skipped"],
        "frames_processed": summary["frames_processed"],
        "resets": summary["resets"],
    }


def replay_arguments(bag: Path, rate: str, storage: str, out_dir: Path) -> list[str]:
    """``python -m lightglue_ros.replay`` arguments for the fault bag: with a queue long enough
    that the realtime worker drops nothing, so that every injected frame is seen."""
    return [
        str(bag), "--rate", rate, "--speed", "4", "--storage", storage, "--out-dir", str(out_dir),
        "--no-plots", "--quiet", "-p", "max_keypoints=512", "-p", "queue_size=100",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from . import replay

    parser = argparse.ArgumentParser(
        prog="python -m lightglue_ros.faults", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    parser.add_argument("--rate", choices=("max", "realtime"), default="max")
    args = parser.parse_args(argv)
    bag = args.out_dir / f"fault_bag_{args.storage}"
    write_fault_bag(bag, args.storage, overwrite=True)
    # a queue long enough that the realtime worker drops nothing: every injected frame is seen
    out_dir = args.out_dir / f"replay_{args.storage}_{args.rate}"
    result = replay.run(replay.parse_args([*replay_arguments(bag, args.rate, args.storage, out_dir), "--overwrite"]))
    expected, got = expected_counts(), counted(result.summary)
    print(f"{'count':<18} {'injected':>8} {'counted':>8}")
    for key in expected:
        print(f"{key:<18} {expected[key]:>8} {got[key]:>8}" + ("" if expected[key] == got[key] else "  MISMATCH"))
    return 0 if expected == got else 1


if __name__ == "__main__":
    sys.exit(main())
