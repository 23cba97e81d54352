"""Match image pairs from a features h5 file into a matches h5 file (hloc's layout).

Features are read once per image and kept in a small LRU cache on the pipeline's device, so
that sequential and exhaustive pair lists read each image's features a few times at most; with
them the matcher's per-image work (LightGlue: input projection, positional encoding, layer 0's
self-attention) is kept and reused in the image's next pairs. Matches are written in batches
(one flush per batch). Pairs already in the file are skipped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..config import to_container
from ..models.pipeline import Frame, Pipeline
from . import h5io
from .pairs import Pair

MIN_KEYPOINTS_TO_MATCH = 2  # below this a pair gets an empty match list without running the matcher


@dataclass
class MatchingReport:
    matched: list[Pair] = field(default_factory=list)
    skipped: list[Pair] = field(default_factory=list)  # already in the file
    num_matches: dict[Pair, int] = field(default_factory=dict)
    seconds: float = 0.0


class FeatureCache:
    """The ``size`` most recently used images as frames (features ready for the matcher, and
    the matcher's own per-image state)."""

    def __init__(self, features: h5py.File, device: torch.device, size: int = 64) -> None:
        self.features, self.device, self.size = features, device, size
        self.cache: OrderedDict[str, Frame] = OrderedDict()
        self.reads = 0

    def __getitem__(self, name: str) -> Frame:
        if name in self.cache:
            self.cache.move_to_end(name)
            return self.cache[name]
        frame = Frame(h5io.h5_to_features(h5io.read_features(self.features, name), self.device), index=self.reads)
        self.reads += 1
        self.cache[name] = frame
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return frame


def matches_fingerprint(pipeline: Pipeline, features_fingerprint: str) -> str:
    return h5io.fingerprint_of({"features": features_fingerprint, "matcher": to_container(pipeline.matcher.conf)})


def check_pairs_have_features(pairs: Sequence[Pair], features: h5py.File) -> None:
    names = set(h5io.list_names(features))
    missing = sorted({n for pair in pairs for n in pair if n not in names})
    if missing:
        raise KeyError(f"{features.filename} has no features of {len(missing)} image(s) named in the pairs "
                       f"(unreadable or not extracted): {', '.join(missing[:10])}")


def match_pairs(pipeline: Pipeline, pairs: Sequence[Pair], features_path: str | Path, matches_path: str | Path,
                overwrite: bool = False, cache_size: int = 64, write_every: int = 32) -> MatchingReport:
    """Match every pair (either order counts once) that is not yet in ``matches_path``."""
    start = time.perf_counter()
    matches_path = Path(matches_path)
    if overwrite:
        matches_path.unlink(missing_ok=True)
    matches_path.parent.mkdir(parents=True, exist_ok=True)
    report = MatchingReport()
    with h5io.open_h5(features_path, "r") as feats_file, h5io.open_h5(matches_path, "a") as out:
        check_pairs_have_features(pairs, feats_file)
        h5io.drop_partial_groups(out)
        h5io.check_fingerprint(out, matches_fingerprint(pipeline, feats_file.attrs.get("fingerprint", "")),
                               "matches")
        unique = h5io.missing_pairs(None, pairs)
        todo = h5io.missing_pairs(out, unique)
        report.skipped = [p for p in unique if p not in set(todo)]
        cache = FeatureCache(feats_file, pipeline.device, cache_size)
        for i, (name0, name1) in enumerate(tqdm(todo, desc="matching pairs", unit="pair", disable=not todo)):
            frame0, frame1 = cache[name0], cache[name1]
            n0, n1 = frame0.num_keypoints, frame1.num_keypoints
            if min(n0, n1) < MIN_KEYPOINTS_TO_MATCH:
                matches, scores = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
            else:
                pred = pipeline.match_features(frame0.features, frame1.features,
                                               (frame0.matcher_state, frame1.matcher_state))
                matches, scores = pred.matches, pred.scores
            h5io.write_matches(out, name0, name1, matches, scores, n0)
            report.matched.append((name0, name1))
            report.num_matches[(name0, name1)] = len(matches)
            if (i + 1) % write_every == 0:
                out.flush()
    report.seconds = time.perf_counter() - start
    return report
