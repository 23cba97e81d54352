"""Device and precision selection shared by every entry point."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUTO = "auto"  # the reduced precision the hardware runs natively, else fp32 (see auto_precision)

F = TypeVar("F", bound=Callable[..., Any])
_holders = threading.local()  # per thread: the lists of holding_constants blocks in progress


def cached_constant(maxsize: int) -> Callable[[F], F]:
    """``functools.lru_cache`` for functions that make device tensors (constants), whose results
    :func:`holding_constants` also collects, cache hits included."""
    def decorate(make: F) -> F:
        cached = functools.lru_cache(maxsize=maxsize)(make)

        @functools.wraps(make)
        def get(*args: Any, **kwargs: Any) -> Any:
            value = cached(*args, **kwargs)
            for held in getattr(_holders, "lists", ()):
                held.append(value)
            return value

        get.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        get.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return get  # type: ignore[return-value]
    return decorate


@contextlib.contextmanager
def holding_constants() -> Iterator[list[Any]]:
    """Collect the cached constants (:func:`cached_constant`) this thread makes or reuses inside
    the block. A CUDA graph reads them at fixed addresses when replayed, so it must keep them
    alive: a cache may drop an entry later, and its memory would then be reused."""
    held: list[Any] = []
    _holders.lists = (*getattr(_holders, "lists", ()), held)
    try:
        yield held
    finally:
        _holders.lists = tuple(h for h in _holders.lists if h is not held)


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


@cached_constant(maxsize=512)
def device_constant(values: tuple, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small constant tensor made once per (values, device, dtype) and then shared.

    On a GPU every tensor made from host values is a blocking host-to-device copy, which waits
    for everything queued on the stream: per-call constants (image sizes, scales, grids) would
    each stall the pipeline. Made outside inference mode, so that autograd may meet it later.
    Read-only: never modify the result in place.
    """
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


@functools.cache
def has_nvml() -> bool:
    """Whether NVML's Python binding (nvidia-ml-py) is installed; looked up once."""
    return importlib.util.find_spec("pynvml") is not None


def gpu_busy_percent(device: torch.device) -> float | None:
    """NVML's share (%) of its last sample period (1/6 s to 1 s) in which a kernel ran on the
    GPU; None off CUDA or without NVML (the nvidia-ml-py package)."""
    if device.type != "cuda" or not has_nvml():
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 - a monitoring read (NVMLError and kin) must not end a run
        return None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products run in hardware. Elsewhere oneDNN emulates them,
    and bf16 autocast is 2-3x slower than fp32 (measured on an AVX2-only AMD EPYC)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def auto_precision(device: torch.device) -> str:
    """fp16 on CUDA (tensor cores), bf16 on CPUs with native bf16, fp32 elsewhere."""
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def precision_for(device: torch.device, name: str) -> str:
    """The precision that runs: ``name``, or the device's choice for ``auto``; a bad name raises."""
    if name == AUTO:
        return auto_precision(device)
    resolve_precision(name)
    return name


def resolve_precision(name: str) -> torch.dtype:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision '{name}', expected one of {sorted(PRECISIONS)} or '{AUTO}'")
    return PRECISIONS[name]


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision for the network parts; fp32 is a no-op.

    fp16 on CPU is slow and badly supported, so it is refused there; ``auto`` see auto_precision.
    """
    dtype = resolve_precision(precision_for(device, precision))
    if dtype == torch.float32:
        yield
        return
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("precision fp16 is not supported on CPU; use bf16 or fp32")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


# one block at a time changes cuDNN's process-wide TF32 switch (see exact_fp32_convolutions)
_TF32_SWITCH = threading.RLock()


@contextlib.contextmanager
def exact_fp32_convolutions(device: torch.device) -> Iterator[None]:
    """cuDNN's fp32 convolutions in full fp32 for the block (no-op off CUDA). PyTorch lets cuDNN
    use TF32 (10-bit mantissas) by default on Ampere and newer GPUs; a scale space whose
    differences of nearly equal blurs decide the extrema and their sub-pixel offsets (SIFT)
    must not. The switch is process-wide: it is turned off under a lock and given back as it
    was (other threads' convolutions meanwhile run in full fp32 too, which only costs time).
    Inside a CUDA-graph capture it acts when it matters, as the kernels are chosen."""
    if device.type != "cuda":
        yield
        return
    with _TF32_SWITCH:
        saved = _tf32_settings()
        torch.backends.cudnn.allow_tf32 = False  # the legacy switch: conv and RNN alike
        if saved[1] is not None:  # and explicitly: "none" would inherit a TF32 set for cuDNN as a whole
            torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = "ieee"
        try:
            yield
        finally:
            _restore_tf32_settings(saved)


def _tf32_settings() -> tuple[bool | None, tuple[str, str] | None]:
    """cuDNN's TF32 settings as both of torch's APIs see them: the legacy switch (None where it
    cannot be read: torch >= 2.9 raises when the per-operator settings were made to differ) and
    the per-operator precisions of conv and RNN (None before torch 2.9)."""
    cudnn = torch.backends.cudnn
    try:
        legacy = bool(cudnn.allow_tf32)
    except RuntimeError:
        legacy = None
    per_op = hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision")
    return legacy, ((cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) if per_op else None)


def _restore_tf32_settings(saved: tuple[bool | None, tuple[str, str] | None]) -> None:
    """Back to ``saved``: through the legacy switch first (it keeps a flag of its own that the
    per-operator API does not restore), then whatever operator it set otherwise."""
    cudnn = torch.backends.cudnn
    legacy, per_op = saved
    if legacy is not None:
        cudnn.allow_tf32 = legacy
    if per_op is not None and (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) != per_op:
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = per_op


@contextlib.contextmanager
def own_stream(device: torch.device | None) -> Iterator[torch.cuda.Stream | None]:
    """Run this thread's GPU work on a stream of its own (None off CUDA): two threads that each
    have one (the extraction and tracking stages of a frame pipeline) overlap on the GPU,
    instead of queueing behind each other on the default stream. Drawn from torch's
    high-priority pool, so that it is never the CUDA-graph capture stream (default priority,
    ``cuda_graphs.capture_stream``), whatever the number of stages and captures."""
    if device is None or device.type != "cuda":
        yield None
        return
    stream = torch.cuda.Stream(device, priority=-1)
    with torch.cuda.stream(stream):
        yield stream


def to_numpy_together(*tensors: torch.Tensor, packed: bool | None = None) -> list[np.ndarray]:
    """Numpy copies of ``tensors`` (any shapes; float, integer or bool). From a GPU they travel
    in one transfer, hence one wait for the device instead of one per tensor: they are packed
    into one float64 vector (exact for float32 and for integers below 2**53) and unpacked on
    the host into their shapes and dtypes. ``packed`` None: packed unless all are on the CPU,
    where they are converted as they are."""
    if packed is None:
        packed = any(t.device.type != "cpu" for t in tensors)
    if not packed:
        return [t.detach().numpy() for t in tensors]
    values = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors]).cpu().numpy()
    arrays, start = [], 0
    for t in tensors:
        size = t.numel()
        dtype = torch.empty((), dtype=t.dtype).numpy().dtype
        arrays.append(values[start:start + size].astype(dtype).reshape(tuple(t.shape)))
        start += size
    return arrays

