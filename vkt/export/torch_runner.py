"""TorchRunner: a torch.nn.Module behind the Runner interface (eager baseline for `vkt bench`)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from vkt.errors import BackendError, InputError
from vkt.runtime.base import Runner
from vkt.specs import ExportSpec


class TorchRunner(Runner):
    """Eager PyTorch on CPU. Inputs are passed positionally in spec order; outputs named by the spec.

    Args:
        module: an ``nn.Module`` or a factory path ``"package.module:callable"`` returning one.
        spec: the ExportSpec of the exported graph (names and order of I/O).
        channels_last: convert the module and 4-D inputs to channels_last memory format.
        threads: torch.set_num_threads (None: leave torch's default).
    """

    backend = "torch"

    def __init__(self, module: Any, spec: ExportSpec, channels_last: bool = False, threads: int | None = None,
                 name: str | None = None):
        super().__init__(spec, name or ("torch-eager" + ("-cl" if channels_last else "")))
        self.module_src = module
        self.channels_last = channels_last
        self.threads = threads
        self.module: Any = None

    def _activate(self) -> None:
        try:
            import torch
        except ImportError:
            raise BackendError("the torch backend needs PyTorch: pip install 'vkt[export]'") from None
        mod = self.module_src
        if isinstance(mod, str):
            mod = load_factory(mod)()
        if not isinstance(mod, torch.nn.Module):
            raise InputError(f"expected a torch.nn.Module, got {type(mod).__name__}")
        mod = mod.eval()
        if self.channels_last:
            mod = mod.to(memory_format=torch.channels_last)
        if self.threads:
            torch.set_num_threads(self.threads)
        self.module = mod
        self._torch = torch

    def _deactivate(self) -> None:
        self.module = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = []
        for name in self.spec.input_names:
            t = torch.from_numpy(np.ascontiguousarray(feed[name]))
            if self.channels_last and t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            args.append(t)
        with torch.inference_mode():
            out = self.module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        elif isinstance(out, Mapping):
            out = tuple(out.values())
        elif hasattr(out, "to_tuple"):
            out = out.to_tuple()
        return {n: o.detach().cpu().numpy() for n, o in zip(self.spec.output_names, out)}


def load_factory(path: str) -> Any:
    """Import ``"package.module:callable"``."""
    mod_name, _, attr = path.partition(":")
    if not mod_name or not attr:
        raise InputError(f"expected 'package.module:callable', got {path!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"cannot import {mod_name!r} from {path!r}: {e}") from None
    if not hasattr(mod, attr):
        raise InputError(f"module {mod_name!r} has no attribute {attr!r}")
    return getattr(mod, attr)
