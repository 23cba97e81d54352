"""Base class of every model: a validated config beside the module, and weight loading.

Constructors never download: ``Model(conf)`` builds the architecture (random
initialisation); ``Model.from_pretrained(conf)`` additionally resolves
``conf.weights`` (a registry id or a file path, see :mod:`featmatch_core.weights`)
and loads the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
        strict_load(self, state_dict, origin)


def strict_load(module: nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str = "",
                ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Load with a clear error for missing parameters and shape mismatches.

    Buffers that are derived from the config (not learned) may be absent; unexpected
    keys are only tolerated when their prefix is in ``ignore_unexpected``.
    """
    own = module.state_dict()
    learned = {name for name, _ in module.named_parameters()}
    missing = sorted(k for k in learned if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own and not k.startswith(ignore_unexpected))
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
            lines.append(f"  unexpected {len(unexpected)} keys, e.g. {unexpected[:5]}")
        raise ValueError("\n".join(lines))
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    logger.debug("loaded %d tensors into %s%s", len(state_dict), name, where)
