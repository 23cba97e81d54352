"""Learning-rate schedules as closed-form functions of the training position.

The learning rate of an optimizer step depends only on (step, epoch), never on how many
times a scheduler object was stepped, so resuming from a checkpoint gives the same rates
as an uninterrupted run by construction.

Types (``train.lr_schedule.type``), with ``t`` the step index, or the epoch index when
``on_epoch`` is true:

- ``none``: constant ``lr``.
- ``exp``: the LightGlue paper's schedule, as Glue Factory implements it (its
  ``MultiplicativeLR`` with ``type: exp``): constant until ``start``, then multiplied by
  ``10 ** (-1 / exp_div_10)`` at each unit ``t >= max(start, 1)``, i.e. a 10x decay every
  ``exp_div_10`` units. The paper's recipes: ``start: 20, exp_div_10: 10, on_epoch: true``
  (homographies, about x0.8 per epoch after 20 epochs), ``start: 30`` for MegaDepth.
- ``step``: multiplied by ``factor`` at units ``max(start, 1) + k * step_size``, k = 0, 1...

``warmup`` (optimizer steps, whatever ``on_epoch``) multiplies the rate by
``min(1, (step + 1) / warmup)``: a linear ramp over the first steps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..config import ConfigError

logger = logging.getLogger(__name__)

SCHEDULE_DEFAULTS: dict[str, Any] = {
    "type": "none",  # none | exp | step
    "start": 0,  # first step (or epoch with on_epoch) at which the rate decays
    "on_epoch": False,  # count start / exp_div_10 / step_size in epochs instead of steps
    "exp_div_10": 0,  # exp: units for a 10x decay
    "factor": 0.1,  # step: multiplier at each decay
    "step_size": 1,  # step: units between decays
    "warmup": 0,  # linear warm-up over this many optimizer steps (0: none)
}
SCHEDULE_TYPES = ("none", "exp", "step")


def check_schedule_conf(conf: Mapping[str, Any]) -> None:
    """Raise ConfigError for values that merge_strict's type check cannot see."""
    kind = conf["type"] if conf["type"] is not None else "none"
    if kind not in SCHEDULE_TYPES:
        raise ConfigError(f"train.lr_schedule.type: unknown '{kind}', expected one of {list(SCHEDULE_TYPES)}")
    if kind == "exp" and not conf["exp_div_10"] > 0:
        raise ConfigError("train.lr_schedule.exp_div_10 must be > 0 with type exp "
                          "(the number of steps, or epochs with on_epoch, for a 10x decay)")
    if kind == "step" and not conf["step_size"] >= 1:
        raise ConfigError("train.lr_schedule.step_size must be >= 1 with type step")
    if conf["start"] < 0 or conf["warmup"] < 0:
        raise ConfigError("train.lr_schedule.start and warmup must be >= 0")


def lr_factor(conf: Mapping[str, Any], step: int, epoch: int) -> float:
    """Multiplier of the base learning rate for the optimizer step ``step`` (0-based)
    taken during epoch ``epoch`` (0-based)."""
    kind = conf["type"] if conf["type"] is not None else "none"
    t = epoch if conf["on_epoch"] else step
    first = max(int(conf["start"]), 1)
    decays = max(0, t - first + 1)
    if kind == "none":
        factor = 1.0
    elif kind == "exp":
        factor = 10.0 ** (-decays / float(conf["exp_div_10"]))
    elif kind == "step":
        n = 0 if t < first else (t - first) // int(conf["step_size"]) + 1
        factor = float(conf["factor"]) ** n
    else:
        raise ConfigError(f"unknown lr_schedule type '{kind}', expected one of {list(SCHEDULE_TYPES)}")
    warmup = int(conf["warmup"])
    if warmup > 0:
        factor *= min(1.0, (step + 1) / warmup)
    return factor


class LRSchedule:
    """Sets each parameter group's ``lr`` to ``base_lr * lr_factor(step, epoch)``.

    Its state (base rates and the last position) goes into checkpoints like a torch
    scheduler's, although the rate itself is recomputed from the position. The base rates
    come from the config, so that ``train.lr=...`` given with ``--restore`` takes effect.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, conf: Mapping[str, Any]) -> None:
        check_schedule_conf(conf)
        self.optimizer = optimizer
        self.conf = dict(conf)
        self.base_lrs: list[float] = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_position = (0, 0)

    def apply(self, step: int, epoch: int) -> float:
        """Set the rates for the step about to run; returns the first group's rate."""
        factor = lr_factor(self.conf, step, epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        self.last_position = (step, epoch)
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "conf": dict(self.conf), "last_position": self.last_position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = [float(x) for x in state["base_lrs"]]
        if len(saved) != len(self.base_lrs):
            raise ValueError(f"lr schedule state has {len(saved)} parameter groups, "
                             f"the optimizer {len(self.base_lrs)}")
        if saved != self.base_lrs or dict(state.get("conf", self.conf)) != self.conf:
            logger.warning("learning-rate settings differ from the checkpoint's (%s, %s); using the config's "
                           "(%s, %s)", saved, state.get("conf"), self.base_lrs, self.conf)
        self.last_position = tuple(state.get("last_position", (0, 0)))
