"""Export our LightGlue to ONNX in three formats (see :mod:`.lightglue_graphs` for the layouts).

* ``colmap``: COLMAP's LightGlue ONNX matcher layout (``kpts0 kpts1 desc0 desc1 image_size0
  image_size1`` [+ ``scales0 scales1 oris0 oris1`` for SIFT] -> ``matches0`` (N0,), ``mscores0``
  (N0,)); pixels in, the graph normalises. Fixed depth, no pruning.
* ``opencv``: ``cv2.LightGlueMatcher``'s ``LG_ALIKED`` layout (``kpts0 kpts1 desc0 desc1`` ->
  ``matches0`` (K, 2), ``mscores0`` (K,)); keypoints normalised by the caller: OpenCV does it with
  ``setKeypointNormalization(cv2.LG_NORM_MAX_SIDE)``. No scale/orientation input, so not for SIFT.
* ``full``: adaptive depth and width. One ONNX file holding disjoint stage graphs, ``encode``
  (the colmap inputs), ``layer{i}`` and ``assign{i}`` for every layer, each with its own
  prefixed inputs/outputs (``layer3/x0``); our runner opens one onnxruntime session per stage and
  takes the exit and pruning decisions between them, exactly as the PyTorch model does. Control
  flow inside ONNX (If/Loop) was the alternative: pruning gives every layer data-dependent shapes,
  which the TorchScript tracer cannot express and few runtimes other than onnxruntime execute,
  and every threshold would be frozen at export; with stages, pruned layers really run on fewer
  points and ``depth_confidence`` / ``width_confidence`` / ``filter_threshold`` stay run-time
  settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import to_container
from ..models.matchers.lightglue import LightGlue
from .lightglue_graphs import AssignStage, EncodeStage, FixedDepthLightGlue, LayerStage
from .onnx_files import OPSET, require_onnx, save_model, set_metadata, trace_to_onnx

FORMATS = ("colmap", "opencv", "full")
POINT_INPUTS = ("kpts0", "kpts1", "desc0", "desc1")
SIZE_INPUTS = ("image_size0", "image_size1")
SCALE_ORI_INPUTS = ("scales0", "scales1", "oris0", "oris1")
MATCH_OUTPUTS = ("matches0", "mscores0")
STATE = ("x0", "x1", "cos0", "sin0", "cos1", "sin1")  # the stages' running state of one pair
PAIR_OUTPUTS = ("matches0", "matches1", "mscores0", "mscores1")
# a layer's outputs: the updated x0/x1 (named apart from its inputs: ONNX values have one name
# each), then, for all but the last layer, the token confidence and matchability of all points
LAYER_OUTPUTS = ("next_x0", "next_x1", "confidence", "matchability")
STAGES_KEY = "featmatch.stages"

# the image (0 or 1) whose keypoint count each named input/output has on its axis 1 (axis 0: *)
_SIDE = {"kpts0": 0, "kpts1": 1, "desc0": 0, "desc1": 1, "scales0": 0, "scales1": 1, "oris0": 0, "oris1": 1,
         "x0": 0, "x1": 1, "cos0": 0, "sin0": 0, "cos1": 1, "sin1": 1}


def pixel_inputs(add_scale_ori: bool) -> list[str]:
    """COLMAP's input names, in its order (it checks names and order)."""
    return [*POINT_INPUTS, *SIZE_INPUTS, *(SCALE_ORI_INPUTS if add_scale_ori else ())]


