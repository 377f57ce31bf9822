"""PaddleOCR's initialisation of the DB detector, for training from scratch (transformers' default does not train).

transformers' ``PreTrainedModel._init_weights`` draws every conv and transposed conv from N(0, 0.02).
On PP-OCRv5 mobile that breaks training from scratch twice over (measured, 96 px synthetic pages):

1. The head's last ConvTranspose reads ReLU outputs (>= 0) with weights of std 0.02, so its logit barely
   varies. In the first steps every pixel scores ~0.5 and the OHEM-balanced BCE takes three negatives per
   positive, so the gradient of every weight, sum((p - y) * f) with f >= 0, has the same sign: all weights
   go negative together (100 % after 50 steps). Text can then only be encoded as "features off", and the
   probability is capped at sigmoid(bias) ~ 0.48 < box_thresh: hmean stays 0 however long it trains.
2. Conv outputs have variance ~1e-3..1e-4 while BatchNorm's running variance starts at 1, so for the
   first ~100 steps eval mode (validation, export) divides by a variance 10^3 too large and the map is flat.

PaddleOCR's recipe (ppocr/modeling: LCNetV3 backbone, RSEFPN neck, DB ``Head``) fixes both: Kaiming
normal (fan-in) for convs, Kaiming uniform for the neck's convs and the head's transposed convs (bound
sqrt(6 / fan_in) = 1.22 for the last one: about half its weights stay positive), transposed-conv biases
uniform in +-1/sqrt(C_in), head BatchNorms weight 1 and bias 1e-4.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn


def init_head(head: nn.Module) -> nn.Module:
    """PaddleOCR's DB ``Head`` init, in place, on any head built of Conv2d / ConvTranspose2d / BatchNorm2d:
    convs Kaiming normal, transposed convs Kaiming uniform with biases uniform in +-1/sqrt(C_in),
    BatchNorm weight 1, bias 1e-4. Returns ``head``."""
    for m in head.modules():
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")   # fan_in = C_out * k * k, as Paddle's
            if m.bias is not None:
                bound = 1.0 / math.sqrt(m.in_channels)
                nn.init.uniform_(m.bias, -bound, bound)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 1e-4)
    return head


def init_ppocr_det(model: Any) -> Any:
    """Re-initialise a transformers PP-OCR DB detector (``.model.backbone``, ``.model.layer``, ``.model.neck``,
    ``.head``) the way PaddleOCR trains it from scratch, in place. Returns ``model``."""
    for name, m in model.model.named_modules():
        if isinstance(m, nn.Conv2d):
            if name.startswith("neck.") and name.endswith(".in_conv"):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")    # RSEFPN's in_conv: KaimingUniform
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")     # backbone, SE and lateral convs
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
    init_head(model.head)
    return model


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: conv / linear weights decay, biases and norm / affine scales (1-D or scalar) do not."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


__all__ = ["init_head", "init_ppocr_det", "param_groups"]
