"""vkt bench: statistics on a fake clock (exact values), interleaving, JSON rows and plots from the CLI."""

import json

import numpy as np
import pytest

import vkt.bench as bench
from vkt.bench import BenchConfig, Case, Target, run_bench
from vkt.cli.main import main


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.calls: list[str] = []

    def __call__(self):
        return self.t


def test_stats_and_ratios_on_a_fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)

    def target(name, cost_s):
        def run(feed):
            clock.calls.append(name)
            clock.t += cost_s
        return Target(name, run, includes=f"{name} only")

    cases = [Case("1x1", {"x": np.zeros(1, np.float32)}, batch=1), Case("4x1", {"x": np.zeros(4, np.float32)}, batch=4)]
    rows = run_bench([target("slow", 0.004), target("fast", 0.001),
                      Target("gone", None, "n/a", skip_reason="no GPU")], cases,
                     BenchConfig(warmup=2, iters=10), show_progress=False)
    by = {(r.target, r.case): r for r in rows}
    assert by[("slow", "1x1")].p50_ms == pytest.approx(4.0) and by[("fast", "1x1")].p99_ms == pytest.approx(1.0)
    assert by[("fast", "1x1")].ratio_vs_first == pytest.approx(4.0)
    assert by[("slow", "4x1")].throughput == pytest.approx(4 / 0.004)
    assert by[("gone", "1x1")].status == "skipped: no GPU" and by[("gone", "1x1")].n == 0
    # warm-up first, then turns of one untimed settle call + 5 timed calls (the defaults): side by side
    turns = clock.calls[4:28]
    assert turns == ["slow"] * 6 + ["fast"] * 6 + ["slow"] * 6 + ["fast"] * 6
    assert by[("slow", "1x1")].n == 10


def test_call_by_call_and_partial_last_block(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    costs = {"a": 0.003, "b": 0.001}

    def target(name):
        def run(feed):
            clock.calls.append(name)
            clock.t += costs[name]
        return Target(name, run, includes=name)

    rows = run_bench([target("a"), target("b")], [Case("c", {}, 1)], BenchConfig(warmup=0, iters=4, block=1, settle=0),
                     show_progress=False)
    assert clock.calls == ["a", "b"] * 4 and [r.n for r in rows] == [4, 4]
    clock.calls.clear()
    rows = run_bench([target("a"), target("b")], [Case("c", {}, 1)], BenchConfig(warmup=0, iters=7, block=5, settle=2),
                     show_progress=False)
    # turn 1: 2 settle + 5 timed each; turn 2: 2 settle + the 2 samples still missing
    assert clock.calls == ["a"] * 7 + ["b"] * 7 + ["a"] * 4 + ["b"] * 4
    assert [r.n for r in rows] == [7, 7] and rows[1].ratio_vs_first == pytest.approx(3.0)


def test_time_turns_rejects_bad_settings():
    from vkt.errors import InputError

    with pytest.raises(InputError, match="block >= 1"):
        bench.time_turns([lambda: None], 3, block=0)


def test_time_budget_stops_early_but_keeps_min_iters(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)

    def run(feed):
        clock.t += 1.0

    rows = run_bench([Target("a", run, "a")], [Case("c", {}, 1)], BenchConfig(warmup=0, iters=1000, seconds=2.5, min_iters=5),
                     show_progress=False)
    assert rows[0].n == 5


def test_cli_bench_writes_json_rows_and_png(toy_bundle, tmp_path, capsys):
    out, png = tmp_path / "rows.jsonl", tmp_path / "p.png"
    code = main(["bench", str(toy_bundle), "-t", "ort", "-t", "ort-raw", "--batch", "1", "--batch", "2",
                 "--shape", "height=32,width=48", "--iters", "3", "--warmup", "1", "--json", str(out), "--plot", str(png)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["target"], r["case"]) for r in rows] == [
        ("ort-fp32", "1x3x32x48"), ("ort-raw-fp32", "1x3x32x48"), ("ort-fp32", "2x3x32x48"), ("ort-raw-fp32", "2x3x32x48")]
    for r in rows:
        assert r["n"] == 3 and r["min_ms"] <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] and r["includes"]
        assert r["machine"]["cpus"] >= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ort-raw-fp32" in capsys.readouterr().out


def test_default_targets_skip_what_cannot_run(toy_bundle, capsys):
    from vkt.bundle import Bundle

    Bundle.load(toy_bundle).add_file(b"not a real plan", "model.plan", role="plan", meta={"precision": "fp32"})
    assert main(["bench", str(toy_bundle), "--iters", "2", "--warmup", "0", "--json", "-", "-q"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    status = {r["target"]: r["status"] for r in rows}
    assert status["ort-fp32"] == "ok"
    assert status["trt-fp32"].startswith("skipped:")
