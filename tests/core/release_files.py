"""Checkpoint files laid out exactly as the officially released ones (tests/fixtures/released_files.json),
with random values: the parameter keys of the released architecture, the container around them, the
entries the architecture does not use, and without the derived buffers the files lack."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RELEASED: dict[str, dict[str, Any]] = {
    k: v for k, v in json.loads((FIXTURES / "released_files.json").read_text()).items() if not k.startswith("_")
}


class LightningHyperParameters:
    """Stands for the objects a training state pickles beside the weights (Lightning's AttributeDict,
    yacs' CfgNode): a class that only exists in the code that wrote the file."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _kornia_shapes(name: str) -> dict[str, list[int]]:
    """Keys of kornia's ports, which load these files with a strict load_state_dict."""
    from featmatch_core.models.dense.loftr import LoFTR
    from featmatch_core.models.extractors.aliked import ALIKED
    from featmatch_core.models.extractors.disk import DISK

    module = {"DISK": lambda: DISK({"weights": None}).model,
              "ALIKED": lambda: ALIKED({"weights": None}).model,
              "LoFTR": lambda: LoFTR({"weights": None}).net}[name]()
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def parameter_shapes(weights_id: str) -> dict[str, list[int]]:
    """Key -> shape of the tensors the released architecture stores (no extras, no container)."""
    source = RELEASED[weights_id]["params"]
    if source.startswith("kornia:"):
        return _kornia_shapes(source.split(":", 1)[1])
    file, _, entry = source.partition(":")
    data = json.loads((FIXTURES / file).read_text())
    if entry:  # lightglue_official_keys.json:<features>
        return dict(data[entry]["parameters"])
    if "state_dict" in data:  # superglue_official_keys.json
        return dict(data["state_dict"])
    if "parameters" in data:  # gluestick_official_keys.json (keys already prefixed 'matcher.')
        return {**data["parameters"], **data["buffers"]}
    return dict(data)  # superpoint_v1_keys.json


def _random_tensor(key: str, shape: list[int], gen: torch.Generator) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.tensor(1000)
    values = torch.randn(shape, generator=gen) * 0.1
    return values.abs() + 0.5 if key.endswith("running_var") else values


def _expand(pattern: str, layers: int) -> list[str]:
    return [pattern.format(i=i) for i in range(layers)] if "{i}" in pattern else [pattern]


def released_state(weights_id: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of the weights part of the file (inside its container), extras included."""
    spec = RELEASED[weights_id]
    gen = torch.Generator().manual_seed(seed)
    shapes = parameter_shapes(weights_id)
    shapes = {k: s for k, s in shapes.items() if not any(fnmatch.fnmatch(k, p) for p in spec["absent"])}
    for pattern, shape in spec["extras"].items():
        shapes.update({key: shape for key in _expand(pattern, spec.get("layers", 1))})
    return {k: _random_tensor(k, s, gen) for k, s in shapes.items()}


def write_released_file(weights_id: str, folder: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write the file under its released name; return its path and the weights part's tensors
    (keys as the model sees them: without the container and its key prefix)."""
    spec = RELEASED[weights_id]
    state = released_state(weights_id, seed)
    container = spec["container"]
    if container == "flat":
        content: Any = state
    else:
        prefix = container.get("key_prefix", "")
        weights = {prefix + k: v for k, v in state.items()}
        weights.update({k: torch.zeros(s) for k, s in container.get("other_model_entries", {}).items()})
        content = {container["weights_under"]: weights}
        for entry in container.get("other_entries", []):
            content[entry] = _other_entry(entry)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec["file"]
    torch.save(content, path)
    return path, state


def _other_entry(name: str) -> Any:
    """Plausible non-weight content of a training state: counters, configs, optimizer states."""
    if name in ("epoch", "global_step"):
        return 7
    if name == "pytorch-lightning_version":
        return "1.3.5"
    if name == "conf":
        return {"model": {"name": "two_view_pipeline"}, "train": {"lr": 1e-4}}
    if name == "optimizer":
        return {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    if name == "hyper_parameters":
        return LightningHyperParameters(lr=6e-3, config={"coarse": {"d_model": 256}})
    raise KeyError(name)
