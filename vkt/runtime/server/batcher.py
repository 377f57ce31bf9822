"""Dynamic batching for one model: concurrent requests of compatible shapes share one backend call.

One worker thread per model takes the oldest waiting request, then gathers later requests whose
non-batch dims and dtypes match, until the batch holds ``max_batch_size`` rows or
``max_queue_delay_us`` has passed since the oldest one arrived (Triton's rule) — and while the
batch's input elements stay within ``max_batch_size`` rows at the profile's opt shapes, so that
requests near the profile's max shapes (a 2048x2048 photo) run alone rather than eight at once:
the backend's activation memory grows with the batch's elements, and onnxruntime's arena keeps
what it grew to. The inputs are
concatenated along axis 0, run once, and each output is split back by rows. Incompatible requests
keep their place in the queue for a later batch.

Status semantics (the server maps them to HTTP):
- **503** (UnavailableError): refused *before* queueing — queue full or shutting down. Nothing ran,
  so a retry (here after ``Retry-After`` or on another replica) is always safe.
- **504** (DeadlineError): accepted, but the per-request deadline passed first — dropped from the
  queue unrun, or its batch finished too late and the result was discarded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import numpy as np

from vkt.errors import BackendError, ShapeError
from vkt.log import get_logger
from vkt.runtime.base import Runner
from vkt.runtime.server.errors import DeadlineError, UnavailableError

log = get_logger(__name__)


@dataclass(eq=False)
class Ticket:
    """One queued request: its feed, its row count and compatibility key, its deadline and result."""

    feed: Mapping[str, np.ndarray]
    rows: int
    key: tuple
    elements: int
    deadline: float  # time.monotonic() seconds
    enqueued: float
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """Queue + worker thread in front of an *active* runner.

    Args:
        runner: an activated Runner; only the worker thread calls ``infer`` (backends need not be thread-safe).
        name: model name, for messages and metrics.
        max_batch_size: most rows per backend call; capped by the profiles' largest batch size. 1 disables batching.
        max_queue_delay_us: how long the oldest request may wait for company, in microseconds.
        queue_size: most requests waiting; one more is refused with 503.
        on_batch: ``callback(rows, seconds, queued)`` after each backend call (metrics); ``queued``
            lists each request's wait in the queue, in seconds.
    """

    def __init__(self, runner: Runner, name: str, max_batch_size: int = 8, max_queue_delay_us: int = 2000,
                 queue_size: int = 64, on_batch: Callable[[int, float, list[float]], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
        self.runner = runner
        self.spec = runner.spec
        self.name = name
        self.axis = self.spec.batch_axis
        cap = max_batch_size if self.axis else 1
        if self.axis and self.spec.profiles:
            cap = min(cap, max(p.axes[self.axis][2] for p in self.spec.profiles if self.axis in p.axes))
        self.max_batch_size = max(1, cap)
        self.max_elements = self._opt_elements() * self.max_batch_size if self.spec.profiles else None
        self.delay = max_queue_delay_us / 1e6
        self.queue_size = queue_size
        self.on_batch = on_batch
        self._queue: deque[Ticket] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"vkt-batcher-{name}", daemon=True)
        self._thread.start()

    # ---- client side (HTTP handler threads) ---------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, feed: Mapping[str, np.ndarray], timeout_s: float) -> Ticket:
        """Queue a feed already validated against the spec; raises UnavailableError (503) when full or closing."""
        rows = int(next(iter(feed.values())).shape[0]) if self.axis else 1
        # Requests batch together when everything but the batch dim agrees.
        key = tuple((k, v.dtype.str, v.shape[1:] if self.axis else v.shape) for k, v in sorted(feed.items()))
        now = time.monotonic()
        ticket = Ticket(feed=feed, rows=rows, key=key, elements=sum(int(v.size) for v in feed.values()),
                        deadline=now + timeout_s, enqueued=now)
        with self._cond:
            if self._closed:
                raise UnavailableError(f"model {self.name!r} is shutting down; send the request to another replica")
            if len(self._queue) >= self.queue_size:
                raise UnavailableError(f"model {self.name!r} is overloaded: its queue holds {len(self._queue)} "
                                       f"requests (--queue-size {self.queue_size}); retry later")
            self._queue.append(ticket)
            self._cond.notify()
        return ticket

    def wait(self, ticket: Ticket) -> dict[str, np.ndarray]:
        """Block until the ticket's result is ready or its deadline passes (then DeadlineError, 504)."""
        try:
            return ticket.future.result(timeout=max(0.0, ticket.deadline - time.monotonic()))
        except (FutureTimeout, CancelledError):
            with self._cond:
                # Free the queue slot now rather than when the worker reaches it.
                if ticket.future.cancel():
                    try:
                        self._queue.remove(ticket)
                    except ValueError:
                        pass
            if ticket.future.done() and not ticket.future.cancelled():
                return ticket.future.result()  # finished in the meantime
            raise DeadlineError(f"model {self.name!r}: no result within the request timeout of "
                                f"{ticket.deadline - ticket.enqueued:.3g} s") from None

    def infer(self, feed: Mapping[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        """submit + wait."""
        return self.wait(self.submit(feed, timeout_s))

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; with ``drain`` finish the queued ones first, else fail them with 503."""
        with self._cond:
            self._closed = True
            if not drain:
                while self._queue:
                    t = self._queue.popleft()
                    if t.future.set_running_or_notify_cancel():
                        t.future.set_exception(UnavailableError(f"model {self.name!r} shut down before running the request"))
            self._cond.notify_all()
        self._thread.join(timeout)

    def _opt_elements(self) -> int:
        """Input elements of one row at the largest profile's opt shapes."""
        best = 0
        for p in self.spec.profiles:
            n = 0
            for t in self.spec.inputs:
                opt = p.shapes(t)[1]
                rows = opt[0] if self.axis and opt else 1
                n += int(np.prod(opt)) // max(1, rows)
            best = max(best, n)
        return max(1, best)

    # ---- worker thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as e:  # never let the worker die: a dead worker hangs every client
                log.exception("batcher %s: unexpected error", self.name)
                for t in batch:
                    if not t.future.done():
                        t.future.set_exception(BackendError(f"internal error while running model {self.name!r}: {e}"))

    def _next_batch(self) -> list[Ticket] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, rows, elements = [first], first.rows, first.elements
            if self.max_batch_size == 1:
                return batch
            room = self.max_elements if self.max_elements is not None else float("inf")
            flush_at = first.enqueued + self.delay
            while rows < self.max_batch_size and elements < room:
                for t in list(self._queue):
                    if t.key == first.key and rows + t.rows <= self.max_batch_size and elements + t.elements <= room:
                        self._queue.remove(t)
                        batch.append(t)
                        rows += t.rows
                        elements += t.elements
                left = flush_at - time.monotonic()
                if rows >= self.max_batch_size or elements + first.elements > room or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            return batch

    def _run(self, batch: list[Ticket]) -> None:
        now = time.monotonic()
        live = []
        for t in batch:
            if not t.future.set_running_or_notify_cancel():
                continue  # the client already gave up (wait() cancelled it)
            if now > t.deadline:
                t.future.set_exception(DeadlineError(f"model {self.name!r}: the request waited in the queue past its "
                                                     f"timeout of {t.deadline - t.enqueued:.3g} s"))
                continue
            live.append(t)
        if not live:
            return
        if len(live) == 1:
            self._call(live, live[0].feed)
            return
        feed = {k: np.concatenate([t.feed[k] for t in live], axis=0) for k in live[0].feed}
        try:
            self._call(live, feed)
        except ShapeError:
            # The concatenated batch fits no profile (several profiles with different batch ranges):
            # each request was validated alone, so run them alone.
            for t in live:
                self._call([t], t.feed)

    def _call(self, tickets: list[Ticket], feed: Mapping[str, np.ndarray]) -> None:
        rows = sum(t.rows for t in tickets)
        start = time.monotonic()
        t0 = time.perf_counter()
        try:
            out = self.runner.infer(feed)
        except ShapeError as e:
            if len(tickets) > 1:
                raise
            tickets[0].future.set_exception(e)
            return
        except Exception as e:  # a backend failure fails this batch only; the worker goes on
            for t in tickets:
                t.future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(rows, time.perf_counter() - t0, [start - t.enqueued for t in tickets])
        if len(tickets) == 1:
            tickets[0].future.set_result(out)
            return
        bad = {k: v.shape for k, v in out.items() if v.ndim == 0 or v.shape[0] != rows}
        if bad:
            err = BackendError(f"model {self.name!r} returned outputs {bad} for a batch of {rows} rows; "
                               "cannot split them back per request")
            for t in tickets:
                t.future.set_exception(err)
            return
        cuts = np.cumsum([t.rows for t in tickets])[:-1]
        parts = {k: np.split(v, cuts, axis=0) for k, v in out.items()}
        for i, t in enumerate(tickets):
            t.future.set_result({k: p[i] for k, p in parts.items()})

