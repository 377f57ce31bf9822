"""Side-by-side latency benchmarks: targets run interleaved in one process so ratios hold on a noisy machine.

Each *target* is a callable over a prepared feed; each *case* is one feed (batch size and shape).
Per case, every target is warmed up, then the targets take turns (round-robin) until every target has
``iters`` samples or the time budget is spent. A turn is ``settle`` untimed calls then ``block`` timed ones
(default 1 + 5, :func:`time_turns`): with more than one intra-op thread, onnxruntime's worker threads keep
spinning for a while after a call, so a session called right after another one shares the cores with the
other's spinning workers (measured on 2 cores: FP32 PP-OCRv5 150-180 ms interleaved call by call vs 122 ms
alone). The untimed settle call absorbs that; ``block=1, settle=0`` is strict call-by-call alternation.
Figures per (target, case): min / mean / p50 / p90 / p99 / max latency in ms and throughput in items/s
(batch / mean latency).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vkt.errors import InputError


@dataclass
class Target:
    """One thing to time.

    Args:
        name: row label (e.g. "ort-fp32").
        run: called with the case's feed; its wall time is what is measured.
        includes: plain words for what the figure includes (shown in the report).
        setup / teardown: called once before / after all cases (e.g. runner.activate).
        skip_reason: when set, the target is reported as skipped and never run.
    """

    name: str
    run: Callable[[Mapping[str, np.ndarray]], Any] | None
    includes: str
    setup: Callable[[], Any] | None = None
    teardown: Callable[[], Any] | None = None
    skip_reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    """One input configuration: ``feed`` plus a label and its batch size."""

    label: str
    feed: dict[str, np.ndarray]
    batch: int


@dataclass
class Row:
    target: str
    case: str
    batch: int
    n: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    throughput: float  # items per second
    includes: str
    status: str = "ok"
    ratio_vs_first: float | None = None  # p50 of the first target / p50 of this one (>1: faster)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BenchConfig:
    warmup: int = 5  # untimed calls per target and case before timing starts
    iters: int = 50  # timed calls per target and case (upper bound when seconds is set)
    seconds: float | None = None  # time budget per case, shared by its targets; None: run all iters
    min_iters: int = 5  # with a time budget, never fewer samples than this
    block: int = 5  # timed calls per target per turn
    settle: int = 1  # untimed calls at the start of each turn (absorbs the previous target's spinning threads)


def stats(samples_s: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"min_ms": float(a.min()), "mean_ms": float(a.mean()), "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99), "max_ms": float(a.max())}


def run_bench(targets: Sequence[Target], cases: Sequence[Case], config: BenchConfig = BenchConfig(),
              show_progress: bool = True) -> list[Row]:
    """Time every target on every case, interleaved. Returns one Row per (target, case)."""
    from vkt.log import progress

    if not targets:
        raise InputError("nothing to benchmark: no targets")
    if not cases:
        raise InputError("nothing to benchmark: no cases (batch sizes / shapes)")
    if config.iters < 1 or config.warmup < 0 or (config.seconds is not None and config.seconds <= 0):
        raise InputError(f"expected iters >= 1, warmup >= 0 and seconds > 0, got iters {config.iters}, warmup {config.warmup}"
                         + (f", seconds {config.seconds}" if config.seconds is not None else ""))
    live = [t for t in targets if t.skip_reason is None]
    rows: list[Row] = []
    try:
        for t in live:
            if t.setup:
                t.setup()
        for case in cases:
            for t in live:
                for _ in range(config.warmup):
                    t.run(case.feed)  # type: ignore[misc]
            deadline = None if config.seconds is None else time.perf_counter() + config.seconds
            got = time_turns([(lambda t=t: t.run(case.feed)) for t in live], config.iters, block=config.block,  # type: ignore[misc]
                             settle=config.settle, deadline=deadline, min_iters=config.min_iters,
                             progress=progress(range(config.iters), f"{case.label}", enabled=show_progress))
            samples = {t.name: got[i] for i, t in enumerate(live)}
            first_p50 = None
            for t in targets:
                if t.skip_reason is not None:
                    rows.append(Row(t.name, case.label, case.batch, 0, *([float("nan")] * 6), 0.0, t.includes,
                                    status=f"skipped: {t.skip_reason}", info=t.info))
                    continue
                s = stats(samples[t.name])
                first_p50 = first_p50 or s["p50_ms"]
                rows.append(Row(t.name, case.label, case.batch, len(samples[t.name]), **s,
                                throughput=case.batch / (s["mean_ms"] / 1e3), includes=t.includes,
                                ratio_vs_first=first_p50 / s["p50_ms"], info=t.info))
    finally:
        for t in live:
            if t.teardown:
                t.teardown()
    return rows


def time_turns(calls: Sequence[Callable[[], Any]], iters: int, block: int = 5, settle: int = 1,
               deadline: float | None = None, min_iters: int = 5, progress: Any = None) -> list[list[float]]:
    """Wall-time samples (s) of each callable, taken in turns: per turn and callable, ``settle`` untimed
    calls then up to ``block`` timed ones, round-robin, until each has ``iters`` samples, or, once each has
    ``min_iters``, the ``deadline`` (a ``time.perf_counter()`` value) has passed. ``progress`` (optional) is a
    rich-style iterable over ``range(iters)`` whose items are consumed as samples accrue (a progress bar)."""
    if iters < 1 or block < 1 or settle < 0:
        raise InputError(f"expected iters >= 1, block >= 1 and settle >= 0, got iters={iters}, block={block}, settle={settle}")
    samples: list[list[float]] = [[] for _ in calls]
    if not samples:
        return samples
    ticks = iter(progress) if progress is not None else None
    shown = 0
    try:
        while len(samples[0]) < iters:
            for c, got in zip(calls, samples):
                for _ in range(settle):
                    c()
                for _ in range(min(block, iters - len(got))):
                    t0 = time.perf_counter()
                    c()
                    got.append(time.perf_counter() - t0)
            while ticks is not None and shown < len(samples[0]):
                next(ticks, None)
                shown += 1
            if deadline is not None and len(samples[0]) >= min_iters and time.perf_counter() > deadline:
                break
    finally:
        if ticks is not None and hasattr(ticks, "close"):
            ticks.close()
    return samples


def machine_info() -> dict[str, Any]:
    import os

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def rows_to_json(rows: Sequence[Row], extra: Mapping[str, Any] | None = None) -> str:
    """JSON lines: one row per line, each with the machine description."""
    base = {"machine": machine_info(), **(extra or {})}
    return "\n".join(json.dumps({**r.to_dict(), **base}, default=float) for r in rows)


def print_table(rows: Sequence[Row], title: str = "vkt bench") -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from vkt.tables import print_table as print_whole_table

    console = Console()
    table = Table(title=title, title_justify="left")
    for col in ("target", "case", "n", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "items/s", "vs 1st"):
        table.add_column(col, justify="left" if col in ("target", "case") else "right",
                         no_wrap=col in ("target", "case"))
    skipped: dict[str, str] = {}
    for r in rows:
        if r.status != "ok":
            skipped[r.target] = r.status
            table.add_row(r.target, r.case, "-", "[yellow]skipped[/]", *[""] * 6)
            continue
        table.add_row(r.target, r.case, str(r.n), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}",
                      f"{r.mean_ms:.3f}", f"{r.min_ms:.3f}", f"{r.throughput:.1f}", f"{r.ratio_vs_first:.2f}x")
    print_whole_table(table, console)  # the table at 80 columns / piped would cut numbers to "38…": records then
    console.print("vs 1st = p50 of the first target / p50 of this one (>1: faster). What each figure includes:",
                  highlight=False)
    seen: dict[str, str] = {}
    for r in rows:
        seen.setdefault(r.target, r.includes)
    for name, inc in seen.items():
        console.print(f"  [bold]{escape(name)}[/]: {escape(inc)}", highlight=False)
    for name, why in skipped.items():
        console.print(f"  [yellow]{escape(name)}[/] {escape(why)}", highlight=False)


def plot_rows(rows: Sequence[Row], path: str) -> None:
    """Bar chart of p50 latency (with p90 whiskers) per case and target, written atomically as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'vkt[plot]'") from None
    import io

    from vkt.fsutil import atomic_write_bytes

    ok = [r for r in rows if r.status == "ok"]
    cases = list(dict.fromkeys(r.case for r in ok))
    targets = list(dict.fromkeys(r.target for r in ok))
    width = 0.8 / max(len(targets), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases) * max(1, len(targets)) ** 0.5), 4))
    for j, t in enumerate(targets):
        xs, ys, err = [], [], []
        for i, c in enumerate(cases):
            r = next((r for r in ok if r.target == t and r.case == c), None)
            if r:
                xs.append(i + j * width)
                ys.append(r.p50_ms)
                err.append(r.p90_ms - r.p50_ms)
        ax.bar(xs, ys, width, yerr=[np.zeros(len(err)), err], label=t, capsize=3)
    ax.set_xticks([i + width * (len(targets) - 1) / 2 for i in range(len(cases))], cases, rotation=15)
    ax.set_ylabel("latency p50 (ms), whisker = p90")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
