"""INT8 UNet for an SD bundle: calibration feeds captured from txt2img runs, Q/DQ through vkt.calibration,
and the image error of INT8 vs FP32 at equal seeds.

    SdRecipe().quantize(bundle, Int8Config(calib=Path("prompts.txt")))   # all of it (prompts: default CALIB_PROMPTS)
    feeds = capture_unet_feeds(bundle, CALIB_PROMPTS)      # UNet inputs of real denoising trajectories
    quantize_unet(bundle, feeds)                           # calibration table + Q/DQ per placement
    image_psnr(bundle, prompts)                            # decoded images, INT8 vs FP32, same seeds

No accuracy gate yet: image_psnr measures, nothing decides (``--holdout`` is refused).

What stays in float: Softmax, LayerNorm and the GroupNorms (exported as InstanceNormalization +
affine) are never quantized by either placement (vkt.calibration.qdq); the text encoder and VAE stay
FP32 (``Txt2Img(precision="int8")`` takes INT8 for the components that have it).
The calibration data are UNet inputs at every step of a few guided generations, because the UNet
sees very different activations at t = 999 (pure noise) and near t = 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from vkt.calibration.config import Int8Config
from vkt.errors import CalibrationError, InputError, ModelError
from vkt.log import get_logger, timed
from vkt.models.recipe import Recipe

log = get_logger(__name__)

# Generic prompts (subjects, styles, scenes): the UNet's cross-attention sees varied text embeddings.
CALIB_PROMPTS = (
    "a photo of an astronaut riding a horse on mars",
    "a watercolor painting of a quiet harbour at dawn",
    "portrait of an old man with a grey beard, studio lighting",
    "a red sports car on a mountain road, high detail",
    "a bowl of fruit on a wooden table, still life",
    "a futuristic city skyline at night, neon lights",
    "a cat sleeping on a sofa",
    "an oil painting of a forest in autumn",
)


def capture_unet_feeds(bundle: Any, prompts: Sequence[str] = CALIB_PROMPTS, *, steps: int = 8, size: int | None = None,
                       guidance_scale: float = 7.5, seed: int = 0, scheduler: str | None = "ddim",
                       threads: int | None = None) -> list[dict[str, np.ndarray]]:
    """UNet feeds ``{sample, timestep, encoder_hidden_states}`` at every step of one FP32 generation per prompt.

    Guidance is batched (each feed holds the uncond and cond halves, batch 2), so the ranges cover
    both. ``size``: image side in pixels (default: the UNet profile's opt size).
    """
    from vkt.bundle import Bundle
    from vkt.runtime.txt2img import Txt2Img
    from vkt.tasks import UNET_SAMPLE

    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if isinstance(prompts, str) or not prompts:
        raise CalibrationError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    pipe = Txt2Img(b, scheduler=scheduler, threads=threads, cfg="batched", progress_bar=False)
    if size is None:
        lat = pipe.specs["unet"].profiles[0].axes["height"][1]
        size = int(lat) * pipe.vae_scale_factor
    feeds: list[dict[str, np.ndarray]] = []
    runner = pipe.runners["unet"]
    infer = runner.infer

    def record(feed: Mapping[str, np.ndarray], check: bool = True) -> dict[str, np.ndarray]:
        feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return infer(feed, check)

    runner.infer = record  # type: ignore[method-assign]
    try:
        with timed(f"capturing UNet inputs ({len(prompts)} prompts x {steps} steps, {size}x{size})", log):
            for i, p in enumerate(prompts):
                pipe(p, height=size, width=size, steps=steps, guidance_scale=guidance_scale, seed=seed + i)
    finally:
        runner.infer = infer  # type: ignore[method-assign]
        pipe.close()
    log.debug("captured %d UNet feeds of batch %d", len(feeds), feeds[0][UNET_SAMPLE].shape[0] if feeds else 0)
    return feeds


class SdRecipe(Recipe):
    """The SD recipe: the UNet calibrated on its inputs along FP32 generations of prompts (``calib``: a text file,
    one prompt per line; default :data:`CALIB_PROMPTS`) x ``calib_steps`` DDIM steps (default 8) at the profile's
    opt size; minmax ranges (the UNet's activations have no outliers that clipping would help, unlike a detector's
    logits, and percentile's histogram costs much more memory on a UNet). Text encoder and VAE stay FP32."""

    family: ClassVar[str] = "sd"
    data: ClassVar[str] = "prompts"
    component: ClassVar[str] = "unet"
    defaults: ClassVar[dict[str, Any]] = {"method": "minmax", "calib_steps": 8}

    def check(self, config: Int8Config) -> None:
        if config.holdout is not None:
            raise InputError("--holdout: SD has no accuracy gate yet (its INT8 UNet ships ungated); measure it with "
                             "vkt.models.sd.int8.image_psnr or benchmarks/bench_sd_int8.py")
        super().check(config)

    def quantize(self, bundle: Any, config: Int8Config, *, extra_candidates: Sequence[Any] = (),
                 component: str | None = None, show_progress: bool = True) -> dict[str, Any]:
        from vkt.bundle import Bundle
        from vkt.calibration.config import read_prompts

        # 1. Defaults and checks, before the generations
        b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        comp = component or self.component
        cfg = self.resolve(config)
        self.check(cfg)
        if extra_candidates:
            raise InputError("SD has no accuracy gate yet, so no further gate candidates (--qat)")
        if b.files("onnx external data", comp):
            raise ModelError(f"the {comp} graph keeps its weights in external data (> 2 GB); vkt's Q/DQ writer "
                             "handles single-file graphs only so far")
        # 2. UNet inputs along FP32 generations of the prompts, then ranges once and a Q/DQ graph per target
        prompts = (read_prompts(cfg.calib) if cfg.calib is not None else list(CALIB_PROMPTS))[:cfg.num_images]
        feeds = capture_unet_feeds(b, prompts, steps=cfg.calib_steps, threads=cfg.threads)
        with timed(f"calibrating the UNet on {len(feeds)} captured inputs", log):
            return quantize_unet(b, feeds, cfg, show_progress=show_progress)


def quantize_unet(bundle: Any, feeds: Sequence[Mapping[str, np.ndarray]], config: Int8Config | None = None, *,
                  show_progress: bool = False) -> dict[str, Any]:
    """Calibrate the bundle's UNet on ``feeds`` and add its Q/DQ graphs (vkt.calibration.quantize_bundle); the
    config's unset options are :class:`SdRecipe`'s. Returns the manifest's ``calibration`` section."""
    from vkt.calibration import quantize_bundle

    if not feeds:
        raise CalibrationError("no calibration feeds: capture some with capture_unet_feeds(bundle)")
    cfg = SdRecipe().resolve(config or Int8Config())
    return quantize_bundle(bundle, feeds, replace(cfg, num_images=None), component="unet", show_progress=show_progress)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images (dB; inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def image_psnr(bundle: Any, prompts: Sequence[str], *, steps: int = 8, size: int | None = None, guidance_scale: float = 7.5,
               seed: int = 100, scheduler: str | None = "ddim", threads: int | None = None) -> dict[str, Any]:
    """PSNR of INT8-UNet images vs FP32 images, same prompts and seeds (uint8 RGB after the VAE).

    Returns ``{"psnr_db": [per image], "mean_psnr_db", "min_psnr_db"}``. Seeds differ from the
    calibration's (``seed`` + i), so the images are not the calibration trajectories.
    """
    from vkt.runtime.txt2img import Txt2Img

    images: dict[str, list[np.ndarray]] = {}
    for precision in ("fp32", "int8"):
        with Txt2Img(bundle, scheduler=scheduler, precision=precision, threads=threads, cfg="batched",
                     progress_bar=False) as pipe:
            if size is None:
                size = int(pipe.specs["unet"].profiles[0].axes["height"][1]) * pipe.vae_scale_factor
            images[precision] = [pipe(p, height=size, width=size, steps=steps, guidance_scale=guidance_scale,
                                      seed=seed + i)[0] for i, p in enumerate(prompts)]
    vals = [psnr(a, b) for a, b in zip(images["fp32"], images["int8"])]
    finite = [v for v in vals if np.isfinite(v)] or [float("inf")]
    return {"psnr_db": vals, "mean_psnr_db": float(np.mean(finite)), "min_psnr_db": float(min(vals)), "size": size,
            "steps": steps, "images": images}


__all__ = ["CALIB_PROMPTS", "SdRecipe", "capture_unet_feeds", "image_psnr", "psnr", "quantize_unet"]
