"""Small helpers shared by the geometry modules: homogeneous coordinates and numpy/torch dispatch.

The geometry is written once, in torch. ``numpy_compat`` lets numpy callers (OpenCV, ROS,
evaluation scripts) use the same functions: numpy arrays go in as float64 tensors (bool
arrays stay bool, integer arrays stay int64) and tensors come back as numpy arrays. When
any argument is already a tensor, numpy arguments are moved to its device and float
dtype and the torch results are returned unchanged (autograd keeps working). Plain lists
or tuples of numbers are treated as numpy arrays. Arguments named in ``native_args`` (large
maps a function only samples, e.g. a depth image) keep their floating dtype and share the
numpy array's memory: the function converts what it reads, not the whole map.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
F = TypeVar("F", bound=Callable[..., Any])


def to_homogeneous(points: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., D+1) by appending ones."""
    return torch.cat([points, torch.ones_like(points[..., :1])], -1)


def from_homogeneous(points: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """(..., D+1) -> (..., D); ``eps`` > 0 keeps the last coordinate away from zero (sign kept)."""
    last = points[..., -1:]
    if eps > 0:
        last = torch.where(last >= 0, last.clamp(min=eps), last.clamp(max=-eps))
    return points[..., :-1] / last


def _first_tensor(values) -> torch.Tensor | None:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    return None


def _ref_float_dtype(values) -> torch.dtype:
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.float64


def _numpy_to_torch(value: np.ndarray, device: torch.device | None, float_dtype: torch.dtype) -> torch.Tensor:
    array = np.asarray(value, dtype=np.float64)
    if not array.flags.writeable:  # poselib's results, np.frombuffer: torch warns on sharing them
        array = array.copy()
    return torch.as_tensor(array, device=device).to(float_dtype)


def to_numpy(value: Any) -> Any:
    """Tensors (also inside tuples, lists and dicts) to numpy arrays; 0-d ones to numpy scalars."""
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().numpy()
        return array[()] if array.ndim == 0 else array
    if isinstance(value, tuple):
        return tuple(to_numpy(v) for v in value)
    if isinstance(value, list):
        return [to_numpy(v) for v in value]
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    return value


SHAREABLE_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))  # torch has no long double


def _shared_float_tensor(value: np.ndarray, device: torch.device | None) -> torch.Tensor | None:
    """The array's memory as a tensor of its own dtype, when torch can share it; else None."""
    if value.dtype not in SHAREABLE_FLOATS or not value.dtype.isnative or not value.flags.writeable \
            or not value.flags.c_contiguous:
        return None
    return torch.from_numpy(value).to(device) if device is not None else torch.from_numpy(value)


def numpy_compat(int_args: tuple = (), native_args: tuple = ()) -> Callable[[F], F]:
    """Decorator: run a torch implementation on numpy inputs (see the module docstring).

    ``int_args`` names arguments that hold integer labels and must not become floats;
    ``native_args`` names arguments whose floating numpy arrays go in without a copy or a cast.
    """

    def decorator(fn: F) -> F:
        signature = inspect.signature(fn)
        names = list(signature.parameters)
        positional = [n for n, p in signature.parameters.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
        # names the arguments without ``Signature.bind`` (~10 us a call) unless the function
        # takes *args, **kwargs or positional-only arguments, which only a bind can name
        simple = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in signature.parameters.values())

        def convert(name: str, value: Any, device: torch.device | None, float_dtype: torch.dtype) -> Any:
            if isinstance(value, (list, tuple)) and value and all(
                    isinstance(v, (int, float, np.number, list, tuple, np.ndarray)) for v in value):
                value = np.asarray(value)  # a plain sequence of numbers: treat as an array
            if not isinstance(value, np.ndarray):
                return value
            if value.dtype == np.bool_ or (name in int_args and value.dtype.kind in "iu"):
                return torch.as_tensor(value, device=device)
            if name in native_args:
                shared = _shared_float_tensor(value, device)
                if shared is not None:
                    return shared
            return _numpy_to_torch(value, device, float_dtype)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            fast = simple and len(args) <= len(positional) and kwargs.keys().isdisjoint(positional[: len(args)])
            if fast:  # in the signature's order, as a bind has them: the first tensor sets device and dtype
                given = {**dict(zip(positional, args, strict=False)), **kwargs}
                arguments = {name: given.pop(name) for name in names if name in given}
                arguments.update(given)  # unknown names: the call raises TypeError for them
            else:
                bound = signature.bind(*args, **kwargs)
                arguments = bound.arguments
            values = list(arguments.values())
            ref = _first_tensor(values)
            device = ref.device if ref is not None else None
            float_dtype = _ref_float_dtype(values)
            converted = {name: convert(name, value, device, float_dtype) for name, value in arguments.items()}
            if fast:
                out = fn(**converted)
            else:
                bound.arguments.update(converted)
                out = fn(*bound.args, **bound.kwargs)
            return out if ref is not None else to_numpy(out)

        return wrapper  # type: ignore[return-value]

    return decorator
