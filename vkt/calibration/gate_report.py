"""The accuracy gate's record as a table: one row per step, FP32 first, the shipped one marked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def render_gate_table(gate: Mapping[str, Any], title: str | None = None) -> Any:
    """A rich Table of ``GateResult.to_dict()``: one row per step (FP32 first), the shipped one marked.

    Drops ("drop pt") are in points (100x the metric), as ``--max-drop``; "layers in float" is the step, as ``--steps``.
    Only steps within budget are timed ("ms": the fastest interleaved turn's mean per call; "-": not timed); one below
    the minimum speed-up is marked "too slow"."""
    from rich.table import Table

    budget = 100 * gate["max_drop"]
    t = Table(title=title or f"accuracy gate (metric vs FP32, budget: drop <= {budget:g} point(s); ORT CPU latency)")
    for col in ("model", "layers in float", "metric", "drop pt", "ms", "speedup", ""):  # fits 80 columns
        t.add_column(col, justify="left" if col in ("model", "") else "right")
    t.add_row("fp32", "all", f"{gate['baseline']:.4f}", "-", "-", "1.00x", "")
    chosen = (gate.get("chosen") or {}).get("step")
    least = gate.get("min_speedup", 0.0)
    for i, s in enumerate(gate["steps"]):
        timing = s.get("timing")
        slow = timing is not None and not timing["speedup"] >= least
        mark = "shipped" if i == chosen else ("too slow" if slow else "within budget" if s["within"] else "over budget")
        style = "bold green" if i == chosen else ("" if s["within"] and not slow else "yellow")
        ms, speed = ("-", "-") if timing is None else (f"{timing['int8_ms']:.1f}", f"{timing['speedup']:.2f}x")
        t.add_row(s["candidate"], str(s["layers_kept_float"]), f"{s['metric']:.4f}", f"{s.get('drop_points', 100 * s['drop']):+.2f}",
                  ms, speed, mark, style=style)
    return t
