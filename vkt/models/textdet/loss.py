"""DB loss: balanced BCE with hard-negative mining on the shrink map, masked L1 on the threshold map, dice on the binary map.

Total (PaddleOCR's DBLoss weighting of DB, Liao et al. 2020, sec. 3.4):
``L = alpha * L_shrink + beta * L_threshold + L_binary`` with alpha = 5, beta = 10. The paper writes
``L_s + alpha L_b + beta L_t`` (alpha = 1, beta = 10) with BCE on both maps; PaddleOCR, whose weights
vkt imports, trains with the weighting above and dice on the binary map, so vkt does too.

Every map is ``[B, H, W]`` or ``[B, 1, H, W]`` (both accepted, same shape across arguments);
predictions are probabilities in [0, 1] (after the sigmoid), targets and masks are 0/1 floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vkt.errors import InputError, ShapeError


@dataclass(frozen=True)
class OhemSelection:
    """Pixels the balanced BCE averages over: all positives, the hardest ``ratio * n_pos`` negatives.

    positive / negative: bool tensors of the input's shape; n_pos / n_neg: their counts (ints).
    """

    positive: torch.Tensor
    negative: torch.Tensor
    n_pos: int
    n_neg: int


def ohem_select(loss_map: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, neg_ratio: float = 3.0) -> OhemSelection:
    """Online hard example mining: keep every positive pixel and the ``min(#neg, neg_ratio * #pos)``
    negatives with the largest loss (over the whole batch, as DB does).

    Args:
        loss_map: per-pixel loss, any shape.
        gt, mask: 0/1 tensors of the same shape; pixels with mask 0 are neither positive nor negative.
    """
    positive = (gt > 0.5) & (mask > 0.5)
    negative = (gt <= 0.5) & (mask > 0.5)
    n_pos = int(positive.sum())
    n_neg = min(int(negative.sum()), int(n_pos * neg_ratio))
    chosen = torch.zeros_like(negative)
    if n_neg > 0:
        # -inf keeps non-negatives out of top-k even when negatives have zero loss.
        candidates = loss_map.detach().masked_fill(~negative, float("-inf")).flatten()
        idx = torch.topk(candidates, n_neg, sorted=False).indices
        chosen.view(-1)[idx] = True
    return OhemSelection(positive, chosen, n_pos, n_neg)


def balanced_bce(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, neg_ratio: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """BCE averaged over the positives and the OHEM-selected negatives (a scalar tensor).

    As in DB, a batch without positive pixels selects no negatives and gives 0: batches of
    text-free images teach nothing, so a data loader should mix them with images that have text.
    """
    loss = F.binary_cross_entropy(pred.clamp(eps, 1.0 - eps), gt, reduction="none")
    sel = ohem_select(loss, gt, mask, neg_ratio)
    total = (loss * sel.positive).sum() + (loss * sel.negative).sum()
    return total / (sel.n_pos + sel.n_neg + eps)


def masked_l1(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean ``|pred - gt|`` over pixels where ``mask`` is 1 (a scalar tensor)."""
    return ((pred - gt).abs() * mask).sum() / (mask.sum() + eps)


def dice_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``1 - 2 |P∩G| / (|P| + |G|)`` over masked pixels (a scalar tensor)."""
    inter = (pred * gt * mask).sum()
    union = (pred * mask).sum() + (gt * mask).sum() + eps
    return 1.0 - 2.0 * inter / union


def differentiable_binarization(prob: torch.Tensor, thresh: torch.Tensor, k: float = 50.0) -> torch.Tensor:
    """DB's approximate binary map ``1 / (1 + exp(-k (P - T)))`` (paper eq. 2), same shape as ``prob``."""
    return torch.sigmoid(k * (prob - thresh))


class DBLoss(torch.nn.Module):
    """DB loss with PaddleOCR's defaults.

    Args:
        alpha: weight of the shrink-map balanced BCE (5).
        beta: weight of the threshold-map masked L1 (10).
        neg_ratio: OHEM negatives per positive in the shrink BCE (3).
        eps: guards the divisions (1e-6).
    """

    def __init__(self, alpha: float = 5.0, beta: float = 10.0, neg_ratio: float = 3.0, eps: float = 1e-6):
        super().__init__()
        for name, v in (("alpha", alpha), ("beta", beta), ("neg_ratio", neg_ratio), ("eps", eps)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise InputError(f"DBLoss {name} must be a number >= 0, got {v!r}")
        self.alpha, self.beta, self.neg_ratio, self.eps = float(alpha), float(beta), float(neg_ratio), float(eps)

    def forward(self, shrink_pred: torch.Tensor, shrink_map: torch.Tensor, shrink_mask: torch.Tensor,
                threshold_pred: torch.Tensor | None = None, threshold_map: torch.Tensor | None = None,
                threshold_mask: torch.Tensor | None = None,
                binary_pred: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss terms as scalars: ``loss`` (the weighted total), ``loss_shrink``, and when the threshold
        maps are given ``loss_threshold``, and ``loss_binary`` (dice; ``binary_pred`` defaults to
        :func:`differentiable_binarization` of the two predictions).

        Without ``threshold_*`` only ``alpha * loss_shrink`` is returned: transformers' PP-OCR
        detectors have no threshold branch, which only training needs.
        """
        maps = {"shrink_pred": shrink_pred, "shrink_map": shrink_map, "shrink_mask": shrink_mask}
        given = {"threshold_pred": threshold_pred, "threshold_map": threshold_map, "threshold_mask": threshold_mask}
        if any(v is not None for v in given.values()):
            missing = [k for k, v in given.items() if v is None]
            if missing:
                raise InputError(f"the threshold loss needs threshold_pred, threshold_map and threshold_mask; missing {missing}")
            maps.update(given)
        if binary_pred is not None:
            if threshold_pred is None:
                raise InputError("binary_pred was given without threshold maps; the binary loss needs both")
            maps["binary_pred"] = binary_pred
        maps = _check_maps(maps)
        out = {"loss_shrink": balanced_bce(maps["shrink_pred"], maps["shrink_map"], maps["shrink_mask"],
                                           self.neg_ratio, self.eps)}
        total = self.alpha * out["loss_shrink"]
        if "threshold_pred" in maps:
            out["loss_threshold"] = masked_l1(maps["threshold_pred"], maps["threshold_map"], maps["threshold_mask"], self.eps)
            binary = maps.get("binary_pred")
            if binary is None:
                binary = differentiable_binarization(maps["shrink_pred"], maps["threshold_pred"])
            # The binary map is trained towards the text kernels, like the shrink map.
            out["loss_binary"] = dice_loss(binary, maps["shrink_map"], maps["shrink_mask"], self.eps)
            total = total + self.beta * out["loss_threshold"] + out["loss_binary"]
        out["loss"] = total
        return out


def _check_maps(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Squeeze ``[B, 1, H, W]`` to ``[B, H, W]``; all maps must then share one shape and be floating point."""
    out = {}
    for name, t in maps.items():
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ShapeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
        if t.dim() == 4 and t.shape[1] == 1:
            t = t[:, 0]
        if t.dim() != 3:
            raise ShapeError(f"{name}: expected [B, H, W] or [B, 1, H, W], got {list(t.shape)}")
        out[name] = t
    ref = out["shrink_pred"].shape
    for name, t in out.items():
        if t.shape != ref:
            raise ShapeError(f"{name} has shape {list(t.shape)} but shrink_pred has {list(ref)} (after squeezing channel 1)")
    return out
