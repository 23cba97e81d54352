"""Features and matches h5 files in hloc's layout, so that hloc and this package can read each other's.

Features file: one group per image name (the path relative to the image root, "/" kept, so
``seq/0001.png`` is a nested group) holding

- ``keypoints`` (N, 2) float32, pixels of the original image, OpenCV convention (centre of the
  top-left pixel at (0, 0)); COLMAP puts that centre at (0.5, 0.5), so importing adds 0.5
  (as hloc's ``import_features`` does);
- ``scores`` (N,) keypoint scores; ``descriptors`` (D, N) (hloc's channels-first order);
- ``image_size`` (2,) = (W, H) of the original image;
- ``scales``, ``oris`` (N,) when the extractor gives them (SIFT).

Matches file: one group per pair named ``names_to_pair(name0, name1)`` (the two names with "/"
replaced by "-", joined by "/", so a pair is a group ``name0`` holding a subgroup ``name1``),
holding ``matches0`` (N0,) = index into image 1's keypoints or -1, and ``matching_scores0`` (N0,).

Each group is written under a temporary name and moved into place, so an interrupted run never
leaves a half-written image or pair behind; a re-run finds the complete ones and skips them.
The file attribute ``fingerprint`` records the model config that made the contents.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..config import ConfigError
from ..models.extractors.base import num_valid_keypoints

PathLike = str | Path
TMP_PREFIX = "_partial_"  # groups being written; removed when a file is opened again
FEATURE_KEYS = {"keypoints": "keypoints", "keypoint_scores": "scores", "descriptors": "descriptors",
                "scales": "scales", "oris": "oris", "image_size": "image_size"}  # ours -> hloc's


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: each name with '/' made '-', joined by ``separator``."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def open_h5(path: PathLike, mode: str = "r") -> h5py.File:
    """Open an h5 file with a clear error when it is damaged (e.g. a hard crash while writing)."""
    try:
        return h5py.File(str(path), mode, libver="latest")
    except OSError as err:
        if mode == "r" and not Path(path).exists():
            raise FileNotFoundError(f"no h5 file at {path}") from None
        raise OSError(f"cannot open {path} as HDF5 ({err}); it is damaged: delete it to recompute") from None


def check_fingerprint(f: h5py.File, fingerprint: str | None, what: str) -> None:
    """Refuse to mix contents made by different configs in one file; stamp a new file."""
    if fingerprint is None:
        return
    stored = f.attrs.get("fingerprint")
    if stored is None:
        if len(list_names(f)) == 0 and f.mode != "r":
            f.attrs["fingerprint"] = fingerprint
        return
    if stored != fingerprint:
        raise ConfigError(
            f"{f.filename} holds {what} made with another config:\n  stored: {stored}\n  now:    {fingerprint}\n"
            "use another output file or overwrite it"
        )


def fingerprint_of(conf: Any) -> str:
    return json.dumps(conf, sort_keys=True, default=str)


def drop_partial_groups(f: h5py.File) -> None:
    for key in [k for k in f.keys() if k.startswith(TMP_PREFIX)]:
        del f[key]


def _write_group(f: h5py.File, key: str, data: Mapping[str, np.ndarray],
                 attrs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    tmp = f"{TMP_PREFIX}{key.replace('/', '|')}"
    if tmp in f:
        del f[tmp]
    grp = f.create_group(tmp)
    for name, value in data.items():
        grp.create_dataset(name, data=value)
    for name, values in (attrs or {}).items():
        grp[name].attrs.update(values)
    if key in f:
        del f[key]
    f.move(tmp, key)  # creates intermediate groups of nested names ("a/b", pair keys)


def list_names(f: h5py.File) -> list[str]:
    """Names of the complete groups holding datasets (nested names joined with '/'), like hloc."""
    names: set[str] = set()

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and not name.startswith(TMP_PREFIX):
            names.add(obj.parent.name.strip("/"))

    f.visititems(visit)
    return sorted(names)


def features_to_h5(feats: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Batch-of-one features (our contract, torch or numpy) -> hloc's per-image arrays."""
    if "keypoints" not in feats or "descriptors" not in feats:
        raise ValueError(f"features need keypoints and descriptors, got {sorted(feats)}")
    if feats["keypoints"].shape[0] != 1:
        raise ValueError(f"expected the features of one image (batch of 1), got {feats['keypoints'].shape[0]}")
    n = num_valid_keypoints(feats)
    out = {}
    for ours, theirs in FEATURE_KEYS.items():
        if ours not in feats:
            continue
        value = feats[ours]
        value = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        value = value[0]
        if ours == "descriptors":
            value = value[:n].T  # (N, D) -> (D, N)
        elif ours != "image_size":
            value = value[:n]
        out[theirs] = np.ascontiguousarray(value, dtype=np.float32)
    return out


