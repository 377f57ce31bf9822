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
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
from vkt.training.textdet_config import PRETRAINED, TextDetTrainConfig, val_resize
from vkt.training.textdet_data import (
    StepDataset,
    StepSampler,
    TextDetTransform,
    TextSample,
)
from vkt.training.textdet_module import ThresholdHead, lightning_module

log = get_logger(__name__)


# ---- model -----------------------------------------------------------------------------------------
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


__all__ = ["FitResult", "build_model", "fit", "predict_polygons", "validate"]
