"""The trainable two-view model: (frozen features) -> matcher -> ground truth -> loss.

The matcher is the very LightGlue used for inference (``featmatch_core.models``); this
wrapper only adds ground-truth labelling and the loss. Batches carry features (computed by
the dataset with a frozen extractor) and the geometry: ``H_0to1`` (synthetic homographies)
or depth maps, intrinsics and relative pose (MegaDepth).

Batch keys: ``keypoints{0,1}`` (B, N, 2), ``descriptors{0,1}``, ``keypoint_mask{0,1}``,
``image_size{0,1}``, optional ``scales{0,1}``/``oris{0,1}``, optional wireframe lines
(``lines{0,1}``, ``line_scores{0,1}``, ``line_mask{0,1}``, ``lines_junc_idx{0,1}``: GlueStick;
they get line labels and a line loss when the matcher predicts line assignments), and either ``H_0to1`` (B, 3, 3)
or ``depth{0,1}`` (B, H, W; 0 = no depth, may be padded beyond ``image_size``), ``K{0,1}``
(B, 3, 3) and ``T_0to1`` (B, 4, 4). Mixed batches (``featmatch_core.datasets.scenes.MixedPairs``)
carry both and a per-pair ``gt_from_depth`` (B,) bool choosing which geometry labels each pair.

With ``extractor`` (a frozen extractor config; the trainer sets it from ``data.features`` when
``data.features_in: model``) batches may hold images ``image{0,1}`` (B, C, H, W) in [0, 1]
instead of features: the extractor runs here, on the batch's device, padded exactly as the
dataset pads (``featmatch_core.datasets.homographies.padded_features``). It is held outside the
module tree: not in ``state_dict()`` (checkpoints and exports hold the matcher only), not in
``parameters()`` (no optimizer group, nothing for DDP), never switched to training mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError, ConfLike, merge_strict, to_container
from ..datasets.homographies import padded_features
from ..geometry.depth import invert_transform, reproject
from ..geometry.gt_matches import IGNORE, UNMATCHED, gt_matches_from_depth, gt_matches_from_homography
from ..geometry.lines import gt_line_matches_from_depth, gt_line_matches_from_homography
from ..models import build_model
from .losses import lightglue_loss, line_assignment_loss

FEATURE_KEYS = ("keypoints", "descriptors", "keypoint_scores", "keypoint_mask", "image_size", "scales",
                "oris", "lines", "line_scores", "line_mask", "lines_junc_idx")
DEPTH_KEYS = ("depth0", "depth1", "K0", "K1", "T_0to1")


class TwoViewModel(nn.Module):
    default_conf: dict[str, Any] = {
        "name": "two_view",
        "matcher": {"name": "lightglue"},
        # depth_consistency: relative depth difference beyond which a reprojected point is occluded
        "ground_truth": {"th_positive": 3.0, "th_negative": 5.0, "depth_consistency": 0.05},
        "loss": {"nll_balancing": 0.5, "gamma": 1.0, "confidence_weight": 1.0,
                 "line_weight": 1.0},  # weight of the line assignment NLL (matchers with lines)
        "pretrained": True,  # load the matcher's conf.weights (False: random initialisation)
        # frozen extractor run on batches of images (image0/1 without keypoints0/1), with its
        # weights; None: the batches carry features (computed by the dataset)
        "extractor": None,
    }

    def __init__(self, conf: ConfLike = None) -> None:
        super().__init__()
        self.conf = merge_strict(self.default_conf, conf, owner="model (two_view)", open_keys=("matcher",))
        check_extractor_conf(self.conf.extractor)
        # Every layer is supervised, in validation too: the wrapper always asks for all of them
        # (adaptive depth/width are inference features and stay configurable in the pipeline).
        matcher_conf = {**to_container(self.conf.matcher), "return_all_layers": True}
        self.matcher = build_model("matcher", matcher_conf, pretrained=bool(self.conf.pretrained))
        self.extractor: nn.Module | None = None
        if self.conf.extractor is not None:
            extractor = build_model("extractor", self.conf.extractor).eval().requires_grad_(False)
            object.__setattr__(self, "extractor", extractor)  # not a child module: see the module docstring

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if hasattr(self.matcher, "set_gradient_checkpointing"):
            self.matcher.set_gradient_checkpointing(enabled)

    @staticmethod
    def split_views(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        views = tuple({k: batch[f"{k}{i}"] for k in FEATURE_KEYS if f"{k}{i}" in batch} for i in (0, 1))
        return views[0], views[1]

    @classmethod
    def check_conf(cls, conf: ConfLike) -> None:
        """Validate without building anything (the trainer calls it before any work)."""
        from .registry import check_component

        merged = merge_strict(cls.default_conf, conf, owner="model (two_view)", open_keys=("matcher",))
        check_component("matcher", merged.matcher, "model.matcher")
        check_extractor_conf(merged.extractor)
        if merged.extractor is not None:
            check_component("extractor", merged.extractor, "model.extractor")

    @torch.no_grad()
    def extract(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{key}{i}`` features of ``image0/1`` by the frozen extractor, padded to its
        ``max_num_keypoints``; nothing when the batch already holds ``keypoints0/1``."""
        if "keypoints0" in batch and "keypoints1" in batch:
            return {}
        if self.extractor is None or "image0" not in batch or "image1" not in batch:
            raise KeyError("TwoViewModel: the batch has no keypoints0/1"
                           + (" and no image0/1" if self.extractor is not None else
                              ": for batches of images (data.features_in=model) set model.extractor"))
        views = [batch["image0"], batch["image1"]]
        self.extractor.to(views[0].device)  # a no-op once there

        def features_of(images: Tensor) -> dict[str, Tensor]:
            # full precision, as in the dataset: the same features whatever train.mixed_precision
            with torch.autocast(device_type=images.device.type, enabled=False):
                return padded_features(self.extractor, images.float(), int(self.conf.extractor.max_num_keypoints))

        if views[0].shape == views[1].shape:  # one call: a GPU extractor's launches and reads are per call
            both = features_of(torch.cat(views))
            per_view = [{key: value.chunk(2)[i] for key, value in both.items()} for i in (0, 1)]
        else:
            per_view = [features_of(images) for images in views]
        return {f"{key}{i}": value for i, feats in enumerate(per_view) for key, value in feats.items()}

    def ground_truth(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Labels from ``H_0to1``, else from depth maps and poses (see the module docstring)."""
        if "gt_from_depth" in batch:
            return self.mixed_ground_truth(batch)
        gt = self.conf.ground_truth
        masks = {"mask0": batch.get("keypoint_mask0"), "mask1": batch.get("keypoint_mask1")}
        if "H_0to1" in batch:
            return gt_matches_from_homography(batch["keypoints0"], batch["keypoints1"], batch["H_0to1"],
                                              pos_th=gt.th_positive, neg_th=gt.th_negative, **masks)
        missing = [k for k in DEPTH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"TwoViewModel: the batch has no ground truth: no 'H_0to1', and {missing} are "
                           "missing for depth-based labels")
        out = gt_matches_from_depth(batch["keypoints0"], batch["keypoints1"], batch["depth0"],
                                    batch["depth1"], batch["K0"], batch["K1"], batch["T_0to1"],
                                    pos_th=gt.th_positive, neg_th=gt.th_negative,
                                    depth_consistency=gt.depth_consistency, **masks)
        for i in (0, 1):
            out[f"gt_matches{i}"] = label_outside_unmatched(out[f"gt_matches{i}"], batch, i)
        return out

    def mixed_ground_truth(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``gt_matches0/1`` of a batch mixing homography and depth pairs: each subset is labelled
        by its own geometry (the other geometry of a pair is a placeholder)."""
        from_depth = batch["gt_from_depth"].bool()
        out = {f"gt_matches{i}": torch.full(batch[f"keypoints{i}"].shape[:2], IGNORE, dtype=torch.long,
                                            device=from_depth.device) for i in (0, 1)}
        for selected, drop in ((from_depth, "H_0to1"), (~from_depth, None)):
            if not selected.any():
                continue
            subset = {k: v[selected] for k, v in batch.items()
                      if isinstance(v, Tensor) and v.dim() > 0 and k not in ("gt_from_depth", drop)}
            labels = self.ground_truth(subset)
            for i in (0, 1):
                out[f"gt_matches{i}"][selected] = labels[f"gt_matches{i}"].long()
        return out

    def line_ground_truth(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Line labels (``gt_line_matches0/1``) from ``H_0to1``, else from depth maps and poses."""
        if "gt_from_depth" in batch:
            raise NotImplementedError("TwoViewModel: line labels of mixed homography/depth batches")
        masks = {"mask0": batch.get("line_mask0"), "mask1": batch.get("line_mask1")}
        if "H_0to1" in batch:
            return gt_line_matches_from_homography(batch["lines0"], batch["lines1"], batch["H_0to1"],
                                                   size0=batch.get("image_size0"), size1=batch.get("image_size1"),
                                                   **masks)
        return gt_line_matches_from_depth(batch["lines0"], batch["lines1"], batch["depth0"], batch["depth1"],
                                          batch["K0"], batch["K1"], batch["T_0to1"],
                                          depth_consistency=self.conf.ground_truth.depth_consistency, **masks)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        features = self.extract(batch)
        batch = {**batch, **features}
        view0, view1 = self.split_views(batch)
        pred = self.matcher({"image0": view0, "image1": view1})
        # labels in full precision whatever train.mixed_precision: under bf16 autocast the
        # warps' products round pixel coordinates near 640 to ~4 px, against 3 / 5 px thresholds
        with torch.no_grad(), torch.autocast(device_type=batch["keypoints0"].device.type, enabled=False):
            gt = self.ground_truth(batch)
            if "line_log_assignment" in pred and "lines0" in batch and "lines1" in batch:
                line_gt = self.line_ground_truth(batch)
                pred["gt_line_matches0"], pred["gt_line_matches1"] = (line_gt["gt_line_matches0"],
                                                                      line_gt["gt_line_matches1"])
        pred["gt_matches0"], pred["gt_matches1"] = gt["gt_matches0"], gt["gt_matches1"]
        if features:  # for loss(), which gets the batch as the trainer has it (images)
            pred["features"] = features
        return pred

    def loss(self, pred: dict[str, Any], batch: dict[str, Tensor]
             ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        gt0, gt1 = pred["gt_matches0"], pred["gt_matches1"]
        batch = {**batch, **pred.get("features", {})}
        valid0 = batch.get("keypoint_mask0", torch.ones_like(gt0, dtype=torch.bool))
        valid1 = batch.get("keypoint_mask1", torch.ones_like(gt1, dtype=torch.bool))
        conf = self.conf.loss
        losses = lightglue_loss(pred, gt0, gt1, valid0, valid1, balancing=conf.nll_balancing,
                                gamma=conf.gamma, confidence_weight=conf.confidence_weight)
        metrics = match_metrics(pred["matches0"], gt0)
        if "gt_line_matches0" in pred:  # a matcher with lines (GlueStick): its line assignment NLL too
            line = line_assignment_loss(pred, pred["gt_line_matches0"], pred["gt_line_matches1"],
                                        balancing=conf.nll_balancing)
            losses["line_assignment"] = line["total"]
            losses["total"] = losses["total"] + conf.line_weight * line["total"]
            metrics.update({f"line_{k}": v for k, v in match_metrics(pred["line_matches0"],
                                                                     pred["gt_line_matches0"]).items()})
        if not losses["total"].requires_grad and torch.is_grad_enabled():
            # No layer ran (no keypoints): a zero loss still wired to every parameter, so that
            # backward() and DDP's gradient averaging work and all gradients are exactly 0.
            anchor = sum(p.sum() for p in self.matcher.parameters() if p.requires_grad) * 0.0
            losses["total"] = losses["total"] + anchor
        return losses, metrics


def check_extractor_conf(conf: Any) -> None:
    """``model.extractor``: None, or an extractor config with the ``max_num_keypoints`` the
    views are padded to."""
    if conf is None:
        return
    if not isinstance(conf, Mapping):
        raise ConfigError(f"model.extractor must be null or an extractor config, got {conf!r}")
    k = conf.get("max_num_keypoints")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError("model.extractor.max_num_keypoints must be a positive integer (the features of "
                          f"every view are padded to it), got {k!r}")


def label_outside_unmatched(labels: Tensor, batch: dict[str, Tensor], i: int) -> Tensor:
    """Depth maps padded beyond ``image_size``: a keypoint of image i with depth whose reprojection
    leaves the real image j lands in the padding, where there is no depth, and is labelled
    unknown (-2) by the depth labelling; it is in fact unmatchable (-1)."""
    j = 1 - i
    if f"image_size{j}" not in batch:
        return labels
    T = batch["T_0to1"] if i == 0 else invert_transform(batch["T_0to1"])
    points, _, valid = reproject(batch[f"keypoints{i}"], batch[f"depth{i}"], batch[f"K{i}"],
                                 batch[f"K{j}"], T)
    size = batch[f"image_size{j}"].to(points.dtype)[:, None, :]  # (B, 1, 2) = (W, H)
    outside = ((points < -0.5) | (points >= size - 0.5)).any(-1) & valid
    mask = batch.get(f"keypoint_mask{i}", torch.ones_like(valid))
    return torch.where((labels == IGNORE) & outside & mask.bool(), torch.full_like(labels, UNMATCHED), labels)


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
