"""Training checkpoints: atomic files, RNG states, and where an experiment keeps them.

A checkpoint is a dict saved with ``torch.save`` into memory, then written with
:func:`featmatch_core.files.atomic_write_bytes` (temporary file beside the target, fsync,
``os.replace``) and the folder fsynced: a crash at any moment leaves either the previous
file or the new one, never a truncated file under the final name.

Contents (``CHECKPOINT_FORMAT`` 1): ``model`` (state_dict of the bare model), ``optimizer``,
``scheduler`` (:class:`~featmatch_core.train.schedule.LRSchedule` state), ``scaler``
(GradScaler state, empty when unused), ``rng`` (one RNG state per process: python, numpy,
torch, cuda), ``epoch`` and ``epoch_step`` (the position of the next batch: epoch index and
batches of it already done), ``step`` (optimizer steps done), ``conf``, ``best`` (best
validation value of ``best_key``), ``best_key``, ``world_size``, ``results`` (last validation),
``replica_digests`` (one :func:`weights_digest` per process: equal unless replicas diverged).
Everything is a tensor or a plain Python value, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write_bytes

CHECKPOINT_FORMAT = 1
LAST = "checkpoint_last.tar"
BEST = "checkpoint_best.tar"
CONFIG = "config.yaml"
METRICS = "metrics.csv"

PathLike = str | Path


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or would hold non-finite weights."""


# ---- RNG ----------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch (and CUDA when initialised), as plain values/tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block (validation, benchmarks, checks) without changing the training RNG stream."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# ---- files ----------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def assert_finite_weights(state_dict: Mapping[str, torch.Tensor], where: str = "") -> None:
    """Refuse to write weights with NaN/Inf (the previous checkpoint must survive)."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"refusing to save a checkpoint{where}: parameter '{name}' has NaN/Inf "
                                  "values; the previous checkpoint is left untouched")


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the tensors' bytes: equal on every data-parallel replica, or they diverged."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        if torch.is_tensor(value):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Serialise ``state`` in memory, then write it atomically to ``path``."""
    path = Path(path)
    assert_finite_weights(state["model"], f" to {path}")
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling error becomes one readable message
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint (no 'model' entry)")
    return state


def checkpoint_step(path: PathLike) -> int:
    return int(load_checkpoint(path)["step"])


def latest_checkpoint(exp_dir: PathLike) -> Path | None:
    """The checkpoint (last or best) with the most steps, None if there is none.

    ``best`` can be newer than ``last`` when a validation improved after the last save
    and the process was killed before the next one.
    """
    exp_dir = Path(exp_dir)
    found = [p for p in (exp_dir / LAST, exp_dir / BEST) if p.is_file()]
    if not found:
        return None
    return max(found, key=checkpoint_step)


def weights_checkpoint(source: str, training_root: PathLike) -> Path:
    """``train.load_experiment``: a checkpoint file, or an experiment name (best, else last)."""
    as_path = Path(source)
    if as_path.suffix in (".tar", ".pth", ".pt") and as_path.is_file():
        return as_path
    exp_dir = Path(training_root) / source
    for name in (BEST, LAST):
        if (exp_dir / name).is_file():
            return exp_dir / name
    raise CheckpointError(f"train.load_experiment='{source}': neither a checkpoint file nor an experiment "
                          f"with {BEST} or {LAST} in {exp_dir}")


def remove_stale_temporaries(exp_dir: PathLike) -> list:
    """Delete temporary files left by a process killed during a checkpoint write."""
    removed = []
    for tmp in Path(exp_dir).glob(".checkpoint_*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def finite_or_inf(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.inf
