"""DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models"), deterministic for eta = 0."""

from __future__ import annotations

from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.runtime.schedulers.base import Scheduler, SchedulerOutput, alpha_bar_prev


class DDIM(Scheduler):
    """DDIM sampler; config keys as diffusers' ``DDIMScheduler``.

    Args (beyond :class:`Scheduler`'s):
        clip_sample: clamp the predicted x_0 to ``[-clip_sample_range, clip_sample_range]``
            (diffusers' default True; Stable Diffusion's configs set False).
        clip_sample_range: see clip_sample (1.0).
        set_alpha_to_one: abar used for the step past t = 0: 1.0 (True) or abar_0 (False).
        eta: the paper's eta in eq. 16 (0: DDIM, 1: DDPM-like variance). Diffusers passes it to
            ``step()``; here it is fixed per scheduler so the pipeline needs no extra arguments.
    """

    name = "ddim"
    diffusers_class = "DDIMScheduler"
    spacing_default = "leading"
    fixed_defaults = {**Scheduler.fixed_defaults, "thresholding": False}

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", timestep_spacing: str = "leading",
                 steps_offset: int = 0, clip_sample: bool = True, clip_sample_range: float = 1.0,
                 set_alpha_to_one: bool = True, eta: float = 0.0):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, timestep_spacing,
                         steps_offset)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0:
            raise InputError(f"ddim: eta must be a number >= 0, got {eta!r}")
        if isinstance(clip_sample_range, bool) or not isinstance(clip_sample_range, (int, float)) or clip_sample_range <= 0:
            raise InputError(f"ddim: clip_sample_range must be a number > 0, got {clip_sample_range!r}")
        self.clip_sample, self.clip_sample_range = bool(clip_sample), float(clip_sample_range)
        self.set_alpha_to_one, self.eta = bool(set_alpha_to_one), float(eta)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])

    @property
    def needs_noise(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    @classmethod
    def prediction_types(cls) -> tuple[str, ...]:
        return ("epsilon", "v_prediction", "sample")

    def _step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None,
              rng: np.random.Generator | None) -> SchedulerOutput:
        t = int(self.timesteps[self._index])
        # The previous timestep is t - T // n for every spacing: diffusers' rule, kept for parity
        # (with "linspace" spacing it differs slightly from the next entry of `timesteps`).
        t_prev = t - self.num_train_timesteps // self.num_inference_steps
        a_t = float(self.alphas_cumprod[t])
        a_prev = alpha_bar_prev(self, t_prev, self.final_alpha_cumprod)
        b_t = 1.0 - a_t
        # "predicted x_0", eq. 12: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        if self.prediction_type == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        else:  # v_prediction (Salimans & Ho 2022, eq. 10-11 rearranged)
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        # sigma_t(eta), eq. 16: eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
        variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev)
        std = self.eta * variance**0.5
        # eq. 12: x_{t-1} = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma_t^2) eps + sigma_t z
        prev = a_prev**0.5 * x0 + (1.0 - a_prev - std**2) ** 0.5 * eps
        if self.eta > 0:
            prev = prev + std * self._noise(sample.shape, noise, None if noise is not None else rng)
        return SchedulerOutput(prev, x0)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "clip_sample": self.clip_sample, "clip_sample_range": self.clip_sample_range,
                "set_alpha_to_one": self.set_alpha_to_one, "eta": self.eta}
