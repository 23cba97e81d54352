"""LoFTR (Sun, Shen, Wang, Bao, Zhou, CVPR 2021) through kornia's implementation, for evaluation.

kornia's ``LoFTR`` is used as it is (built with ``pretrained=None``, so that nothing is
downloaded behind our weights registry); this module adds the two-view output contract:
grayscale input, a resize to sides that are multiples of 8, matched points mapped back to
pixels of the original images, and per pair the matched points of both images as their
"keypoints" with matches (i, i).

Coordinates: kornia documents that the pretrained models place the centre of pixel (x, y) at
(x + 0.5, y + 0.5); our contract puts it at (x, y) in the original image, so a point at
``p`` in the resized image (scale ``s`` per axis) is at ``p / s - 0.5``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from kornia.geometry.transform import resize as kornia_resize
from omegaconf import DictConfig

from ...image import to_grayscale
from ..base import BaseModel, strict_load

Tensor = torch.Tensor
STRIDE = 8  # the coarse level of LoFTR works at 1/8 resolution
# checkpoint prefixes: the original LightningModule ("matcher."), this wrapper ("net.")
_PREFIXES = ("matcher.", "net.")


def multiple_of_stride_size(height: int, width: int, long_side: int | None) -> tuple[int, int]:
    """(H', W'): the image scaled to ``long_side`` (None: kept), each side rounded to a multiple of 8."""
    scale = 1.0 if long_side is None else long_side / max(height, width)
    return (max(STRIDE, round(height * scale / STRIDE) * STRIDE),
            max(STRIDE, round(width * scale / STRIDE) * STRIDE))


class LoFTR(BaseModel):
    """kornia's LoFTR with the two-view output contract.

    ``forward({"image0": (B, C, H0, W0), "image1": (B, C, H1, W1)})`` (float in [0, 1], C = 1 or 3)
    returns, with K = the largest number of matches of a pair in the batch:
      image0 / image1   {"keypoints" (B, K, 2) matched points in original pixels, "keypoint_scores"
                        (B, K) their confidence, "keypoint_mask" (B, K) False for padding,
                        "image_size" (B, 2) (W, H)}
      matches0 / matches1 (B, K)      k for the k-th match, -1 for padding
      matching_scores0 / matching_scores1 (B, K)
      matches  list of B (K_b, 2)     (k, k), sorted by decreasing confidence
      scores   list of B (K_b,)
    """

    # The released checkpoints store the sine positional-encoding table, which kornia's module
    # computes from its config (a non-persistent buffer); the training state's other entries
    # (epoch, optimizer, hyper-parameters) are outside 'state_dict' and never reach the model.
    release_extras: ClassVar[tuple[str, ...]] = (r"pos_encoding\..+",)

    default_conf: ClassVar[dict[str, Any]] = {
        "name": "loftr",
        "weights": "loftr_outdoor",  # loftr_indoor, loftr_indoor_new, a file, or None (random)
        "resize": 840,  # long side in pixels before rounding both sides to multiples of 8; None keeps the size
        "match_threshold": 0.2,  # minimum coarse confidence (kornia's match_coarse.thr)
        "max_num_matches": None,  # keep the most confident ones
        # positional encoding variant; None: the one the weights were trained with (True for loftr_indoor_new)
        "temp_bug_fix": None,
    }

    def _init(self, conf: DictConfig) -> None:
        from kornia.feature.loftr import loftr as kornia_loftr

        if conf.resize is not None and int(conf.resize) < STRIDE:
            raise ValueError(f"LoFTR: resize must be None or at least {STRIDE}, got {conf.resize}")
        if conf.max_num_matches is not None and int(conf.max_num_matches) <= 0:
            raise ValueError(f"LoFTR: max_num_matches must be positive or None, got {conf.max_num_matches}")
        config = copy.deepcopy(kornia_loftr.default_cfg)
        config["match_coarse"]["thr"] = float(conf.match_threshold)
        bug_fix = conf.temp_bug_fix
        config["coarse"]["temp_bug_fix"] = conf.weights == "loftr_indoor_new" if bug_fix is None else bool(bug_fix)
        self.net = kornia_loftr.LoFTR(pretrained=None, config=config)
        self.net.eval()

    def train(self, mode: bool = True) -> LoFTR:
        """Evaluation only: kornia's training branch needs ground truth, so the network stays in eval mode."""
        super().train(mode)
        self.net.eval()
        return self

    # ---- weights ---------------------------------------------------------------------------
    def load_checkpoint_state_dict(self, state_dict: Mapping[str, Tensor], origin: str = "") -> None:
        """Load the official checkpoint (kornia's ``loftr_*.ckpt``, keys with or without the
        original ``matcher.`` prefix) or a state dict of this wrapper."""
        state = {_strip_prefix(k): v for k, v in state_dict.items()}
        if not any(k.startswith("backbone.") for k in state) or not any(k.startswith("loftr_coarse.") for k in state):
            where = f" {origin}" if origin else ""
            raise ValueError(f"checkpoint{where} is not a LoFTR checkpoint (no backbone.* / loftr_coarse.* keys)")
        strict_load(self.net, state, origin, self.release_extras)

    # ---- forward ---------------------------------------------------------------------------
    def _prepare(self, images: Tensor, name: str) -> tuple[Tensor, Tensor]:
        """Grayscale, resized image and the per-axis scale (sx, sy) of the resize."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"LoFTR: {name} must be (B, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h == 0 or w == 0:
            raise ValueError(f"LoFTR: {name} is empty ({h}x{w})")
        resize = None if self.conf.resize is None else int(self.conf.resize)
        size = multiple_of_stride_size(h, w, resize)
        gray = to_grayscale(images)
        if size != (h, w):
            gray = kornia_resize(gray, size, antialias=True)
        return gray, images.new_tensor([size[1] / w, size[0] / h])

    def forward(self, data: Mapping[str, Tensor]) -> dict[str, Any]:
        for key in ("image0", "image1"):
            if key not in data:
                raise ValueError(f"LoFTR expects 'image0' and 'image1', got keys {sorted(data)}")
        b = data["image0"].shape[0]
        if data["image1"].shape[0] != b:
            raise ValueError(f"LoFTR: batch sizes differ ({b} vs {data['image1'].shape[0]})")
        gray0, scale0 = self._prepare(data["image0"], "image0")
        gray1, scale1 = self._prepare(data["image1"], "image1")
        raw = self.net({"image0": gray0, "image1": gray1})
        points0 = raw["keypoints0"].float() / scale0 - 0.5
        points1 = raw["keypoints1"].float() / scale1 - 0.5
        return self._batched_output(points0, points1, raw["confidence"].float(), raw["batch_indexes"], b,
                                    [data[f"image{i}"] for i in (0, 1)])

    def _batched_output(self, points0: Tensor, points1: Tensor, confidence: Tensor, batch_index: Tensor,
                        b: int, images: list[Tensor]) -> dict[str, Any]:
        limit = self.conf.max_num_matches
        per_pair = []
        for k in range(b):
            rows = torch.nonzero(batch_index == k).squeeze(1)
            rows = rows[torch.argsort(confidence[rows], descending=True, stable=True)]
            per_pair.append(rows if limit is None else rows[: int(limit)])
        width = max((len(r) for r in per_pair), default=0)
        device = points0.device
        mask = torch.zeros((b, width), dtype=torch.bool, device=device)
        kpts0, kpts1 = points0.new_zeros((b, width, 2)), points1.new_zeros((b, width, 2))
        scores = confidence.new_zeros((b, width))
        for k, rows in enumerate(per_pair):
            n = len(rows)
            mask[k, :n] = True
            kpts0[k, :n], kpts1[k, :n], scores[k, :n] = points0[rows], points1[rows], confidence[rows]
        index = torch.arange(width, device=device).expand(b, width)
        matches0 = torch.where(mask, index, torch.full_like(index, -1))
        out: dict[str, Any] = {
            "matches0": matches0, "matches1": matches0.clone(),
            "matching_scores0": scores, "matching_scores1": scores.clone(),
            "matches": [torch.arange(len(r), device=device)[:, None].repeat(1, 2) for r in per_pair],
            "scores": [scores[k, : len(r)] for k, r in enumerate(per_pair)],
        }
        for i, kpts in ((0, kpts0), (1, kpts1)):
            h, w = images[i].shape[-2:]
            out[f"image{i}"] = {"keypoints": kpts, "keypoint_scores": scores.clone(), "keypoint_mask": mask.clone(),
                                "image_size": kpts.new_tensor([[w, h]]).expand(b, 2).clone()}
        return out


def _strip_prefix(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key
