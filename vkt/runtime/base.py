"""The runner interface every backend implements: activate / infer / deactivate, as a context manager."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import numpy as np

from vkt.errors import BackendError
from vkt.specs import ExportSpec


class Runner(abc.ABC):
    """Runs one graph. Nothing heavy (sessions, GPU memory) is touched before :meth:`activate`.

    ``infer(feed)`` takes ``{input name: ndarray}`` and returns ``{output name: ndarray}``; with
    ``check=True`` (default) the feed is validated against the spec first (names, dtypes, ranks,
    static sizes, profile ranges) so a bad input raises a ShapeError instead of a backend crash.
    """

    backend: str = "?"
    # how the backend was picked when a pipeline asked for "auto" (vkt.runtime.choose.open_runner); None otherwise
    selection: dict[str, Any] | None = None

    def __init__(self, spec: ExportSpec | None = None, name: str | None = None):
        self._spec = spec
        self.name = name or self.backend
        self.is_active = False

    @property
    def spec(self) -> ExportSpec:
        if self._spec is None:
            raise BackendError(f"runner {self.name!r} has no spec before activate()")
        return self._spec

    def activate(self) -> Runner:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def __del__(self) -> None:  # best effort; explicit deactivate() is the contract
        try:
            if getattr(self, "is_active", False):
                self.deactivate()
        except Exception:
            pass

    def infer(self, feed: Mapping[str, np.ndarray], check: bool = True) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise BackendError(f"runner {self.name!r} is not active: call activate() or use it in a 'with' block")
        if check:
            self._spec.check_feed(feed)  # type: ignore[union-attr]  # set by activate()
        return self._infer(feed)

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, Any]:
        """What this runner runs on (for bench reports)."""
        d: dict[str, Any] = {"backend": self.backend, "name": self.name}
        if self.selection is not None:
            d["selection"] = self.selection
        return d
