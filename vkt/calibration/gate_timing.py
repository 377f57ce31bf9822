"""The gate's measurements of one graph: its metric through a fresh runner (onnxruntime CPU, or OpenVINO CPU for
``backend="ov"``), and its latency against FP32."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vkt.errors import CalibrationError


def runner_factory(blob: bytes, spec: Any, threads: int | None, backend: str = "ort") -> Callable[[], Any]:
    """``factory()`` -> a fresh, not yet activated CPU runner ("ort" or "ov") of the serialized graph ``blob``."""
    if backend == "ov":
        from vkt.runtime.openvino import OvRunner

        return lambda: OvRunner(blob, threads=threads, spec=spec, name="gate")
    from vkt.runtime.ort import OrtRunner

    return lambda: OrtRunner(blob, threads=threads, spec=spec, name="gate")


def score_graph(metric: Callable[[Callable[[], Any]], float], blob: bytes, spec: Any, threads: int | None, what: str,
                backend: str = "ort") -> float:
    """``metric`` of the graph ``blob``; CalibrationError naming ``what`` when it is not a finite number."""
    value = metric(runner_factory(blob, spec, threads, backend))
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"the gate metric must return a number, got {type(value).__name__} for {what}") from None
    if not np.isfinite(value):
        raise CalibrationError(f"the gate metric returned {value} for {what}; expected a finite number")
    return value


def time_pair(a: bytes, b: bytes, feed: Mapping[str, np.ndarray], threads: int | None, iters: int,
              backend: str = "ort") -> tuple[float, float]:
    """Median ms of two graphs on ORT CPU (``backend="ov"``: OpenVINO CPU) after two warm-up calls each, timed in
    alternating turns of one untimed and up to five timed calls (:func:`vkt.bench.time_turns`: at more than one thread, a call made
    right after the other session's would share the cores with that session's still-spinning workers)."""
    from vkt.bench import time_turns

    runners = [runner_factory(x, None, threads, backend)() for x in (a, b)]
    for r in runners:
        r.activate()
    try:
        for r in runners:
            for _ in range(2):
                r.infer(feed, check=False)
        times = time_turns([(lambda r=r: r.infer(feed, check=False)) for r in runners], iters, block=5, settle=1)
        return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3)
    finally:
        for r in runners:
            r.deactivate()
