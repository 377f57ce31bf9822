"""The gate's speed check: it times what `vkt bench` times, and a too-slow INT8 model never ships."""

from __future__ import annotations

import numpy as np
import pytest
from calib_helpers import feeds

from vkt.bundle import Bundle
from vkt.calibration import Int8Config, quantize_bundle
from vkt.calibration.gate import GateConfig
from vkt.calibration.gate_timing import PairTiming


def conv_count_metric(factory) -> float:
    """1 - 0.01 per Conv reading a DequantizeLinear output: FP32 scores 1.0."""
    import onnx

    m = onnx.load_from_string(bytes(factory().model))
    dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return 1.0 - 0.01 * sum(1 for n in m.graph.node if n.op_type == "Conv" and n.input[0] in dq)


def _images(folder, n, size=24):
    import cv2

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (size + 8 * i, size, 3), dtype=np.uint8))
    return folder


def _session(runner) -> dict:
    """What decides a runner's speed, read from the runner: its graph, threads and onnxruntime session options."""
    model = runner.model
    graph = bytes(model) if isinstance(model, (bytes, bytearray)) else open(model, "rb").read()
    return {"graph": graph, "threads": runner.threads, "providers": tuple(runner.providers),
            "graph_optimization": runner.graph_optimization, "session_config": dict(runner.session_config)}


@pytest.mark.parametrize("threads", [None, 1])
def test_gate_times_what_vkt_bench_times(toy_bundle, tmp_path, monkeypatch, threads):
    """The gate's FP32 and INT8 timings use the runners `vkt bench -t ort:fp32 -t ort:int8` builds for the shipped
    bundle (same graph bytes, threads, providers, session options) on a feed of the shape bench times by default."""
    import vkt.calibration.gate_timing as gt
    from vkt.calibration.holdout import resolve_holdout
    from vkt.calibration.images import gate_images
    from vkt.calibration.api import Calibrated
    from vkt.cli.bench import build_targets, make_cases

    timed = []
    real = gt.time_pair

    def spy(fp32, int8, feed, **kw):
        a, b = fp32(), int8()
        timed.append((a, b, {k: v.shape for k, v in feed.items()}))
        return real(lambda: a, lambda: b, feed, **kw)

    monkeypatch.setattr(gt, "time_pair", spy)
    section = quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("ort",)), eval_samples=0, show_progress=False)
    split = resolve_holdout(_images(tmp_path / "calib", 2), _images(tmp_path / "held", 2))
    cfg = GateConfig(max_drop=0.035, steps=(0, 4), ranking="prefix", threads=threads, iters=2, min_speedup=0.0)
    gate = gate_images(Bundle.load(toy_bundle), Calibrated(section, None), conv_count_metric, split, cfg,
                       show_progress=False)["gate"]
    assert gate["shipped"] == "int8" and len(timed) == 1  # one step within budget, the only one timed
    gate_fp32, gate_int8, gate_shapes = timed[0]

    targets, spec = build_targets(toy_bundle, [("ort", "fp32"), ("ort", "int8")], threads, None, False)
    bench_fp32, bench_int8 = (t.run.__self__ for t in targets)
    try:
        assert _session(gate_fp32) == _session(bench_fp32)
        assert _session(gate_int8) == _session(bench_int8)  # the graph timed is the graph shipped
    finally:
        for t in targets:
            t.teardown()
    (case,) = make_cases(spec, [1], [])
    assert gate_shapes == {k: v.shape for k, v in case.feed.items()} == {"image": (1, 3, 64, 64)}  # the profile's opt
    t = gate["steps"][gate["chosen"]["step"]]["timing"]
    assert tuple(t["shape"]) == (1, 3, 64, 64) and t["threads"] == threads
    assert t["runner"]["threads"] == threads
    assert set(gate["seconds"]) == {"ranking", "placements", "metric", "timing"}  # where the gate's time went


