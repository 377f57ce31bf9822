"""The gate's measurements of one graph: its metric through a fresh runner, and its speed-up over FP32.

    t = time_pair(fp32_factory, int8_factory, feed)  # turns of 1 untimed + 5 timed calls, as `vkt bench` takes
    t.speedup, t.band, t.ci95              # e.g. 1.31, (1.22, 1.38), 0.03: the figure, its noise band and uncertainty

Runner-agnostic: the two factories return fresh, not yet activated runners (onnxruntime, OpenVINO, ...), the same
ones ``vkt bench`` would build for the bundle, so the gate and ``vkt bench`` time the same thing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vkt.errors import CalibrationError
from vkt.log import get_logger

log = get_logger(__name__)

TURNS = 3  # turns per round; each turn: BenchConfig's settle (1) untimed + block (5) timed calls per model, as vkt bench
MAX_ROUNDS = 3  # rounds of TURNS turns at most (a busy machine: at load ~11 on 2 cores 4 rounds still left +-11-14%)
CI = 0.05  # more rounds until the median's 95% interval is within +-5% of it


def runner_factory(blob: bytes, spec: Any, threads: int | None, backend: str = "ort",
                   float_precision: str = "f32") -> Callable[[], Any]:
    """``factory()`` -> a fresh, not yet activated CPU runner ("ort" or "ov") of the serialized graph ``blob``;
    ``float_precision``: OpenVINO's hint for the layers the graph leaves in float ("f32" or "bf16")."""
    if backend == "ov":
        from vkt.runtime.openvino import OvRunner

        return lambda: OvRunner(blob, threads=threads, spec=spec, name="gate", inference_precision=float_precision)
    from vkt.runtime.ort import OrtRunner

    return lambda: OrtRunner(blob, threads=threads, spec=spec, name="gate")


def score_graph(metric: Callable[[Callable[[], Any]], float], blob: bytes, spec: Any, threads: int | None, what: str,
                backend: str = "ort", float_precision: str = "f32") -> float:
    """``metric`` of the graph ``blob``; CalibrationError naming ``what`` when it is not a finite number."""
    value = metric(runner_factory(blob, spec, threads, backend, float_precision))
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"the gate metric must return a number, got {type(value).__name__} for {what}") from None
    if not np.isfinite(value):
        raise CalibrationError(f"the gate metric returned {value} for {what}; expected a finite number")
    return value


@dataclass(frozen=True)
class PairTiming:
    """FP32 vs INT8 latency from interleaved turns (each turn: one untimed call, then ``block`` timed ones per model).

    fp32_ms, int8_ms: the p50 (median) of each model's timed calls, as ``vkt bench`` reports them.
    ratios: each turn's speed-up (its FP32 block's mean over the INT8 block's right after it: both see the same load).
    speedup: ``fp32_ms / int8_ms``, the ratio of p50s ``vkt bench`` prints, from the same turns (block, settle) it
        takes, so a re-timing measures the same statistic. (The median of ``ratios`` came out a few % higher than
        bench's p50 ratio in 17 of 25 side-by-side pairs on PP-OCRv5 mobile at load 5-6.)
    band: (lowest, highest) of ``ratios``: the noise band of ``speedup`` on this machine at this time.
    ci95: half-width of the 95% interval of the turns' median ratio (1.57 IQR / sqrt(turns), McGill's notch), as a
        fraction of it: how well this machine, at this time, pins the speed-up down (the rounds stop at 5%).
    load_avg: the 1-minute load average before and after timing (None where the OS has none).
    shape: the timed input's shape; threads: intra-op threads (None: the runtime's default); runner: the INT8
        runner's ``describe()`` (backend, threads, session options); fp32_runner: the FP32 runner's.
    """

    fp32_ms: float
    int8_ms: float
    ratios: tuple[float, ...]
    turns: int
    block: int
    shape: tuple[int, ...]
    threads: int | None
    runner: Mapping[str, Any]
    fp32_runner: Mapping[str, Any] = field(default_factory=dict)
    load_avg: tuple[float, float] | None = None

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    @property
    def band(self) -> tuple[float, float]:
        return (min(self.ratios), max(self.ratios))

    @property
    def ci95(self) -> float:
        return ci95(self.ratios)

    def to_dict(self) -> dict[str, Any]:
        return {"fp32_ms": round(self.fp32_ms, 3), "int8_ms": round(self.int8_ms, 3), "speedup": round(self.speedup, 3),
                "noise_band": [round(self.band[0], 3), round(self.band[1], 3)], "ci95": round(self.ci95, 3), "turns": self.turns, "block": self.block,
                "turn_speedups": [round(r, 3) for r in self.ratios],
                "statistic": "p50 per model over the timed calls (vkt bench's); speedup: fp32_ms / int8_ms; noise band and "
                             "ci95: the turns' ratios", **({"load_avg": list(self.load_avg)} if self.load_avg else {}),
                "shape": list(self.shape),
                "threads": self.threads, "runner": dict(self.runner), "fp32_runner": dict(self.fp32_runner)}


