"""Model registry: names -> classes, imported lazily so that importing the package
does not pull in kornia, pycolmap or other optional back ends."""

from __future__ import annotations

from importlib import import_module

from ..config import ConfLike, to_container
from .base import BaseModel

REGISTRY: dict[str, dict[str, str]] = {
    "extractor": {
        "superpoint": "featmatch_core.models.extractors.superpoint:SuperPoint",
        "sift": "featmatch_core.models.extractors.sift:SIFT",
        "aliked": "featmatch_core.models.extractors.aliked:ALIKED",
        "disk": "featmatch_core.models.extractors.disk:DISK",
        "wireframe": "featmatch_core.models.lines.wireframe:Wireframe",
    },
    "matcher": {
        "lightglue": "featmatch_core.models.matchers.lightglue:LightGlue",
        "nearest_neighbor": "featmatch_core.models.matchers.nearest_neighbor:NearestNeighborMatcher",
        "gluestick": "featmatch_core.models.matchers.gluestick:GlueStick",
        "superglue": "featmatch_core.models.matchers.superglue:SuperGlue",
    },
    # detector-free two-view matchers: images in, matches out, no per-image features
    "dense": {
        "loftr": "featmatch_core.models.dense.loftr:LoFTR",
    },
    # line segment detectors: images in, lines / line_scores / line_mask out (the line contract)
    "line_detector": {
        "lsd": "featmatch_core.models.lines.lsd:LSD",
    },
}


def get_model(kind: str, name: str) -> type[BaseModel]:
    """The class registered as ``name`` for ``kind`` ('extractor' or 'matcher')."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown model kind '{kind}', expected one of {sorted(REGISTRY)}")
    if name not in REGISTRY[kind]:
        raise ValueError(f"unknown {kind} '{name}', expected one of {sorted(REGISTRY[kind])}")
    module, cls = REGISTRY[kind][name].split(":")
    return getattr(import_module(module), cls)


def build_model(kind: str, conf: ConfLike, pretrained: bool = True, download: bool = True) -> BaseModel:
    """Build the model named by ``conf.name``; load ``conf.weights`` when ``pretrained``."""
    conf = to_container(conf)
    if not conf.get("name"):
        raise ValueError(f"{kind} config needs a 'name', one of {sorted(REGISTRY.get(kind, {}))}")
    cls = get_model(kind, conf["name"])
    if pretrained:
        return cls.from_pretrained(conf, download=download)
    return cls(conf)
