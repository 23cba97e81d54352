"""Base class of every model: a validated config beside the module, and weight loading.

Constructors never download: ``Model(conf)`` builds the architecture (random
initialisation); ``Model.from_pretrained(conf)`` additionally resolves
``conf.weights`` (a registry id or a file path, see :mod:`featmatch_core.weights`)
and loads the checkpoint.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn

from ..config import ConfLike, merge_strict, to_container

logger = logging.getLogger(__name__)


class BaseModel(nn.Module):
    """A module with ``default_conf`` and a strict ``self.conf`` (DictConfig).

    Subclasses set ``default_conf`` and implement ``_init(conf)`` and ``_forward(data)``.
    ``presets`` lets a key (e.g. LightGlue's ``features``) select a group of defaults
    that the user config can still override.
    """

    default_conf: ClassVar[dict[str, Any]] = {"name": None, "weights": None}
    # Entries the officially released checkpoint holds that the model does not use (regular
    # expressions, see :func:`strict_load`): they load without error, logged once.
    release_extras: ClassVar[tuple[str, ...]] = ()
    preset_key: ClassVar[str | None] = None
    presets: ClassVar[dict[Any, dict[str, Any]]] = {}

    def __init__(self, conf: ConfLike = None) -> None:
        super().__init__()
        owner = type(self).__name__
        defaults = self.full_default_conf()
        user = to_container(conf)
        conf = merge_strict(defaults, user, owner=owner)
        if self.preset_key is not None:
            preset = conf[self.preset_key]
            if preset is not None and preset not in self.presets:
                raise ValueError(
                    f"{owner}: unknown {self.preset_key} '{preset}', expected one of {sorted(self.presets)}"
                )
            if preset is not None:
                # defaults < preset < user: explicit user values win over the preset
                conf = merge_strict(defaults, self.presets[preset], user, owner=owner)
        self.conf: DictConfig = conf
        self._init(conf)

    @classmethod
    def full_default_conf(cls) -> dict[str, Any]:
        """``default_conf`` of the class and its bases, subclasses overriding bases."""
        defaults: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            defaults.update(klass.__dict__.get("default_conf", {}))
        return defaults

    def _init(self, conf: DictConfig) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- weights -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, conf: ConfLike = None, weights: str | None = None,
                        download: bool = True) -> BaseModel:
        """Build the model and load ``weights`` (default: ``conf.weights``)."""
        model = cls(conf)
        source = weights if weights is not None else model.conf.weights
        if source is not None:
            model.load_weights(source, download=download)
        return model

    def load_weights(self, source: str, download: bool = True) -> None:
        from ..weights import load_checkpoint, resolve_weights

        path = resolve_weights(str(source), download=download)
        state_dict = load_checkpoint(path)
        self.load_checkpoint_state_dict(state_dict, origin=str(path))
        self.eval()

    def load_checkpoint_state_dict(self, state_dict: Mapping[str, torch.Tensor], origin: str = "") -> None:
        """Load a checkpoint in the official layout. Subclasses convert legacy keys first."""
        strict_load(self, state_dict, origin, self.release_extras)


def strict_load(module: nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str = "",
                release_extras: Sequence[str] = ()) -> None:
    """Load with a clear error for missing parameters and shape mismatches.

    What a checkpoint may hold beyond the module's own state, and what happens to it:

    - buffers derived from the config (not learned) may be absent;
    - ``release_extras``: regular expressions (full match) of entries that the officially
      released files are known to carry and this module does not use (e.g. LightGlue's
      ``log_assignment.{i}.r``): dropped, logged once;
    - entries outside the module's namespace (their first name is none of the module's
      children or top-level tensors, e.g. a training step counter): dropped with a warning,
      as the reference loaders (``strict=False``) do;
    - any other unknown entry inside the namespace (e.g. ``input_proj.weight`` for a model
      without an input projection, or a layer the config does not have) means a checkpoint of
      another configuration, whose weights would silently be lost: an error.
    """
    own = module.state_dict()
    learned = {name for name, _ in module.named_parameters()}
    unknown = [k for k in state_dict if k not in own]
    extras = sorted(k for k in unknown if any(re.fullmatch(p, k) for p in release_extras))
    namespace = {name for name, _ in module.named_children()} | {k.split(".", 1)[0] for k in own}
    foreign = sorted(k for k in unknown if k not in extras and k.split(".", 1)[0] not in namespace)
    unexpected = sorted(k for k in unknown if k not in extras and k not in foreign)
    missing = sorted(k for k in learned if k not in state_dict)
    wrong_shape = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    name = type(module).__name__
    where = f" from {origin}" if origin else ""
    if wrong_shape or missing or unexpected:
        lines = [f"cannot load checkpoint{where} into {name}:"]
        if wrong_shape:
            lines.append("  shape mismatch (a checkpoint for another feature type or config?): "
                         + "; ".join(wrong_shape[:5]) + (" ..." if len(wrong_shape) > 5 else ""))
        if missing:
            lines.append(f"  missing {len(missing)} keys, e.g. {missing[:5]}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} keys (weights of a configuration this model does "
                         f"not have), e.g. {unexpected[:5]}")
        elif foreign:  # harmless alone, but they tell which model the checkpoint was for
            lines.append(f"  unexpected {len(foreign)} keys outside the model, e.g. {foreign[:5]}")
        raise ValueError("\n".join(lines))
    _log_once(logging.INFO, f"{name}{where}: ignoring {len(extras)} entries of the released file that "
              f"the model does not use: {_abbreviate(extras)}", extras)
    _log_once(logging.WARNING, f"{name}{where}: ignoring {len(foreign)} checkpoint entries outside "
              f"the model: {_abbreviate(foreign)}", foreign)
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    logger.debug("loaded %d tensors into %s%s", len(state_dict) - len(extras) - len(foreign), name, where)


_LOGGED: set[str] = set()


def _log_once(level: int, message: str, entries: Sequence[str]) -> None:
    """Log a message about ignored entries once per process (loading the same file again,
    e.g. once per pipeline in a test or per worker, says nothing new)."""
    if entries and message not in _LOGGED:
        _LOGGED.add(message)
        logger.log(level, message)


def _abbreviate(keys: Sequence[str], shown: int = 4) -> str:
    return ", ".join(keys[:shown]) + (f" ... ({len(keys) - shown} more)" if len(keys) > shown else "")
