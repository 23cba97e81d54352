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


def match_chunk(pipeline: Pipeline, cache: FeatureCache, chunk: Sequence[Pair],
                batched: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(matches, scores) of each pair of ``chunk``: one batched call, or pair by pair with the
    images' cached encodings; pairs with too few keypoints get no matches without the matcher."""
    frames = [(cache[name0], cache[name1]) for name0, name1 in chunk]
    empty = (np.zeros((0, 2), np.int64), np.zeros(0, np.float32))
    runnable = [i for i, (f0, f1) in enumerate(frames) if min(f0.num_keypoints, f1.num_keypoints)
                >= MIN_KEYPOINTS_TO_MATCH]
    results: list[tuple[np.ndarray, np.ndarray]] = [empty] * len(chunk)
    if batched:
        preds = pipeline.match_features_batch([(frames[i][0].features, frames[i][1].features) for i in runnable])
    else:
        preds = [pipeline.match_features(f0.features, f1.features, (f0.matcher_state, f1.matcher_state))
                 for f0, f1 in (frames[i] for i in runnable)]
    for i, pred in zip(runnable, preds, strict=True):
        results[i] = (pred.matches, pred.scores)
    return results


def matches_fingerprint(pipeline: Pipeline, features_fingerprint: str) -> str:
    return h5io.fingerprint_of({"features": features_fingerprint, "matcher": to_container(pipeline.matcher.conf)})


def check_pairs_have_features(pairs: Sequence[Pair], features: h5py.File) -> None:
    names = set(h5io.list_names(features))
    missing = sorted({n for pair in pairs for n in pair if n not in names})
    if missing:
        raise KeyError(f"{features.filename} has no features of {len(missing)} image(s) named in the pairs "
                       f"(unreadable or not extracted): {', '.join(missing[:10])}")


def match_pairs(pipeline: Pipeline, pairs: Sequence[Pair], features_path: str | Path, matches_path: str | Path,
                overwrite: bool = False, cache_size: int = 64, write_every: int = 32,
                batch_size: int = 1) -> MatchingReport:
    """Match every pair (either order counts once) that is not yet in ``matches_path``.

    ``batch_size`` > 1 matches that many pairs per call where the matcher gives the same matches
    in a padded batch (``Pipeline.match_features_batch``: LightGlue at full depth), the way to
    use a GPU; otherwise, and for single pairs, each pair reuses its images' cached encodings.
    On a CPU pair by pair is faster (28 pairs, 2048 keypoints, bf16: 202 ms per pair, 245 in
    batches of 8: padding to the largest set, no reuse)."""
    if int(batch_size) < 1:
        raise ValueError(f"match_pairs: batch_size must be >= 1, got {batch_size}")
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
        batched = int(batch_size) > 1 and pipeline.batches_pairs()
        step = int(batch_size) if batched else 1
        with tqdm(total=len(todo), desc="matching pairs", unit="pair", disable=not todo) as progress:
            for start_index in range(0, len(todo), step):
                chunk = todo[start_index:start_index + step]
                for (name0, name1), (matches, scores) in zip(chunk, match_chunk(pipeline, cache, chunk, batched),
                                                             strict=True):
                    h5io.write_matches(out, name0, name1, matches, scores, cache[name0].num_keypoints)
                    report.matched.append((name0, name1))
                    report.num_matches[(name0, name1)] = len(matches)
                    if len(report.matched) % write_every == 0:
                        out.flush()
                progress.update(len(chunk))
    report.seconds = time.perf_counter() - start
    return report
