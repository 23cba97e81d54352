"""The trainable two-view model: (frozen features) -> matcher -> ground truth -> loss.

The matcher is the very LightGlue used for inference (``featmatch_core.models``); this
wrapper only adds ground-truth labelling and the loss. Batches carry features (computed by
the dataset with a frozen extractor) and the geometry (``H_0to1``; depth-based ground truth
comes with the MegaDepth data).

Batch keys: ``keypoints{0,1}`` (B, N, 2), ``descriptors{0,1}``, ``keypoint_mask{0,1}``,
``image_size{0,1}``, optional ``scales{0,1}``/``oris{0,1}``, and ``H_0to1`` (B, 3, 3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfLike, merge_strict, to_container
from ..geometry.gt_matches import gt_matches_from_homography
from ..models import build_model
from .losses import lightglue_loss

FEATURE_KEYS = ("keypoints", "descriptors", "keypoint_scores", "keypoint_mask", "image_size", "scales", "oris")


class TwoViewModel(nn.Module):
    default_conf: dict[str, Any] = {
        "name": "two_view",
        "matcher": {"name": "lightglue"},
        "ground_truth": {"th_positive": 3.0, "th_negative": 5.0},
        "loss": {"nll_balancing": 0.5, "gamma": 1.0, "confidence_weight": 1.0},
        "pretrained": True,  # load the matcher's conf.weights (False: random initialisation)
    }

    def __init__(self, conf: ConfLike = None) -> None:
        super().__init__()
        self.conf = merge_strict(self.default_conf, conf, owner="model (two_view)", open_keys=("matcher",))
        # Every layer is supervised, in validation too: the wrapper always asks for all of them
        # (adaptive depth/width are inference features and stay configurable in the pipeline).
        matcher_conf = {**to_container(self.conf.matcher), "return_all_layers": True}
        self.matcher = build_model("matcher", matcher_conf, pretrained=bool(self.conf.pretrained))

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if hasattr(self.matcher, "set_gradient_checkpointing"):
            self.matcher.set_gradient_checkpointing(enabled)

    @staticmethod
    def split_views(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        views = tuple({k: batch[f"{k}{i}"] for k in FEATURE_KEYS if f"{k}{i}" in batch} for i in (0, 1))
        return views[0], views[1]

    def ground_truth(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "H_0to1" not in batch:
            raise KeyError("TwoViewModel: the batch has no ground truth ('H_0to1')")
        gt = self.conf.ground_truth
        return gt_matches_from_homography(batch["keypoints0"], batch["keypoints1"], batch["H_0to1"],
                                          pos_th=gt.th_positive, neg_th=gt.th_negative,
                                          mask0=batch.get("keypoint_mask0"), mask1=batch.get("keypoint_mask1"))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        view0, view1 = self.split_views(batch)
        pred = self.matcher({"image0": view0, "image1": view1})
        with torch.no_grad():
            gt = self.ground_truth(batch)
        pred["gt_matches0"], pred["gt_matches1"] = gt["gt_matches0"], gt["gt_matches1"]
        return pred

    def loss(self, pred: dict[str, Any], batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        gt0, gt1 = pred["gt_matches0"], pred["gt_matches1"]
        valid0 = batch.get("keypoint_mask0", torch.ones_like(gt0, dtype=torch.bool))
        valid1 = batch.get("keypoint_mask1", torch.ones_like(gt1, dtype=torch.bool))
        conf = self.conf.loss
        losses = lightglue_loss(pred, gt0, gt1, valid0, valid1, balancing=conf.nll_balancing,
                                gamma=conf.gamma, confidence_weight=conf.confidence_weight)
        if not losses["total"].requires_grad and torch.is_grad_enabled():
            # No layer ran (no keypoints): a zero loss still wired to every parameter, so that
            # backward() and DDP's gradient averaging work and all gradients are exactly 0.
            anchor = sum(p.sum() for p in self.matcher.parameters() if p.requires_grad) * 0.0
            losses["total"] = losses["total"] + anchor
        return losses, match_metrics(pred["matches0"], gt0)


def match_metrics(matches0: Tensor, gt_matches0: Tensor) -> dict[str, Tensor]:
    """Per-pair precision and recall of the predicted matches against the labels."""
    predicted = matches0 > -1
    labelled = gt_matches0 > -2
    correct = (matches0 == gt_matches0) & predicted
    positives = gt_matches0 > -1
    return {
        "match_precision": correct.sum(1) / (predicted & labelled).sum(1).clamp(min=1),
        "match_recall": (correct & positives).sum(1) / positives.sum(1).clamp(min=1),
        "num_matches": predicted.sum(1).float(),
    }