def h5_to_features(data: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """hloc's per-image arrays -> batch-of-one features (our contract) on ``device``."""
    feats = {}
    for ours, theirs in FEATURE_KEYS.items():
        if theirs not in data:
            continue
        value = torch.from_numpy(np.asarray(data[theirs], dtype=np.float32))
        if ours == "descriptors":
            value = value.T
        feats[ours] = value[None].contiguous().to(device)
    if "keypoint_scores" not in feats:
        feats["keypoint_scores"] = torch.ones(feats["keypoints"].shape[:2], device=device)
    return feats


def write_features(f: h5py.File, name: str, feats: Mapping[str, Any]) -> None:
    arrays = features_to_h5(feats)
    _write_group(f, name, arrays, {"keypoints": {"uncertainty": 1.0}})  # hloc reads this attribute


def read_features(f: h5py.File, name: str) -> dict[str, np.ndarray]:
    if name not in f or not isinstance(f[name], h5py.Group) or "keypoints" not in f[name]:
        raise KeyError(f"no features of image '{name}' in {f.filename}")
    return {k: v[()] for k, v in f[name].items() if isinstance(v, h5py.Dataset)}


def read_keypoints(f: h5py.File, name: str) -> np.ndarray:
    if name not in f or "keypoints" not in f[name]:
        raise KeyError(f"no features of image '{name}' in {f.filename}")
    return np.asarray(f[name]["keypoints"][()], dtype=np.float64)


def find_pair(f: h5py.File, name0: str, name1: str) -> tuple[str, bool] | None:
    """Key of a pair in either order (and hloc's older "_" separator), and whether it is reversed."""
    for key, reverse in ((names_to_pair(name0, name1), False), (names_to_pair(name1, name0), True),
                         (names_to_pair(name0, name1, "_"), False), (names_to_pair(name1, name0, "_"), True)):
        if key in f and isinstance(f[key], h5py.Group) and "matches0" in f[key]:
            return key, reverse
    return None


def matches_to_h5(matches: np.ndarray, scores: np.ndarray, num_keypoints0: int) -> dict[str, np.ndarray]:
    """Compact (K, 2) matches and (K,) scores -> hloc's ``matches0`` / ``matching_scores0``."""
    matches0 = np.full(num_keypoints0, -1, np.int32)
    scores0 = np.zeros(num_keypoints0, np.float32)
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    matches0[matches[:, 0]] = matches[:, 1]
    scores0[matches[:, 0]] = scores
    return {"matches0": matches0, "matching_scores0": scores0}


def write_matches(f: h5py.File, name0: str, name1: str, matches: np.ndarray, scores: np.ndarray,
                  num_keypoints0: int) -> None:
    _write_group(f, names_to_pair(name0, name1), matches_to_h5(matches, scores, num_keypoints0))


def read_matches(f: h5py.File, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) indices into (keypoints of name0, keypoints of name1) and (K,) scores, in that order."""
    found = find_pair(f, name0, name1)
    if found is None:
        raise KeyError(f"no matches of the pair ({name0}, {name1}) in {f.filename}; was it in the pairs list?")
    key, reverse = found
    matches0 = f[key]["matches0"][()].astype(np.int64)
    scores0 = f[key]["matching_scores0"][()] if "matching_scores0" in f[key] else np.ones(len(matches0))
    idx = np.flatnonzero(matches0 >= 0)
    matches = np.stack([idx, matches0[idx]], -1)
    return (matches[:, ::-1].copy() if reverse else matches), np.asarray(scores0[idx], np.float32)


def missing_pairs(f: h5py.File | None, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs without matches in ``f`` (either order), duplicates and reversed duplicates removed."""
    seen: set[tuple[str, str]] = set()
    todo = []
    for name0, name1 in pairs:
        if (name0, name1) in seen or (name1, name0) in seen:
            continue
        seen.add((name0, name1))
        if f is None or find_pair(f, name0, name1) is None:
            todo.append((name0, name1))
    return todo
