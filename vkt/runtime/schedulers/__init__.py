"""Numpy diffusion schedulers, built from diffusers' ``scheduler_config.json``; no torch.

>>> s = scheduler_from_config(json.load(open("scheduler/scheduler_config.json")))   # by _class_name
>>> s = scheduler_from_config(cfg, name="dpm++2m")     # same betas, another sampler
>>> s.set_timesteps(30); x = rng.standard_normal(shape) * s.init_noise_sigma
>>> for t in s.timesteps: x = s.step(unet(s.scale_model_input(x, t), t), t, x, rng=rng).prev_sample
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vkt.errors import InputError
from vkt.runtime.schedulers.base import Scheduler, SchedulerOutput
from vkt.runtime.schedulers.ddim import DDIM
from vkt.runtime.schedulers.dpm_solver import DPMSolverMultistep
from vkt.runtime.schedulers.euler import Euler
from vkt.runtime.schedulers.euler_ancestral import EulerAncestral
from vkt.runtime.schedulers.pndm import PNDM

SCHEDULERS: dict[str, type[Scheduler]] = {c.name: c for c in (DDIM, Euler, EulerAncestral, DPMSolverMultistep, PNDM)}
BY_DIFFUSERS_CLASS: dict[str, type[Scheduler]] = {c.diffusers_class: c for c in SCHEDULERS.values()}
# Short aliases users type on the command line.
ALIASES = {"euler-a": "euler_a", "euler_ancestral": "euler_a", "dpm++": "dpm++2m", "dpmpp2m": "dpm++2m",
           "dpm-solver++": "dpm++2m", "plms": "pndm"}

__all__ = ["DDIM", "DPMSolverMultistep", "Euler", "EulerAncestral", "PNDM", "SCHEDULERS", "Scheduler",
           "SchedulerOutput", "scheduler_from_config"]


def scheduler_from_config(config: Mapping[str, Any], name: str | None = None) -> Scheduler:
    """A numpy scheduler from a diffusers scheduler config dict.

    Args:
        config: the contents of ``scheduler_config.json`` (``_class_name`` picks the class unless
            ``name`` is given; keys the class lacks, and keys listed in ``_use_default_values``,
            are ignored, as diffusers' ``from_config`` does).
        name: override the sampler while keeping the config's noise schedule: one of
            ``SCHEDULERS`` ("ddim", "euler", "euler_a", "dpm++2m", "pndm"), an alias, or a
            diffusers class name.
    Raises:
        InputError: unknown/unsupported class, or a config value this implementation lacks.
    """
    if not isinstance(config, Mapping):
        raise InputError(f"scheduler config must be a dict (scheduler_config.json), got {type(config).__name__}")
    # diffusers lists the keys it filled with its own defaults in "_use_default_values": they were
    # never chosen, so another class must fall back to *its* defaults (Euler's spacing is "linspace",
    # DDIM's "leading"), exactly as diffusers' from_config does.
    defaulted = set(config.get("_use_default_values") or ())
    config = {k: v for k, v in config.items() if k not in defaulted}
    if name is not None:
        key = ALIASES.get(name, name)
        cls = SCHEDULERS.get(key) or BY_DIFFUSERS_CLASS.get(key)
        if cls is None:
            raise InputError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)} "
                             f"(or a diffusers class name: {sorted(BY_DIFFUSERS_CLASS)})")
    else:
        cls_name = config.get("_class_name")
        if cls_name is None:
            raise InputError(f"scheduler config has no '_class_name' (keys: {sorted(config)}); pass name= to pick a "
                             f"scheduler, one of {sorted(SCHEDULERS)}")
        cls = BY_DIFFUSERS_CLASS.get(cls_name)
        if cls is None:
            raise InputError(f"scheduler class {cls_name!r} is not supported by vkt's numpy runtime; supported: "
                             f"{sorted(BY_DIFFUSERS_CLASS)} (or pass name= one of {sorted(SCHEDULERS)})")
    return cls.from_config(config)
