"""Train / fine-tune transformers' DETR with PyTorch Lightning: DETR's recipe, Hungarian loss, COCO AP validation.

Recipe (Carion et al. 2020, facebookresearch/detr ``main.py``): AdamW, lr 1e-4 for the transformer
and heads, 1e-5 for the backbone, weight decay 1e-4, gradient norm clipped at 0.1, lr x 0.1 after
``lr_drop`` epochs. The loss is transformers' (Hungarian matching with class 1, L1 5, GIoU 2 costs;
cross-entropy with "no object" weighted by ``eos_coefficient`` 0.1, L1 and GIoU box losses, plus
the same on every decoder layer when ``config.auxiliary_loss``). Lightning supplies devices,
precision and DDP; nothing here is distributed by hand.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vkt.errors import InputError
from vkt.log import get_logger
from vkt.training.detr_data import DetrDataset, DetrTransform, Sample, collate

log = get_logger(__name__)


@dataclass(frozen=True)
class DetrTrainConfig:
    """Training knobs; the defaults are DETR's (``main.py``) except epochs and batch size."""

    lr: float = 1e-4              # transformer and heads
    lr_backbone: float = 1e-5     # ResNet (its first stage stays frozen, as in DETR)
    weight_decay: float = 1e-4
    lr_drop: int = 200            # epochs before lr x 0.1
    clip_grad: float = 0.1        # max gradient norm
    epochs: int = 50
    max_steps: int = -1           # stop after this many optimiser steps (-1: epochs decide)
    batch_size: int = 2
    num_workers: int = 0
    scales: tuple[int, ...] = ()  # multi-scale shortest edges for training; () = the manifest's
    accelerator: str = "auto"
    devices: Any = "auto"
    precision: str = "32-true"
    seed: int = 0
    val_every: int = 1            # validate every N epochs

    def __post_init__(self) -> None:
        for name in ("lr", "lr_backbone", "clip_grad"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise InputError(f"{name} must be a number > 0, got {v!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise InputError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        for name in ("lr_drop", "epochs", "batch_size", "val_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or (self.max_steps < 1 and self.max_steps != -1):
            raise InputError(f"max_steps must be a positive integer or -1, got {self.max_steps!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise InputError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")


def lightning_module(model: Any, config: DetrTrainConfig, val_ground_truth: dict | None = None) -> Any:
    """A LightningModule around ``model`` (DetrForObjectDetection) training with ``config``.

    ``val_ground_truth``: COCO ground truth of the validation samples (see
    :func:`vkt.eval.coco.coco_ground_truth`); validation then logs ``val/AP``, ``val/AP50``, ...
    """
    import lightning as L
    import torch

    class DetrModule(L.LightningModule):
        """DETR + Hungarian loss; validation decodes as the runtime does and scores with pycocotools."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.cfg = config
            self.gt = val_ground_truth
            self.results: list[dict] = []
            self.history: list[dict[str, float]] = []

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            out = self.model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
            n = len(batch["labels"])
            self.log("train/loss", out.loss, prog_bar=True, batch_size=n)
            for k, v in (out.loss_dict or {}).items():
                self.log(f"train/{k}", v, batch_size=n)
            return out.loss

        def validation_step(self, batch: dict, _: int) -> None:
            from vkt.eval.coco import to_coco_results
            from vkt.runtime.detection import DetrParams, decode_raw, select

            out = self.model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
            params = DetrParams(score_threshold=0.0, top_k=100)
            dets, ids = [], []
            for i, m in enumerate(batch["meta"]):
                s, c, b = decode_raw(out.logits[i].float().cpu().numpy(), out.pred_boxes[i].float().cpu().numpy())
                dets.append(select(s, c, b, m["orig_size"], params, normalized=True))
                ids.append(m["image_id"])
            self.results.extend(to_coco_results(dets, ids))

        def on_validation_epoch_end(self) -> None:
            from vkt.eval.coco import coco_ap

            if self.gt is None:
                self.results = []
                return
            metrics = coco_ap(self.gt, self.results)
            self.results = []
            for k in ("AP", "AP50", "AP75"):
                self.log(f"val/{k}", metrics[k], prog_bar=k == "AP")
            self.history.append({"epoch": int(self.current_epoch), **metrics})

        def configure_optimizers(self) -> Any:
            backbone = [p for n, p in self.model.named_parameters() if "backbone" in n and p.requires_grad]
            rest = [p for n, p in self.model.named_parameters() if "backbone" not in n and p.requires_grad]
            opt = torch.optim.AdamW([{"params": rest, "lr": self.cfg.lr},
                                     {"params": backbone, "lr": self.cfg.lr_backbone}],
                                    lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            sched = torch.optim.lr_scheduler.StepLR(opt, self.cfg.lr_drop)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    return DetrModule()


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (eval mode), per-validation COCO metrics, the last checkpoint."""

    model: Any
    history: list[dict[str, float]]
    checkpoint: Path | None
    config: dict[str, Any]


def fit(model: Any, train: Sequence[Sample], val: Sequence[Sample] | None = None,
        config: DetrTrainConfig | None = None, out_dir: str | os.PathLike | None = None,
        preprocess: dict[str, Any] | None = None, progress: bool = False, resume: bool = False) -> FitResult:
    """Train ``model`` (DetrForObjectDetection) on ``train`` samples; validate on ``val`` with COCO AP.

    Args:
        model: the detector (e.g. from vkt.models.detr.checkpoints or ``tiny_detr``).
        train, val: sequences of Samples (``synthetic_shapes``, ``CocoDetectionDataset``, ...).
        config: DetrTrainConfig (defaults: DETR's recipe).
        out_dir: where Lightning writes ``last.ckpt`` and logs; None: a temp-free run without checkpoints.
        preprocess: manifest ``preprocess`` dict (default ``TASKS["detr"].preprocess``) — use the
            same one in the exported bundle.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` (weights, optimizer, LR schedule, epoch
            and step counters), read with ``torch.load(weights_only=True)``; ``config.epochs`` is the
            total, not a number of extra epochs. Lightning writes that file atomically (temp file, then
            a move), so a run killed mid-save resumes from the previous epoch.
    """
    import lightning as L
    import torch

    from vkt.eval.coco import coco_ground_truth

    config = config or DetrTrainConfig()
    if not len(train):
        raise InputError("no training samples given")
    try:
        from transformers import DetrForObjectDetection
    except ImportError:  # pragma: no cover - torch extras present whenever lightning is
        raise InputError("training DETR needs transformers: pip install 'vkt[train]'") from None
    if not isinstance(model, DetrForObjectDetection):
        raise InputError(f"expected a transformers DetrForObjectDetection, got {type(model).__name__}")
    n_cls = model.config.num_labels
    for s in list(train) + list(val or []):
        if len(s.labels) and (s.labels.min() < 0 or s.labels.max() >= n_cls):
            raise InputError(f"sample {s.image_id}: class ids {sorted(set(s.labels.tolist()))} outside the model's "
                             f"0..{n_cls - 1}; load the model with num_labels={int(s.labels.max()) + 1} or remap")
    ckpt_path = None
    if resume:
        if out_dir is None:
            raise InputError("resume needs out_dir: the run folder whose checkpoints/last.ckpt to continue from")
        last = Path(out_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise InputError(f"nothing to resume: {str(last)!r} does not exist; start the run without resume")
        ckpt_path = str(last)
    L.seed_everything(config.seed, workers=True, verbose=False)
    gt = None
    if val:
        gt = coco_ground_truth([{"id": s.image_id, "height": s.image.shape[0], "width": s.image.shape[1]} for s in val],
                               [{"id": c, "name": str(c)} for c in range(n_cls)], [s.boxes for s in val],
                               [s.labels for s in val])
    module = lightning_module(model.train(), config, gt)
    loader = torch.utils.data.DataLoader(
        DetrDataset(train, DetrTransform(preprocess, train=True, scales=config.scales, seed=config.seed)),
        batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers, collate_fn=collate)
    val_loader = None
    if val:
        val_loader = torch.utils.data.DataLoader(DetrDataset(val, DetrTransform(preprocess)), batch_size=config.batch_size,
                                                 num_workers=config.num_workers, collate_fn=collate)
    callbacks, plugins = [], []
    if out_dir is not None:
        from vkt.training.checkpoint import atomic_checkpoint_io

        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=str(Path(out_dir) / "checkpoints"), save_last=True,
                                                             save_top_k=0))
        plugins.append(atomic_checkpoint_io())  # last.ckpt written beside itself, following the umask
    trainer = L.Trainer(max_epochs=config.epochs, max_steps=config.max_steps, accelerator=config.accelerator,
                        devices=config.devices, precision=config.precision, gradient_clip_val=config.clip_grad,
                        gradient_clip_algorithm="norm", check_val_every_n_epoch=config.val_every,
                        default_root_dir=str(out_dir) if out_dir is not None else None, logger=out_dir is not None,
                        enable_checkpointing=out_dir is not None, callbacks=callbacks, plugins=plugins or None,
                        enable_progress_bar=progress,
                        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)
    try:
        trainer.fit(module, loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    except RuntimeError as e:
        if ckpt_path is None or "state_dict" not in str(e):
            raise
        raise InputError(f"cannot resume from {ckpt_path!r}: {str(e).splitlines()[0][:300]} "
                         "(a checkpoint of another model or config?)") from None
    ckpt = Path(out_dir) / "checkpoints" / "last.ckpt" if out_dir is not None else None
    return FitResult(model.eval(), module.history, ckpt if ckpt is not None and ckpt.is_file() else None,
                     asdict(config))


def training_losses(model: Any, samples: Sequence[Sample], preprocess: dict[str, Any] | None = None) -> dict[str, float]:
    """Mean Hungarian loss terms of ``model`` on ``samples`` (eval mode, no augmentation, one batch per sample)."""
    import torch

    t = DetrTransform(preprocess)
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for s in samples:
            b = collate([t(s)])
            out = model(pixel_values=b["pixel_values"], pixel_mask=b["pixel_mask"], labels=b["labels"])
            for k, v in {"loss": out.loss, **(out.loss_dict or {})}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was)
    return {k: v / len(samples) for k, v in sums.items()}


__all__ = ["DetrTrainConfig", "FitResult", "fit", "lightning_module", "training_losses"]
