"""The generic trainer: any model with ``forward(batch)`` and ``loss(pred, batch)``.

Configuration: three sections, ``data`` and ``model`` (validated by the dataset builder and
the model, see :mod:`featmatch_core.train.registry`) and ``train`` (:data:`TRAIN_DEFAULTS`,
strict: a misspelt key raises). Outputs of an experiment, all written by process 0:

    outputs/training/EXPERIMENT/
        config.yaml            the merged configuration
        checkpoint_last.tar    latest state (atomic writes, see checkpoints.py)
        checkpoint_best.tar    state with the best validation value of train.best_key
        metrics.csv            step,epoch,split,key,value (train averages, val means, benchmarks)
        events.out.tfevents.*  TensorBoard (train/..., val/..., benchmark/...; x axis: steps)

Exact resumption: the learning rate is a function of (step, epoch); each epoch's data order
comes from a sampler seeded with (seed, epoch); DataLoader workers are seeded from a
generator seeded with (seed, epoch, rank); validation and benchmarks leave the RNGs as they
found them; a checkpoint holds every process's RNG state, taken where the next batch is
drawn. How ``--restore`` skips the batches of the interrupted epoch already trained on
(``train.resume_skip``): ``replay`` loads them again and drops them (exact for any dataset,
even with random augmentations drawn in DataLoader workers, but costs their loading time);
``sampler`` skips their indices without loading them (exact when a sample depends only on
its index, as in seeded-per-index datasets, or with ``num_workers: 0``); ``auto`` (default)
is ``sampler`` with ``num_workers: 0`` and ``replay`` otherwise.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, default_collate
from tqdm import tqdm

from ..config import ConfigError, ConfLike, merge_strict, parse_dotlist, to_container
from ..device import autocast, gpu_busy_percent, resolve_device
from ..files import atomic_write_bytes
from . import checkpoints as ckpt
from . import distributed
from .registry import build_train_datasets, build_train_model, check_names, place_extractor, resolve_callable
from .schedule import SCHEDULE_DEFAULTS, LRSchedule, check_schedule_conf

logger = logging.getLogger(__name__)

TRAINING_ROOT = Path("outputs/training")

TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "epochs": 1,
    "max_steps": None,  # stop after this many optimizer steps in total (None: epochs only)
    "batch_size": 8,  # global batch, split evenly across distributed processes
    "val_batch_size": None,  # default: batch_size
    "num_workers": 0,  # DataLoader workers per process
    "optimizer": "adam",  # adam | adamw | sgd
    "lr": 1e-4,
    "weight_decay": 0.0,
    "lr_schedule": dict(SCHEDULE_DEFAULTS),
    "clip_grad": None,  # max gradient norm (None: no clipping)
    "mixed_precision": None,  # None | bf16 | fp16 (fp16 on CUDA only, with a GradScaler)
    "grad_checkpointing": False,  # passed to model.set_gradient_checkpointing
    "log_every_iter": 100,
    "eval_every_iter": None,  # extra validations every N steps; always at the end of an epoch
    "max_val_batches": None,  # cap validation batches per process (None: the whole set)
    "save_every_iter": 1000,  # checkpoint_last every N steps; always at the end of an epoch
    "best_key": "loss/total",  # validation value to minimise for checkpoint_best
    "load_experiment": None,  # initial weights: experiment name (best, else last) or a .tar path
    "device": "auto",
    "world_size": None,  # --distributed: processes (None: all GPUs, or 2 on CPU)
    "ddp_find_unused_parameters": False,
    "run_benchmarks": [],  # "module:function"s called with (model, config) after each epoch, e.g.
    # featmatch_core.train.benchmarks:homographies
    "resume_skip": "auto",  # auto | replay | sampler: how --restore skips the batches already done
}
CONFIG_DEFAULTS: dict[str, Any] = {"data": {}, "model": {}, "train": TRAIN_DEFAULTS}
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
PRECISIONS = {None: "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN/Inf; training stopped before the update."""


