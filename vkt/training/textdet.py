"""Train / fine-tune the PP-OCRv5 mobile DB text detector with PyTorch Lightning.

The network is transformers' ``PPOCRV5MobileDetForObjectDetection`` (probability branch only) plus a
small DB threshold branch used in training and dropped at export (DB, Liao et al. 2020: at inference
only the probability map is needed). Loss: vkt.models.textdet.loss.DBLoss (shrink BCE + OHEM,
threshold L1, binary dice). Recipe: AdamW, linear warm-up then cosine decay to 0, gradient norm
clipping; fine-tuning from imported weights keeps every detector BatchNorm in eval mode (imported
statistics; batch statistics of small batches would change the imported function).

Resumability: sample ``g`` of a run depends only on ``(seed, g)`` (StepDataset), so a run resumed
from step ``t`` feeds the batches the uninterrupted run would have fed, with the model, optimiser,
scheduler and RNG states of the checkpoint: the next loss is the same.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vkt.errors import InputError
from vkt.log import get_logger
from vkt.training.textdet_ckpt import (
    CKPT_NAME,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from vkt.training.textdet_data import (
    StepDataset,
    StepSampler,
    TextDetTransform,
    TextSample,
)

log = get_logger(__name__)
PRETRAINED = ("ppocrv5-mobile",)


@dataclass(frozen=True)
class TextDetTrainConfig:
    """Training knobs (defaults: a short CPU-friendly run; PaddleOCR trains 640 px, lr 1e-3, batch 8/GPU)."""

    steps: int = 1000             # optimiser steps in all
    batch: int = 8
    lr: float | None = None       # peak after warm-up; None: 1e-3 from scratch, 3e-5 fine-tuning (see peak_lr)
    weight_decay: float = 1e-4
    warmup: int = 50              # linear warm-up steps
    clip_grad: float = 5.0        # max gradient norm
    size: int = 320               # square training crop (multiple of 32)
    pretrained: str | None = None  # "ppocrv5-mobile" or None (from scratch)
    freeze_bn: bool | None = None  # None: frozen when pretrained
    threshold_grad: bool | None = None  # threshold/binary losses reach the detector; None: only from scratch
    ckpt_every: int = 100
    val_every: int = 100
    seed: int = 0
    workers: int = 0
    box_thresh: float = 0.5       # validation DB box threshold

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "ckpt_every", "val_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup", "workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("lr", "clip_grad"):
            v = getattr(self, name)
            if v is None and name == "lr":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise InputError(f"{name} must be a number > 0, got {v!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise InputError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 32 or self.size % 32:
            raise InputError(f"size must be a multiple of 32 and >= 32, got {self.size!r}")
        if self.pretrained is not None and self.pretrained not in PRETRAINED:
            raise InputError(f"unknown pretrained model {self.pretrained!r}; expected one of {list(PRETRAINED)} or none")

    @property
    def peak_lr(self) -> float:
        """``lr``, or its default. Fine-tuning with frozen BatchNorm needs a small one: PP-OCRv5 mobile on
        synthetic text (320 px, batch 4, 100 steps, 64 held-out images) went hmean 0.706 -> 0.894 at
        3e-5, but peaked at 0.862 (step 50) and fell to 0.552 at 1e-4 (weights drift under frozen statistics)."""
        if self.lr is not None:
            return float(self.lr)
        return 1e-3 if self.pretrained is None else 3e-5

    @property
    def bn_frozen(self) -> bool:
        return self.pretrained is not None if self.freeze_bn is None else bool(self.freeze_bn)

    @property
    def threshold_trains_detector(self) -> bool:
        """A new, random threshold branch on imported weights would push noisy gradients (through DB's
        steep binarisation, k = 50) into features that already work: when fine-tuning it learns on
        detached features and the detector gets the shrink loss alone. Measured (PP-OCRv5 mobile, synthetic
        text, 320 px, batch 4, lr 1e-4, 64 held-out images): hmean at step 50 0.839 with, 0.862 without."""
        return self.pretrained is None if self.threshold_grad is None else bool(self.threshold_grad)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TextDetTrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"{where}: unknown training option(s) {unknown}; expected some of {sorted(names)}")
        return cls(**d)


# ---- model -----------------------------------------------------------------------------------------
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


def build_model(pretrained: str | None, seed: int = 0) -> Any:
    """transformers' PP-OCRv5 mobile detector: imported weights (``"ppocrv5-mobile"``) or a seeded random init."""
    from vkt.models.textdet.loader import (
        build_ppocrv5_mobile_det,
        load_ppocrv5_mobile_det,
    )

    if pretrained is None:
        from vkt.models.textdet.init import init_ppocr_det

        torch.manual_seed(seed)
        return init_ppocr_det(build_ppocrv5_mobile_det())  # transformers' N(0, 0.02) init does not train (see init.py)
    if pretrained not in PRETRAINED:
        raise InputError(f"unknown pretrained model {pretrained!r}; expected one of {list(PRETRAINED)}")
    return load_ppocrv5_mobile_det()


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


