"""Prometheus text exposition (format 0.0.4) for the server: counters, gauges and histograms, no dependency."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence

# Request latency, seconds: loopback CPU inference sits between 1 ms and a few seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    # The exposition format's label escapes: backslash, double quote, newline.
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Histogram:
    """Cumulative buckets + sum + count per label set."""

    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.series: dict[Labels, list] = {}  # labels -> [counts per bucket (+Inf last), sum, count]

    def observe(self, value: float, labels: Labels = ()) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [[0] * (len(self.buckets) + 1), 0.0, 0]
        s[0][bisect.bisect_left(self.buckets, value)] += 1
        s[1] += value
        s[2] += 1

    def lines(self, name: str) -> list[str]:
        out = []
        for labels, (counts, total, n) in sorted(self.series.items()):
            cum = 0
            for le, c in zip([*map(_num, self.buckets), "+Inf"], counts):
                cum += c
                le_label = 'le="' + le + '"'
                out.append(f"{name}_bucket{_labels(labels, le_label)} {cum}")
            out.append(f"{name}_sum{_labels(labels)} {_num(total)}")
            out.append(f"{name}_count{_labels(labels)} {n}")
        return out


class ModelStats:
    """Triton's per-model statistics (``GET /v2/models/<m>/stats``): counts and cumulative nanoseconds.

    success/fail: whole infer requests, counted when the request's handling ends, after its response is written (a
    client holding its answer may read these a moment before its own request is in them); queue: time from arrival in
    the batcher to its batch's start;
    compute_infer: backend calls (per request in ``inference_stats``, per call in ``batch_stats``).
    """

    def __init__(self) -> None:
        self.success = [0, 0]  # [count, ns]
        self.fail = [0, 0]
        self.queue = [0, 0]
        self.compute = [0, 0]
        self.inference_count = 0  # rows
        self.execution_count = 0  # backend calls
        self.last_inference_ms = 0
        self.batches: dict[int, list[int]] = {}  # rows -> [calls, ns]

    def add_request(self, ok: bool, seconds: float) -> None:
        stat = self.success if ok else self.fail
        stat[0] += 1
        stat[1] += int(seconds * 1e9)

    def add_batch(self, rows: int, seconds: float, queued: Sequence[float]) -> None:
        ns = int(seconds * 1e9)
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        self.queue[0] += len(queued)
        self.queue[1] += int(sum(queued) * 1e9)
        self.compute[0] += len(queued)
        self.compute[1] += ns * len(queued)  # each request in the call spent the call's time
        b = self.batches.setdefault(rows, [0, 0])
        b[0] += 1
        b[1] += ns

    def to_dict(self, name: str, version: str) -> dict:
        def d(v: list[int]) -> dict:
            return {"count": v[0], "ns": v[1]}

        zero = d([0, 0])
        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {"success": d(self.success), "fail": d(self.fail), "queue": d(self.queue),
                                "compute_input": zero, "compute_infer": d(self.compute), "compute_output": zero,
                                "cache_hit": zero, "cache_miss": zero},
            "batch_stats": [{"batch_size": k, "compute_input": {"count": v[0], "ns": 0}, "compute_infer": d(v),
                             "compute_output": {"count": v[0], "ns": 0}} for k, v in sorted(self.batches.items())],
        }


class Metrics:
    """The server's metrics; thread-safe. Gauges are read at scrape time from callables.

    Series:
        vkt_requests_total{route, model, code}: HTTP requests answered, by status code.
        vkt_request_duration_seconds{route, model}: time from the request line to the response.
        vkt_batch_size{model}: rows per backend call (dynamic batching at work when > 1).
        vkt_batch_duration_seconds{model}: backend call time per batch.
        vkt_queue_depth{model}: requests waiting for the batcher (gauge).
        vkt_inflight_requests: requests being handled (gauge).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[Labels, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_time = Histogram(LATENCY_BUCKETS)
        self.gauges: dict[str, tuple[str, Callable[[], dict[Labels, float]]]] = {}
        self.models: dict[str, ModelStats] = {}

    def request(self, route: str, model: str, code: int, seconds: float) -> None:
        key = (("route", route), ("model", model), ("code", str(code)))
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.observe(seconds, (("route", route), ("model", model)))
            if route == "infer" and model:
                self.models.setdefault(model, ModelStats()).add_request(code == 200, seconds)

    def batch(self, model: str, rows: int, seconds: float, queued: Sequence[float] = ()) -> None:
        """One backend call of ``rows`` rows that took ``seconds``; ``queued``: each request's wait before it."""
        with self._lock:
            self.batch_size.observe(rows, (("model", model),))
            self.batch_time.observe(seconds, (("model", model),))
            self.models.setdefault(model, ModelStats()).add_batch(rows, seconds, queued)

    def model_stats(self, name: str, version: str) -> dict:
        with self._lock:
            return self.models.get(name, ModelStats()).to_dict(name, version)

    def gauge(self, name: str, help_text: str, read: Callable[[], dict[Labels, float]]) -> None:
        """Register a gauge whose values ``read()`` returns at scrape time."""
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        """The Prometheus text page."""
        with self._lock:
            out = ["# HELP vkt_requests_total HTTP requests answered, by route, model and status code.",
                   "# TYPE vkt_requests_total counter"]
            out += [f"vkt_requests_total{_labels(k)} {v}" for k, v in sorted(self.requests.items())]
            for name, hist, text in (
                ("vkt_request_duration_seconds", self.latency, "Time from request line to response sent."),
                ("vkt_batch_size", self.batch_size, "Rows per backend call (dynamic batching when > 1)."),
                ("vkt_batch_duration_seconds", self.batch_time, "Backend call time per batch."),
            ):
                out += [f"# HELP {name} {text}", f"# TYPE {name} histogram", *hist.lines(name)]
        for name, (text, read) in sorted(self.gauges.items()):
            out += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
            out += [f"{name}{_labels(k)} {_num(v)}" for k, v in sorted(read().items())]
        return "\n".join(out) + "\n"
