"""Dreambooth fine-tuning (Ruiz et al. 2023) with class-prior preservation, on PyTorch Lightning.

    L = E ||eps - eps_theta(z_t, t, c_inst)||^2  +  lambda * E ||eps - eps_theta(z_t', t', c_class)||^2

Each optimizer step puts ``batch_size`` instance latents (prompt "a photo of sks dog") and as many
class-prior latents (prompt "a photo of dog", images the base model generated before training) in
**one** UNet call of batch 2b; the first half's MSE is the instance loss, the second's the prior loss.

Determinism, and why resume is exact: every random draw of micro-batch ``i`` (which images, flips,
VAE posterior sample, noise, timesteps) comes from a generator seeded with ``(seed, i)``, not from a
stream that runs through the whole run. A resumed run therefore draws exactly what the uninterrupted
run would have drawn at the same step, given the restored weights, optimizer and LR-scheduler state.
Python/numpy/torch global RNG states are checkpointed and restored too (nothing here draws from
them, but user callbacks or libraries might).

The VAE is frozen: it encodes the training images once (posterior mean and std kept; a fresh
sample is drawn per step), stays in eval mode, has ``requires_grad=False``, is not a submodule of
the LightningModule (so ``.train()`` never reaches it) and has no optimizer state. The text encoder
is trained only with ``train_text_encoder``; otherwise the two prompt embeddings are computed once.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError, ModelError
from vkt.fsutil import replace_dir
from vkt.log import get_logger, timed
from vkt.training.dreambooth_config import DreamboothConfig, save_resolved
from vkt.training.dreambooth_module import EVAL_DRAWS, LOSSES, Encoded, Steps, lightning_module, sample_images

log = get_logger(__name__)


@dataclass
class DreamboothResult:
    """What :func:`train_dreambooth` returns.

    model_dir: the trained diffusers pipeline folder (``<output_dir>/model``), ready for ``vkt export sd``.
    losses: one dict per optimizer step this call ran: step, loss, instance_loss, prior_loss, lr.
    start_step: the step training (re)started from (0, or the resumed checkpoint's).
    eval_before / eval_after: mean instance and prior losses on ``EVAL_DRAWS`` fixed draws (the same
        images, noise and timesteps each time), before this call trained and after: the instance
        loss falls as the model learns the subject.
    """

    model_dir: Path
    losses: list[dict[str, float]]
    start_step: int
    run_dir: Path
    eval_before: dict[str, float]
    eval_after: dict[str, float]


# ---- components -------------------------------------------------------------------------------------

@dataclass
class _Base:
    tokenizer: Any
    text_encoder: Any
    unet: Any
    vae: Any
    noise_scheduler: Any  # DDPMScheduler with the base model's schedule: add_noise / get_velocity
    scheduler_config: dict[str, Any]


def _load_base(root: Path) -> _Base:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from vkt.models.sd.source import missing_files

    if not root.is_dir():
        raise InputError(f"pretrained {str(root)!r} is not a folder; expected a diffusers Stable Diffusion pipeline folder")
    missing = missing_files(root) + [n for n in ("scheduler/scheduler_config.json",) if not (root / n).is_file()]
    if missing:
        raise ModelError(f"pretrained folder {str(root)!r} is incomplete: missing {', '.join(missing)}")
    with timed(f"loading {root.name}", log):
        cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        base = _Base(CLIPTokenizer.from_pretrained(str(root / "tokenizer")),
                     CLIPTextModel.from_pretrained(str(root / "text_encoder")),
                     UNet2DConditionModel.from_pretrained(str(root / "unet")),
                     AutoencoderKL.from_pretrained(str(root / "vae")),
                     DDPMScheduler.from_config(cfg), cfg)
    for m in (base.text_encoder, base.unet, base.vae):
        m.float()
    return base


def _freeze(m: Any) -> None:
    m.eval()
    m.requires_grad_(False)


def _add_lora(unet: Any, lora: Any) -> None:
    try:
        from peft import LoraConfig
    except ImportError:
        raise InputError("lora needs peft: pip install peft (or 'vkt[train]')") from None
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.targets),
                                init_lora_weights="gaussian"))
    n = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    if n == 0:
        raise InputError(f"lora.targets {list(lora.targets)} match no UNet module")
    log.info("LoRA rank %d on %s: %d trainable parameters", lora.rank, list(lora.targets), n)


def _encode_images(vae: Any, images: list[np.ndarray], cfg: DreamboothConfig) -> Encoded:
    import torch

    from vkt.training.dreambooth_data import to_training_array

    arr = np.stack([to_training_array(im, cfg.resolution, cfg.center_crop) for im in images])  # [N, 3, R, R]
    if cfg.random_flip:
        arr = np.concatenate([arr, arr[:, :, :, ::-1]])
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(arr), 8):
            dist = vae.encode(torch.from_numpy(np.ascontiguousarray(arr[i:i + 8]))).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return Encoded(torch.cat(means), torch.cat(stds), len(images))


# ---- the run ----------------------------------------------------------------------------------------

def _loggers(cfg: DreamboothConfig) -> list[Any]:
    import importlib.util

    out: list[Any] = []
    if "tensorboard" in cfg.trackers:
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            from lightning.pytorch.loggers import TensorBoardLogger

            out.append(TensorBoardLogger(save_dir=str(cfg.run_dir), name="tensorboard", version=0,
                                         default_hp_metric=False))
        else:
            log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard); "
                        "losses still go to %s", LOSSES)
    if "wandb" in cfg.trackers:
        if importlib.util.find_spec("wandb"):
            from lightning.pytorch.loggers import WandbLogger

            out.append(WandbLogger(save_dir=str(cfg.run_dir), project="vkt-dreambooth", config=cfg.to_dict()))
        else:
            log.warning("wandb is not installed: no W&B tracking (pip install wandb)")
    return out


def _check_resume_config(cfg: DreamboothConfig) -> None:
    import yaml

    p = cfg.run_dir / "config.yaml"
    if not p.is_file():
        return
    old = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    new = cfg.to_dict()
    cosmetic = {"progress_bar", "trackers", "log_every", "sample_every", "sample_prompts", "sample_steps", "max_steps",
                "checkpoint_every", "keep_checkpoints", "num_threads", "devices", "accelerator", "strategy"}
    diff = {k: (old.get(k), v) for k, v in new.items() if k not in cosmetic and old.get(k) != v}
    if diff:
        raise InputError(f"--resume with settings that differ from the run's config.yaml: {diff} (was, now); "
                         "resume with the same settings or start a new output_dir")


def train_dreambooth(cfg: DreamboothConfig, resume: bool = False) -> DreamboothResult:
    """Run (or resume) a Dreambooth fine-tune; write ``<output_dir>/model`` (a diffusers pipeline folder).

    Run folder: ``config.yaml`` (resolved), ``class_images/``, ``losses.jsonl`` (one row per step),
    ``checkpoints/`` (every ``checkpoint_every`` steps and at the end), ``tensorboard/``, ``samples/``,
    ``model/``. ``resume``: continue from ``checkpoints/last.json`` (weights, optimizer, LR scheduler,
    step, RNG states); without a checkpoint it starts from step 0 with a warning.
    """
    import lightning as L
    import torch

    from vkt.training.checkpoint import last_checkpoint, load_checkpoint
    from vkt.training.dreambooth_data import check_identifier, ensure_class_images, load_instance_images

    # 1. Check inputs (before anything heavy)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    instance_images = load_instance_images(cfg.instance_dir)
    run = cfg.run_dir
    ckpt_dir = last_checkpoint(run) if run.is_dir() else None
    if not resume and ckpt_dir is not None:
        raise InputError(f"output_dir {str(run)!r} already holds checkpoints (last: {ckpt_dir.name}); pass --resume to "
                         "continue that run, or choose a new output_dir")
    if resume:
        _check_resume_config(cfg)
        if ckpt_dir is None:
            log.warning("--resume: no checkpoint in %s yet; starting from step 0", run)
    base = _load_base(Path(cfg.pretrained))
    L.seed_everything(cfg.seed, verbose=False)  # LoRA's initial weights draw from the global RNG
    warning = check_identifier(cfg.identifier, base.tokenizer.get_vocab())
    if warning:
        log.warning(warning)
    if base.unet.config.in_channels != base.vae.config.latent_channels:
        raise ModelError("the UNet's input channels differ from the VAE's latent channels: not a text-to-image SD pipeline")
    run.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run / "config.yaml")

    # 2. Class-prior images, generated by the frozen base model before any weight changes
    _freeze(base.vae)
    _freeze(base.text_encoder)
    class_images = None
    if cfg.prior_preservation:
        class_images = _class_images(cfg, base, ensure_class_images)

    # 3. Trainable parts (LoRA adapters or whole modules) and the resumed state
    if cfg.lora is not None:
        _add_lora(base.unet, cfg.lora)
    else:
        base.unet.requires_grad_(True)
    if cfg.train_text_encoder:
        base.text_encoder.requires_grad_(True)
    base.unet.train()
    start, resume_state = 0, None
    ckpt = load_checkpoint(ckpt_dir) if (resume and ckpt_dir is not None) else None

    # 4. Encode the training images once with the frozen VAE
    with timed("encoding training images with the VAE", log):
        inst = _encode_images(base.vae, instance_images, cfg)
        cls = _encode_images(base.vae, class_images, cfg) if class_images is not None else None
    module = lightning_module(cfg, base, inst, cls, 0, None, [])
    module.trainable_names = [k for k, p in module.named_parameters() if p.requires_grad]
    if ckpt is not None:
        _apply_weights(module, ckpt.weights)
        start, resume_state = ckpt.step, ckpt.state
        module.done, module.resume_state = start, resume_state
        _truncate_losses(run / LOSSES, start)
        log.info("resuming from %s (step %d of %d)", ckpt.path, start, cfg.max_steps)
    elif (run / LOSSES).exists():
        (run / LOSSES).unlink()
    remaining = cfg.max_steps - start
    before = module.evaluate(EVAL_DRAWS)
    if remaining > 0:
        loader = torch.utils.data.DataLoader(Steps(start * cfg.grad_accum, remaining * cfg.grad_accum),
                                             batch_size=None, shuffle=False)
        trainer = L.Trainer(max_epochs=1, accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy,
                            precision=cfg.precision, accumulate_grad_batches=cfg.grad_accum,
                            gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm",
                            logger=_loggers(cfg) or False, enable_checkpointing=False,
                            enable_progress_bar=cfg.progress_bar, enable_model_summary=False,
                            default_root_dir=str(run), num_sanity_val_steps=0, log_every_n_steps=cfg.log_every)
        with timed(f"training {remaining} steps", log):
            trainer.fit(module, loader)
    after = module.evaluate(EVAL_DRAWS)
    log.info("instance loss on fixed draws: %.4f -> %.4f (prior %.4f -> %.4f)", before["instance_loss"],
             after["instance_loss"], before["prior_loss"], after["prior_loss"])
    # 5. Output: a diffusers pipeline folder
    model_dir = save_pipeline(cfg, base, run / "model")
    return DreamboothResult(model_dir, module.losses, start, run, before, after)


def _class_images(cfg: DreamboothConfig, base: _Base, ensure: Any) -> list[np.ndarray]:
    import torch
    from diffusers import StableDiffusionPipeline

    from vkt.training.dreambooth_data import read_image

    pipe = None

    def generate(prompt: str, seed: int) -> np.ndarray:
        nonlocal pipe
        if pipe is None:
            from diffusers import DDIMScheduler

            pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                           unet=base.unet.eval(), scheduler=DDIMScheduler.from_config(base.scheduler_config),
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            im = pipe(prompt, height=cfg.resolution, width=cfg.resolution, num_inference_steps=cfg.class_steps,
                      guidance_scale=cfg.class_guidance, generator=torch.Generator().manual_seed(seed),
                      output_type="np").images[0]
        return (im * 255).round().astype(np.uint8)

    settings = {"resolution": cfg.resolution, "steps": cfg.class_steps, "guidance": cfg.class_guidance,
                "pretrained": str(Path(cfg.pretrained).resolve())}
    paths = ensure(cfg.class_images_dir, cfg.class_text, cfg.num_class_images, cfg.class_seed, generate, settings,
                   progress_bar=cfg.progress_bar)
    if len(paths) < cfg.num_class_images:
        raise InputError(f"class image folder {str(cfg.class_images_dir)!r} holds {len(paths)} images, "
                         f"expected {cfg.num_class_images}")
    return [read_image(p, "class image") for p in paths]


def _apply_weights(module: Any, weights: dict[str, Any]) -> None:
    import torch

    params = dict(module.named_parameters())
    missing = [k for k in module.trainable_names if k not in weights]
    extra = [k for k in weights if k not in params]
    if missing or extra:
        raise ModelError(f"checkpoint does not fit this run's trainable parameters (missing {missing[:3]}, unexpected "
                         f"{extra[:3]}); was it made with other lora/train_text_encoder settings?")
    with torch.no_grad():
        for k, v in weights.items():
            params[k].copy_(v)


def _truncate_losses(path: Path, step: int) -> None:
    """Drop rows past ``step`` (written by the killed run after its last checkpoint)."""
    from vkt.fsutil import atomic_write_text

    if not path.is_file():
        return
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if r.get("step", 0) <= step:
            rows.append(line)
    atomic_write_text(path, "".join(r + "\n" for r in rows))


def read_losses(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """The run's ``losses.jsonl`` rows (one per optimizer step)."""
    p = Path(run_dir) / LOSSES
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()] if p.is_file() else []