# ---- validation ---------------------------------------------------------------------------------------
@torch.no_grad()
def predict_polygons(model: Any, samples: Sequence[TextSample], size: int, box_thresh: float = 0.5) -> list[list[np.ndarray]]:
    """Detections per sample the way the runtime makes them: longer side resized to ``size`` (rounded to 32),
    the manifest's normalisation, ``prob`` from ``model`` (a transformers detector), DB post-processing."""
    from vkt.runtime.image import Preprocessor
    from vkt.runtime.textdet import DBParams, db_postprocess
    from vkt.tasks import TASKS

    pre = Preprocessor({**TASKS["textdet"].preprocess, "resize": val_resize(size)})
    params = DBParams.from_dict({**TASKS["textdet"].postprocess, "box_thresh": box_thresh})
    was = model.training
    model.eval()
    out = []
    for s in samples:
        x, plans = pre([s.image])
        prob = model(torch.from_numpy(x), return_dict=False)[0][0, 0].numpy()
        out.append(db_postprocess(prob, plans[0].src_size, params).polygons)
    model.train(was)
    return out


def val_resize(size: int) -> dict[str, Any]:
    """The resize rule validation uses, and the bundle a run exports records (so hmean carries over)."""
    return {"mode": "limit_side", "limit_type": "max", "limit_side_len": int(size), "round_to": 32,
            "max_side_len": max(2048, int(size))}


def validate(model: Any, samples: Sequence[TextSample], size: int, box_thresh: float = 0.5) -> dict[str, float]:
    """ICDAR precision / recall / hmean of ``model`` on ``samples`` (vkt.eval.textdet)."""
    from vkt.eval.textdet import GtRegion, evaluate

    dets = predict_polygons(model, samples, size, box_thresh)
    gts = [[GtRegion(p, t, t == "###") for p, t in zip(s.polygons, s.texts)] for s in samples]
    r = evaluate(dets, gts)
    return {k: r[k] for k in ("precision", "recall", "hmean", "detections", "ground_truth", "matches")}


# ---- the loop -----------------------------------------------------------------------------------------
def _callbacks(out_dir: Path | None, val: Sequence[TextSample] | None, config: TextDetTrainConfig) -> list[Any]:
    import lightning as L

    class StepHooks(L.Callback):
        """Every ``ckpt_every`` steps an atomic checkpoint; every ``val_every`` steps validation hmean."""

        def on_train_start(self, trainer: Any, module: Any) -> None:
            st = getattr(module, "_resume_state", None)
            if st is not None:  # optimiser / scheduler exist only now
                opt = trainer.optimizers[0]
                got, want = len(st["optimizer"].get("param_groups", [])), len(opt.param_groups)
                if got != want:
                    raise InputError(f"the checkpoint's optimizer has {got} parameter group(s), this version of vkt "
                                     f"trains with {want} (biases and norms out of weight decay): a checkpoint from "
                                     "an older vkt cannot be resumed; export it (vkt export textdet RUN/ckpt.pt) or "
                                     "start a new run")
                opt.load_state_dict(st["optimizer"])
                trainer.lr_scheduler_configs[0].scheduler.load_state_dict(st["scheduler"])
                set_rng_state(st["rng"])
                module._resume_state = None

        def on_train_batch_end(self, trainer: Any, module: Any, *_: Any) -> None:
            from vkt.fsutil import atomic_write_text

            step = module.step_offset + int(trainer.global_step)
            last = step >= config.steps
            validated = bool(val) and (step % config.val_every == 0 or last)
            if validated:
                m = validate(module.detector, val, config.size, config.box_thresh)
                module.history.append({"step": step, **{f"val_{k}": v for k, v in m.items()}})
                for k in ("hmean", "precision", "recall"):
                    module.log(f"val/{k}", float(m[k]), prog_bar=k == "hmean")
                log.info("step %d: val hmean %.3f (P %.3f R %.3f)", step, m["hmean"], m["precision"], m["recall"])
                module.train()
            saved = out_dir is not None and (step % config.ckpt_every == 0 or last)
            if saved:
                save_checkpoint(out_dir / CKPT_NAME, step=step, model=module.detector,
                                threshold_head=module.threshold_head, optimizer=trainer.optimizers[0],
                                scheduler=trainer.lr_scheduler_configs[0].scheduler, train_config=asdict(config),
                                history=module.history)
            if out_dir is not None and (saved or validated):
                atomic_write_text(out_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in module.history))

    return [StepHooks()]


