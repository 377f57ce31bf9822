"""correct_biases: after it, each quantized conv's mean output per channel on the calibration feeds is FP32's."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from vkt.calibration import compute_ranges
from vkt.calibration.bias import correct_biases
from vkt.calibration.place_ov import place_ov
from vkt.onnxgraph import prepare_model
from vkt.runtime.ort import OrtRunner


def _conv(bias: bool):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b"))
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], name="conv", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _feeds():
    """Values in [0, 1] and one outlier of 60 per feed: a minmax uint8 step of ~0.24 rounds most inputs to 0 or 0.24,
    a large mean shift."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(3):
        x = rng.random((1, 3, 8, 8), dtype=np.float32)
        x[0, 0, 0, 0] = 60.0
        out.append({"x": x})
    return out


def _channel_means(model, feeds):
    with OrtRunner(model.SerializeToString(), threads=1, name="t") as r:
        return np.mean([r.infer(f, check=False)["y"].mean(axis=(0, 2, 3)) for f in feeds], axis=0)


@pytest.mark.parametrize("bias", [True, False])
def test_corrected_conv_has_fp32_mean_per_channel(bias):
    fp32 = prepare_model(_conv(bias))
    feeds = _feeds()
    qdq = place_ov(fp32, compute_ranges(fp32, feeds, "minmax", show_progress=False))
    want = _channel_means(fp32, feeds)
    before = np.abs(_channel_means(qdq, feeds) - want).max()
    fixed, report = correct_biases(qdq, fp32, feeds, threads=1)
    after = np.abs(_channel_means(fixed, feeds) - want).max()
    assert before > 1e-2  # the case is a real shift, so the check below can fail
    assert after < 1e-4 * max(1.0, float(np.abs(want).max()))
    assert set(report) == {"conv"} and report["conv"] == pytest.approx(before, rel=1e-3)
    # the input is untouched, and the corrected graph still reads its int8 weights through a DequantizeLinear
    assert "conv_vkt_bc" not in {i.name for i in qdq.graph.initializer}
    conv = next(n for n in fixed.graph.node if n.op_type == "Conv")
    assert conv.input[2] == "conv_vkt_bc" and conv.input[1].endswith("_vkt_wdq")


def test_unquantized_graph_is_left_as_it_is():
    fp32 = prepare_model(_conv(True))
    fixed, report = correct_biases(fp32, fp32, _feeds(), threads=1)
    assert report == {} and fixed.SerializeToString() == fp32.SerializeToString()


def test_openvino_placement_is_corrected_when_given_shifts():
    from vkt.calibration.bias import measure_bias_shifts
    from vkt.calibration.placements import placement

    fp32 = prepare_model(_conv(True))
    feeds = _feeds()
    table = compute_ranges(fp32, feeds, "minmax", show_progress=False)
    want = _channel_means(fp32, feeds)
    plain = place_ov(fp32, table)
    fixed = placement(fp32, table, "openvino", bias=measure_bias_shifts(plain, fp32, feeds, threads=1))
    assert np.abs(_channel_means(plain, feeds) - want).max() > 1e-2
    assert np.abs(_channel_means(fixed, feeds) - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
    assert {n.op_type for n in fixed.graph.node} == {n.op_type for n in plain.graph.node}  # the same Q/DQ, bias moved


def _two_convs():
    """x -> conv1 -> Relu -> conv2 -> y, both with biases."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _biases(model):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[2]] for n in model.graph.node if n.op_type == "Conv"}


def test_shifts_measured_once_serve_a_placement_with_other_layers_float():
    """The gate re-places the graph at every step: the shifts measured on the every-conv placement, applied to a step
    keeping conv1 float, equal a correction measured on that step itself (each conv's shift is its own rounding's)."""
    from vkt.calibration.bias import BiasShifts, apply_bias_shifts, measure_bias_shifts

    fp32 = prepare_model(_two_convs())
    feeds = _feeds()
    table = compute_ranges(fp32, feeds, "minmax", show_progress=False)
    full = place_ov(fp32, table)
    shifts = measure_bias_shifts(full, fp32, feeds, threads=1)
    assert set(shifts.deltas) == {"conv1", "conv2"} and shifts.feeds == 3
    step = place_ov(fp32, table, exclude=["conv1"])
    reused, report = apply_bias_shifts(step, shifts)
    measured, _ = correct_biases(step, fp32, feeds, threads=1)
    assert set(report) == {"conv2"}  # conv1 is float in this step: no shift
    np.testing.assert_allclose(_biases(reused)["conv2"], _biases(measured)["conv2"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(_biases(reused)["conv1"], _biases(fp32)["conv1"])
    assert not np.allclose(_biases(reused)["conv2"], _biases(fp32)["conv2"])
    # a shift measured with the conv reading another kind of input (float there, quantized here) is not applied
    other = BiasShifts(shifts.deltas, {"conv1": True, "conv2": False}, shifts.feeds)
    assert set(apply_bias_shifts(full, other)[1]) == {"conv1"}


def test_calibration_and_gate_ship_the_corrected_openvino_placement(toy_bundle):
    """bias_correction: the openvino placement calibration writes and the one the gate ships carry the shifts measured
    on the calibration feeds (recorded in the manifest); without it, the placement keeps the FP32 biases."""
    import onnx

    from vkt.bundle import Bundle
    from vkt.calibration import CalibrationTable, Int8Config, qdq_path
    from vkt.calibration.api import calibrate_bundle, gate_bundle
    from vkt.calibration.gate import GateConfig
    from vkt.calibration.placements import placement

    data = [{"image": np.random.default_rng(i).random((1, 3, 32, 32), dtype=np.float32)} for i in range(3)]
    cal = calibrate_bundle(toy_bundle, data, Int8Config(targets=("openvino",), bias_correction=True), eval_samples=0,
                           show_progress=False)
    rec = cal.section["placements"]["openvino"]["bias_correction"]
    assert rec["convs"] > 0 and rec["feeds"] == 3 and cal.bias is not None and "bias_correction" in cal.section["seconds"]
    b = Bundle.load(toy_bundle)
    written = onnx.load(str(qdq_path(b, "openvino")))
    table = CalibrationTable.load(b.path("calibration table"))
    plain = placement(cal.graph, table, "openvino", ())
    assert written.SerializeToString() == placement(cal.graph, table, "openvino", (), bias=cal.bias).SerializeToString()
    assert written.SerializeToString() != plain.SerializeToString()

    def always_one(factory):  # a metric every step passes: the gate ships step 0 (every conv INT8)
        return 1.0

    gate_bundle(b, always_one, GateConfig(placement="openvino", steps=(0,), ranking="prefix", min_speedup=0), fp32_graph=cal.graph,
                bias=cal.bias, show_progress=False)
    shipped = onnx.load(str(qdq_path(Bundle.load(toy_bundle), "openvino")))
    got, want = _biases(shipped), _biases(written)
    assert set(got) == set(want) and all(np.array_equal(got[k], v) for k, v in want.items())

    off = calibrate_bundle(toy_bundle, data, Int8Config(targets=("openvino",)), eval_samples=0, show_progress=False)
    assert off.bias is None and "bias_correction" not in off.section["placements"]["openvino"]
    assert onnx.load(str(qdq_path(Bundle.load(toy_bundle), "openvino"))).SerializeToString() == plain.SerializeToString()
