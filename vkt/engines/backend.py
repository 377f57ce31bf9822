"""Which TensorRT Python module builds the plan (``tensorrt`` 10/11 or ``tensorrt_rtx``), imported lazily, and its logger."""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from vkt.errors import BackendError
from vkt.log import get_logger

log = get_logger(__name__)

# import name -> pip package that provides it
MODULES = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx"}
CHOICES = ("auto", *MODULES)


@dataclass(frozen=True)
class TrtModule:
    """A loaded TensorRT module: ``mod`` is the Python module, ``name`` its import name."""

    mod: Any
    name: str

    @property
    def package(self) -> str:
        return MODULES[self.name]

    @property
    def version(self) -> str:
        return str(getattr(self.mod, "__version__", "unknown"))

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0


_loaded: dict[str, TrtModule] = {}
_failures: dict[str, str] = {}


def _try_import(name: str) -> TrtModule | None:
    if name in _loaded:
        return _loaded[name]
    if name in _failures:
        return None
    try:
        mod = importlib.import_module(name)
        # PyPI's placeholder 'tensorrt' packages import but lack the API; insist on the builder class.
        if not hasattr(mod, "Builder"):
            raise ImportError(f"module {name!r} has no Builder (a placeholder package?)")
    except Exception as e:  # ImportError, or OSError when the shared libraries are missing
        _failures[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return None
    _loaded[name] = TrtModule(mod, name)
    return _loaded[name]


def load_module(module: str = "auto", prefer_gpu: bool = True) -> TrtModule:
    """Import the TensorRT module to build with.

    Args:
        module: "tensorrt" (TensorRT 10/11, builds on and for the GPU it runs on), "tensorrt_rtx"
            (TensorRT for RTX, builds ahead of time on any machine) or "auto" (default).
        prefer_gpu: with "auto", take ``tensorrt`` when it imports *and* a GPU is present, otherwise
            ``tensorrt_rtx`` when it imports, otherwise ``tensorrt`` (whose builder will then say why it
            cannot build here).

    Raises:
        BackendError: the name is unknown, or the module (both, for "auto") cannot be imported; the
            message names the pip package to install.
    """
    if module not in CHOICES:
        raise BackendError(f"unknown TensorRT module {module!r}; expected one of {list(CHOICES)}")
    if module != "auto":
        found = _try_import(module)
        if found is None:
            raise BackendError(f"cannot import {module!r} ({_failures[module]}); install it with 'pip install {MODULES[module]}'"
                               + (" on a machine with an NVIDIA GPU" if module == "tensorrt" else ""))
        return found
    full, rtx = _try_import("tensorrt"), _try_import("tensorrt_rtx")
    if full is not None and (rtx is None or not prefer_gpu or _has_gpu()):
        return full
    if rtx is not None:
        return rtx
    raise BackendError("no TensorRT Python module is installed: 'pip install tensorrt-rtx' builds plans on any machine "
                       "(for RTX GPUs); 'pip install tensorrt' builds for the data-centre GPU it runs on "
                       f"(import errors: tensorrt: {_failures.get('tensorrt')}; tensorrt_rtx: {_failures.get('tensorrt_rtx')})")


def _has_gpu() -> bool:
    from vkt.runtime.gpu import probe

    return probe()[0] > 0


# TensorRT warnings that say nothing a user can act on, logged at debug (--verbose) instead:
# "Empty initializer X was provided with non-empty data. Overriding data to nullptr": the ONNX parser reading a
# zero-element initializer (Resize's unused roi/scales inputs, as exporters write them); nothing is lost.
BENIGN_WARNINGS = ("Empty initializer",)


class LogCapture:
    """Routes TensorRT's log to vkt's logger and keeps its errors for the exception message.

    TensorRT wants one logger object per process (it warns when builders and runtimes get different
    ones), so there is one instance per module; ``capture()`` collects errors for one build.
    """

    _instances: dict[str, LogCapture] = {}
    _lock = threading.Lock()

    def __init__(self, trt: TrtModule):
        self.trt = trt
        self.errors: list[str] = []
        self.warnings: list[str] = []
        sev = trt.mod.ILogger.Severity
        self._levels = {sev.INTERNAL_ERROR: logging.ERROR, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING,
                        sev.INFO: logging.DEBUG, sev.VERBOSE: logging.DEBUG}
        owner = self

        class _Logger(trt.mod.ILogger):  # defined here: the base class exists only once the module is imported
            def __init__(self) -> None:
                trt.mod.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                owner._log(severity, msg)

        self.logger = _Logger()

    @classmethod
    def get(cls, trt: TrtModule) -> LogCapture:
        with cls._lock:
            if trt.name not in cls._instances:
                cls._instances[trt.name] = cls(trt)
            return cls._instances[trt.name]

    def _log(self, severity: Any, msg: str) -> None:
        level = self._levels.get(severity, logging.DEBUG)
        if level == logging.WARNING and any(n in msg for n in BENIGN_WARNINGS):
            level = logging.DEBUG
        if level >= logging.ERROR:
            self.errors.append(msg.strip())
            log.debug("%s: %s", self.trt.name, msg)  # raised later inside a BuildError/ModelError message
        elif level == logging.WARNING:
            self.warnings.append(msg.strip())
            log.warning("%s: %s", self.trt.name, msg)
        else:
            log.debug("%s: %s", self.trt.name, msg)

    def reset(self) -> None:
        self.errors.clear()
        self.warnings.clear()

    def error_summary(self, limit: int = 3) -> str:
        """The last few meaningful errors, one line each (CUDA-driver noise of CPU-only RTX builds dropped)."""
        errs = [e for e in self.errors if "catchCudaError" not in e] or self.errors
        lines = [" ".join(e.split()) for e in errs[-limit:]]
        return "; ".join(line[:400] for line in lines)


def progress_monitor(trt: TrtModule) -> Any | None:
    """An ``IProgressMonitor`` that logs the builder's top-level phases with timings (nested ones at debug).

    Returns None when the module has no progress monitor API. Keep a reference to the returned object
    for the whole build: the builder config does not own it.
    """
    import time

    base = getattr(trt.mod, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        # Depth 1 (e.g. "Timing tactics" under "Building engine") is the useful grain for long builds;
        # the top phase duplicates vkt's own "build plan" line and deeper ones repeat per layer.
        def __init__(self) -> None:
            base.__init__(self)
            self.started: dict[str, float] = {}
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.started[phase_name] = time.perf_counter()
            self.depth[phase_name] = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
            level = logging.INFO if self.depth[phase_name] == 1 else logging.DEBUG
            log.log(level, "%s: %s (%d steps) ...", trt.name, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            dt = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
            level = logging.INFO if self.depth.pop(phase_name, 0) == 1 else logging.DEBUG
            log.log(level, "%s: %s done in %.2f s", trt.name, phase_name, dt)

    return _Monitor()
