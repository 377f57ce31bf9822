"""Dreambooth's LightningModule: one UNet call over instance + class-prior latents; seeded per-micro-batch draws.

Every random draw of micro-batch ``i`` (which images, flips, the VAE posterior sample, noise,
timesteps) comes from a generator seeded with ``(seed, i)``, so a resumed run draws what the
uninterrupted run drew at the same step (see vkt.training.dreambooth).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from vkt.training.dreambooth_config import DreamboothConfig

LOSSES = "losses.jsonl"
EVAL_DRAWS = 8
EVAL_OFFSET = 1 << 40  # micro-batch indices for evaluation draws: no run gets that far


def _generator(seed: int, i: int) -> Any:
    import torch

    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(i)) % (1 << 63))


@dataclass
class Encoded:
    """VAE posterior of each training image, [N, 4, R/8, R/8] (mean and std); ``flip`` halves stack
    the mirrored images after the originals when random_flip is on."""

    mean: Any
    std: Any
    n: int


# ---- the LightningModule ----------------------------------------------------------------------------

def lightning_module(cfg: DreamboothConfig, base: Any, inst: Encoded, cls: Encoded | None, start_step: int,
                     resume_state: dict[str, Any] | None, trainable_names: list[str]) -> Any:
    """The module training ``base.unet`` (and ``base.text_encoder`` with cfg.train_text_encoder) on the
    encoded instance / class latents; ``base`` holds tokenizer, text_encoder, unet, vae, noise_scheduler."""
    import lightning as L
    import torch
    import torch.nn.functional as F

    class DreamboothModule(L.LightningModule):
        """UNet (and optionally the text encoder) trained on instance + prior halves of one batch."""

        def __init__(self) -> None:
            super().__init__()
            self.unet = base.unet
            if cfg.train_text_encoder:
                self.text_encoder = base.text_encoder
            self._frozen = {"vae": base.vae, "text_encoder": base.text_encoder}  # not submodules: .train() skips them
            self.noise_scheduler = base.noise_scheduler
            self.register_buffer("inst_mean", inst.mean, persistent=False)  # [Ni(x2), 4, r, r]
            self.register_buffer("inst_std", inst.std, persistent=False)
            if cls is not None:
                self.register_buffer("cls_mean", cls.mean, persistent=False)
                self.register_buffer("cls_std", cls.std, persistent=False)
            ids = base.tokenizer([cfg.instance_text, cfg.class_text], padding="max_length", truncation=True,
                                 max_length=base.tokenizer.model_max_length, return_tensors="pt").input_ids
            self.register_buffer("ids", ids, persistent=False)  # [2, 77]: instance, class
            if not cfg.train_text_encoder:
                with torch.no_grad():
                    self.register_buffer("emb", base.text_encoder(ids)[0], persistent=False)  # [2, 77, D]
            self.done = start_step
            self.acc: list[tuple[float, float, float]] = []
            self.losses: list[dict[str, float]] = []
            self.resume_state = resume_state
            self.trainable_names = trainable_names
            self.lr_sched: Any = None

        # -- one micro-batch: b instance + b prior latents in one UNet call --------------------------------
        def _latents(self, mean: Any, std: Any, n_img: int, b: int, g: Any) -> Any:
            idx = torch.randint(0, n_img, (b,), generator=g)
            if cfg.random_flip:
                idx = idx + n_img * torch.randint(0, 2, (b,), generator=g)
            eps = torch.randn(mean[idx].shape, generator=g).to(self.device)
            sf = float(self._frozen["vae"].config.scaling_factor)
            return (mean[idx] + std[idx] * eps) * sf  # [b, 4, r, r]

        def compute_losses(self, i: int) -> tuple[Any, Any, Any]:
            """(loss, instance_loss, prior_loss) of micro-batch ``i`` (all its draws seeded by (seed, i))."""
            g = _generator(cfg.seed, i)
            b = cfg.batch_size
            lat = [self._latents(self.inst_mean, self.inst_std, inst.n, b, g)]
            if cls is not None:
                lat.append(self._latents(self.cls_mean, self.cls_std, cls.n, b, g))
            latents = torch.cat(lat)  # [b | 2b, 4, r, r]
            n = latents.shape[0]
            noise = torch.randn(latents.shape, generator=g).to(self.device)
            T = int(self.noise_scheduler.config.num_train_timesteps)
            t = torch.randint(0, T, (n,), generator=g).to(self.device)
            noisy = self.noise_scheduler.add_noise(latents, noise, t)
            which = torch.tensor([0] * b + [1] * (n - b), device=self.device)  # prompt per sample
            if cfg.train_text_encoder:
                emb = self.text_encoder(self.ids)[0][which]
            else:
                emb = self.emb[which]  # [n, 77, D]
            pred = self.unet(noisy, t, emb, return_dict=False)[0]
            if self.noise_scheduler.config.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(latents, noise, t)
            else:
                target = noise
            inst_loss = F.mse_loss(pred[:b].float(), target[:b].float())
            if cls is not None:
                prior_loss = F.mse_loss(pred[b:].float(), target[b:].float())
                loss = inst_loss + cfg.prior_loss_weight * prior_loss
            else:
                prior_loss = torch.zeros((), device=self.device)
                loss = inst_loss
            return loss, inst_loss, prior_loss

        def evaluate(self, draws: int) -> dict[str, float]:
            """Mean losses over fixed draws (micro-batch indices past any run's), without gradients."""
            was = self.unet.training
            self.unet.eval()
            with torch.no_grad():
                rows = [[float(x) for x in self.compute_losses(EVAL_OFFSET + k)[1:]] for k in range(draws)]
            self.unet.train(was)
            a = np.mean(np.array(rows), axis=0)
            return {"instance_loss": float(a[0]), "prior_loss": float(a[1])}

        def training_step(self, batch: Any, _: int) -> Any:
            loss, inst_loss, prior_loss = self.compute_losses(int(batch))
            self.acc.append((float(loss.detach()), float(inst_loss.detach()), float(prior_loss.detach())))
            return loss

        def configure_optimizers(self) -> Any:
            from diffusers.optimization import get_scheduler

            params = [p for p in self.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                    weight_decay=cfg.weight_decay)
            # Stepped here once per optimizer step (on_train_batch_end), not by Lightning: the
            # checkpoint written at that point then holds the scheduler already advanced.
            self.lr_sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.warmup_steps,
                                          num_training_steps=cfg.max_steps)
            return opt

        def on_train_start(self) -> None:
            from vkt.training.checkpoint import set_rng_states

            if self.resume_state is not None:
                s = self.resume_state
                self.trainer.optimizers[0].load_state_dict(s["optimizer"])
                self.lr_sched.load_state_dict(s["lr_scheduler"])
                set_rng_states(s["rng"])
                self.resume_state = None

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if (batch_idx + 1) % cfg.grad_accum:
                return
            lr = float(self.trainer.optimizers[0].param_groups[0]["lr"])  # the lr this step used
            self.lr_sched.step()
            self.done += 1
            a = np.mean(np.array(self.acc), axis=0)  # mean over the step's micro-batches
            self.acc = []
            row = {"step": self.done, "loss": float(a[0]), "instance_loss": float(a[1]), "prior_loss": float(a[2]),
                   "lr": lr}
            self.losses.append(row)
            if not self.trainer.is_global_zero:
                return
            with open(cfg.run_dir / LOSSES, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if self.done % cfg.log_every == 0:
                for lg in self.trainer.loggers:
                    lg.log_metrics({f"train/{k}": v for k, v in row.items() if k != "step"}, step=self.done)
            if cfg.sample_every and self.done % cfg.sample_every == 0:
                self.log_samples()
            if self.done % cfg.checkpoint_every == 0 or self.done == cfg.max_steps:
                self.save()

        def save(self) -> None:
            from vkt.training.checkpoint import rng_states, save_checkpoint

            named = dict(self.named_parameters())
            weights = {k: named[k] for k in self.trainable_names}
            state = {"optimizer": self.trainer.optimizers[0].state_dict(), "lr_scheduler": self.lr_sched.state_dict(),
                     "rng": rng_states(), "micro_step": self.done * cfg.grad_accum}
            save_checkpoint(cfg.run_dir, self.done, weights, state, keep=cfg.keep_checkpoints)

        def log_samples(self) -> None:
            images = sample_images(cfg, base, self.text_encoder if cfg.train_text_encoder else base.text_encoder,
                                   self.unet, cfg.sample_prompts)
            out = cfg.run_dir / "samples"
            out.mkdir(exist_ok=True)
            import cv2

            for k, im in enumerate(images):
                cv2.imwrite(str(out / f"step-{self.done:06d}-{k}.png"), im[:, :, ::-1])
                for lg in self.trainer.loggers:
                    exp = getattr(lg, "experiment", None)
                    if type(lg).__name__ == "TensorBoardLogger":
                        exp.add_image(f"samples/{k}", im, self.done, dataformats="HWC")
                    elif hasattr(lg, "log_image"):
                        lg.log_image(key=f"samples/{k}", images=[im], step=self.done)

    return DreamboothModule()


class Steps:
    """Map-style dataset of micro-batch indices ``start .. start + n - 1`` (the draws live in the module)."""

    def __init__(self, start: int, n: int):
        self.start, self.n = start, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> int:
        if not 0 <= k < self.n:
            raise IndexError(k)
        return self.start + k


def sample_images(cfg: DreamboothConfig, base: Any, text_encoder: Any, unet: Any, prompts: Any,
                  seed: int = 0) -> list[np.ndarray]:
    """Generate one HxWx3 uint8 image per prompt template with the current weights (DDIM, fixed seed);
    the modules' train/eval modes are restored afterwards and no global RNG is touched."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    modes = (unet.training, text_encoder.training)
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=text_encoder.eval(), tokenizer=base.tokenizer,
                                   unet=unet.eval(), scheduler=DDIMScheduler.from_config(base.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    try:
        out = []
        for k, p in enumerate(prompts):
            with torch.no_grad():
                im = pipe(cfg.prompt(p), height=cfg.resolution, width=cfg.resolution, num_inference_steps=cfg.sample_steps,
                          generator=torch.Generator().manual_seed(seed + k), output_type="np").images[0]
            out.append((im * 255).round().astype(np.uint8))
        return out
    finally:
        unet.train(modes[0])
        text_encoder.train(modes[1])


__all__ = ["EVAL_DRAWS", "LOSSES", "Encoded", "Steps", "lightning_module", "sample_images"]
