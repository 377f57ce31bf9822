"""benchmarks/bench_serve.py gates a load test: each broken bound is named (the script then exits 1)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bench_serve", Path(__file__).parents[1] / "benchmarks" / "bench_serve.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

GOOD = {"ok": 100, "errors": 0, "status_other": {}, "exit_code_on_sigterm": 0, "rss_load_first_quarter_mb": 100.0,
        "rss_load_last_quarter_mb": 105.0, "rss_growth_pct": bench._pct(105.0, 100.0)}


def test_bounds_hold_and_each_break_is_named():
    assert GOOD["rss_growth_pct"] == 5.0 and bench.broken_bounds(GOOD, 10.0) == []
    cases = [({"errors": 3}, "3 connection errors"), ({"status_other": {"500": 2}}, "statuses other than 200/503"),
             ({"exit_code_on_sigterm": -9}, "exited -9 on SIGTERM"), ({"rss_growth_pct": 12.5}, "RSS grew 12.5%"),
             ({"ok": 0}, "no request succeeded"),
             ({"rss_before_mb": 800.0, "rss_after_mb": 1000.0, "rss_idle_growth_pct": bench._pct(1000.0, 800.0)},
              "idle RSS after the load is 25.0% above")]
    for change, text in cases:
        (msg,) = bench.broken_bounds({**GOOD, **change}, 10.0)
        assert text in msg
    assert bench._pct(None, 100.0) is None and bench._pct(110.0, 0) is None
