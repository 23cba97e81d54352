"""Warnings of the frame path: counted per reason (for ``/diagnostics``) and rate-limited in the log.

A camera that sends every frame with an unsupported encoding would otherwise write one warning
per frame; here the first warning of a kind is always logged, the next ones at most once per
``throttle_s`` seconds with the number left out in between, and every one is counted.

``Throttle`` is the rate limiter alone (also used by the rclpy logger adapter, ``RosLog``);
``Problems`` adds the per-reason counts the diagnostics publish.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

# the reasons a frame (or a part of it) is not used as sent; the keys of the diagnostics counts
BAD_ENCODING = "bad_encoding"  # unknown encoding, truncated data, step / size mismatch
BAD_CALIBRATION = "bad_calibration"  # K not usable, distortion vector that does not fit its model
TIME_JUMP = "time_jump"  # zero stamp, time going back, a gap larger than max_time_gap
DUPLICATE_STAMP = "duplicate_stamp"  # the same stamp as the previous frame
TOO_FEW_MATCHES = "too_few_matches"  # fewer matches or inliers than min_matches
BAD_DEPTH = "bad_depth"  # a depth image that cannot be used (encoding, size)
SIZE_MISMATCH = "size_mismatch"  # stereo: left and right differ in size
TRACKING_LOST = "tracking_lost"  # several frames without a pose: the reference is replaced
REASONS = (
    BAD_ENCODING,
    BAD_CALIBRATION,
    TIME_JUMP,
    DUPLICATE_STAMP,
    TOO_FEW_MATCHES,
    BAD_DEPTH,
    SIZE_MISMATCH,
    TRACKING_LOST,
)


class Throttle:
    """Lets a message through once per ``period_s`` per key; counts the ones held back."""

    _NUMBER = re.compile(r"\d+(?:\.\d+)?")

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = float(period_s)
        self.clock = clock
        self._last: dict[str, list] = {}  # key -> [time let through, messages held back since]
        self._lock = threading.Lock()

    @classmethod
    def key_of(cls, text: str) -> str:
        """The text up to its numbers: 'frame at 1.25 s' and 'frame at 9.5 s' are the same warning."""
        return cls._NUMBER.sub("#", text)

    def admit(self, key: str) -> int | None:
        """None to hold the message back, else the number held back since the last one let through."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.period_s:
                last[1] += 1
                return None
            held = last[1] if last is not None else 0
            self._last[key] = [now, 0]
            if len(self._last) > 256:  # keys of warnings long gone
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.period_s}
        return held


def with_held_count(text: str, held: int) -> str:
    return text + (f" ({held} similar warning(s) not shown since the last one)" if held else "")


class Problems:
    """Per-reason counts and rate-limited warnings (one throttle key per reason)."""

    def __init__(self, log: logging.Logger | Any, throttle_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.throttle = Throttle(throttle_s, clock)
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def warn(self, reason: str, message: str) -> None:
        """Count ``reason`` and log ``message`` unless one of the same reason was logged lately."""
        if reason not in REASONS:
            raise ValueError(f"unknown problem reason '{reason}' (known: {', '.join(REASONS)})")
        with self._lock:
            self.counts[reason] += 1
        held = self.throttle.admit(reason)
        if held is not None:
            self.log.warning(with_held_count(f"[{reason}] {message}", held))

    def values(self) -> dict[str, int]:
        """``warnings_<reason>`` for every reason (zeros included: a dashboard wants stable keys)."""
        with self._lock:
            return {f"warnings_{reason}": int(self.counts[reason]) for reason in REASONS}
