"""Numpy schedulers vs diffusers' torch schedulers, step by step on the same random model outputs.

Both chains run on their own (each feeds its own previous sample back in), so state handling
(multistep histories, PNDM's repeated step, step counters) is checked along with the maths.
Tolerance: every prev_sample within 1e-5 of the torch one *relative to the sample's largest
magnitude* (elementwise relative error is meaningless where the sample crosses zero). Stochastic
samplers get identical noise: ours through ``noise=``, diffusers' through ``variance_noise=`` or a
twin ``torch.Generator`` seeded alike.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from vkt.errors import InputError
from vkt.runtime.schedulers import SCHEDULERS, scheduler_from_config

SD15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
SHAPE = (2, 4, 8, 8)
RTOL = 1e-5

CASES = [
    # (diffusers class, config overrides, inference steps, extra step kwargs)
    ("DDIMScheduler", {**SD15, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}, 20, {}),
    ("DDIMScheduler", {**SD15, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                       "clip_sample": False}, 10, {}),
    ("DDIMScheduler", {"timestep_spacing": "linspace"}, 7, {}),  # diffusers defaults: linear betas, clip_sample
    ("DDIMScheduler", {**SD15, "clip_sample": False, "steps_offset": 1}, 12, {"eta": 0.7}),
    ("EulerDiscreteScheduler", {**SD15}, 20, {}),
    ("EulerDiscreteScheduler", {**SD15, "timestep_spacing": "leading", "steps_offset": 1}, 15, {}),
    ("EulerDiscreteScheduler", {**SD15, "timestep_spacing": "trailing", "prediction_type": "v_prediction",
                                "final_sigmas_type": "sigma_min"}, 9, {}),
    ("EulerAncestralDiscreteScheduler", {**SD15}, 20, {}),
    ("EulerAncestralDiscreteScheduler", {**SD15, "timestep_spacing": "leading", "steps_offset": 1,
                                         "prediction_type": "v_prediction"}, 11, {}),
    ("DPMSolverMultistepScheduler", {**SD15}, 20, {}),
    ("DPMSolverMultistepScheduler", {**SD15}, 8, {}),  # < 15 steps: lower-order final steps
    ("DPMSolverMultistepScheduler", {**SD15, "solver_type": "heun", "timestep_spacing": "leading",
                                     "steps_offset": 1}, 25, {}),
    ("DPMSolverMultistepScheduler", {**SD15, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
                                     "final_sigmas_type": "sigma_min", "lower_order_final": False}, 16, {}),
    ("DPMSolverMultistepScheduler", {"solver_order": 1, "euler_at_final": True}, 10, {}),
    ("PNDMScheduler", {**SD15, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}, 20, {}),
    ("PNDMScheduler", {**SD15, "steps_offset": 1}, 20, {}),  # PRK warm-up
    ("PNDMScheduler", {**SD15, "skip_prk_steps": True, "timestep_spacing": "trailing",
                       "prediction_type": "v_prediction"}, 10, {}),
    ("PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": "linspace"}, 6, {}),
]


def _ids(case):
    cls, cfg, n, kw = case
    extra = ",".join(f"{k}={v}" for k, v in cfg.items() if k not in SD15)
    return f"{cls.removesuffix('Scheduler')}-{n}-{extra}{'-' + str(kw) if kw else ''}"


@pytest.mark.torch
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_matches_diffusers_step_by_step(case):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    cls_name, cfg, n, step_kw = case
    theirs = getattr(diffusers, cls_name).from_config(cfg)
    eta = step_kw.get("eta", 0.0)
    ours = scheduler_from_config({"_class_name": cls_name, **cfg, **({"eta": eta} if eta else {})})
    theirs.set_timesteps(n)
    ours.set_timesteps(n)
    want_t = theirs.timesteps.numpy()
    assert ours.timesteps.dtype == want_t.dtype, (ours.timesteps.dtype, want_t.dtype)
    np.testing.assert_array_equal(ours.timesteps, want_t)
    assert math.isclose(ours.init_noise_sigma, float(theirs.init_noise_sigma), rel_tol=1e-6)

    rng = np.random.default_rng(0)
    x0 = (rng.standard_normal(SHAPE) * ours.init_noise_sigma).astype(np.float32)
    x_ours, x_theirs = x0.copy(), torch.from_numpy(x0.copy())
    gen, twin = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    worst = 0.0
    for i, t in enumerate(ours.timesteps):
        t_theirs = theirs.timesteps[i]
        scaled_ours = ours.scale_model_input(x_ours, t)
        scaled_theirs = theirs.scale_model_input(x_theirs, t_theirs).numpy()
        np.testing.assert_allclose(scaled_ours, scaled_theirs, rtol=0, atol=RTOL * np.abs(scaled_theirs).max())
        eps = rng.standard_normal(SHAPE).astype(np.float32)
        kw, noise = {}, None
        if ours.needs_noise:
            noise = torch.randn(SHAPE, generator=twin, dtype=torch.float32)
            kw = {"eta": eta, "variance_noise": noise} if cls_name == "DDIMScheduler" else {"generator": gen}
        out_theirs = theirs.step(torch.from_numpy(eps), t_theirs, x_theirs, **kw).prev_sample
        out_ours = ours.step(eps, t, x_ours, noise=None if noise is None else noise.numpy()).prev_sample
        assert out_ours.dtype == np.float32 and out_ours.shape == SHAPE
        ref = out_theirs.numpy()
        err = float(np.abs(out_ours - ref).max() / np.abs(ref).max())
        worst = max(worst, err)
        assert err <= RTOL, f"step {i} (t={t}): relative error {err:.2e} > {RTOL}"
        x_ours, x_theirs = out_ours, out_theirs
    print(f"{cls_name} {n} steps: worst relative error {worst:.1e}")  # shown with pytest -s
    assert worst < RTOL and ours.step_index == len(ours.timesteps)


def test_factory_names_and_overrides():
    base = {"_class_name": "PNDMScheduler", **SD15, "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False,
            "clip_sample": False, "_diffusers_version": "0.6.0", "trained_betas": None}
    assert type(scheduler_from_config(base)).name == "pndm"
    for name, cls in SCHEDULERS.items():
        s = scheduler_from_config(base, name=name)
        assert isinstance(s, cls) and s.beta_schedule == "scaled_linear" and s.beta_end == 0.012
        # config() rebuilds an equal scheduler through the factory
        again = scheduler_from_config(s.config())
        assert again.config() == s.config()
    assert type(scheduler_from_config(base, name="euler-a")).name == "euler_a"
    assert type(scheduler_from_config(base, name="DPMSolverMultistepScheduler")).name == "dpm++2m"


@pytest.mark.parametrize("config, name, match", [
    ({"_class_name": "LMSDiscreteScheduler"}, None, "LMSDiscreteScheduler.*not supported"),
    ({"beta_schedule": "linear"}, None, "no '_class_name'"),
    ({"_class_name": "DDIMScheduler"}, "heun", "unknown scheduler 'heun'"),
    ({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True}, None, "use_karras_sigmas=True"),
    ({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}, None, "algorithm_type"),
    ({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}, None, "solver_order must be 1 or 2"),
    ({"_class_name": "DDIMScheduler", "beta_schedule": "squaredcos_cap_v2"}, None, "beta_schedule"),
    ({"_class_name": "DDIMScheduler", "timestep_spacing": "karras"}, None, "timestep_spacing"),
    ({"_class_name": "EulerDiscreteScheduler", "prediction_type": "sample"}, None, "prediction_type"),
    ({"_class_name": "DDIMScheduler", "rescale_betas_zero_snr": True}, None, "rescale_betas_zero_snr"),
])
def test_bad_configs_name_the_value(config, name, match):
    with pytest.raises(InputError, match=match):
        scheduler_from_config(config, name=name)


def test_bad_steps_and_misuse():
    s = scheduler_from_config({"_class_name": "EulerAncestralDiscreteScheduler"})
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(InputError, match="set_timesteps"):
        s.step(x, 999.0, x)
    for bad in (0, -3, 1001, 2.5, True):
        with pytest.raises(InputError, match=r"integer in \[1, 1000\]"):
            s.set_timesteps(bad)
    s.set_timesteps(4)
    with pytest.raises(InputError, match="expects timestep 999"):
        s.step(x, 666.0, x)
    with pytest.raises(InputError, match="noise= or rng="):
        s.step(x, s.timesteps[0], x)
    with pytest.raises(InputError, match="noise must be an array of shape"):
        s.step(x, s.timesteps[0], x, noise=np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(InputError, match="differs from sample shape"):
        s.step(x[:1], s.timesteps[0], x)
    rng = np.random.default_rng(0)
    for t in s.timesteps:
        x = s.step(np.zeros(SHAPE, np.float32), t, x, rng=rng).prev_sample
    with pytest.raises(InputError, match="all 4 steps are done"):
        s.step(x, 0.0, x)


def test_sd_runtime_imports_no_torch():
    """Schedulers, tokenizer and Txt2Img stay torch-free (the runtime's import boundary)."""
    import subprocess
    import sys

    code = ("import sys; import vkt.runtime.schedulers, vkt.runtime.tokenizer, vkt.runtime.txt2img; "
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"the SD runtime imported {out}"


def test_euler_scale_model_input_follows_the_step():
    s = scheduler_from_config({"_class_name": "EulerDiscreteScheduler", **SD15})
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(InputError, match="call set_timesteps"):
        s.scale_model_input(x, 999.0)
    s.set_timesteps(3)
    with pytest.raises(InputError, match="expects timestep 999"):
        s.scale_model_input(x, 499.5)
    np.testing.assert_allclose(s.scale_model_input(x, s.timesteps[0]), 1.0 / (s.sigmas[0] ** 2 + 1) ** 0.5, rtol=1e-6)