def test_too_slow_int8_ships_fp32_and_says_why(toy_bundle, monkeypatch, caplog, capsys):
    """Within budget but below --min-speedup: FP32 ships, the Q/DQ graph is removed, the manifest and the log say why."""
    import vkt.calibration.gate_timing as gt
    from vkt.calibration.api import gate_bundle
    from vkt.cli.quantize import print_calibration

    slow = PairTiming(100.0, 95.0, (0.98, 1.05, 1.07), 3, 2, (1, 3, 64, 64), None, {})
    monkeypatch.setattr(gt, "time_pair", lambda *a, **k: slow)
    quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("ort", "trt")), eval_samples=0, show_progress=False)
    sens = feeds(((1, 3, 64, 64),), seed=3)
    cfg = GateConfig(max_drop=0.035, steps=(0, 4), ranking="prefix", follow=("trt",))
    gate = gate_bundle(toy_bundle, conv_count_metric, cfg, latency_feed=sens[0], show_progress=False)["gate"]
    assert gate["passed"] and gate["shipped"] == "fp32" and gate["chosen"] is None and gate["min_speedup"] == 1.1
    assert "1.05x FP32" in gate["reason"] and "0.98-1.07x" in gate["reason"] and "below the minimum 1.1x" in gate["reason"]
    assert "shipping FP32 only" in caplog.text
    b = Bundle.load(toy_bundle)
    assert b.files("int8 qdq onnx") == [] and not (toy_bundle / "model.int8.ort.onnx").exists()
    print_calibration(b, b.manifest["calibration"])
    out = " ".join(capsys.readouterr().out.split())
    assert "shipped FP32 only" in out and "too slow" in out

    # the same step at 1.2x ships, and the printed line gives the figure, its band and the command that re-times it
    monkeypatch.setattr(gt, "time_pair", lambda *a, **k: PairTiming(120.0, 100.0, (1.1, 1.2, 1.3), 3, 2, (1, 3, 64, 64), 2, {}))
    quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("ort",)), eval_samples=0, show_progress=False)
    section = gate_bundle(toy_bundle, conv_count_metric, cfg, latency_feed=sens[0], show_progress=False)
    assert section["gate"]["shipped"] == "int8" and section["gate"]["reason"] is None
    print_calibration(Bundle.load(toy_bundle), section)
    out = " ".join(capsys.readouterr().out.split())
    assert "1.20x FP32 (noise band 1.10-1.30x) on ORT CPU at 1x3x64x64, 2 thread(s)" in out
    assert "-t ort:fp32 -t ort:int8 --shape height=64,width=64 --threads 2" in out