def time_pair(fp32: Callable[[], Any], int8: Callable[[], Any], feed: Mapping[str, np.ndarray], *, turns: int = TURNS,
              block: int | None = None, warmup: int | None = None, max_rounds: int = MAX_ROUNDS,
              threads: int | None = None) -> PairTiming:
    """Time two runners side by side in the turns ``vkt bench`` takes (:func:`vkt.bench.time_turns` with
    :class:`vkt.bench.BenchConfig`'s ``block`` and ``settle``: per turn and model, one untimed call that absorbs the
    other runner's still-spinning workers, then 5 timed calls), so the gate and a re-timing by ``vkt bench`` measure
    the same thing.

    ``fp32`` / ``int8``: factories of fresh, not yet activated runners; each is warmed up ``warmup`` calls (None: vkt
    bench's 5), then the
    two take rounds of ``turns`` turns until the median of the turns' ratios is known to +-5% (95% interval; a quiet
    machine: one round) or after ``max_rounds`` rounds (a busy one). ``block``: timed calls per turn (None: vkt
    bench's). ``threads`` is recorded (the factories already apply it).
    """
    from vkt.bench import BenchConfig, time_turns

    bench = BenchConfig()
    block = bench.block if block is None else block
    warmup = bench.warmup if warmup is None else warmup
    if turns < 1 or block < 1 or warmup < 0 or max_rounds < 1:
        raise CalibrationError(f"expected turns >= 1, block >= 1, warmup >= 0 and max_rounds >= 1, got {turns}, {block}, "
                               f"{warmup}, {max_rounds}")
    load0 = _load()
    runners = [fp32(), int8()]
    active: list[Any] = []
    try:
        for r in runners:
            r.activate()
            active.append(r)
        for r in runners:
            for _ in range(warmup):
                r.infer(feed, check=False)
        calls = [(lambda r=r: r.infer(feed, check=False)) for r in runners]
        fp, q = np.empty(0), np.empty(0)  # [turns] mean seconds per call of each turn, FP32 and INT8
        samples: list[list[float]] = [[], []]
        for _ in range(max_rounds):
            times = time_turns(calls, turns * block, block=block, settle=bench.settle)
            for acc, t in zip(samples, times):
                acc.extend(t[: turns * block])
            fp, q = (np.concatenate([acc, np.asarray(t[: turns * block], np.float64).reshape(turns, block).mean(axis=1)])
                     for acc, t in ((fp, times[0]), (q, times[1])))
            ratios = fp / q
            if ci95(ratios) <= CI:
                break
        info = [r.describe() if hasattr(r, "describe") else {} for r in runners]
    finally:
        for r in active:
            r.deactivate()
    shape = tuple(int(d) for d in np.shape(next(iter(feed.values())))) if feed else ()
    load = (load0, _load()) if load0 is not None else None
    t = PairTiming(float(np.median(samples[0]) * 1e3), float(np.median(samples[1]) * 1e3), tuple(float(r) for r in ratios),
                   len(ratios), block, shape, threads, *({k: v for k, v in dict(d).items() if _plain(v)} for d in info[::-1]),
                   load_avg=load)
    if t.ci95 > CI:
        log.warning("the machine is busy%s: after %d turns the speed-up %.2fx is known to +-%.0f%% only (turns %.2f-%.2fx); "
                    "re-time it with vkt bench on a quieter machine", "" if load is None else f" (load {load[1]:.1f})",
                    t.turns, t.speedup, 100 * min(t.ci95, 9.99), *t.band)
    return t


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # no load average on this OS
        return None


def ci95(ratios: Any) -> float:
    """Half-width of the 95% interval of the median of ``ratios`` (1.57 IQR / sqrt(n)), as a fraction of the median;
    inf for fewer than 3 values (no spread to judge from)."""
    r = np.asarray(ratios, np.float64)
    if r.size < 3:
        return float("inf")
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return float(1.57 * (q3 - q1) / np.sqrt(r.size) / med)


def _plain(v: Any) -> bool:
    """JSON-ready values only (describe() may hold paths or objects)."""
    if isinstance(v, (str, int, bool)) or v is None:
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, Mapping):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False
