"""DB training's LightningModule: the threshold branch, DBLoss, AdamW with warm-up and cosine decay, frozen BN."""

from __future__ import annotations

import math
from typing import Any

import torch

from vkt.training.textdet_config import TextDetTrainConfig


class ThresholdHead(torch.nn.Module):
    """DB's threshold branch: the probability head's layout (3x3 conv-BN-ReLU, 2x up conv-BN-ReLU, 2x up conv,
    sigmoid) on the neck's features ``[B, C, H/4, W/4]`` -> threshold map ``[B, 1, H, W]``."""

    def __init__(self, in_channels: int = 96):
        from vkt.models.textdet.init import init_head

        super().__init__()
        c = in_channels // 4
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c), torch.nn.ReLU(),
            torch.nn.ConvTranspose2d(c, c, 2, stride=2), torch.nn.BatchNorm2d(c), torch.nn.ReLU(),
            torch.nn.ConvTranspose2d(c, 1, 2, stride=2))
        init_head(self)  # PaddleOCR's DB head init (vkt.models.textdet.init)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(features))



def lightning_module(model: Any, config: TextDetTrainConfig, threshold_head: ThresholdHead | None = None) -> Any:
    """LightningModule: DB forward (prob + threshold), DBLoss, AdamW (no decay on biases / norms) + warm-up/cosine,
    optional frozen BN."""
    import lightning as L

    from vkt.models.textdet.loss import DBLoss

    class TextDetModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.detector = model
            self.threshold_head = threshold_head or ThresholdHead(model.config.neck_out_channels)
            self.loss_fn = DBLoss()
            self.cfg = config
            self.history: list[dict[str, Any]] = []
            self.step_offset = 0  # steps done before this fit (resume)

        def train(self, mode: bool = True) -> Any:
            super().train(mode)
            if mode and self.cfg.bn_frozen:
                for m in self.detector.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()  # keep the imported running statistics; affine weights still learn
            return self

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            """``x [B, 3, H, W]`` -> ``{"prob", "thresh": [B, 1, H, W]}``."""
            if self.training:
                debias_batchnorm_momentum(self)
            feats = self.detector.model(x).last_hidden_state   # [B, C, H/4, W/4]
            prob = self.detector.head(feats)
            if self.cfg.threshold_trains_detector:
                return {"prob": prob, "thresh": self.threshold_head(feats)}
            return {"prob": prob, "thresh": self.threshold_head(feats.detach()), "prob_for_binary": prob.detach()}

        def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            from vkt.models.textdet.loss import differentiable_binarization

            out = self(batch["image"])
            binary = None
            if "prob_for_binary" in out:  # [B, 1, H, W]: the dice term then trains the threshold branch only
                binary = differentiable_binarization(out["prob_for_binary"], out["thresh"])
            return self.loss_fn(out["prob"], batch["shrink_map"], batch["shrink_mask"], out["thresh"],
                                batch["threshold_map"], batch["threshold_mask"], binary_pred=binary)

        def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
            terms = self.losses(batch)
            step = self.step_offset + int(self.trainer.global_step) + 1
            row = {"step": step, **{k: float(v.detach()) for k, v in terms.items()},
                   "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"])}
            self.history.append(row)
            self.log("train/loss", terms["loss"], prog_bar=True, batch_size=len(batch["image"]))
            for k in ("loss_shrink", "loss_threshold", "loss_binary"):
                self.log(f"train/{k}", terms[k], batch_size=len(batch["image"]))
            self.log("train/lr", row["lr"], batch_size=len(batch["image"]))
            return terms["loss"]

        def configure_optimizers(self) -> Any:
            from vkt.models.textdet.init import param_groups

            # biases, BatchNorm and learnable-affine parameters stay out of weight decay
            opt = torch.optim.AdamW(param_groups(self, self.cfg.weight_decay), lr=self.cfg.peak_lr)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg.warmup, self.cfg.steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return TextDetModule()



def debias_batchnorm_momentum(module: torch.nn.Module, momentum: float = 0.1) -> None:
    """Set each training BatchNorm's momentum to ``max(momentum, 1 / (n + 1))`` before its (n+1)-th batch.

    The running statistics then start as the first batch's and average the first ``1 / momentum`` batches
    before turning into the usual moving average, instead of decaying from their init (mean 0, var 1) at
    10 % a step. From scratch the init is far off (PaddleOCR's Kaiming init: activations grow ~6x per
    LCNetV3 rep-block in eval mode with init statistics; after 2 steps the neck reached 3e8 and the FP16
    export overflowed to NaN), so eval mode (validation, export) was wrong for the first ~50 steps.
    ``n`` is the module's ``num_batches_tracked`` buffer, so a resumed run continues identically."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            m.momentum = max(momentum, 1.0 / (int(m.num_batches_tracked) + 1))



def lr_lambda(warmup: int, steps: int) -> Any:
    """LR factor at scheduler step ``s``: linear ramp over ``warmup`` steps, then cosine from 1 to 0 at ``steps``."""
    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        t = min(1.0, (s - warmup) / max(1, steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return f



__all__ = ["ThresholdHead", "debias_batchnorm_momentum", "lightning_module", "lr_lambda"]
