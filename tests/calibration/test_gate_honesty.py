"""The gate's speed-up is the one `vkt bench` re-times: same FP32 graph and runner, same settings."""

from __future__ import annotations

import pytest
from calib_helpers import feeds

pytest.importorskip("openvino")  # the test extra installs it


def test_openvino_gate_times_the_bundles_fp32_file_as_vkt_bench_runs_it(toy_bundle):
    """The gate timed a rewritten FP32 of its own on OpenVINO (HardSwish fused there only) while `vkt bench -t ov:fp32`
    times the bundle's file: two graphs. Now both are the bundle's FP32 on the runner `vkt bench` builds."""
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration.api import gate_bundle
    from vkt.calibration.gate import GateConfig
    from vkt.runtime import make_runner

    quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("ort", "openvino")), eval_samples=0, show_progress=False)
    sens = feeds(((1, 3, 16, 16),), seed=3)
    section = gate_bundle(toy_bundle, lambda factory: 1.0, GateConfig(placement="openvino", steps=(0,), iters=2,
                                                                      ranking="prefix", min_speedup=0),
                          latency_feed=sens[0], show_progress=False)
    fp32 = section["openvino_gate"]["steps"][0]["timing"]["fp32_runner"]
    bench = make_runner(toy_bundle, "ov", "fp32").describe()  # what `vkt bench -t ov:fp32` builds
    assert fp32["backend"] == "ov" and fp32["name"] == bench["name"] and fp32.get("precision") == bench["precision"]


def test_openvino_gate_says_when_onnxruntime_fp32_is_faster_than_its_int8(toy_bundle, monkeypatch):
    """A trained DETR at 128x160: OpenVINO INT8 shipped as 1.31x OpenVINO FP32 was 0.86x onnxruntime FP32 (OpenVINO's
    per-call cost). The gate now times the shipped INT8 against onnxruntime FP32 too, records it and warns; INT8 still
    ships (it is the fastest on OpenVINO). Fixed timings stand in for the clock."""
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration import gate_timing
    from vkt.calibration.api import gate_bundle
    from vkt.calibration.gate import GateConfig
    from vkt.calibration.gate_timing import PairTiming

    pairs = []

    def fake_time_pair(fp32, int8, feed, **kw):
        fp, q = fp32(), int8()
        pairs.append((fp.backend, q.backend))
        ratio = 2.0 if len(pairs) == 1 else 0.8  # vs OpenVINO FP32, then vs onnxruntime FP32
        return PairTiming(10.0 * ratio, 10.0, (ratio,) * 3, 3, 5, tuple(next(iter(feed.values())).shape), None, {})

    monkeypatch.setattr(gate_timing, "time_pair", fake_time_pair)
    quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("openvino",)), eval_samples=0, show_progress=False)
    gate = gate_bundle(toy_bundle, lambda factory: 1.0, GateConfig(placement="openvino", steps=(0,), ranking="prefix"),
                       latency_feed=feeds(((1, 3, 16, 16),), seed=3)[0], show_progress=False)["openvino_gate"]
    assert pairs == [("ov", "ov"), ("ort", "ov")]
    assert gate["shipped"] == "int8" and gate["vs_other_fp32"]["speedup"] == 0.8
    assert "0.80x onnxruntime FP32" in gate["other_fp32_note"] and "--backend ort" in gate["other_fp32_note"]


def test_openvino_gate_walks_every_step_when_float_layers_run_bf16(toy_bundle, monkeypatch):
    """Fewer float layers is faster only while float means f32. With the float layers in bf16, PP-OCRv5 mobile ran 2.09x
    OpenVINO FP32 with 52 convs kept float and 1.88x with 32 (736², 2 threads), and the gate, stopping at its first step
    within budget (32), shipped the slower and less accurate graph. In bf16 the gate now walks every step and ships the
    fastest within budget; in f32 it still stops at the first. Fixed timings stand in for the clock: each step's
    speed-up grows with the convs its graph keeps float."""
    import onnx

    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration import gate_timing
    from vkt.calibration.api import gate_bundle
    from vkt.calibration.gate import GateConfig
    from vkt.calibration.gate_timing import PairTiming

    def float_convs(runner) -> int:
        m = onnx.load_from_string(bytes(runner.model))
        dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return sum(1 for n in m.graph.node if n.op_type == "Conv" and n.input[0] not in dq)

    def fake_time_pair(fp32, int8, feed, **kw):
        ratio = 1.5 + 0.1 * float_convs(int8())
        return PairTiming(10.0 * ratio, 10.0, (ratio,) * 3, 3, 5, tuple(next(iter(feed.values())).shape), None, {})

    monkeypatch.setattr(gate_timing, "time_pair", fake_time_pair)
    quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("openvino",)), eval_samples=0, show_progress=False)
    latency = feeds(((1, 3, 16, 16),), seed=3)[0]
    steps = (0, 1, 2, 3)
    gates = {fp: gate_bundle(toy_bundle, lambda factory: 1.0,
                             GateConfig(placement="openvino", steps=steps, ranking="prefix", float_precision=fp),
                             latency_feed=latency, show_progress=False)["openvino_gate"] for fp in ("f32", "bf16")}
    assert [s["layers_kept_float"] for s in gates["f32"]["steps"]] == [0]  # f32: the first step within budget ships
    walked = gates["bf16"]["steps"]
    assert [s["layers_kept_float"] for s in walked] == list(steps) and all(s["timing"] for s in walked)
    fastest = max(range(len(walked)), key=lambda i: walked[i]["timing"]["speedup"])
    assert walked[fastest]["timing"]["speedup"] > walked[0]["timing"]["speedup"]  # the toy keeps convs float by step 3
    assert gates["bf16"]["chosen"]["step"] == fastest and gates["bf16"]["shipped"] == "int8"
