"""``DenseTwoView``: a detector-free matcher with the two-view interface of ``Pipeline``.

Evaluation (``eval.runner``), ``match.py`` and ``featmatch_core.load`` use it exactly like a
``Pipeline``: batched ``forward({"image0", "image1"})`` with the same output keys, and
``match(image0, image1) -> TwoViewMatches``. What it cannot offer is ``extract``: the model
sees both images together, so there are no per-image features to cache, and the streaming
users (``FeatureStream``, the ROS nodes) refuse it at construction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ...config import ConfigError, ConfLike, merge_strict, to_container
from ...device import autocast, precision_for, resolve_device
from ...image import ImageLike, to_tensor_image
from .. import build_model
from ..pipeline import TwoViewMatches, _timer, to_two_view_matches


def is_dense_conf(conf: ConfLike) -> bool:
    """A model section that names a dense matcher (``dense: {name: loftr}``) instead of extractor + matcher."""
    return "dense" in to_container(conf)


def no_per_image_features(name: str) -> ConfigError:
    return ConfigError(
        f"'{name}' is a dense (detector-free) matcher: it matches image pairs directly and has no per-image "
        "features to extract once per frame and cache. Streaming and the ROS nodes need an extractor + "
        "matcher config (e.g. superpoint+lightglue); use it through match(image0, image1) or the benchmarks."
    )


class DenseTwoView(nn.Module):
    """A dense two-view model on one device with one precision."""

    default_conf: ClassVar[dict[str, Any]] = {
        "dense": {"name": None},
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "precision": "fp32",  # fp32 | bf16 | fp16 (CUDA only) | auto (see Pipeline)
    }
    per_image_features: ClassVar[bool] = False  # FeatureStream refuses models without them

    def __init__(self, model: nn.Module, conf: ConfLike = None) -> None:
        super().__init__()
        self.conf = merge_strict(self.default_conf, conf, owner="pipeline (dense)", open_keys=("dense",))
        self.model = model
        self.device = resolve_device(self.conf.device)
        self.conf.precision = precision_for(self.device, self.conf.precision)
        self.to(self.device).eval()

    @classmethod
    def from_conf(cls, conf: ConfLike, download: bool = True, pretrained: bool = True) -> DenseTwoView:
        conf = merge_strict(cls.default_conf, conf, owner="pipeline (dense)", open_keys=("dense",))
        model = build_model("dense", conf.dense, pretrained=pretrained, download=download)
        conf.dense = to_container(model.conf)
        return cls(model, conf)

    @property
    def name(self) -> str:
        return str(self.conf.dense.name)

    # ---- batched form (evaluation) ---------------------------------------------------------
    def forward(self, data: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``data["image0"]``, ``data["image1"]``: (B, C, H, W) in [0, 1] -> the outputs of ``Pipeline.forward``."""
        with autocast(self.device, self.conf.precision):
            return self.model({"image0": data["image0"].to(self.device), "image1": data["image1"].to(self.device)})

    # ---- single pair API -------------------------------------------------------------------
    @torch.inference_mode()
    def match(self, image0: ImageLike, image1: ImageLike) -> TwoViewMatches:
        images = {"image0": to_tensor_image(image0), "image1": to_tensor_image(image1)}
        with _timer(self.device) as t:
            pred = self.forward(images)
        result = to_two_view_matches(pred["image0"], pred["image1"], pred)
        result.timings = {"match": t.ms, "total": t.ms}
        return result

    def extract(self, image: ImageLike) -> Any:
        raise no_per_image_features(self.name)

    def match_features(self, feats0: Any, feats1: Any, image_states: Any = None) -> TwoViewMatches:
        raise no_per_image_features(self.name)
