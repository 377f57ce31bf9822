"""A runner wrapper shared by the server tests."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from vkt.runtime.base import Runner


class CountingRunner(Runner):
    """Wraps a runner: records the batch size of every call and can be slowed down."""

    backend = "counting"

    def __init__(self, inner: Runner, delay_s: float = 0.0):
        super().__init__(None, "counting")
        self.inner, self.delay_s, self.batches = inner, delay_s, []

    def _activate(self) -> None:
        self.inner.activate()
        self._spec = self.inner.spec

    def _deactivate(self) -> None:
        self.inner.deactivate()

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(next(iter(feed.values())).shape[0])
        time.sleep(self.delay_s)
        return self.inner.infer(feed, check=False)
