"""Txt2Img: Stable Diffusion text-to-image from a bundle, on numpy + onnxruntime/TensorRT (no torch).

The stages follow diffusers' StableDiffusionPipeline so the two can be compared line by line, with
one difference that matters for speed: classifier-free guidance runs the unconditional and
conditional halves in **one** UNet call at batch 2B (``np.concatenate([latents] * 2)`` -> one call
-> ``np.split``), as diffusers and NVIDIA's demoDiffusion do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vkt.errors import BundleError, InputError
from vkt.log import get_logger, progress
from vkt.runtime.schedulers import Scheduler, scheduler_from_config
from vkt.runtime.tokenizer import ClipTokenizer
from vkt.tasks import TEXT_IDS, TEXT_OUT, UNET_OUT, UNET_SAMPLE, UNET_TEXT, UNET_TIMESTEP, VAE_IN, VAE_OUT

log = get_logger(__name__)


@dataclass
class StageTimings:
    """Wall seconds per stage of one call (``unet`` has one entry per UNet call, i.e. per step
    with batched guidance, two per step with ``cfg="sequential"``)."""

    text_encoder: float = 0.0
    unet: list[float] = field(default_factory=list)
    vae: float = 0.0
    total: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"text_encoder_s": self.text_encoder, "unet_s": list(self.unet), "unet_total_s": float(sum(self.unet)),
                "vae_s": self.vae, "total_s": self.total}


class Images(list):
    """The generated images (HxWx3 uint8 RGB arrays, or float32 in [0, 1] with ``output_type="float"``),
    with ``timings`` (StageTimings) and ``latents`` (the final latents, [N, 4, h, w]) attached."""

    timings: StageTimings
    latents: np.ndarray


class Txt2Img:
    """Stable Diffusion text-to-image over a vkt SD bundle (components text_encoder, unet, vae_decoder).

    Args:
        bundle: a ``vkt.bundle.Bundle`` or its folder (made by ``vkt.models.sd.export.export_sd``).
        scheduler: None (the bundle's scheduler config as is), a name ("ddim", "euler", "euler_a",
            "dpm++2m", "pndm"; the bundle's noise schedule with that sampler), or a Scheduler instance.
        backend: "ort" (default), "ort-cuda", "ort-trt", "trt" or "ov" (``vkt.runtime.make_runner``) for all three
            components, or one per component: ``{"unet": "ov"}`` / ``"unet=ov,text_encoder=auto"`` (others "ort";
            ``"ov,vae_decoder=ort"``: a bare name is the default). "auto" takes the faster of onnxruntime and OpenVINO
            per component by a short timing in ``activate()`` (``backend_choice`` then holds it; vkt.runtime.choose).
        precision: which graph/plan of the bundle: "fp32", "fp16" or "int8" (the UNet must have it;
            components without it run fp32: an INT8 bundle quantizes the UNet only).
        threads: CPU threads of onnxruntime or OpenVINO (None: the library's default).
        cfg: "auto" (default), "batched" (one UNet call at 2B per step) or "sequential" (two calls
            at B: for UNet profiles too small for 2B, and to check that batching changes nothing).
            "auto" is batched on GPU backends; on the CPU (onnxruntime, OpenVINO), where batching gains little or
            loses, it times both ways per (B, h, w) on the first guided steps and then keeps the faster.
        progress_bar: show a rich progress bar over the denoising steps (on a terminal only).
        session_config: onnxruntime session config entries for the onnxruntime sessions (None: its defaults), e.g.
            ``{"session.intra_op.allow_spinning": "0"}`` on a busy machine (docs/MEASUREMENTS.md).

    Sessions open on the first call (or ``activate()``); ``close()`` or a ``with`` block frees them.
    One call at a time per instance: the scheduler keeps per-generation state (step counter,
    multistep history); a server holds one Txt2Img per worker.
    """

    def __init__(self, bundle: Any, scheduler: str | Scheduler | None = None, backend: str | Mapping[str, str] = "ort",
                 precision: str = "fp32", threads: int | None = None, cfg: str = "auto", progress_bar: bool = True,
                 session_config: dict[str, str] | None = None):
        from vkt.bundle import PRECISION_ROLES, Bundle
        from vkt.runtime.choose import open_runner, parse_backends

        backends = parse_backends(backend, COMPONENTS)
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        b = self.bundle
        missing = [c for c in COMPONENTS if c not in b.components]
        if b.family != "sd" or missing:
            raise BundleError(f"bundle {b.name!r} is not a Stable Diffusion bundle (family {b.family!r}, "
                              f"components {b.components}; needs text_encoder, unet, vae_decoder)")
        if cfg not in CFG_MODES:
            raise InputError(f"cfg must be one of {CFG_MODES}, got {cfg!r}")
        self.cfg_mode = cfg
        self._cfg_times: dict[tuple[int, ...], dict[str, list[float]]] = {}  # (B, h, w) -> mode -> step seconds
        self.progress_bar = progress_bar
        tok_files = b.files("tokenizer", "text_encoder")
        if not tok_files:
            raise BundleError(f"bundle {b.name!r} has no tokenizer files (role 'tokenizer', component text_encoder)")
        self.tokenizer = ClipTokenizer.from_dir((b.root / tok_files[0].path).parent)
        self.scheduler_config = json.loads(b.path("scheduler config", "unet").read_text(encoding="utf-8"))
        if isinstance(scheduler, Scheduler):
            self.scheduler = scheduler
        elif scheduler is None or isinstance(scheduler, str):
            self.scheduler = scheduler_from_config(self.scheduler_config, name=scheduler)
        else:
            raise InputError(f"scheduler must be None, a name or a Scheduler, got {type(scheduler).__name__}")
        comps = b.manifest["components"]
        self.vae_scale_factor = int(comps["vae_decoder"].get("vae_scale_factor", 8))
        self.latent_multiple = int(comps["unet"].get("latent_multiple", 1))
        self.specs = {c: b.spec(c) for c in COMPONENTS}
        unet_in = self.specs["unet"].input(UNET_SAMPLE)
        self.latent_channels = int(unet_in.shape[1])
        self.default_size = int(comps["unet"].get("default_size", 512))
        if precision in PRECISION_ROLES and not b.has(PRECISION_ROLES[precision], "unet"):
            raise BundleError(f"bundle {b.name!r} has no {precision} UNet ({PRECISION_ROLES[precision]!r}); export it with "
                              + ("int8=True (calibrated Q/DQ)" if precision == "int8" else f"{precision}=True"))
        # INT8 is for the UNet (the text encoder and VAE run once per image): other components fall back to fp32.
        self.precisions = {c: precision if precision not in PRECISION_ROLES or b.has(PRECISION_ROLES[precision], c) else "fp32"
                           for c in COMPONENTS}
        self._runner_args = {c: dict(precision=self.precisions[c], component=c, threads=threads,
                                     session_config=session_config) for c in COMPONENTS}
        # "auto" components get their runner in activate(), where the timing runs (invalid inputs are refused first)
        self.runners = {c: open_runner(b, backends[c], **self._runner_args[c]) for c in COMPONENTS if backends[c] != "auto"}
        self.backends = backends  # per component; "auto" until activate() resolves it
        self.backend = backends["unet"]  # the UNet's backend decides how guidance is batched

    @property
    def backend_choice(self) -> dict[str, Any]:
        """Per component chosen by backend "auto": the backend taken and each candidate's best call in ms."""
        return {c: r.selection for c, r in self.runners.items() if r.selection is not None}

    # ---- lifecycle -------------------------------------------------------------------------------
    def activate(self) -> Txt2Img:
        from vkt.runtime.choose import open_runner

        for c in COMPONENTS:
            if c not in self.runners:
                self.runners[c] = open_runner(self.bundle, "auto", **self._runner_args[c])
                self.backends[c] = self.runners[c].selection["chosen"]
        self.backend = self.backends["unet"]
        for r in self.runners.values():
            r.activate()
        return self

    def close(self) -> None:
        for r in self.runners.values():
            r.deactivate()

    def __enter__(self) -> Txt2Img:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- profile limits --------------------------------------------------------------------------
    def _axis_max(self, component: str, axis: str) -> int | None:
        profiles = self.specs[component].profiles
        return max(p.axes[axis][2] for p in profiles) if profiles and axis in profiles[0].axes else None

    def _axis_range(self, component: str, axis: str) -> tuple[int, int] | None:
        profiles = self.specs[component].profiles
        if not profiles or axis not in profiles[0].axes:
            return None
        return min(p.axes[axis][0] for p in profiles), max(p.axes[axis][2] for p in profiles)

    # ---- the pipeline ----------------------------------------------------------------------------
    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 height: int | None = None, width: int | None = None, steps: int = 30, guidance_scale: float = 7.5,
                 seed: int | np.random.Generator | None = None, latents: np.ndarray | None = None,
                 num_images_per_prompt: int = 1, output_type: str = "uint8") -> Images:
        """Generate images.

        Args:
            prompt: one prompt or a list of P prompts.
            negative_prompt: None (empty prompt, as diffusers), one string for all, or a list of P.
            height, width: image size in pixels (default: the UNet's native size, 512 for SD 1.x);
                multiples of the bundle's pixel multiple (8 x UNet down-sampling = 64 for SD).
            steps: denoising steps (>= 1).
            guidance_scale: g >= 0 in ``u + g (c - u)``; 1.0 runs the conditional half alone (no
                unconditional UNet work). diffusers skips guidance for every g <= 1; here 0 <= g < 1
                applies the formula (g = 0 is unconditional sampling).
            seed: int or np.random.Generator for the initial latents and ancestral noise
                (numpy's generator: the same seed does not give diffusers' torch noise).
            latents: initial noise [P * n, C, height / 8, width / 8] float32 (scaled by the
                scheduler's init_noise_sigma here, as diffusers does); overrides seed for x_T.
            num_images_per_prompt: n; images come out prompt-major (p0 x n, p1 x n, ...).
            output_type: "uint8" (HxWx3 RGB) or "float" (HxWx3 float32 in [0, 1]).
        Returns:
            Images: a list of P * n arrays, with ``.timings`` and ``.latents``.
        """
        t_start = time.perf_counter()
        timings = StageTimings()
        # 1. Check inputs
        prompts, negatives, h, w, steps, n, do_cfg = self.check_inputs(
            prompt, negative_prompt, height, width, steps, guidance_scale, num_images_per_prompt, output_type)
        for i, p in enumerate(prompts):
            if not p.strip():  # valid (diffusers' unconditional prompt) but rarely meant
                log.warning("prompt %d is empty: its image is unconditional (only the negative prompt steers it)", i)
        P = len(prompts)
        rng = _rng(seed)
        B = P * n
        shape = (B, self.latent_channels, h, w)
        if latents is not None and (not isinstance(latents, np.ndarray) or latents.shape != shape):
            raise InputError(f"latents must be a numpy array of shape {shape} ([prompts x images per prompt, channels, "
                             f"height/{self.vae_scale_factor}, width/{self.vae_scale_factor}]), got "
                             f"{getattr(latents, 'shape', type(latents).__name__)}")

        # 2. Encode the prompts: uncond and cond in one text-encoder call (batch 2P), then repeat n times
        self.activate()
        t0 = time.perf_counter()
        texts = (negatives + prompts) if do_cfg else prompts
        names = ([f"negative prompt {i}" for i in range(P)] if do_cfg else []) + [f"prompt {i}" for i in range(P)]
        ids = self.tokenizer(texts, names).astype(self.specs["text_encoder"].input(TEXT_IDS).dtype)  # [2P | P, 77]
        emb = self._run_chunked("text_encoder", {TEXT_IDS: ids})[TEXT_OUT]  # [2P | P, 77, D]
        emb = np.repeat(emb, n, axis=0)  # [2B | B, 77, D], prompt-major like diffusers
        timings.text_encoder = time.perf_counter() - t0

        # 3. Prepare timesteps
        sched = self.scheduler
        sched.set_timesteps(steps)

        # 4. Prepare latents x_T
        if latents is None:
            latents = rng.standard_normal(shape, dtype=np.float32)
        latents = (latents.astype(np.float32) * np.float32(sched.init_noise_sigma)).astype(np.float32)

        # 5. Denoising loop: scale input -> UNet (both guidance halves at once) -> guidance -> scheduler step
        g = np.float32(guidance_scale)
        for t in progress(sched.timesteps, f"denoising ({sched.name})", enabled=self.progress_bar):
            mode = self._pick_cfg(shape) if do_cfg else None
            t_step = time.perf_counter()
            if mode == "batched":
                x_in = sched.scale_model_input(np.concatenate([latents] * 2), t)  # [2B, C, h, w]
                noise = self._unet(x_in, t, emb, timings)
                noise_uncond, noise_text = np.split(noise, 2)
                noise = noise_uncond + g * (noise_text - noise_uncond)
            elif mode == "sequential":
                x_in = sched.scale_model_input(latents, t)
                noise_uncond = self._unet(x_in, t, emb[:B], timings)
                noise_text = self._unet(x_in, t, emb[B:], timings)
                noise = noise_uncond + g * (noise_text - noise_uncond)
            else:
                noise = self._unet(sched.scale_model_input(latents, t), t, emb, timings)
            latents = sched.step(noise, t, latents, rng=rng).prev_sample
            if mode is not None and self.cfg_mode == "auto":
                self._cfg_times.setdefault(shape, {}).setdefault(mode, []).append(time.perf_counter() - t_step)

        # 6. Decode: VAE (1/scaling_factor is inside the graph), then x / 2 + 0.5 -> [0, 1] -> HWC
        t0 = time.perf_counter()
        image = self._run_chunked("vae_decoder", {VAE_IN: latents})[VAE_OUT]  # [B, 3, H, W]
        timings.vae = time.perf_counter() - t0
        image = np.clip(image * 0.5 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)  # [B, H, W, 3]
        if output_type == "uint8":
            image = (image * 255.0).round().astype(np.uint8)
        out = Images(np.ascontiguousarray(im) for im in image)
        timings.total = time.perf_counter() - t_start
        out.timings, out.latents = timings, latents
        log.debug("txt2img %dx%d, %d steps, %d images: %s", height, width, steps, B, timings.to_dict())
        return out

    # ---- helpers ---------------------------------------------------------------------------------
    def _pick_cfg(self, shape: tuple[int, ...]) -> str:
        """The guidance mode of the next step: the fixed one, or under "auto" batched on GPU backends and,
        on CPU, alternate until each mode has AUTO_SAMPLES timed steps past its first, then the faster by
        median; every AUTO_REFRESH-th step after that re-times the other mode, so a choice made on noisy
        first samples (the two modes are within a few percent on CPU) corrects itself over a service's life."""
        if self.cfg_mode != "auto":
            return self.cfg_mode
        if self.backend not in ("ort", "ov"):  # GPU backends
            return "batched"
        seen = self._cfg_times.get(shape, {})
        n = {m: len(seen.get(m, [])) for m in ("batched", "sequential")}
        if min(n.values()) < AUTO_SAMPLES + 1:
            return "batched" if n["batched"] <= n["sequential"] else "sequential"
        best = _faster_mode(seen)
        if sum(n.values()) % AUTO_REFRESH == 0:
            return "sequential" if best == "batched" else "batched"
        return best

    @property
    def cfg_choice(self) -> dict[str, Any]:
        """Under cfg="auto" on CPU: per (B, h, w), median step seconds of each mode (first steps not
        counted), how many steps were timed, and the mode in use."""
        out = {}
        for (B, _, h, w), seen in self._cfg_times.items():
            medians = {m: float(np.median(v[1:])) for m, v in seen.items() if len(v) > 1}
            done = len(medians) == 2 and all(len(v) > AUTO_SAMPLES for v in seen.values())
            out[f"B={B} {h}x{w}"] = {"step_s": medians, "samples": {m: len(v) - 1 for m, v in seen.items()},
                                     "mode": _faster_mode(seen) if done else "measuring"}
        return out

    def _unet(self, x: np.ndarray, t: float, emb: np.ndarray, timings: StageTimings) -> np.ndarray:
        ts = np.full((x.shape[0],), t, dtype=np.float32)  # [batch]: see vkt.models.sd.export
        t0 = time.perf_counter()
        out = self.runners["unet"].infer({UNET_SAMPLE: x.astype(np.float32, copy=False), UNET_TIMESTEP: ts,
                                          UNET_TEXT: emb})[UNET_OUT]
        timings.unet.append(time.perf_counter() - t0)
        return out

    def _run_chunked(self, component: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run in chunks of at most the profile's max batch (the text encoder and VAE are per-sample)."""
        n = next(iter(feed.values())).shape[0]
        step = self._axis_max(component, "batch") or n
        outs: list[dict[str, np.ndarray]] = []
        for i in range(0, n, step):
            outs.append(self.runners[component].infer({k: v[i:i + step] for k, v in feed.items()}))
        return {k: np.concatenate([o[k] for o in outs]) if len(outs) > 1 else outs[0][k] for k in outs[0]}

    def check_inputs(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                     height: int | None = None, width: int | None = None, steps: int = 30, guidance_scale: float = 7.5,
                     num_images_per_prompt: int = 1, output_type: str = "uint8"
                     ) -> tuple[list[str], list[str], int, int, int, int, bool]:
        """Stage 1 of :meth:`__call__` alone (no session is loaded): InputError naming a bad value. Returns
        (prompts, negatives, latent height, latent width, steps, images per prompt, whether guidance runs)."""
        prompts = self._check_prompts(prompt, "prompt")
        negatives = self._negatives(negative_prompt, len(prompts))
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        h, w = self._check_size(height, width)
        steps = _check_int(steps, "steps", 1)
        n = _check_int(num_images_per_prompt, "num_images_per_prompt", 1)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not np.isfinite(guidance_scale) \
                or guidance_scale < 0:
            raise InputError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if output_type not in ("uint8", "float"):
            raise InputError(f"output_type must be 'uint8' or 'float', got {output_type!r}")
        do_cfg = float(guidance_scale) != 1.0
        self._check_batch(len(prompts) * n, do_cfg)
        return prompts, negatives, h, w, steps, n, do_cfg

    @staticmethod
    def _check_prompts(prompt: Any, what: str) -> list[str]:
        if isinstance(prompt, str):
            return [prompt]
        if not isinstance(prompt, (list, tuple)):
            raise InputError(f"{what} must be a string or a list of strings, got {type(prompt).__name__}")
        if not prompt:
            raise InputError(f"{what} is an empty list; expected at least one prompt")
        bad = [p for p in prompt if not isinstance(p, str)]
        if bad:
            raise InputError(f"{what} list must hold strings only, got {bad[0]!r} ({type(bad[0]).__name__})")
        return list(prompt)

    def _negatives(self, negative: Any, P: int) -> list[str]:
        if negative is None:
            return [""] * P
        if isinstance(negative, str):
            return [negative] * P
        negs = self._check_prompts(negative, "negative_prompt")
        if len(negs) != P:
            raise InputError(f"negative_prompt has {len(negs)} entries but prompt has {P}; give one per prompt, "
                             "one string for all, or none at all")
        return negs

    def _check_size(self, height: Any, width: Any) -> tuple[int, int]:
        vsf, mult = self.vae_scale_factor, self.latent_multiple
        lat = {}
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise InputError(f"{name} must be a positive integer (pixels), got {v!r}")
            if v % vsf:
                raise InputError(f"{name}={v} is not divisible by {vsf} (the VAE works on {vsf}x{vsf} pixel cells)")
            if (v // vsf) % mult:
                raise InputError(f"{name}={v} must be a multiple of {vsf * mult} pixels for this UNet "
                                 f"(latent size {v // vsf} must divide by {mult})")
            rng_ = self._axis_range("unet", name)
            if rng_ and not rng_[0] <= v // vsf <= rng_[1]:
                raise InputError(f"{name}={v} is outside the bundle's UNet profile: {rng_[0] * vsf}..{rng_[1] * vsf} pixels "
                                 "(re-export with a wider SDProfile)")
            lat[name] = int(v // vsf)
        return lat["height"], lat["width"]

    def _check_batch(self, B: int, do_cfg: bool) -> None:
        mx = self._axis_max("unet", "batch")
        if mx is None:
            return
        need = 2 * B if (do_cfg and self.cfg_mode != "sequential") else B  # "auto" may batch: the profile must hold 2B
        if need > mx:
            why = (f"{B} images with guidance need a UNet batch of 2 x {B} = {need}" if need == 2 * B and do_cfg
                   else f"{B} images need a UNet batch of {B}")
            raise InputError(f"{why}, but the bundle's UNet profile allows at most {mx}; generate fewer images per "
                             "call, re-export with a larger SDProfile.max_batch"
                             + (", or use cfg='sequential'" if do_cfg and B <= mx else ""))


COMPONENTS = ("text_encoder", "unet", "vae_decoder")
CFG_MODES = ("auto", "batched", "sequential")
AUTO_SAMPLES = 2  # timed steps per mode (after a first, warm-up one) before cfg="auto" settles on CPU
AUTO_REFRESH = 16  # then every 16th step of a shape re-times the other mode (at most ~1/16 of a few % spent)


def _faster_mode(seen: dict[str, list[float]]) -> str:
    """The guidance mode with the lower median step time, first (warm-up) steps not counted."""
    return min(("batched", "sequential"), key=lambda m: float(np.median(seen[m][1:])))


def _check_int(v: Any, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer or a numpy Generator (or unset for a random seed), got {seed!r}")
    return np.random.default_rng(int(seed))


__all__ = ["Images", "StageTimings", "Txt2Img"]

