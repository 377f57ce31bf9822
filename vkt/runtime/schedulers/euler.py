"""Euler sampler in the sigma parameterisation of Karras et al. 2022 ("Elucidating the Design Space
of Diffusion-Based Generative Models", EDM), as k-diffusion and diffusers' EulerDiscreteScheduler run it."""

from __future__ import annotations

from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.runtime.schedulers.base import Scheduler, SchedulerOutput


class Euler(Scheduler):
    """Deterministic Euler steps on the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``
    (EDM, eq. 3 with sigma(t) = t; Algorithm 1 without churn).

    The VP model's timestep t maps to ``sigma_t = sqrt((1 - abar_t) / abar_t)``; latents live at
    scale sqrt(sigma^2 + 1), so the UNet input is divided by it (:meth:`scale_model_input`).

    Args (beyond :class:`Scheduler`'s; default spacing "linspace" as diffusers):
        final_sigmas_type: sigma after the last step: "zero" (diffusers' default) or "sigma_min"
            (sigma of t = 0).
    """

    name = "euler"
    diffusers_class = "EulerDiscreteScheduler"
    spacing_default = "linspace"
    fixed_defaults = {**Scheduler.fixed_defaults, "interpolation_type": "linear", "use_karras_sigmas": False,
                      "use_exponential_sigmas": False, "use_beta_sigmas": False, "timestep_type": "discrete",
                      "sigma_min": None, "sigma_max": None}

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", timestep_spacing: str = "linspace",
                 steps_offset: int = 0, final_sigmas_type: str = "zero"):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, timestep_spacing,
                         steps_offset)
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise InputError(f"{self.name}: final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")
        self.final_sigmas_type = final_sigmas_type
        self.train_sigmas = ((1.0 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5  # [T], increasing in t
        self.sigmas = np.concatenate([self.train_sigmas[::-1], [0.0]])

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        T = self.num_train_timesteps
        if self.timestep_spacing == "linspace":
            # fractional timesteps (float32, as the UNet will see them): sigma is interpolated between them
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        else:
            ts = self._spaced(n).astype(np.float32)
        sigmas = np.interp(ts.astype(np.float64), np.arange(T), self.train_sigmas)
        last = self.train_sigmas[0] if self.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]])  # [n + 1] float64, sigmas[n] ends the chain
        self.timesteps = ts  # [n] float32
        self.num_inference_steps = n
        self._index = 0

    @property
    def init_noise_sigma(self) -> float:
        s = float(self.sigmas.max())
        # "leading" never starts at T-1, so x_T is not pure noise: diffusers scales by sqrt(s^2 + 1) there
        return s if self.timestep_spacing in ("linspace", "trailing") else (s * s + 1.0) ** 0.5

    def scale_model_input(self, sample: np.ndarray, timestep: float | int) -> np.ndarray:
        """``x / sqrt(sigma^2 + 1)``: the UNet was trained on unit-variance VP inputs (EDM, table 1, c_in).

        ``timestep`` must be the current one (``timesteps[step_index]``): sigma follows the step counter.
        """
        if self.num_inference_steps is None or self._index >= len(self.timesteps):
            raise InputError(f"{self.name}: scale_model_input needs a pending step; call set_timesteps(n) first")
        if not np.isclose(float(timestep), float(self.timesteps[self._index]), rtol=0, atol=1e-4):
            raise InputError(f"{self.name}: step {self._index} expects timestep {self.timesteps[self._index]}, "
                             f"got {timestep!r}")
        sigma = float(self.sigmas[self._index])
        return (sample / (sigma * sigma + 1.0) ** 0.5).astype(sample.dtype, copy=False)

    def _denoised(self, model_output: np.ndarray, sample: np.ndarray, sigma: float) -> np.ndarray:
        """D(x; sigma), the x_0 estimate, from the model's prediction."""
        if self.prediction_type == "epsilon":
            return sample - sigma * model_output
        # v_prediction: D = c_skip x + c_out v with c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1)
        return model_output * (-sigma / (sigma * sigma + 1.0) ** 0.5) + sample / (sigma * sigma + 1.0)

    def _step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None,
              rng: np.random.Generator | None) -> SchedulerOutput:
        sigma, sigma_next = float(self.sigmas[self._index]), float(self.sigmas[self._index + 1])
        sample = sample.astype(np.float32, copy=False)
        x0 = self._denoised(model_output, sample, sigma)
        d = (sample - x0) / sigma  # EDM Algorithm 1, line 7: the ODE's derivative
        return SchedulerOutput(sample + d * (sigma_next - sigma), x0)  # line 8: Euler step

    def config(self) -> dict[str, Any]:
        return {**super().config(), "final_sigmas_type": self.final_sigmas_type}
