"""PNDM (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"): Runge-Kutta
warm-up (PRK) then linear multistep (PLMS); diffusers' PNDMScheduler, Stable Diffusion 1.x's default."""

from __future__ import annotations

from typing import Any

import numpy as np

from vkt.runtime.schedulers.base import Scheduler, SchedulerOutput, alpha_bar_prev


class PNDM(Scheduler):
    """Pseudo linear multistep sampler.

    Every update uses the paper's transfer function phi (eq. 9), a DDIM-like step from t to t_prev
    with a combined noise estimate e':
        PLMS (eq. 12): e' = (55 e_t - 59 e_{t-1} + 37 e_{t-2} - 9 e_{t-3}) / 24, once 4 estimates exist;
        the first steps use the lower-order Adams-Bashforth weights, or four-stage pseudo
        Runge-Kutta steps (eq. 11: 1/6, 1/3, 1/3, 1/6) when ``skip_prk_steps`` is False.

    Args (beyond :class:`Scheduler`'s):
        skip_prk_steps: start PLMS directly (with one Heun-like second step) instead of 3 PRK steps
            (12 UNet calls). SD 1.x sets True.
        set_alpha_to_one: abar for the step past t = 0: 1.0 (True) or abar_0 (False, the default).
    """

    name = "pndm"
    diffusers_class = "PNDMScheduler"
    spacing_default = "leading"

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", timestep_spacing: str = "leading",
                 steps_offset: int = 0, skip_prk_steps: bool = False, set_alpha_to_one: bool = False):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, timestep_spacing,
                         steps_offset)
        self.skip_prk_steps, self.set_alpha_to_one = bool(skip_prk_steps), bool(set_alpha_to_one)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        self._reset()

    def _reset(self) -> None:
        self._ets: list[np.ndarray] = []  # past noise estimates, newest last
        self._cur_sample: np.ndarray | None = None
        self._cur_eps: np.ndarray | float = 0.0  # running PRK combination
        self.prk_timesteps = np.zeros(0, dtype=np.int64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        self.num_inference_steps = n
        self._reset()
        ts = self._spaced(n)[::-1].copy()  # ascending
        T = self.num_train_timesteps
        if self.skip_prk_steps:
            # the second-highest timestep is visited twice: step 1 re-does step 0 with averaged noise
            plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]
        else:
            # 3 PRK steps over the top 4 timesteps, each with two half-steps (t, t - T/n/2, t - T/n/2, t - T/n)
            half = T // n // 2
            prk = np.repeat(ts[-4:], 2) + np.tile([0, half], 4)
            self.prk_timesteps = np.repeat(prk[:-1], 2)[1:-1][::-1].copy()
            plms = ts[:-3][::-1]
        self.timesteps = np.concatenate([self.prk_timesteps, plms]).astype(np.int64)
        self._index = 0

    def _transfer(self, sample: np.ndarray, t: int, t_prev: int, eps: np.ndarray) -> np.ndarray:
        """phi(x_t, e, t, t_prev), eq. 9: a DDIM step written so that (abar_prev - abar_t) multiplies e."""
        a_t = float(self.alphas_cumprod[t])
        a_prev = alpha_bar_prev(self, t_prev, self.final_alpha_cumprod)
        b_t, b_prev = 1.0 - a_t, 1.0 - a_prev
        if self.prediction_type == "v_prediction":
            eps = a_t**0.5 * eps + b_t**0.5 * sample
        denom = a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5
        return (a_prev / a_t) ** 0.5 * sample - (a_prev - a_t) * eps / denom

    def _step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None,
              rng: np.random.Generator | None) -> SchedulerOutput:
        if self._index < len(self.prk_timesteps):
            return SchedulerOutput(self._step_prk(model_output, sample))
        return SchedulerOutput(self._step_plms(model_output, sample))

    def _step_prk(self, eps: np.ndarray, sample: np.ndarray) -> np.ndarray:
        k, T, n = self._index, self.num_train_timesteps, self.num_inference_steps
        t = int(self.timesteps[k])
        t_prev = t - (0 if k % 2 else T // n // 2)
        t_base = int(self.prk_timesteps[k // 4 * 4])  # every stage steps from the stage's start x_t
        stage = k % 4
        if stage == 0:
            self._cur_eps = eps / 6.0
            self._ets.append(eps)
            self._cur_sample = sample
        elif stage in (1, 2):
            self._cur_eps = self._cur_eps + eps / 3.0
        else:
            eps = self._cur_eps + eps / 6.0  # eq. 11: e' = (e1 + 2 e2 + 2 e3 + e4) / 6
            self._cur_eps = 0.0
        start = self._cur_sample if self._cur_sample is not None else sample
        return self._transfer(start, t_base, t_prev, eps)

    def _step_plms(self, eps: np.ndarray, sample: np.ndarray) -> np.ndarray:
        k = self._index - len(self.prk_timesteps)  # PLMS step counter
        stride = self.num_train_timesteps // self.num_inference_steps
        t = int(self.timesteps[self._index])
        t_prev = t - stride
        if self.skip_prk_steps and k == 1:
            # the repeated step: go from the previous x_t again, with the average of both estimates (Heun)
            t_prev, t = t, t + stride
            eps = (eps + self._ets[-1]) / 2.0
            sample, self._cur_sample = self._cur_sample, None  # type: ignore[assignment]
            return self._transfer(sample, t, t_prev, eps)
        self._ets = self._ets[-3:] + [eps]
        e = self._ets
        if len(e) == 1:
            self._cur_sample = sample  # first step: plain DDIM-like update, remembered for the Heun step
            combined = e[-1]
        elif len(e) == 2:
            combined = (3.0 * e[-1] - e[-2]) / 2.0
        elif len(e) == 3:
            combined = (23.0 * e[-1] - 16.0 * e[-2] + 5.0 * e[-3]) / 12.0
        else:
            combined = (55.0 * e[-1] - 59.0 * e[-2] + 37.0 * e[-3] - 9.0 * e[-4]) / 24.0
        return self._transfer(sample, t, t_prev, combined)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "skip_prk_steps": self.skip_prk_steps, "set_alpha_to_one": self.set_alpha_to_one}
