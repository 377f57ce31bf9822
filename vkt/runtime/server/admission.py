"""Admission control: refuse at once (503 + Retry-After) what cannot finish in time, and bound memory for image decodes.

``Admission`` (one per model) counts the requests admitted and not yet answered, and learns the
model's pace: the time between completions while it is busy (an exponential moving average). A
new request is expected to finish after ``(in_flight + 1) * pace``; when that exceeds the
request's deadline (with headroom for the estimate's noise) it gets 503 now instead of a 504 after
waiting out its timeout — a client that is told at once can go to another replica. Requests are
admitted after their body has arrived, so slow uploads do not hold a place.

``DecodeBudget`` bounds the bytes that concurrent image decodes may hold (estimated from the
image header before decoding); a decode that would overrun it waits briefly, then gets 503.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from vkt.runtime.server.errors import UnavailableError

HEADROOM = 0.8  # admit while the expected time is within this share of the deadline
ALPHA = 0.2  # weight of the newest completion interval in the moving average


class Admission:
    """Admission by expected wait for one model.

    Args:
        name: model name, for messages.
        capacity: most requests admitted at once (the server's --queue-size); more get 503.
    """

    def __init__(self, name: str, capacity: int):
        self.name = name
        self.capacity = capacity
        self.in_flight = 0
        self.pace: float | None = None  # seconds between completions while busy; None until one is seen
        self._mark = 0.0  # last completion, or the moment the model became busy
        self._lock = threading.Lock()

    def expected_s(self) -> float | None:
        """Seconds a request admitted now would take, by the current pace; None before the first completion."""
        return None if self.pace is None else (self.in_flight + 1) * self.pace

    @contextmanager
    def admit(self, timeout_s: float) -> Iterator[None]:
        """Hold a place for one request that must finish within ``timeout_s``; UnavailableError (503) if it cannot."""
        with self._lock:
            expected = self.expected_s()
            if self.in_flight >= self.capacity:
                raise UnavailableError(f"model {self.name!r} is overloaded: {self.in_flight} requests in flight "
                                       f"(--queue-size {self.capacity}); retry later",
                                       retry_after_s=max(1.0, (expected or 1.0) - timeout_s))
            if expected is not None and expected > HEADROOM * timeout_s:
                raise UnavailableError(f"model {self.name!r} is overloaded: a request now would take about "
                                       f"{expected:.3g} s ({self.in_flight} in flight), over its {timeout_s:.3g} s "
                                       "deadline; retry later", retry_after_s=max(1.0, math.ceil(expected - timeout_s)))
            if self.in_flight == 0:
                self._mark = time.monotonic()
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                now = time.monotonic()
                dt = now - self._mark
                self.pace = dt if self.pace is None else (1 - ALPHA) * self.pace + ALPHA * dt
                self._mark = now
                self.in_flight -= 1


class DecodeBudget:
    """Bytes that concurrent decodes may hold; one decode alone is always let through (it passed the pixel limit).

    Args:
        limit_bytes: the budget.
        wait_s: how long a decode waits for room before 503.
    """

    def __init__(self, limit_bytes: int, wait_s: float = 2.0):
        self.limit = limit_bytes
        self.wait_s = wait_s
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        with self._cond:
            if not self._cond.wait_for(lambda: self.used == 0 or self.used + nbytes <= self.limit, timeout=self.wait_s):
                raise UnavailableError(f"the server is decoding {self.used / 2**20:.0f} MiB of images "
                                       f"(budget {self.limit / 2**20:.0f} MiB, vkt serve --decode-budget-mb); retry later")
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()
