"""A tiny regression model and random dataset that follow the trainer's interface.

They exist to test the trainer (and to try it) without images or LightGlue:
``model.name: toy`` and ``data.name: toy``. Knobs that tests need: ``dropout`` and
``data.augment_noise`` consume the global RNGs (to check exact resumption),
``nan_at_step`` makes the N-th training forward return NaN (to check the NaN guard),
``data.root`` must exist when set (to check that a missing folder fails early).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from ..config import ConfLike, merge_strict

MODEL_DEFAULTS: dict[str, Any] = {
    "name": "toy",
    "dim": 8,
    "hidden": 16,  # 0: a single linear layer
    "dropout": 0.0,
    "nan_at_step": None,  # 1-based index of the training forward whose loss is NaN
}

DATA_DEFAULTS: dict[str, Any] = {
    "name": "toy",
    "root": None,  # optional folder that must exist (nothing is read from it)
    "size": 64,
    "val_size": 16,
    "dim": 8,
    "noise": 0.01,  # fixed label noise
    "augment_noise": 0.0,  # input noise drawn from torch's global RNG at each __getitem__
    "seed": 0,
}


class ToyRegression(nn.Module):
    """y = MLP(x); losses: ``total`` = ``mse``; metrics: ``mae``."""

    def __init__(self, conf: ConfLike = None) -> None:
        super().__init__()
        self.conf = conf = merge_strict(MODEL_DEFAULTS, conf, owner="ToyRegression")
        if conf.hidden > 0:
            self.net = nn.Sequential(nn.Linear(conf.dim, conf.hidden), nn.ReLU(), nn.Dropout(conf.dropout),
                                     nn.Linear(conf.hidden, 1))
        else:
            self.net = nn.Sequential(nn.Dropout(conf.dropout), nn.Linear(conf.dim, 1))
        self.gradient_checkpointing = False
        self.train_forwards = 0

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = bool(enabled)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.gradient_checkpointing and self.training:
            from torch.utils.checkpoint import checkpoint

            y = checkpoint(self.net, batch["x"], use_reentrant=False)
        else:
            y = self.net(batch["x"])
        y = y.squeeze(-1)
        if self.training:
            self.train_forwards += 1
            if self.conf.nan_at_step is not None and self.train_forwards >= self.conf.nan_at_step:
                y = y * float("nan")
        return {"y": y}

    def loss(self, pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        err = pred["y"].float() - batch["y"].float()
        mse = err**2
        return {"total": mse, "mse": mse}, {"mae": err.abs().detach()}


class ToyDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment_noise: float) -> None:
        self.x, self.y, self.augment_noise = x, y, augment_noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = self.x[index]
        if self.augment_noise > 0:
            x = x + self.augment_noise * torch.randn(x.shape)
        return {"x": x, "y": self.y[index], "index": torch.tensor(index)}


def build_toy_datasets(conf: ConfLike) -> tuple[ToyDataset, ToyDataset]:
    """Linear targets of Gaussian inputs; train and val drawn from one seeded generator."""
    conf = merge_strict(DATA_DEFAULTS, conf, owner="toy data")
    if conf.root is not None and not Path(conf.root).is_dir():
        raise FileNotFoundError(f"toy data: data.root '{conf.root}' is not a folder")
    gen = torch.Generator().manual_seed(conf.seed)
    weights = torch.randn(conf.dim, generator=gen)
    n = conf.size + conf.val_size
    x = torch.randn(n, conf.dim, generator=gen)
    y = x @ weights + conf.noise * torch.randn(n, generator=gen)
    return (ToyDataset(x[:conf.size], y[:conf.size], conf.augment_noise),
            ToyDataset(x[conf.size:], y[conf.size:], 0.0))


def benchmark(model: nn.Module, conf: DictConfig) -> dict[str, float]:
    """A ``train.run_benchmarks`` example: receives the bare model and the config, returns scalars."""
    with torch.no_grad():
        norm = torch.sqrt(sum((p.float() ** 2).sum() for p in model.parameters()))
    return {"weight_norm": float(norm)}