# ---- configuration --------------------------------------------------------------------
def _check_known_keys(defaults: Mapping[str, Any], conf: Mapping[str, Any], prefix: str,
                      recurse: bool = True) -> None:
    for key, value in conf.items():
        if key not in defaults:
            where = f"of '{prefix.rstrip('.')}'" if prefix else "(sections)"
            raise ConfigError(f"unknown config key '{prefix}{key}'. Valid keys {where}: {sorted(defaults)}")
        if recurse and isinstance(defaults[key], Mapping) and isinstance(value, Mapping):
            _check_known_keys(defaults[key], value, f"{prefix}{key}.")


def _check_optional_int(train: Mapping[str, Any], key: str, minimum: int) -> None:
    value = train[key]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ConfigError(f"train.{key} must be null or an integer >= {minimum}, got {value!r}")


def _check_train_values(train: Mapping[str, Any]) -> None:
    """Ranges and choices that merge_strict's type check does not cover."""
    for key in ("epochs", "batch_size", "log_every_iter"):
        if train[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {train[key]}")
    if train["num_workers"] < 0:
        raise ConfigError("train.num_workers must be >= 0")
    for key in ("max_steps", "val_batch_size", "eval_every_iter", "max_val_batches", "save_every_iter",
                "world_size"):
        _check_optional_int(train, key, 1)
    if train["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer: unknown '{train['optimizer']}', "
                          f"expected one of {sorted(OPTIMIZERS)}")
    if train["mixed_precision"] not in PRECISIONS:
        raise ConfigError("train.mixed_precision must be null, bf16 or fp16, "
                          f"got {train['mixed_precision']!r}")
    clip = train["clip_grad"]
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError(f"train.clip_grad must be null or a positive number, got {clip!r}")
    if train["resume_skip"] not in ("auto", "replay", "sampler"):
        raise ConfigError(f"train.resume_skip must be auto, replay or sampler, got {train['resume_skip']!r}")
    if train["load_experiment"] is not None and not isinstance(train["load_experiment"], str):
        raise ConfigError("train.load_experiment must be null, an experiment name or a checkpoint path")
    if not isinstance(train["best_key"], str):
        raise ConfigError("train.best_key must be a string such as loss/total")
    check_schedule_conf(train["lr_schedule"])


def _check_precision(train: Mapping[str, Any]) -> None:
    device = resolve_device(train["device"])
    if PRECISIONS[train["mixed_precision"]] == "fp16" and device.type != "cuda":
        raise ConfigError("train.mixed_precision=fp16 needs CUDA (GradScaler); on CPU use bf16 or null")


def validate_config(conf: ConfLike) -> DictConfig:
    """Defaults + checks of the train section, and known model/data names."""
    plain = to_container(conf)
    _check_known_keys(CONFIG_DEFAULTS, plain, "", recurse=False)  # data/model: checked by their owners
    _check_known_keys(TRAIN_DEFAULTS, plain.get("train") or {}, "train.")
    merged = merge_strict(CONFIG_DEFAULTS, plain, owner="training config", open_keys=("data", "model"))
    train = to_container(merged.train)
    _check_train_values(train)
    _check_precision(train)
    place_extractor(merged, resolve_device(train["device"]))
    check_names(merged)
    for spec in train["run_benchmarks"]:
        resolve_callable(spec, "train.run_benchmarks entry")
    return merged


def load_config(conf_path: str | Path | None = None, overrides: list[str] = (),
                base: ConfLike = None) -> DictConfig:
    """``base`` (e.g. a restored experiment's config) < YAML file < ``key=value`` overrides."""
    conf = OmegaConf.create(to_container(base))
    if conf_path is not None:
        path = Path(conf_path)
        if not path.is_file():
            raise ConfigError(f"no training config at {path}")
        conf = OmegaConf.merge(conf, OmegaConf.load(path))
    if overrides:
        conf = OmegaConf.merge(conf, parse_dotlist(list(overrides)))
    return validate_config(conf)


def check_experiment_dir(exp_dir: Path, restore: bool) -> None:
    """A new run must not overwrite checkpoints; --restore needs one."""
    existing = [p for p in (exp_dir / ckpt.LAST, exp_dir / ckpt.BEST) if p.is_file()]
    if restore and not existing:
        raise ckpt.CheckpointError(f"--restore: no {ckpt.LAST} or {ckpt.BEST} in {exp_dir}")
    if not restore and existing:
        raise ConfigError(f"experiment {exp_dir} already has checkpoints: continue it with --restore, "
                          "or choose another experiment name (or delete the folder)")


# ---- small helpers ---------------------------------------------------------------------
def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def flatten_outputs(losses: Mapping[str, torch.Tensor], metrics: Mapping[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
    """``{"loss/<k>": (B,), <metric>: (B,)}``, checking the model's loss() contract."""
    if not isinstance(losses, Mapping) or "total" not in losses:
        raise TypeError("model.loss(pred, batch) must return (losses, metrics) with losses['total'] "
                        f"(dicts of (B,) tensors); got losses={type(losses).__name__} "
                        f"with keys {list(losses) if isinstance(losses, Mapping) else None}")
    numbers = {f"loss/{k}": v for k, v in losses.items()}
    numbers.update(metrics or {})
    for key, value in numbers.items():
        if not torch.is_tensor(value) or value.dim() > 1:
            raise TypeError(f"model.loss(): '{key}' must be a (B,) tensor, got "
                            f"{tuple(value.shape) if torch.is_tensor(value) else type(value).__name__}")
    return numbers


def _loader_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class RunningMeans:
    """Averages of the per-step training numbers between two log lines, plus timing."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.samples = 0
        self.data_time = 0.0
        self.step_time = 0.0

    def update(self, numbers: Mapping[str, float], samples: int, data_time: float, step_time: float) -> None:
        for key, value in numbers.items():
            self.sums[key] += value
        self.steps += 1
        self.samples += samples
        self.data_time += data_time
        self.step_time += step_time

    def averages(self) -> dict[str, float]:
        out = {k: v / max(self.steps, 1) for k, v in self.sums.items()}
        seconds = self.data_time + self.step_time
        out["samples_per_s"] = self.samples / seconds if seconds > 0 else 0.0
        out["data_time"] = self.data_time / max(self.steps, 1)
        out["step_time"] = self.step_time / max(self.steps, 1)
        return out


class MetricsCSV:
    """Long-format CSV (step, epoch, split, key, value), appended as training goes."""

    HEADER = ["step", "epoch", "split", "key", "value"]

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.HEADER)

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps after ``step`` (logged by a run killed after its last checkpoint)."""
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        if len(kept) != len(rows):
            lines = "".join(",".join(r) + "\n" for r in kept)
            atomic_write_bytes(self.path, lines.encode())

    def write(self, step: int, epoch: int, split: str, values: Mapping[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            for key in sorted(values):
                writer.writerow([step, epoch, split, key, repr(float(values[key]))])


# ---- the trainer -------------------------------------------------------------------------
class Trainer:
    """Trains ``conf.model`` on ``conf.data`` into ``exp_dir``.

    Units: :meth:`setup_distributed`, :meth:`setup`, :meth:`train_step`, :meth:`evaluate`,
    :meth:`save_checkpoint`, :meth:`load_checkpoint`, :meth:`fit`. In a distributed run every
    process builds one Trainer with its ``rank`` (see :func:`train`).

    Position: ``step`` = optimizer steps done; ``epoch`` / ``epoch_step`` = the epoch of the
    next batch and how many of its batches are done.
    """

    def __init__(self, conf: ConfLike, exp_dir: str | Path, *, restore: bool = False,
                 run_benchmarks: bool = False, rank: int = 0, world_size: int = 1,
                 port: int | None = None) -> None:
        self.conf = validate_config(conf)
        self.tconf = self.conf.train
        self.exp_dir = Path(exp_dir)
        self.restore = restore
        self.rank, self.world_size, self.port = rank, world_size, port
        self.is_main = rank == 0
        self.precision = PRECISIONS[self.tconf.mixed_precision]
        if self.tconf.batch_size % world_size:
            raise ConfigError(f"train.batch_size={self.tconf.batch_size} must be divisible by the "
                              f"{world_size} distributed processes (it is the global batch size)")
        check_experiment_dir(self.exp_dir, restore)
        self.init_weights: Path | None = None
        if self.tconf.load_experiment and not restore:
            self.init_weights = ckpt.weights_checkpoint(self.tconf.load_experiment, self.exp_dir.parent)
        self.benchmarks: list[tuple[str, Callable]] = []
        if run_benchmarks:
            self.benchmarks = [(s, resolve_callable(s, "train.run_benchmarks entry"))
                               for s in self.tconf.run_benchmarks]
        self.step, self.epoch, self.epoch_step = 0, 0, 0
        self.best = math.inf
        self.last_results: dict[str, float] = {}
        self.last_saved: tuple[Path | None, int] = (None, 0)
        self.last_step_samples = 0
        self.samples_seen, self.train_time = 0, 0.0
        self.gpu_busy: list[float] = []  # NVML readings after each step (CUDA only)
        self.writer = None
        self.csv: MetricsCSV | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._is_setup = False

    # ---- setup ------------------------------------------------------------------------------
    def setup_distributed(self) -> torch.device:
        """Join the process group when ``world_size > 1``; returns this process's device."""
        device = resolve_device(self.tconf.device)
        if self.world_size > 1:
            if self.port is None:
                raise ValueError("a distributed Trainer needs the port of the process group")
            device = distributed.init_process_group(self.rank, self.world_size, self.port, device)
            if device.type == "cpu":  # share the cores instead of oversubscribing them
                torch.set_num_threads(max(1, torch.get_num_threads() // self.world_size))
        return device

    def setup(self) -> None:
        """Build everything, in an order that fails fast: data, model, weights, loaders."""
        if self._is_setup:
            return
        self.device = self.setup_distributed()
        if self.is_main:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.exp_dir)
            atomic_write_bytes(self.exp_dir / ckpt.CONFIG, OmegaConf.to_yaml(self.conf).encode())
        ckpt.seed_everything(self.tconf.seed)
        self.train_set, self.val_set = build_train_datasets(self.conf)
        self.model = self.build_model()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ConfigError("the model has no trainable parameter")
        self.optimizer = OPTIMIZERS[self.tconf.optimizer](self.trainable, lr=self.tconf.lr,
                                                          weight_decay=self.tconf.weight_decay)
        self.schedule = LRSchedule(self.optimizer, self.tconf.lr_schedule)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if self.restore:
            self.load_checkpoint(ckpt.latest_checkpoint(self.exp_dir))
        elif self.init_weights is not None:
            self.load_weights(self.init_weights)
        self.net = self.model
        if self.world_size > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.tconf.ddp_find_unused_parameters)
        self.build_loaders()
        self.check_interface()
        if not self.restore:
            ckpt.seed_everything(self.tconf.seed + self.rank)
        self.open_logs()
        self._is_setup = True

    def build_model(self) -> torch.nn.Module:
        model = build_train_model(self.conf)
        setter = getattr(model, "set_gradient_checkpointing", None)
        if self.tconf.grad_checkpointing and not callable(setter):
            raise ConfigError(f"train.grad_checkpointing=true but {type(model).__name__} has no "
                              "set_gradient_checkpointing(bool) method")
        if callable(setter):
            setter(bool(self.tconf.grad_checkpointing))
        return model.to(self.device).train()

    def build_loaders(self) -> None:
        t = self.tconf
        local_batch = t.batch_size // self.world_size
        if len(self.val_set) < self.world_size:
            raise ConfigError(f"the validation set has {len(self.val_set)} samples, fewer than the "
                              f"{self.world_size} processes")
        self.train_sampler = distributed.ResumableSampler(self.train_set, self.world_size, self.rank,
                                                          seed=t.seed, shuffle=True)
        self.loader_generator = torch.Generator()
        pin = self.device.type == "cuda"
        self.train_loader = DataLoader(self.train_set, batch_size=local_batch, sampler=self.train_sampler,
                                       num_workers=t.num_workers, collate_fn=default_collate, drop_last=True,
                                       pin_memory=pin, generator=self.loader_generator)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training set ({len(self.train_set)} samples, "
                              f"{self.train_sampler.num_samples} per process) is smaller than one batch "
                              f"({local_batch} per process)")
        val_batch = max(1, (t.val_batch_size or t.batch_size) // self.world_size)
        self.val_loader = DataLoader(self.val_set, batch_size=val_batch, num_workers=t.num_workers,
                                     sampler=distributed.ShardSampler(len(self.val_set), self.world_size,
                                                                      self.rank),
                                     collate_fn=default_collate, pin_memory=pin)

    def check_interface(self) -> None:
        """One validation batch before training: the model/loss contract and best_key."""
        results = self.evaluate(self.val_loader, max_batches=1)
        if self.tconf.best_key not in results:
            raise ConfigError(f"train.best_key '{self.tconf.best_key}' is not among the validation values "
                              f"{sorted(results)}")

    def open_logs(self) -> None:
        if not self.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        purge = self.step + 1 if self.step else None  # drop events logged after the restored checkpoint
        self.writer = SummaryWriter(log_dir=str(self.exp_dir), purge_step=purge)
        self.csv = MetricsCSV(self.exp_dir / ckpt.METRICS)
        if self.restore:
            self.csv.truncate_after(self.step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # ---- checkpoints ----------------------------------------------------------------------
    def position(self) -> tuple[int, int]:
        """(epoch, batches done in it) of the next batch; an epoch's end is the next one's start."""
        if self.epoch_step >= self.steps_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.epoch_step

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue; collective in a distributed run (gathers RNG states)."""
        epoch, epoch_step = self.position()
        return {
            "format": ckpt.CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": distributed.gather_objects(ckpt.get_rng_state()),
            "epoch": epoch,
            "epoch_step": epoch_step,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world_size,
            "conf": to_container(self.conf),
            "best": self.best,
            "best_key": self.tconf.best_key,
            "results": dict(self.last_results),
            "replica_digests": distributed.gather_objects(ckpt.weights_digest(self.model.state_dict())),
        }

    def save_checkpoint(self, name: str = ckpt.LAST) -> Path | None:
        """Write ``name`` atomically (process 0); never writes non-finite weights."""
        state = self.checkpoint_state()
        path = self.exp_dir / name
        if self.is_main:
            if len(set(state["replica_digests"])) > 1:
                logger.warning("the %d data-parallel replicas have different weights at step %d",
                               self.world_size, self.step)
            ckpt.save_checkpoint(path, state)
        self.last_saved = (path, self.step)  # on every process, for their error messages
        return path if self.is_main else None

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore model, optimizer, schedule, scaler, position, best value; the RNG state is
        applied when the data stream reaches the saved position (see :meth:`epoch_batches`)."""
        state = ckpt.load_checkpoint(path, map_location="cpu")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.epoch_step = int(state["epoch_step"])
        self.best = float(state["best"])
        self.last_results = dict(state.get("results") or {})
        self.last_saved = (Path(path), self.step)
        rngs = state["rng"]
        if len(rngs) == self.world_size:
            self._pending_rng = rngs[self.rank]
        else:
            logger.warning("checkpoint from %d processes, resuming with %d: the data order and random "
                           "streams will differ from an uninterrupted run", len(rngs), self.world_size)
            self._pending_rng = rngs[0]
        if self.is_main:
            logger.info("restored %s: step %d, epoch %d (+%d batches)", path, self.step, self.epoch,
                        self.epoch_step)
        return state

    def load_weights(self, path: Path) -> None:
        """``train.load_experiment``: model weights only (strict, readable mismatch errors)."""
        from ..models.base import strict_load

        state = ckpt.load_checkpoint(path, map_location="cpu")
        strict_load(self.model, state["model"], origin=str(path))
        if self.is_main:
            logger.info("initial weights from %s (step %s)", path, state.get("step"))

    # ---- steps ----------------------------------------------------------------------------
    def _nan_error(self, what: str, values: Mapping[str, float]) -> NonFiniteLossError:
        path, step = self.last_saved
        kept = (f"the last good checkpoint {path} (step {step}) is left untouched" if path
                else "no checkpoint had been written yet")
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
        return NonFiniteLossError(f"non-finite {what} at step {self.step + 1} (epoch {self.epoch}, batch "
                                  f"{self.epoch_step + 1}): {shown}. Training stopped before the update; "
                                  f"{kept}. Lower train.lr, set train.clip_grad, or check the data.")

    def _grad_norm(self) -> torch.Tensor:
        if self.tconf.clip_grad:
            return torch.nn.utils.clip_grad_norm_(self.trainable, self.tconf.clip_grad)
        grads = [p.grad for p in self.trainable if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.nn.utils.get_total_norm(grads)

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimizer step on ``batch``; returns batch means of losses and metrics, lr, grad norm.

        Raises NonFiniteLossError (on every process) before touching the weights when the
        loss or, without a GradScaler, the gradients are NaN/Inf.
        """
        self.net.train()
        batch = to_device(batch, self.device)
        lr = self.schedule.apply(self.step, self.epoch)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            pred = self.net(batch)
            losses, metrics = self.model.loss(pred, batch)
        numbers = flatten_outputs(losses, metrics)
        loss = losses["total"].float().mean()
        if distributed.any_rank(not bool(torch.isfinite(loss)), self.device):
            raise self._nan_error("loss", {k: float(v.detach().float().mean()) for k, v in numbers.items()})
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = self._grad_norm()
        if not bool(torch.isfinite(grad_norm)) and not self.scaler.is_enabled():
            raise self._nan_error("gradient norm", {"grad_norm": float(grad_norm), "loss/total": float(loss)})
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.last_step_samples = int(losses["total"].shape[0]) if losses["total"].dim() else 1
        out = {k: float(v.detach().float().mean()) for k, v in numbers.items()}
        out.update(lr=lr, grad_norm=float(grad_norm))
        return out

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, max_batches: int | None = None) -> dict[str, float]:
        """Means over the samples of ``loader`` (all processes), RNG state left unchanged."""
        max_batches = max_batches or self.tconf.max_val_batches
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        was_training = self.model.training
        self.model.eval()
        try:
            with ckpt.preserve_rng():
                total = min(len(loader), max_batches or len(loader))
                bar = tqdm(loader, total=total, desc="validation", leave=False, disable=not self.is_main)
                for i, batch in enumerate(bar):
                    if max_batches and i >= max_batches:
                        break
                    batch = to_device(batch, self.device)
                    with autocast(self.device, self.precision):
                        pred = self.model(batch)
                        numbers = flatten_outputs(*self.model.loss(pred, batch))
                    for key, value in numbers.items():
                        value = value.detach().float().reshape(-1)
                        sums[key] += float(value.sum())
                        counts[key] += value.numel()
                bar.close()
        finally:
            self.model.train(was_training)
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for part_sums, part_counts in distributed.gather_objects((dict(sums), dict(counts))):
            for key in part_sums:
                totals[key][0] += part_sums[key]
                totals[key][1] += part_counts[key]
        return {k: s / n for k, (s, n) in totals.items() if n > 0}

    # ---- epoch-level units -------------------------------------------------------------------
    def epoch_batches(self, epoch: int, skip: int) -> Iterator[Any]:
        """Batches of ``epoch`` from batch ``skip`` on, in the order of an uninterrupted run."""
        seed = self.tconf.seed
        if self._pending_rng is not None and skip == 0:  # saved at an epoch boundary
            ckpt.set_rng_state(self._pending_rng)
            self._pending_rng = None
        if callable(getattr(self.train_set, "set_epoch", None)):
            self.train_set.set_epoch(epoch)
        self.loader_generator.manual_seed(_loader_seed(seed, epoch, self.rank))
        mode = self.tconf.resume_skip
        if mode == "auto":
            mode = "sampler" if self.tconf.num_workers == 0 else "replay"
        if mode == "sampler":
            self.train_sampler.set_epoch(epoch, skip=skip * self.train_loader.batch_size)
            batches = iter(self.train_loader)
        else:
            self.train_sampler.set_epoch(epoch)
            batches = iter(self.train_loader)
            if skip:
                for _ in tqdm(range(skip), desc=f"replaying {skip} batches already trained on", leave=False,
                              disable=not self.is_main):
                    next(batches)
        if self._pending_rng is not None:  # saved mid-epoch, after batch `skip`
            ckpt.set_rng_state(self._pending_rng)
            self._pending_rng = None
        return batches

    def validate(self) -> dict[str, float]:
        results = self.evaluate(self.val_loader)
        self.last_results = results
        self.log("val", results)
        value = results.get(self.tconf.best_key, math.nan)
        if self.is_main:
            logger.info("[validation step %d] %s", self.step,
                        ", ".join(f"{k} {v:.4g}" for k, v in sorted(results.items())))
        if math.isfinite(value) and value < self.best:
            self.best = value
            self.save_checkpoint(ckpt.BEST)
            if self.is_main:
                logger.info("new best %s = %.6g", self.tconf.best_key, value)
        return results

    def run_benchmarks(self) -> dict[str, float]:
        """Call each ``train.run_benchmarks`` function with the bare model and the config (process 0 only)."""
        results: dict[str, float] = {}
        if self.is_main and self.benchmarks:
            was_training = self.model.training
            self.model.eval()
            try:
                with ckpt.preserve_rng():
                    for spec, fn in self.benchmarks:
                        module, attr = spec.split(":")
                        prefix = f"{module.rsplit('.', 1)[-1]}.{attr}"
                        for key, value in (fn(self.model, self.conf) or {}).items():
                            scalar = torch.is_tensor(value) and value.numel() == 1
                            if isinstance(value, (int, float)) or scalar:
                                results[f"{prefix}/{key}"] = float(value)
            finally:
                self.model.train(was_training)
            self.log("benchmark", results)
            logger.info("[benchmarks epoch %d] %s", self.epoch,
                        ", ".join(f"{k} {v:.4g}" for k, v in sorted(results.items())))
        distributed.barrier()
        return results

    def log(self, split: str, values: Mapping[str, float]) -> None:
        if not self.is_main or not values:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"{split}/{key}", value, self.step)
        self.csv.write(self.step, self.epoch, split, values)

    def log_training(self, meter: RunningMeans) -> dict[str, float]:
        """Average since the last log line over steps and processes (collective)."""
        values = distributed.mean_over_ranks(meter.averages(), self.device)
        values["samples_per_s"] *= self.world_size
        meter.reset()
        self.log("train", values)
        return values

    def finished(self) -> bool:
        return self.epoch >= self.tconf.epochs or (
            self.tconf.max_steps is not None and self.step >= self.tconf.max_steps)

    def after_step(self, meter: RunningMeans, bar: tqdm) -> None:
        """Logging, validation, benchmarks, epoch change and checkpoints after a step."""
        t = self.tconf
        epoch_end = self.epoch_step >= self.steps_per_epoch
        stop = t.max_steps is not None and self.step >= t.max_steps
        if self.step % t.log_every_iter == 0 or epoch_end or stop:
            values = self.log_training(meter)
            bar.set_postfix(loss=f"{values['loss/total']:.4g}", lr=f"{values['lr']:.3g}",
                            samples_s=f"{values['samples_per_s']:.1f}")
        if (t.eval_every_iter and self.step % t.eval_every_iter == 0) or epoch_end or stop:
            self.validate()
        if epoch_end and self.benchmarks:
            self.run_benchmarks()
        if epoch_end:
            self.epoch, self.epoch_step = self.epoch + 1, 0
        if (t.save_every_iter and self.step % t.save_every_iter == 0) or epoch_end or stop:
            self.save_checkpoint(ckpt.LAST)

    def train_epoch(self) -> None:
        epoch = self.epoch
        batches = self.epoch_batches(epoch, self.epoch_step)
        meter = RunningMeans()
        bar = tqdm(total=self.steps_per_epoch, initial=self.epoch_step, desc=f"epoch {epoch}",
                   disable=not self.is_main, dynamic_ncols=True, leave=False)
        try:
            tick = time.perf_counter()
            for batch in batches:
                loaded = time.perf_counter()
                numbers = self.train_step(batch)
                done = time.perf_counter()
                busy = gpu_busy_percent(self.device)
                if busy is not None:  # how much of the time the GPU computes (the data may starve it)
                    numbers = {**numbers, "gpu_busy_percent": busy}
                    self.gpu_busy.append(busy)
                self.epoch_step += 1
                meter.update(numbers, self.last_step_samples, loaded - tick, done - loaded)
                self.samples_seen += self.last_step_samples * self.world_size
                self.train_time += done - tick
                bar.update(1)
                self.after_step(meter, bar)
                if self.epoch != epoch or self.finished():
                    break
                tick = time.perf_counter()
        finally:
            bar.close()

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or ``max_steps``; returns (and prints on process 0) a summary."""
        self.setup()
        start_step = self.step
        try:
            if self.finished() and self.is_main:
                logger.info("nothing to do: step %d, epoch %d already reach the configured end",
                            self.step, self.epoch)
            while not self.finished():
                self.train_epoch()
        finally:
            self.close()
        summary = {
            "experiment": str(self.exp_dir),
            "steps": self.step,
            "epoch": self.epoch,
            "steps_this_run": self.step - start_step,
            "samples_this_run": self.samples_seen,
            "train_seconds": self.train_time,
            "samples_per_s": self.samples_seen / self.train_time if self.train_time > 0 else 0.0,
            "gpu_busy_percent": sum(self.gpu_busy) / len(self.gpu_busy) if self.gpu_busy else None,
            # the whole configured run (epochs x training pairs) at this run's rate
            "configured_run_hours": (self.tconf.epochs * len(self.train_set) * self.train_time
                                     / self.samples_seen / 3600 if self.samples_seen else None),
            "best_key": self.tconf.best_key,
            "best": self.best,
            "last_checkpoint": str(self.last_saved[0]) if self.last_saved[0] else None,
        }
        if self.is_main:
            busy = f", GPU busy {summary['gpu_busy_percent']:.0f} % (NVML)" if self.gpu_busy else ""
            hours = summary["configured_run_hours"]
            whole = (f"; the configured {self.tconf.epochs} epochs x {len(self.train_set)} pairs would take "
                     f"{hours:.1f} h at this rate" if hours is not None else "")
            print(f"trained {summary['steps_this_run']} steps ({summary['samples_this_run']} samples) in "
                  f"{self.train_time:.1f} s of training: {summary['samples_per_s']:.2f} samples/s "
                  f"(pairs/s) on {self.world_size} process(es){busy}{whole}; best {self.tconf.best_key} = "
                  f"{self.best:.6g}; outputs in {self.exp_dir}")
        return summary


# ---- launching ----------------------------------------------------------------------------
def _distributed_worker(rank: int, world_size: int, port: int, conf: dict[str, Any], exp_dir: str,
                        restore: bool, run_benchmarks: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                            format="[%(asctime)s rank " + str(rank) + "] %(message)s", datefmt="%H:%M:%S")
    try:
        Trainer(conf, exp_dir, restore=restore, run_benchmarks=run_benchmarks, rank=rank,
                world_size=world_size, port=port).fit()
        distributed.barrier()  # every process done before any tears the group down (not on failure:
        # the others would wait out the timeout)
    finally:
        distributed.cleanup()
    _exit_finished_worker()


def _exit_finished_worker() -> None:
    """End a worker whose training finished, without the interpreter's teardown. With gloo, that
    teardown sometimes aborts a finished process ("terminate called without an active
    exception" from a C++ destructor, no Python frame left): 2-50 % of two-process runs here
    without the barrier above, about 2 % with it, none in 100 with this exit. Everything is written
    and closed by now (checkpoints, metrics, the event file); only the streams need a flush."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train(exp_dir: str | Path, conf: ConfLike, *, restore: bool = False, distributed_run: bool = False,
          run_benchmarks: bool = False) -> dict[str, Any] | None:
    """Validate, then train in this process or in ``world_size`` spawned processes."""
    conf = validate_config(conf)
    exp_dir = Path(exp_dir)
    check_experiment_dir(exp_dir, restore)
    if not distributed_run:
        return Trainer(conf, exp_dir, restore=restore, run_benchmarks=run_benchmarks).fit()
    device = resolve_device(conf.train.device)
    world_size = conf.train.world_size or distributed.default_world_size(device)
    if world_size < 1:
        raise ConfigError("--distributed: no GPU found and train.world_size is not set")
    port = distributed.find_free_port()
    logger.info("spawning %d processes (%s, port %d on %s)", world_size,
                "nccl" if device.type == "cuda" else "gloo", port, distributed.LOCALHOST)
    distributed.spawn(_distributed_worker, world_size,
                      (world_size, port, to_container(conf), str(exp_dir), restore, run_benchmarks))
    return None
