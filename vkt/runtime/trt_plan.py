"""TensorRT plans outside the runner: the module import, one logger per module, plan files and their bundle
metadata, and the ExportSpec an engine declares. Imports nothing heavy at module import time."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import BackendError, ModelError
from vkt.log import get_logger
from vkt.specs import ExportSpec, Profile, TensorSpec

log = get_logger(__name__)
MODULES = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx"}


def check_plan_file(p: Path) -> None:
    if not p.exists():
        raise ModelError(f"plan file not found: {str(p)!r}")
    if not p.is_file():
        raise ModelError(f"plan path {str(p)!r} is not a file")
    if p.stat().st_size == 0:
        raise ModelError(f"plan file {str(p)!r} is empty")


def read_plan(p: Path) -> bytes:
    check_plan_file(p)
    return p.read_bytes()


def bundle_meta(plan: Path) -> dict[str, Any]:
    """The plan's metadata when it sits in a bundle (module that built it, flags); {} otherwise."""
    manifest = plan.parent / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return {}
    for e in files:
        if isinstance(e, dict) and e.get("path") == plan.name and e.get("role") == "plan":
            return e.get("meta") or {}
    return {}


def import_trt(module: str) -> Any:
    """Import ``module`` ("auto": tensorrt, then tensorrt_rtx); BackendError naming the pip package otherwise."""
    order = list(MODULES) if module == "auto" else [module]
    errors = {}
    for name in order:
        try:
            mod = importlib.import_module(name)
            if not hasattr(mod, "Runtime"):
                raise ImportError("no Runtime class (a placeholder package?)")
            return mod
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
    pkgs = " or ".join(f"'pip install {MODULES[n]}'" for n in order)
    raise BackendError(f"cannot import TensorRT ({'; '.join(f'{k}: {v}' for k, v in errors.items())}); install it with {pkgs}")


class TrtLog:
    """One TensorRT logger per module (TensorRT warns when runtimes get different ones); keeps errors."""

    _instances: dict[str, Any] = {}

    @classmethod
    def get(cls, trt: Any) -> Any:
        if trt.__name__ not in cls._instances:
            sev = trt.ILogger.Severity

            class _Logger(trt.ILogger):
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)
                    self.errors: list[str] = []

                def log(self, severity: Any, msg: str) -> None:
                    if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                        self.errors.append(" ".join(msg.split()))
                        log.debug("%s: %s", trt.__name__, msg)
                    elif severity == sev.WARNING:
                        log.warning("%s: %s", trt.__name__, msg)
                    elif log.isEnabledFor(logging.DEBUG):
                        log.debug("%s: %s", trt.__name__, msg)

                def summary(self) -> str:
                    return "; ".join(e[:300] for e in self.errors[-3:])

            cls._instances[trt.__name__] = _Logger()
        return cls._instances[trt.__name__]


def with_engine_profiles(spec: ExportSpec, engine: Any) -> ExportSpec:
    """``spec`` with its profiles replaced by the engine's (axis names kept); ``spec`` as is if they disagree."""
    try:
        profiles = []
        for p in range(engine.num_optimization_profiles):
            axes: dict[str, tuple[int, int, int]] = {}
            for t in spec.inputs:
                lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(t.name, p))
                for i, d in t.dynamic_axes.items():
                    if axes.setdefault(d, (lo[i], opt[i], hi[i])) != (lo[i], opt[i], hi[i]):
                        raise ValueError(f"axis {d!r} has different ranges across inputs")
            if axes:
                profiles.append(Profile(axes))
        return spec.with_profiles(*profiles) if profiles else spec
    except Exception as e:
        log.debug("keeping the spec's profiles (%s)", e)
        return spec


def spec_from_engine(engine: Any, inputs: list[tuple[str, np.dtype]], outputs: list[tuple[str, np.dtype]]) -> ExportSpec:
    """An ExportSpec read from the engine: dynamic dims named ``<tensor>_dim<i>``, one Profile per engine profile."""
    def tspec(name: str, dt: np.dtype) -> TensorSpec:
        safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
        safe = safe if safe and not safe[0].isdigit() else f"t_{safe}"
        dims = tuple(int(d) if d >= 0 else f"{safe}_dim{i}" for i, d in enumerate(engine.get_tensor_shape(name)))
        return TensorSpec(name, dt.name, dims)

    ins = tuple(tspec(n, dt) for n, dt in inputs)
    outs = tuple(tspec(n, dt) for n, dt in outputs)
    profiles = []
    try:
        for p in range(engine.num_optimization_profiles):
            axes = {}
            for t in ins:
                lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(t.name, p))
                for i, d in t.dynamic_axes.items():
                    axes[d] = (lo[i], opt[i], hi[i])
            if axes:
                profiles.append(Profile(axes))
    except Exception as e:  # e.g. a profile admitting size 0, which vkt's Profile refuses: validate without ranges
        log.debug("engine profiles not usable as a spec (%s); feeds are checked by TensorRT only", e)
        profiles = []
    try:
        return ExportSpec(ins, outs, tuple(profiles))
    except Exception:
        return ExportSpec(ins, outs, ())
