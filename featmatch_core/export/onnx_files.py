"""Reading and writing our ONNX files: atomic saves, metadata, and checks that name the file.

Every file we export carries ``metadata_props``: ``featmatch.format`` (colmap | opencv | full |
extractor), ``featmatch.config`` (the model config as JSON) and, for ``full``, the stage names.
Files written by others (for example the COLMAP or OpenCV model zoos) have no metadata; their
format is then recognised from the input and output names.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_bytes

OPSET = 17  # ONNX opset of our exports: what OpenCV 5's importer and onnxruntime >= 1.14 both read
FORMAT_KEY = "featmatch.format"
CONFIG_KEY = "featmatch.config"


class OnnxFileError(ValueError):
    """An ONNX file that is missing, unreadable, or has other inputs/outputs than expected."""


def require_onnx() -> Any:
    """The ``onnx`` package, or an error saying which extra installs it."""
    try:
        import onnx
    except ImportError as err:
        raise ImportError("ONNX export needs the `onnx` package: pip install 'lightglue_ros[onnx]' "
                          "(onnx and onnxruntime)") from err
    return onnx


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type ('float', 'int64') and shape (int or a dimension name) of one graph value."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


def trace_to_onnx(module: torch.nn.Module, example: Sequence[torch.Tensor], input_names: Sequence[str],
                  output_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]]) -> Any:
    """Trace ``module`` on ``example`` inputs into an in-memory ``onnx.ModelProto``.

    We use the TorchScript exporter (``dynamo=False``): it needs no onnxscript, and its opset-17
    graphs (decomposed attention, no complex types) are the ones OpenCV's importer reads.
    """
    onnx = require_onnx()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(module.eval(), tuple(example), buffer, dynamo=False, opset_version=OPSET,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def set_metadata(model: Any, fmt: str, config: dict[str, Any], **extra: str) -> None:
    entries = {FORMAT_KEY: fmt, CONFIG_KEY: json.dumps(config, sort_keys=True), **extra}
    del model.metadata_props[:]
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def metadata(model: Any) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def save_model(model: Any, path: str | Path) -> Path:
    """Check the graph and write it atomically: a crash leaves the old file or none, never half a file."""
    onnx = require_onnx()
    onnx.checker.check_model(model)
    return atomic_write_bytes(path, model.SerializeToString())


def load_model(path: str | Path) -> Any:
    """``onnx.ModelProto`` of a file, with one clear error for a missing, truncated or non-ONNX file."""
    onnx = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError, or a path onnx cannot read
        raise OnnxFileError(f"{path} is not a readable ONNX file ({type(err).__name__}: {err}); "
                            "it is probably truncated or of another kind: export it again") from err
    if not model.graph.node:
        raise OnnxFileError(f"{path} holds no ONNX graph (empty or truncated file?): export it again")
    return model


def graph_values(model: Any, kind: str) -> list[TensorSpec]:
    """The graph's non-initializer inputs (``kind='input'``) or its outputs, in order."""
    onnx = require_onnx()
    initializers = {t.name for t in model.graph.initializer}
    values = model.graph.input if kind == "input" else model.graph.output
    specs = []
    for value in values:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
        shape = tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                      for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, {"float32": "float"}.get(dtype, dtype), shape))
    return specs


def check_signature(path: str | Path, model: Any, inputs: Sequence[str], outputs: Sequence[str],
                    what: str, dims: dict[str, Callable[[TensorSpec], str | None]] | None = None) -> None:
    """Refuse a file whose input/output names differ from ``inputs``/``outputs`` (in order), or
    whose values fail a check in ``dims`` (name -> function returning a problem or None)."""
    found_in, found_out = graph_values(model, "input"), graph_values(model, "output")
    problems = []
    if [v.name for v in found_in] != list(inputs):
        problems.append(f"inputs {[v.describe() for v in found_in]}, expected {list(inputs)}")
    if [v.name for v in found_out] != list(outputs):
        problems.append(f"outputs {[v.describe() for v in found_out]}, expected {list(outputs)}")
    if not problems:
        for value in found_in + found_out:
            check = (dims or {}).get(value.name)
            problem = check(value) if check else None
            if problem:
                problems.append(f"{value.describe()}: {problem}")
    if problems:
        raise OnnxFileError(f"{path} is not {what}: it has " + "; ".join(problems))
