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


def test_place_ov_corrects_biases_when_given_feeds():
    fp32 = prepare_model(_conv(True))
    feeds = _feeds()
    table = compute_ranges(fp32, feeds, "minmax", show_progress=False)
    want = _channel_means(fp32, feeds)
    plain, fixed = place_ov(fp32, table), place_ov(fp32, table, bias_feeds=feeds)
    assert np.abs(_channel_means(plain, feeds) - want).max() > 1e-2
    assert np.abs(_channel_means(fixed, feeds) - want).max() < 1e-4 * max(1.0, float(np.abs(want).max()))
    assert {n.op_type for n in fixed.graph.node} == {n.op_type for n in plain.graph.node}  # the same Q/DQ, bias moved
