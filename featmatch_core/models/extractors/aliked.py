"""ALIKED (Zhao et al., IEEE TIM 2023) through ``kornia.feature.ALIKED``.

The kornia module is ``self.model`` and holds exactly the parameters of the official
checkpoints (Shiaoming/ALIKED ``aliked-n16.pth``), which therefore load into it unchanged.
Kornia returns keypoints in pixel indices (``align_corners=True`` grid), i.e. pixel centres.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig

from ..base import strict_load
from .base import Extractor, Features, empty_features


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Mapping[str, torch.Tensor]:
    """Drop ``prefix`` from the keys when every key has it, else return the dict unchanged."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


# descriptor width of each kornia ALIKED configuration
DESCRIPTOR_DIMS = {"aliked-t16": 64, "aliked-n16": 128, "aliked-n16rot": 128, "aliked-n32": 128}


class ALIKED(Extractor):
    """ALIKED keypoints and descriptors (RGB input; 128-d except aliked-t16, 64-d)."""

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "aliked",
        "weights": "aliked-n16",
        "model_name": "aliked-n16",
        "max_num_keypoints": None,
        "detection_threshold": 0.2,  # > 0: threshold mode; <= 0: the top max_num_keypoints
        "nms_radius": 2,
    }
    grayscale: ClassVar[bool] = False
    descriptor_dim: ClassVar[int] = 128
    has_scale_ori: ClassVar[bool] = False
    # kornia: on CPU, half-precision maps reach grid_sample without an upcast (wrong values/NaN)
    autocast_ok: ClassVar[bool] = False

    def _init(self, conf: DictConfig) -> None:
        from kornia.feature import ALIKED as KorniaALIKED

        name = type(self).__name__
        if conf.model_name not in DESCRIPTOR_DIMS:
            raise ValueError(f"{name}: unknown model_name '{conf.model_name}', expected one of "
                             f"{sorted(DESCRIPTOR_DIMS)}")
        if conf.weights in DESCRIPTOR_DIMS and conf.weights != conf.model_name:
            # aliked-n16rot has the shapes of aliked-n16: a mix-up would load silently
            raise ValueError(f"{name}: weights '{conf.weights}' are for another model than "
                             f"model_name '{conf.model_name}'; set weights to '{conf.model_name}'")
        if conf.nms_radius is None or int(conf.nms_radius) < 0:
            raise ValueError(f"{name}: nms_radius must be an int >= 0, got {conf.nms_radius}")
        if conf.detection_threshold is None:
            raise ValueError(f"{name}: detection_threshold must be a number (<= 0 selects top-k mode)")
        if conf.detection_threshold <= 0 and conf.max_num_keypoints is None:
            raise ValueError(f"{name}: detection_threshold <= 0 selects top-k mode, "
                             "which needs max_num_keypoints")
        self.descriptor_dim = DESCRIPTOR_DIMS[conf.model_name]
        self.model = KorniaALIKED(
            model_name=conf.model_name,
            # kornia's "no limit" is -1; in threshold mode it still caps at 20000 keypoints
            max_num_keypoints=-1 if conf.max_num_keypoints is None else int(conf.max_num_keypoints),
            detection_threshold=float(conf.detection_threshold),
            nms_radius=int(conf.nms_radius),
        )

    def load_checkpoint_state_dict(self, state_dict: Mapping[str, torch.Tensor], origin: str = "") -> None:
        """The official checkpoint is the state dict of the kornia module itself; a state dict
        of this wrapper (keys prefixed ``model.``) is accepted too."""
        strict_load(self.model, strip_prefix(state_dict, "model."), origin, self.release_extras)

    def _extract(self, images: torch.Tensor) -> list[Features]:
        out: list[Features] = []
        for feats in self.model(images):
            if feats.keypoints.shape[0] == 0:
                out.append(empty_features(self.descriptor_dim, device=images.device))
                continue
            out.append({
                "keypoints": feats.keypoints.float(),
                "keypoint_scores": feats.keypoint_scores.float(),
                "descriptors": feats.descriptors.float(),
            })
        return out
