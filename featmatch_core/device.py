"""Device and precision selection shared by every entry point."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU raises."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available; use device=auto or cpu")
    return device


def resolve_precision(name: str) -> torch.dtype:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision '{name}', expected one of {sorted(PRECISIONS)}")
    return PRECISIONS[name]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the network parts; fp32 is a no-op.

    fp16 on CPU is slow and badly supported, so it is refused there.
    """
    dtype = resolve_precision(precision)
    if dtype == torch.float32:
        yield
        return
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("precision fp16 is not supported on CPU; use bf16 or fp32")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
