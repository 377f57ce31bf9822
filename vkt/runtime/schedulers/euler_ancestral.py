"""Euler ancestral sampler (k-diffusion's ``sample_euler_ancestral``; diffusers' EulerAncestralDiscreteScheduler)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vkt.runtime.schedulers.base import Scheduler, SchedulerOutput
from vkt.runtime.schedulers.euler import Euler


class EulerAncestral(Euler):
    """Each step goes down to ``sigma_down`` with Euler, then adds fresh noise of std ``sigma_up``.

    With ``sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2`` and
    ``sigma_down^2 = sigma_next^2 - sigma_up^2`` the marginal at sigma_next has the right variance
    (the ancestral step of DDPM, Ho et al. 2020 eq. 7, written in EDM's sigma terms).
    ``step()`` needs ``noise=`` or ``rng=``.
    """

    name = "euler_a"
    diffusers_class = "EulerAncestralDiscreteScheduler"
    needs_noise = True
    fixed_defaults = dict(Scheduler.fixed_defaults)

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", timestep_spacing: str = "linspace",
                 steps_offset: int = 0):
        # diffusers' ancestral class always ends at sigma = 0
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, timestep_spacing,
                         steps_offset, final_sigmas_type="zero")

    def _step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None,
              rng: np.random.Generator | None) -> SchedulerOutput:
        sigma, sigma_next = float(self.sigmas[self._index]), float(self.sigmas[self._index + 1])
        sample = sample.astype(np.float32, copy=False)
        x0 = self._denoised(model_output, sample, sigma)
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        d = (sample - x0) / sigma
        prev = sample + d * (sigma_down - sigma)
        z = self._noise(sample.shape, noise, rng)
        return SchedulerOutput(prev + z * sigma_up, x0)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.pop("final_sigmas_type")
        return cfg