def dynamic_axes(names: Sequence[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        if name in _SIDE:  # cos/sin are (1, 1, N, d): the points are on axis 2
            axes[name] = {2 if name.startswith(("cos", "sin")) else 1: f"N{_SIDE[name]}"}
    return axes


def example_features(model: LightGlue, sizes: tuple[int, int] = (7, 5)) -> dict[str, torch.Tensor]:
    """Random inputs of every name above for tracing (two different counts, so that no shape of
    one image can be confused with the other's in the trace)."""
    g = torch.Generator().manual_seed(0)
    feats: dict[str, torch.Tensor] = {}
    for side, n in enumerate(sizes):
        feats[f"kpts{side}"] = torch.rand(1, n, 2, generator=g) * 400
        feats[f"desc{side}"] = torch.nn.functional.normalize(torch.randn(1, n, model.input_dim, generator=g), dim=-1)
        feats[f"image_size{side}"] = torch.tensor([[640.0, 480.0]])
        feats[f"scales{side}"] = torch.rand(1, n, generator=g) * 4 + 1
        feats[f"oris{side}"] = torch.rand(1, n, generator=g) * 6 - 3
    return feats


def export_config(model: LightGlue) -> dict[str, Any]:
    return to_container(model.conf)


def fixed_depth_graph(model: LightGlue, fmt: str) -> Any:
    """The ``colmap`` or ``opencv`` ModelProto of ``model``."""
    if fmt == "opencv" and model.conf.add_scale_ori:
        raise ValueError("the opencv format (cv2.LightGlueMatcher) has no scale/orientation inputs, so it "
                         "cannot carry a SIFT LightGlue (add_scale_ori=True): export --format colmap or full")
    pixels = fmt == "colmap"
    names = pixel_inputs(bool(model.conf.add_scale_ori)) if pixels else list(POINT_INPUTS)
    feats = example_features(model)
    if not pixels:  # opencv: the caller normalises (LG_NORM_MAX_SIDE), so trace on normalised points
        feats = {**feats, "kpts0": feats["kpts0"] / 320 - 1, "kpts1": feats["kpts1"] / 320 - 1}
    graph = FixedDepthLightGlue(model, pixel_keypoints=pixels, pair_list=not pixels)
    axes = dynamic_axes(names)
    axes.update({"matches0": {0: "N0" if pixels else "K"}, "mscores0": {0: "N0" if pixels else "K"}})
    return trace_to_onnx(graph, [feats[n] for n in names], names, MATCH_OUTPUTS, axes)


def stage_graphs(model: LightGlue) -> dict[str, Any]:
    """The ``full`` stages, in running order: encode, layer0, assign0, layer1, assign1, ..."""
    names = pixel_inputs(bool(model.conf.add_scale_ori))
    feats = example_features(model)
    encode, example = EncodeStage(model), [feats[n] for n in names]
    with torch.no_grad():  # the layers are traced on the encoder's real outputs
        state = dict(zip(STATE, encode(*example), strict=True))
    stages = {"encode": trace_to_onnx(encode, example, names, STATE, dynamic_axes(names + list(STATE)))}
    n_layers = len(model.transformers)
    for layer in range(n_layers):
        outputs = list(LAYER_OUTPUTS[:2] if layer == n_layers - 1 else LAYER_OUTPUTS)
        axes = {**dynamic_axes(STATE), "next_x0": {1: "N0"}, "next_x1": {1: "N1"}, "confidence": {0: "N"},
                "matchability": {0: "N"}}
        stages[f"layer{layer}"] = trace_to_onnx(LayerStage(model, layer), [state[n] for n in STATE], STATE,
                                                outputs, axes)
        pair_axes = {**dynamic_axes(["x0", "x1"]), "matches0": {0: "N0"}, "mscores0": {0: "N0"},
                     "matches1": {0: "N1"}, "mscores1": {0: "N1"}}
        stages[f"assign{layer}"] = trace_to_onnx(AssignStage(model, layer), [state["x0"], state["x1"]],
                                                 ["x0", "x1"], PAIR_OUTPUTS, pair_axes)
    return stages


def merge_stages(stages: dict[str, Any]) -> Any:
    """One ModelProto holding every stage graph side by side, each name prefixed ``{stage}/``."""
    onnx = require_onnx()
    graph = onnx.GraphProto(name="featmatch_lightglue_stages")
    for name, stage in stages.items():
        prefixed = onnx.compose.add_prefix(stage, prefix=f"{name}/")
        for field in ("node", "input", "output", "initializer", "value_info"):
            getattr(graph, field).extend(getattr(prefixed.graph, field))
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                  producer_name="featmatch_core")


def split_stage(merged: Any, stage: str) -> Any:
    """The ModelProto of one stage of a ``full`` file (the inverse of :func:`merge_stages`)."""
    onnx = require_onnx()
    prefix = f"{stage}/"
    graph = onnx.GraphProto(name=stage)
    for field in ("node", "input", "output", "initializer", "value_info"):
        getattr(graph, field).extend(v for v in getattr(merged.graph, field) if v.name.startswith(prefix))
    return onnx.helper.make_model(graph, opset_imports=list(merged.opset_import), ir_version=merged.ir_version)


def export_lightglue(model: LightGlue, path: str | Path, fmt: str = "colmap") -> Path:
    """Write ``model`` (eval mode, its current weights) as ONNX ``fmt`` to ``path`` atomically."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown ONNX format '{fmt}', expected one of {list(FORMATS)}")
    if not isinstance(model, LightGlue):
        raise TypeError(f"ONNX export of matchers supports LightGlue only, got {type(model).__name__}")
    if model.base_dtype != torch.float32:
        raise ValueError(f"ONNX export needs a float32 LightGlue, this one has {model.base_dtype} parameters")
    was_training = model.training
    model.eval()  # the traced graph is the inference path
    try:
        if fmt == "full":
            stages = stage_graphs(model)
            onnx_model = merge_stages(stages)
            set_metadata(onnx_model, fmt, export_config(model), **{STAGES_KEY: json.dumps(list(stages))})
        else:
            onnx_model = fixed_depth_graph(model, fmt)
            set_metadata(onnx_model, fmt, export_config(model))
    finally:
        model.train(was_training)
    return save_model(onnx_model, path)