def _logger(out_dir: Path | None) -> Any:
    if out_dir is None:
        return False
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        return TensorBoardLogger(str(out_dir), name="logs", version="")
    return CSVLogger(str(out_dir), name="logs", version="")


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained detector (eval), per-step history, the checkpoint, steps run here."""

    model: Any
    threshold_head: Any
    history: list[dict[str, Any]]
    checkpoint: Path | None
    config: TextDetTrainConfig
    start_step: int


def fit(train: Sequence[TextSample], config: TextDetTrainConfig | None = None, val: Sequence[TextSample] | None = None,
        out_dir: str | os.PathLike | None = None, resume: bool = False, model: Any = None,
        callbacks: Sequence[Any] = (), progress: bool = False) -> FitResult:
    """Train the DB detector on ``train`` samples (IcdarFolder, SynthStream or a list of TextSamples).

    Args:
        config: TextDetTrainConfig; on ``resume`` the checkpoint's config is used, with ``steps``
            taken from ``config`` when given (to extend a run).
        val: samples for validation hmean every ``val_every`` steps (and at the end).
        out_dir: run folder for ``ckpt.pt``, ``history.jsonl`` and logs (None: no checkpoints).
        resume: continue from ``out_dir/ckpt.pt`` (InputError if there is none).
        model: a detector to train instead of ``build_model(config.pretrained)``.
        callbacks: extra Lightning callbacks.
    """
    import warnings

    import lightning as L

    cfg = config or TextDetTrainConfig()
    out = Path(out_dir) if out_dir is not None else None
    state = None
    if resume:
        if out is None:
            raise InputError("resume needs the run folder (out_dir) holding ckpt.pt")
        state = load_checkpoint(out)
        saved = TextDetTrainConfig.from_dict(state["train_config"], f"checkpoint {str(state['path'])!r}")
        cfg = TextDetTrainConfig(**{**asdict(saved), "steps": cfg.steps if config is not None else saved.steps})
        if state["step"] >= cfg.steps:
            raise InputError(f"checkpoint {str(state['path'])!r} is at step {state['step']}, already >= steps "
                             f"{cfg.steps}; pass more --steps to continue training")
    if not len(train):
        raise InputError("the training set is empty")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if state is not None:
        from vkt.training.textdet_ckpt import model_from_checkpoint

        model = model_from_checkpoint(state)
    elif model is None:
        model = build_model(cfg.pretrained, cfg.seed)
    head = ThresholdHead(model.config.neck_out_channels)
    if state is not None:
        head.load_state_dict(state["threshold_head"])
    module = lightning_module(model, cfg, head)
    start = 0
    if state is not None:
        start = int(state["step"])
        module.step_offset = start
        module.history = list(state["history"])
        module._resume_state = state
        log.info("resuming %s at step %d of %d", state["path"], start, cfg.steps)
    module.train()
    data = StepDataset(train, TextDetTransform(cfg.size, train=True), seed=cfg.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch, sampler=StepSampler(start * cfg.batch, cfg.steps * cfg.batch),
                                         num_workers=cfg.workers, drop_last=True, persistent_workers=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(max_steps=cfg.steps - start, max_epochs=1, accelerator="auto", devices=1,
                        gradient_clip_val=cfg.clip_grad, gradient_clip_algorithm="norm", logger=_logger(out),
                        enable_checkpointing=False, callbacks=[*_callbacks(out, val, cfg), *callbacks],
                        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, log_every_n_steps=1, use_distributed_sampler=False,
                        default_root_dir=str(out) if out is not None else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|LightningModule.log).*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the frozen BNs, on purpose
        trainer.fit(module, loader)
    ckpt = out / CKPT_NAME if out is not None and (out / CKPT_NAME).is_file() else None
    return FitResult(model.eval(), head.eval(), module.history, ckpt, cfg, start)


__all__ = ["PRETRAINED", "FitResult", "TextDetTrainConfig", "ThresholdHead", "build_model", "debias_batchnorm_momentum",
           "fit", "lightning_module", "lr_lambda", "predict_polygons", "validate", "val_resize"]
