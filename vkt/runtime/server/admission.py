"""Admission control: refuse at once (503 + Retry-After) what cannot finish in time, and bound memory for image decodes.

``Admission`` (one per model) counts the requests admitted and not yet answered, each with a cost
(the elements of its model input: a 2048x2048 photo costs 8x a 736x736 one), and learns the
model's pace while it is busy: seconds between completions over the cost they completed
(exponential moving averages of both). A new request is expected to finish after
``(cost in flight + its cost) * pace``; when that exceeds the request's deadline (with headroom
for the estimate's noise) it gets 503 now instead of a 504 after waiting out its timeout — a
client told at once can go to another replica. An idle model admits anything (it cannot do
better), so the estimate is always relearnt. Requests are admitted after their body has arrived,
so slow uploads do not hold a place.

``MemoryBudget`` bounds the bytes that concurrent image decodes (estimated from the image header
before decoding), or request bodies (reserved a read step of at most 1 MiB ahead of what has
arrived, so a slow upload holds what it sent, not what it declared), may hold; a holder that would
overrun it waits briefly, then gets 503.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from vkt.runtime.server.errors import UnavailableError

HEADROOM = 0.5  # admit while the expected time is within half the deadline: the pace swings with the mix of image sizes
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
        self.cost_in_flight = 0.0
        self._dt: float | None = None  # moving average of seconds between completions while busy
        self._cost = 0.0  # moving average of the cost of a completed request
        self._mark = 0.0  # last completion, or the moment the model became busy
        self._lock = threading.Lock()

    @property
    def pace(self) -> float | None:
        """Seconds per unit of cost; None until a request has completed."""
        return None if self._dt is None else self._dt / max(self._cost, 1e-12)

    def expected_s(self, cost: float = 1.0) -> float | None:
        """Seconds a request of ``cost`` admitted now would take, by the current pace; None before the first completion."""
        pace = self.pace
        return None if pace is None else (self.cost_in_flight + cost) * pace

    def check(self, timeout_s: float, cost: float | None = None) -> None:
        """UnavailableError (503) if a request of ``cost`` (None: a typical one) cannot be admitted now.

        Called before the body is read, so that refusing costs no upload; ``admit`` decides with the real cost.
        """
        with self._lock:
            self._refuse_if_full(timeout_s, self._cost if cost is None else cost)

    def _refuse_if_full(self, timeout_s: float, cost: float) -> None:
        expected = self.expected_s(cost)
        if self.in_flight >= self.capacity:
            raise UnavailableError(f"model {self.name!r} is overloaded: {self.in_flight} requests in flight "
                                   f"(--queue-size {self.capacity}); retry later",
                                   retry_after_s=max(1.0, (expected or 1.0) - timeout_s))
        if self.in_flight and expected is not None and expected > HEADROOM * timeout_s:
            raise UnavailableError(f"model {self.name!r} is overloaded: a request now would take about "
                                   f"{expected:.3g} s ({self.in_flight} in flight), over its {timeout_s:.3g} s "
                                   "deadline; retry later", retry_after_s=max(1.0, math.ceil(expected - HEADROOM * timeout_s)))

    @contextmanager
    def admit(self, timeout_s: float, cost: float = 1.0) -> Iterator[None]:
        """Hold a place for one request of ``cost`` that must finish within ``timeout_s``; UnavailableError (503) if it cannot."""
        with self._lock:
            self._refuse_if_full(timeout_s, cost)
            if self.in_flight == 0:
                self._mark = time.monotonic()
            self.in_flight += 1
            self.cost_in_flight += cost
        try:
            yield
        finally:
            with self._lock:
                now = time.monotonic()
                dt = now - self._mark
                if self._dt is None:
                    self._dt, self._cost = dt, cost
                else:
                    self._dt = (1 - ALPHA) * self._dt + ALPHA * dt
                    self._cost = (1 - ALPHA) * self._cost + ALPHA * cost
                self._mark = now
                self.in_flight -= 1
                self.cost_in_flight = max(0.0, self.cost_in_flight - cost)


class MemoryBudget:
    """Bytes that concurrent holders (image decodes, request bodies) may hold; one holder alone is always let through.

    Args:
        limit_bytes: the budget.
        what: what holds it, for messages ("image decodes").
        option: the CLI option that sets it ("--decode-budget-mb").
        wait_s: how long a holder waits for room before 503.
    """

    def __init__(self, limit_bytes: int, what: str = "image decodes", option: str = "--decode-budget-mb", wait_s: float = 2.0):
        self.limit = limit_bytes
        self.what, self.option = what, option
        self.wait_s = wait_s
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        """Take ``nbytes`` (waiting up to ``wait_s`` for room); UnavailableError (503) if there is none."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.used == 0 or self.used + nbytes <= self.limit, timeout=self.wait_s):
                raise UnavailableError(f"{self.what} hold {self.used / 2**20:.0f} MiB (budget {self.limit / 2**20:.0f} MiB, "
                                       f"vkt serve {self.option}); retry later")
            self.used += nbytes

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)
