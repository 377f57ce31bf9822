"""A backend per pipeline component: parse the choice, and under "auto" take the faster CPU backend by a short timing.

    backends = parse_backends("ort,unet=ov", ("text_encoder", "unet", "vae_decoder"))
    # {"text_encoder": "ort", "unet": "ov", "vae_decoder": "ort"}
    runner = open_runner(bundle, "auto", component="unet", threads=2)   # active; runner.selection says why

A choice is a backend name (every component), "auto", a mapping ``{component: backend | "auto"}`` (components not
named run ``default``), or the same as text, as the CLI takes it: ``ov``, ``auto``, ``unet=ov,vae_decoder=auto``,
``ort,unet=ov`` (a bare name sets the default for the components not named).

"auto" opens each available CPU backend (onnxruntime, and OpenVINO where it is installed) on the component, runs
it on a random feed at the profile's opt shapes (one warm-up call each, then AUTO_CALLS timed calls each in
alternation, so a busy machine slows both alike) and keeps the one with the lower best call; the other is closed.
A backend that cannot open the component (OpenVINO not installed, no INT8 graph placed for it) is left out and its
reason recorded. The record is the runner's ``selection``: ``{"chosen", "ms": {backend: best ms}, "skipped": {...}}``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vkt.errors import BackendError, InputError, VktError
from vkt.log import get_logger

log = get_logger(__name__)

AUTO = "auto"
AUTO_CANDIDATES = ("ort", "ov")  # CPU backends "auto" compares; GPU backends are named explicitly
AUTO_CALLS = 2  # timed calls per backend (after one warm-up call); an SD 1.5 UNet call is seconds on CPU


def parse_backends(choice: Any, components: Sequence[str], default: str = "ort") -> dict[str, str]:
    """``{component: backend or "auto"}`` for every one of ``components`` (the module doc lists the forms).

    Raises BackendError for an unknown backend name, InputError for an unknown or repeated component or a
    malformed choice; each message names the value and what was expected.
    """
    from vkt.runtime import BACKENDS

    names = sorted(BACKENDS) + [AUTO]

    def backend(value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in names:
            raise BackendError(f"unknown backend {value!r}{where}; expected one of {', '.join(names)}")
        return value

    if isinstance(choice, str) and ("=" in choice or "," in choice):
        pairs: dict[str, str] = {}
        for part in (p.strip() for p in choice.split(",")):
            if not part:
                raise InputError(f"backend choice {choice!r} has an empty item; expected e.g. 'ov', 'auto' or "
                                 f"'{components[-1]}=ov,{components[0]}=ort'")
            if "=" not in part:
                if "*" in pairs:
                    raise InputError(f"backend choice {choice!r} names two defaults; give one bare backend at most")
                pairs["*"] = backend(part, f" in {choice!r}")
                continue
            comp, _, value = (s.strip() for s in part.partition("="))
            if comp in pairs:
                raise InputError(f"backend choice {choice!r} names component {comp!r} twice")
            pairs[comp] = value
        default = pairs.pop("*", default)
        choice = pairs
    if isinstance(choice, str):
        return {c: backend(choice, "") for c in components}
    if not isinstance(choice, Mapping):
        raise InputError(f"backend must be a backend name, 'auto' or a mapping of component to backend, "
                         f"got {type(choice).__name__}")
    unknown = [c for c in choice if c not in components]
    if unknown:
        raise InputError(f"unknown component {unknown[0]!r} in the backend choice; this pipeline's components are "
                         f"{', '.join(components)}")
    return {c: backend(choice.get(c, default), f" for component {c!r}") for c in components}


def backend_report(requested: Any, runner: Any) -> dict[str, Any]:
    """For result files: ``{"backend": what ran the model}`` plus, after "auto", ``"backend_choice"`` (the timings)."""
    if runner.selection is not None:
        return {"backend": runner.selection["chosen"], "backend_choice": runner.selection}
    return {"backend": parse_backends(requested, ("model",))["model"]}


def available(backend: str) -> bool:
    """Whether ``backend``'s package is importable here (without importing it)."""
    module = {"ort": "onnxruntime", "ov": "openvino"}.get(backend)
    return module is None or importlib.util.find_spec(module) is not None


def open_runner(source: Any, backend: str, precision: str = "fp32", component: str = "model",
                threads: int | None = None, session_config: dict[str, str] | None = None) -> Any:
    """A runner of ``component`` on ``backend``; for "auto", the faster of :data:`AUTO_CANDIDATES`, already active,
    with ``selection`` recording the timings. Other backends: ``vkt.runtime.make_runner`` (not activated)."""
    from vkt.runtime import make_runner

    if backend != AUTO:
        return make_runner(source, backend=backend, precision=precision, component=component, threads=threads,
                           session_config=session_config)
    runners: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for b in AUTO_CANDIDATES:
        if not available(b):
            skipped[b] = "not installed"
            continue
        try:
            runners[b] = make_runner(source, backend=b, precision=precision, component=component, threads=threads,
                                     session_config=session_config).activate()
        except VktError as e:
            skipped[b] = str(e)
    if not runners:
        raise BackendError(f"backend 'auto' found no CPU backend able to run {component!r} in {precision}: "
                           + "; ".join(f"{b}: {why}" for b, why in skipped.items()))
    ms = best_call_ms(runners, component)
    chosen = min(ms, key=ms.__getitem__)
    for b, r in runners.items():
        if b != chosen:
            r.deactivate()
    runner = runners[chosen]
    runner.selection = {"chosen": chosen, "ms": {b: round(v, 3) for b, v in ms.items()}, "skipped": skipped,
                        "calls": AUTO_CALLS}
    log.info("backend for %s: %s (best of %d calls: %s%s)", component, chosen, AUTO_CALLS,
             ", ".join(f"{b} {v:.1f} ms" for b, v in ms.items()),
             "".join(f"; {b} left out: {why}" for b, why in skipped.items()))
    return runner


def best_call_ms(runners: Mapping[str, Any], component: str, calls: int = AUTO_CALLS) -> dict[str, float]:
    """Best wall ms of ``calls`` calls of each active runner on one random feed at its spec's opt shapes, after one
    warm-up call each; the runners take turns call by call."""
    spec = next(iter(runners.values())).spec
    try:
        feed = spec.opt_feed(rng=np.random.default_rng(0))
    except VktError as e:
        raise BackendError(f"backend 'auto' needs a feed at the opt shapes of {component!r}'s profile: {e}") from None
    if not feed:
        raise BackendError(f"backend 'auto' cannot time {component!r}: its inputs have no shape profile")
    for r in runners.values():
        r.infer(feed)
    best = {b: float("inf") for b in runners}
    for _ in range(calls):
        for b, r in runners.items():
            t0 = time.perf_counter()
            r.infer(feed)
            best[b] = min(best[b], (time.perf_counter() - t0) * 1e3)
    return best


__all__ = ["AUTO", "AUTO_CANDIDATES", "available", "backend_report", "best_call_ms", "open_runner", "parse_backends"]