def test_pair_timing_records_its_turns():
    """Real runners, a few turns: the speed-up is the median of the paired turns' ratios, the band their extremes, and
    a wide interval (a busy machine) only ever adds whole rounds of turns."""
    from vkt.calibration.gate_timing import runner_factory, time_pair
    from vkt.export.toy import toy_convnet

    model, spec = toy_convnet()
    blob = model.SerializeToString()
    feed = {spec.inputs[0].name: np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    t = time_pair(runner_factory(blob, spec, 1), runner_factory(blob, spec, 1), feed, turns=3, block=2, warmup=1,
                  threads=1)
    lo, hi = t.band
    assert t.turns in (3, 6, 9) and len(t.ratios) == t.turns and t.shape == (1, 3, 32, 32)
    assert t.fp32_ms > 0 and t.int8_ms > 0 and t.speedup == t.fp32_ms / t.int8_ms
    assert (lo, hi) == (min(t.ratios), max(t.ratios)) and (t.ci95 <= 0.05 or t.turns == 9)  # stops once narrow, or at 3 rounds
    d = t.to_dict()
    assert d["noise_band"] == [round(lo, 3), round(hi, 3)] and len(d["turn_speedups"]) == t.turns
    assert d["runner"]["threads"] == 1


class _Clocked:
    """A runner whose call advances a fake clock by its next cost: deterministic timings, no real time measured."""

    def __init__(self, name, costs, clock, calls):
        self.name, self.costs, self.clock, self.calls, self.n = name, costs, clock, calls, 0

    def activate(self):
        pass

    def deactivate(self):
        pass

    def infer(self, feed, check=True):
        self.clock[0] += self.costs(self.n)
        self.n += 1
        self.calls.append(self.name)
        return {}

    run = infer


@pytest.fixture
def fake_clock(monkeypatch):
    import types

    import vkt.bench

    clock = [0.0]
    monkeypatch.setattr(vkt.bench, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    return clock


def test_gate_takes_the_turns_vkt_bench_takes(fake_clock):
    """After warm-up, the gate's FP32/INT8 calls come in the order `vkt bench -t fp32 -t int8` makes them (per turn and
    model: BenchConfig's untimed settle call, then its block of timed calls). The gate took turns of 2 timed calls
    while bench takes 5: two different measurements of the same pair."""
    from vkt.bench import BenchConfig, Case, Target, run_bench
    from vkt.calibration.gate_timing import TURNS, time_pair

    gate, bench = [], []
    one = lambda n: 0.01  # noqa: E731
    time_pair(lambda: _Clocked("fp32", one, fake_clock, gate), lambda: _Clocked("int8", one, fake_clock, gate), {})
    cfg = BenchConfig()
    targets = [Target(n, _Clocked(n, one, fake_clock, bench).infer, "") for n in ("fp32", "int8")]
    run_bench(targets, [Case("x", {}, 1)], BenchConfig(iters=TURNS * cfg.block), show_progress=False)
    assert gate == bench and len(gate) == 2 * (cfg.warmup + TURNS * (cfg.settle + cfg.block))  # warm-up, then one round


def test_gate_takes_more_turns_until_the_speedup_is_known(fake_clock, caplog):
    """Turns that agree stop after one round; turns that disagree (a busy machine) add rounds until the turns' median
    ratio is known to +-5% (95%), or the rounds run out, and then a warning says the figure is uncertain. The speed-up
    is vkt bench's statistic: p50 FP32 over p50 INT8."""
    from vkt.bench import BenchConfig
    from vkt.calibration.gate_timing import MAX_ROUNDS, TURNS, time_pair

    warm, per_turn = BenchConfig().warmup, BenchConfig().settle + BenchConfig().block

    def pair(int8_cost):
        calls: list[str] = []
        return time_pair(lambda: _Clocked("fp32", lambda n: 0.02, fake_clock, calls),
                         lambda: _Clocked("int8", int8_cost, fake_clock, calls), {})

    steady = pair(lambda n: 0.01)
    assert steady.turns == TURNS and steady.speedup == pytest.approx(2.0) and steady.ci95 == pytest.approx(0.0)
    assert "busy" not in caplog.text
    # INT8 turns alternate between 10 and 16 ms: ratios 2.0 and 1.25, half the INT8 calls at each cost
    noisy = pair(lambda n: 0.01 if ((n - warm) // per_turn) % 2 == 0 else 0.016)
    assert noisy.turns == MAX_ROUNDS * TURNS and noisy.ci95 > 0.05
    assert sorted(set(round(r, 3) for r in noisy.ratios)) == [1.25, 2.0]
    int8_calls = [10.0 if turn % 2 == 0 else 16.0 for turn in range(noisy.turns) for _ in range(BenchConfig().block)]
    assert (noisy.fp32_ms, noisy.int8_ms) == pytest.approx((20.0, float(np.median(int8_calls))))  # p50s, as bench's
    assert noisy.speedup == pytest.approx(noisy.fp32_ms / noisy.int8_ms)
    assert "busy" in caplog.text and "re-time it with vkt bench" in caplog.text


def test_gated_export_skips_the_ungated_placements_error(toy_bundle, tmp_path, monkeypatch):
    """With a held-out folder a gate follows: calibration does not run every placement over calibration feeds to
    report an error that describes ungated graphs (it was ~15% of a gated export), and the shipped placement's record
    keeps no error of the ungated graph. Without held-out images the error is still measured."""
    from vkt.calibration.api import gate_bundle
    from vkt.calibration.holdout import resolve_holdout
    from vkt.calibration.images import calibrate_images

    measured = []
    import vkt.calibration.report as report

    real = report.layer_errors
    monkeypatch.setattr(report, "layer_errors", lambda *a, **k: measured.append(1) or real(*a, **k))
    calib, held = _images(tmp_path / "calib", 3), _images(tmp_path / "held", 2)
    cfg = Int8Config(calib=calib, targets=("ort",), method="minmax")
    section = calibrate_images(Bundle.load(toy_bundle), resolve_holdout(calib, None, None), cfg, show_progress=False).section
    assert measured and section["eval_samples"] == 2 and "output_sqnr_db" in section["placements"]["ort"]
    gate = GateConfig(max_drop=0.035, steps=(4,), ranking="prefix", min_speedup=0.0)
    shipped = gate_bundle(toy_bundle, conv_count_metric, gate, show_progress=False)["placements"]["ort"]
    assert shipped["gate_excluded"] and "output_sqnr_db" not in shipped  # the ungated graph's error is not the shipped one's

    measured.clear()
    section = calibrate_images(Bundle.load(toy_bundle), resolve_holdout(calib, held, None), cfg, show_progress=False).section
    assert not measured and section["eval_samples"] == 0 and "output_sqnr_db" not in section["placements"]["ort"]