def save_pipeline(cfg: DreamboothConfig, base: _Base, dest: Path) -> Path:
    """Write the trained pipeline as a diffusers folder (safetensors), atomically (temp folder + rename).

    LoRA adapters are merged into the UNet's weights first, so the folder is a plain SD pipeline
    that ``vkt export sd`` and diffusers load without peft. Tokenizer, scheduler and VAE are copied
    from the base folder byte for byte; the text encoder too unless it was trained.
    """
    src = Path(cfg.pretrained)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with timed(f"writing the trained pipeline to {dest}", log):
        unet = base.unet
        if cfg.lora is not None:
            import copy

            unet = copy.deepcopy(unet)
            unet.fuse_lora()
            unet.unload_lora()
        unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        if cfg.train_text_encoder:
            base.text_encoder.save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
        else:
            shutil.copytree(src / "text_encoder", tmp / "text_encoder")
        for d in ("vae", "tokenizer", "scheduler"):
            shutil.copytree(src / d, tmp / d)
        if (src / "model_index.json").is_file():
            shutil.copy2(src / "model_index.json", tmp / "model_index.json")
        else:
            (tmp / "model_index.json").write_text(json.dumps({
                "_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", base.scheduler_config.get("_class_name", "DDIMScheduler")],
                "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False},
                indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, dest)
    return dest


__all__ = ["DreamboothResult", "read_losses", "sample_images", "save_pipeline", "train_dreambooth"]
