"""LightGlue's training loss: NLL of the partial assignment at every layer + confidence loss;
GlueStick's line term: NLL of the line assignment (final layer + weighted intermediate layers).

Ground truth labels: ``gt_matches0`` (B, M) with the index of the true match in image 1,
-1 unmatchable, -2 ignore (and ``gt_matches1`` symmetrically).
"""

from __future__ import annotations

import torch
from torch import Tensor


def assignment_nll(log_assignment: Tensor, gt_matches0: Tensor, gt_matches1: Tensor,
                   balancing: float = 0.5) -> dict[str, Tensor]:
    """Per-pair negative log-likelihood of one (B, M+1, N+1) log assignment.

    Positives: ``-log P[i, gt(i)]`` averaged over true matches; negatives: ``-log P[i, dustbin]``
    averaged over the unmatchable points of both images; the two are mixed by
    ``balancing`` (0.5 in LightGlue). Ignored points (-2) contribute nothing; a pair without
    positives or negatives contributes 0 for that part (and so no gradient), never NaN.
    """
    b, m1, n1 = log_assignment.shape
    m, n = m1 - 1, n1 - 1
    positive = gt_matches0 >= 0
    target = gt_matches0.clamp(min=0)
    pos_ll = log_assignment[:, :m, :n].gather(2, target[..., None])[..., 0]
    num_pos = positive.sum(1)
    nll_pos = -(pos_ll * positive).sum(1) / num_pos.clamp(min=1)

    neg0, neg1 = gt_matches0 == -1, gt_matches1 == -1
    neg_ll0 = (log_assignment[:, :m, n] * neg0).sum(1)
    neg_ll1 = (log_assignment[:, m, :n] * neg1).sum(1)
    num_neg = neg0.sum(1) + neg1.sum(1)
    nll_neg = -(neg_ll0 + neg_ll1) / num_neg.clamp(min=1)
    total = balancing * nll_pos + (1 - balancing) * nll_neg
    return {"total": total, "positive": nll_pos, "negative": nll_neg,
            "num_positives": num_pos.float(), "num_negatives": num_neg.float()}


def predicted_matches(log_assignment: Tensor) -> Tensor:
    """Arg-max assignment of every point of image 0 including the dustbin (index N)."""
    return log_assignment[:, :-1, :].argmax(-1)


def binary_cross_entropy(probability: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Element-wise BCE of probabilities, in float32 whatever the autocast region.

    Written out because CUDA autocast refuses ``F.binary_cross_entropy`` on any input ("unsafe
    to autocast"); CPU autocast allows it, which hid the crash from CPU-only runs. The clamp
    bounds each term by -log(eps) ~ 13.8 like the logits would.
    """
    p = probability.float().clamp(eps, 1 - eps)
    target = target.float()
    return -(target * torch.log(p) + (1 - target) * torch.log1p(-p))


def confidence_loss(token_confidences0: list[Tensor], token_confidences1: list[Tensor],
                    log_assignments: list[Tensor], valid0: Tensor, valid1: Tensor) -> Tensor:
    """Train the early-exit classifier: is a point's prediction at layer l already final?

    Target of point i at layer l: its arg-max assignment (match or dustbin) at layer l equals
    the one at the last layer. Binary cross-entropy averaged over layers and valid points.
    The assignments are detached: this loss trains only the confidence heads.
    """
    if not token_confidences0:
        return log_assignments[-1].new_zeros(log_assignments[-1].shape[0])
    final0 = predicted_matches(log_assignments[-1].detach())
    final1 = predicted_matches(log_assignments[-1].detach().transpose(1, 2))
    losses = []
    for layer, (c0, c1) in enumerate(zip(token_confidences0, token_confidences1, strict=False)):
        la = log_assignments[layer].detach()
        same0 = (predicted_matches(la) == final0).float()
        same1 = (predicted_matches(la.transpose(1, 2)) == final1).float()
        bce0, bce1 = binary_cross_entropy(c0, same0), binary_cross_entropy(c1, same1)
        denom = (valid0.sum(1) + valid1.sum(1)).clamp(min=1)
        losses.append(((bce0 * valid0).sum(1) + (bce1 * valid1).sum(1)) / denom)
    return torch.stack(losses, 0).mean(0)


def lightglue_loss(pred: dict, gt_matches0: Tensor, gt_matches1: Tensor, valid0: Tensor, valid1: Tensor,
                   balancing: float = 0.5, gamma: float = 1.0, confidence_weight: float = 1.0
                   ) -> dict[str, Tensor]:
    """Deep supervision over all layers (weights ``gamma ** (L - 1 - l)``, normalised) + confidence."""
    layers = pred["log_assignment"]
    if not layers:  # no keypoints: a zero loss that still has a graph-free, finite value
        zero = gt_matches0.new_zeros(gt_matches0.shape[0], dtype=torch.float32)
        return {"total": zero, "assignment": zero, "last_layer": zero, "confidence": zero}
    weights = torch.tensor([gamma ** (len(layers) - 1 - i) for i in range(len(layers))])
    weights = weights / weights.sum()
    per_layer = [assignment_nll(la, gt_matches0, gt_matches1, balancing) for la in layers]
    assignment = sum(w * p["total"] for w, p in zip(weights.tolist(), per_layer, strict=False))
    confidence = confidence_loss(pred.get("token_confidence0", []), pred.get("token_confidence1", []),
                                 layers, valid0.float(), valid1.float())
    return {"total": assignment + confidence_weight * confidence, "assignment": assignment,
            "last_layer": per_layer[-1]["total"], "confidence": confidence,
            "num_positives": per_layer[-1]["num_positives"]}


def line_assignment_loss(pred: dict, gt_line_matches0: Tensor, gt_line_matches1: Tensor,
                         balancing: float = 0.5) -> dict[str, Tensor]:
    """GlueStick's line term: the NLL of the final line assignment plus, when the matcher supervises
    intermediate layers (``line_log_assignment_inter`` with ``line_inter_weights``), their weighted
    NLLs, as the reference. Pairs without lines contribute 0."""
    final = assignment_nll(pred["line_log_assignment"], gt_line_matches0, gt_line_matches1, balancing)
    total = final["total"]
    for weight, la in zip(pred.get("line_inter_weights", []), pred.get("line_log_assignment_inter", []),
                          strict=True):
        total = total + weight * assignment_nll(la, gt_line_matches0, gt_line_matches1, balancing)["total"]
    return {"total": total, "last_layer": final["total"], "num_positives": final["num_positives"]}
