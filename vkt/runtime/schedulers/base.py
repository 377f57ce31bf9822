"""What every numpy scheduler shares: the beta schedule, timestep spacing, config checks and the step output.

Conventions (all schedulers):
- constructor defaults equal diffusers' defaults for the same class, so a ``scheduler_config.json``
  that leaves a key out means the same thing here as there;
- the noise schedule is computed in float64 (diffusers uses float32 torch tensors; the difference
  is far below the 1e-5 relative tolerance the tests hold us to) and applied to float32 arrays;
- ``step()`` walks ``timesteps`` in order with an internal counter and refuses a timestep out of
  order, instead of searching for it as diffusers does (img2img-style partial schedules would add a
  ``begin`` index, not a search);
- randomness is injected: stochastic steps take ``noise`` (an array of the sample's shape) or
  ``rng`` (a ``np.random.Generator``), so a test can feed a torch scheduler the very same noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vkt.errors import InputError

BETA_SCHEDULES = ("linear", "scaled_linear")
SPACINGS = ("leading", "trailing", "linspace")


@dataclass(frozen=True)
class SchedulerOutput:
    """One denoising step's result.

    prev_sample: x_{t-1}, same shape and dtype as the sample ([B, C, h, w] float32).
    pred_original_sample: the step's estimate of x_0 where the method forms one (DDIM, Euler), else None.
    """

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray | None = None


class Scheduler:
    """Base class: the DDPM forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``.

    Args:
        num_train_timesteps: T, the length of the training chain (1000 for Stable Diffusion).
        beta_start, beta_end: first and last beta_t.
        beta_schedule: "linear" (Ho et al. 2020, sec. 4) or "scaled_linear" (latent diffusion:
            linear in sqrt(beta), then squared).
        prediction_type: what the model predicts: "epsilon" (the noise) or "v_prediction"
            (v = sqrt(abar) eps - sqrt(1 - abar) x_0; Salimans & Ho 2022, sec. 4).
        timestep_spacing: how ``n`` inference steps are picked from the T training steps, in the
            terms of Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are
            Flawed", table 2): "leading", "trailing" or "linspace".
        steps_offset: added to "leading" timesteps (SD 1.x uses 1).
    """

    name: ClassVar[str] = "?"
    diffusers_class: ClassVar[str] = "?"
    needs_noise: ClassVar[bool] = False  # True where step() draws noise (ancestral samplers)
    spacing_default: ClassVar[str] = "leading"
    # Keys diffusers' class knows that we accept only at diffusers' default value (else: InputError).
    fixed_defaults: ClassVar[dict[str, Any]] = {
        "trained_betas": None, "rescale_betas_zero_snr": False,
    }

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", prediction_type: str = "epsilon", timestep_spacing: str | None = None,
                 steps_offset: int = 0):
        timestep_spacing = timestep_spacing or self.spacing_default
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise InputError(f"{self.name}: num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        for key, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
                raise InputError(f"{self.name}: {key} must be a number in (0, 1), got {v!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise InputError(f"{self.name}: beta_schedule must be one of {list(BETA_SCHEDULES)}, got {beta_schedule!r}")
        if prediction_type not in self.prediction_types():
            raise InputError(f"{self.name}: prediction_type must be one of {list(self.prediction_types())}, got {prediction_type!r}")
        if timestep_spacing not in SPACINGS:
            raise InputError(f"{self.name}: timestep_spacing must be one of {list(SPACINGS)}, got {timestep_spacing!r}")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
            raise InputError(f"{self.name}: steps_offset must be an integer >= 0, got {steps_offset!r}")
        self.num_train_timesteps = num_train_timesteps
        self.beta_start, self.beta_end, self.beta_schedule = float(beta_start), float(beta_end), beta_schedule
        self.prediction_type = prediction_type
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        if beta_schedule == "linear":
            self.betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
        else:
            self.betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
        # abar_t = prod_{s<=t} (1 - beta_s)   (Ho et al. 2020, eq. 4 notation)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)  # [T] float64
        self.timesteps = np.zeros(0, dtype=np.int64)  # set by set_timesteps
        self.num_inference_steps: int | None = None
        self._index = 0

    # ---- schedule ----------------------------------------------------------------------------
    @classmethod
    def prediction_types(cls) -> tuple[str, ...]:
        return ("epsilon", "v_prediction")

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial latents x_T (1.0 for variance-preserving samplers)."""
        return 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Pick the inference timesteps and reset the step counter (call before each generation)."""
        n = self._check_steps(num_inference_steps)
        self.num_inference_steps = n
        self.timesteps = self._spaced(n)
        self._index = 0

    def _check_steps(self, n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= self.num_train_timesteps:
            raise InputError(f"{self.name}: number of inference steps must be an integer in [1, {self.num_train_timesteps}], got {n!r}")
        return int(n)

    def _spaced(self, n: int) -> np.ndarray:
        """The n timesteps, descending, int64 (Lin et al. 2023, table 2)."""
        T = self.num_train_timesteps
        if self.timestep_spacing == "linspace":
            # includes both ends: T-1 ... 0
            return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
        if self.timestep_spacing == "leading":
            # 0, T//n, 2T//n, ... shifted by steps_offset: never reaches T-1
            return (np.arange(n) * (T // n))[::-1].astype(np.int64) + self.steps_offset
        # trailing: starts at T-1 and walks down by T/n
        return (np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1)

    def scale_model_input(self, sample: np.ndarray, timestep: float | int) -> np.ndarray:
        """The UNet's input for this step (identity for DDIM/PNDM; sigma-scaled for Euler-type samplers)."""
        return sample

    # ---- stepping ----------------------------------------------------------------------------
    def step(self, model_output: np.ndarray, timestep: float | int, sample: np.ndarray,
             noise: np.ndarray | None = None, rng: np.random.Generator | None = None) -> SchedulerOutput:
        """Advance one step: x_t -> x_{t-1}.

        Args:
            model_output: the UNet's prediction at ``timestep`` (after guidance), [B, C, h, w].
            timestep: must equal ``timesteps[i]`` for the i-th call since ``set_timesteps``.
            sample: x_t, [B, C, h, w] float32.
            noise: N(0, I) of the sample's shape for stochastic samplers (else ignored); or give
            rng: a numpy Generator that draws it.
        """
        self._check_step(model_output, timestep, sample)
        out = self._step(model_output, sample, noise, rng)
        self._index += 1
        dt = model_output.dtype
        return SchedulerOutput(out.prev_sample.astype(dt, copy=False),
                               None if out.pred_original_sample is None else out.pred_original_sample.astype(dt, copy=False))

    def _step(self, model_output: np.ndarray, sample: np.ndarray, noise: np.ndarray | None,
              rng: np.random.Generator | None) -> SchedulerOutput:
        raise NotImplementedError

    @property
    def step_index(self) -> int:
        """How many steps were taken since ``set_timesteps``."""
        return self._index

    def _check_step(self, model_output: Any, timestep: Any, sample: Any) -> None:
        if self.num_inference_steps is None:
            raise InputError(f"{self.name}: call set_timesteps(n) before step()")
        if not isinstance(model_output, np.ndarray) or not isinstance(sample, np.ndarray):
            raise InputError(f"{self.name}: model_output and sample must be numpy arrays, got "
                             f"{type(model_output).__name__} and {type(sample).__name__}")
        if model_output.shape != sample.shape:
            raise InputError(f"{self.name}: model_output shape {model_output.shape} differs from sample shape {sample.shape}")
        if self._index >= len(self.timesteps):
            raise InputError(f"{self.name}: all {len(self.timesteps)} steps are done; call set_timesteps again")
        want = self.timesteps[self._index]
        if not np.isclose(float(timestep), float(want), rtol=0, atol=1e-4):
            raise InputError(f"{self.name}: step {self._index} expects timestep {want}, got {timestep!r} "
                             "(steps must follow scheduler.timesteps in order)")

    def _noise(self, shape: tuple[int, ...], noise: np.ndarray | None, rng: np.random.Generator | None) -> np.ndarray:
        if noise is not None:
            if not isinstance(noise, np.ndarray) or noise.shape != tuple(shape):
                raise InputError(f"{self.name}: noise must be an array of shape {tuple(shape)}, got "
                                 f"{getattr(noise, 'shape', type(noise).__name__)}")
            return noise.astype(np.float32, copy=False)
        if rng is None:
            raise InputError(f"{self.name} draws noise at every step: pass noise= or rng= (a numpy Generator) to step()")
        return rng.standard_normal(shape, dtype=np.float32)

    # ---- config ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Scheduler:
        """Build from a diffusers ``scheduler_config.json`` dict: keys this class takes are passed,
        keys it lacks are dropped (as diffusers does), and known-but-unsupported keys must hold
        diffusers' default (e.g. ``use_karras_sigmas: false``) or an InputError names them."""
        import inspect

        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for key, default in cls.fixed_defaults.items():
            if key in config and config[key] != default and not (default is None and config[key] in ([], None)):
                raise InputError(f"{cls.name}: scheduler config {key}={config[key]!r} is not supported by vkt's numpy "
                                 f"{cls.name} (supported: {default!r})")
        kwargs = {k: v for k, v in config.items() if k in params}
        return cls(**kwargs)

    def config(self) -> dict[str, Any]:
        """The diffusers-style config that rebuilds this scheduler (``_class_name`` included)."""
        return {"_class_name": self.diffusers_class, "num_train_timesteps": self.num_train_timesteps,
                "beta_start": self.beta_start, "beta_end": self.beta_end, "beta_schedule": self.beta_schedule,
                "prediction_type": self.prediction_type, "timestep_spacing": self.timestep_spacing,
                "steps_offset": self.steps_offset}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items() if k != '_class_name')})"


def alpha_bar_prev(scheduler: Scheduler, t: int, final: float) -> float:
    """abar at timestep ``t``, or ``final`` once the chain steps below 0 (DDIM/PNDM's last step)."""
    return float(scheduler.alphas_cumprod[t]) if t >= 0 else final
