"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), multistep, data prediction; diffusers' DPMSolverMultistepScheduler."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.runtime.schedulers.base import Scheduler, SchedulerOutput


class DPMSolverMultistep(Scheduler):
    """Second-order multistep solver in log-SNR time ``lambda_t = log(alpha_t / sigma_t)``.

    Each step first turns the model output into a data prediction x_0 (paper sec. 4), then applies
    the first-order update (eq. 5 / DDIM) or the 2M update (Algorithm 2) that reuses the previous
    step's x_0. Only ``algorithm_type="dpmsolver++"`` (the default) is implemented.

    Args (beyond :class:`Scheduler`'s; default spacing "linspace" as diffusers):
        solver_order: 1 or 2 (2M; the order-3 variant is for unconditional sampling).
        solver_type: "midpoint" (Algorithm 2 as written) or "heun" (diffusers' alternative D1 weight).
        lower_order_final: use first/second order for the last steps when fewer than 15 steps;
            stabilises few-step sampling (diffusers' default True).
        euler_at_final: first order for the very last step whatever the step count.
        final_sigmas_type: "zero" (default; forces a first-order last step) or "sigma_min".
        lambda_min_clipped: drop the tail of timesteps whose lambda_t falls below this (-inf: keep all).
    """

    name = "dpm++2m"
    diffusers_class = "DPMSolverMultistepScheduler"
    spacing_default = "linspace"
    fixed_defaults = {**Scheduler.fixed_defaults, "algorithm_type": "dpmsolver++", "thresholding": False,
                      "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                      "use_lu_lambdas": False, "use_flow_sigmas": False, "variance_type": None,
                      "use_dynamic_shifting": False}

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", timestep_spacing: str = "linspace",
                 steps_offset: int = 0, solver_order: int = 2, solver_type: str = "midpoint",
                 lower_order_final: bool = True, euler_at_final: bool = False, final_sigmas_type: str = "zero",
                 lambda_min_clipped: float = -math.inf):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type, timestep_spacing,
                         steps_offset)
        if solver_order not in (1, 2) or isinstance(solver_order, bool):
            raise InputError(f"{self.name}: solver_order must be 1 or 2 (order 3 is not implemented), got {solver_order!r}")
        if solver_type not in ("midpoint", "heun"):
            raise InputError(f"{self.name}: solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise InputError(f"{self.name}: final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")
        self.solver_order, self.solver_type = int(solver_order), solver_type
        self.lower_order_final, self.euler_at_final = bool(lower_order_final), bool(euler_at_final)
        self.final_sigmas_type = final_sigmas_type
        self.lambda_min_clipped = float(lambda_min_clipped)
        a = self.alphas_cumprod
        self.lambdas = np.log(a**0.5) - np.log((1.0 - a) ** 0.5)  # [T], decreasing in t
        self.train_sigmas = ((1.0 - a) / a) ** 0.5
        self.sigmas = np.zeros(0)
        self._x0s: list[np.ndarray] = []

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        T = self.num_train_timesteps
        # the highest usable timestep: timesteps whose lambda is below lambda_min_clipped are cut off
        clipped = int(np.searchsorted(self.lambdas[::-1], self.lambda_min_clipped))
        last = T - clipped
        # spacing over n + 1 points, dropping the final 0 (diffusers' rule for this solver)
        if self.timestep_spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif self.timestep_spacing == "leading":
            ts = (np.arange(n + 1) * (last // (n + 1))).round()[::-1][:-1].astype(np.int64) + self.steps_offset
        else:
            ts = np.arange(last, 0, -T / n).round().astype(np.int64) - 1
        sigmas = np.interp(ts.astype(np.float64), np.arange(T), self.train_sigmas)
        end = self.train_sigmas[0] if self.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [end]])  # [len(ts) + 1]
        self.timesteps = ts
        self.num_inference_steps = len(ts)
        self._x0s = []
        self._index = 0

    @staticmethod
    def _alpha_sigma(sigma: float) -> tuple[float, float]:
        """VP (alpha_t, sigma_t) from the VE sigma = sigma_t / alpha_t."""
        alpha = 1.0 / (sigma * sigma + 1.0) ** 0.5
        return alpha, sigma * alpha

    def _data_prediction(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """x_0 from the model output (DPM-Solver++ sec. 4: solve for the data, not the noise)."""
        alpha, sigma = self._alpha_sigma(float(self.sigmas[self._index]))
        if self.prediction_type == "epsilon":
            return (sample - sigma * model_output) / alpha
        if self.prediction_type == "sample":
            return model_output
        return alpha * sample - sigma * model_output  # v_prediction

    @classmethod
    def prediction_types(cls) -> tuple[str, ...]:
        return ("epsilon", "v_prediction", "sample")

    def _step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None,
              rng: np.random.Generator | None) -> SchedulerOutput:
        i, n = self._index, len(self.timesteps)
        final = i == n - 1 and (self.euler_at_final or (self.lower_order_final and n < 15)
                                or self.final_sigmas_type == "zero")
        # (diffusers' "lower_order_second" only demotes order 3 to 2: nothing to do with order <= 2)
        x0 = self._data_prediction(model_output, sample.astype(np.float32, copy=False))
        self._x0s = (self._x0s + [x0])[-2:]
        sample = sample.astype(np.float32, copy=False)
        alpha_t, sigma_t = self._alpha_sigma(float(self.sigmas[i + 1]))
        alpha_s0, sigma_s0 = self._alpha_sigma(float(self.sigmas[i]))
        # lambda = log(alpha) - log(sigma); a final sigma of 0 gives lambda = +inf, h = +inf, e^{-h} = 0:
        # the first-order update then returns x_0 itself (numpy float64 follows IEEE inf rules here)
        with np.errstate(divide="ignore"):
            h = float((np.log(alpha_t) - np.log(sigma_t)) - (np.log(alpha_s0) - np.log(sigma_s0)))
        if self.solver_order == 1 or len(self._x0s) < 2 or final:
            # first order (eq. 5 with data prediction == DDIM): x_t = (s_t/s_s) x - a_t (e^{-h} - 1) x_0
            prev = (sigma_t / sigma_s0) * sample - (alpha_t * (math.exp(-h) - 1.0)) * x0
        else:
            alpha_s1, sigma_s1 = self._alpha_sigma(float(self.sigmas[i - 1]))
            h0 = (math.log(alpha_s0) - math.log(sigma_s0)) - (math.log(alpha_s1) - math.log(sigma_s1))
            r0 = h0 / h
            m0, m1 = self._x0s[-1], self._x0s[-2]
            d0, d1 = m0, (1.0 / r0) * (m0 - m1)  # Algorithm 2: D = (1 + 1/(2r)) m0 - 1/(2r) m1 as D0 + D1/2
            if self.solver_type == "midpoint":
                prev = ((sigma_t / sigma_s0) * sample - (alpha_t * (math.exp(-h) - 1.0)) * d0
                        - 0.5 * (alpha_t * (math.exp(-h) - 1.0)) * d1)
            else:  # heun
                prev = ((sigma_t / sigma_s0) * sample - (alpha_t * (math.exp(-h) - 1.0)) * d0
                        + (alpha_t * ((math.exp(-h) - 1.0) / h + 1.0)) * d1)
        return SchedulerOutput(prev, x0)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "solver_order": self.solver_order, "solver_type": self.solver_type,
                "lower_order_final": self.lower_order_final, "euler_at_final": self.euler_at_final,
                "final_sigmas_type": self.final_sigmas_type, "lambda_min_clipped": self.lambda_min_clipped,
                "algorithm_type": "dpmsolver++"}
