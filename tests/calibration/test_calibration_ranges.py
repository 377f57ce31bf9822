"""compute_ranges / CalibrationTable: hand-checked ranges, JSON round trip, degenerate data, odd models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from calib_helpers import feeds, mul_relu_conv, run, with_constant_weights

from vkt.calibration import CalibrationTable, compute_ranges, place_ort, place_trt
from vkt.errors import CalibrationError
from vkt.onnxgraph import prepare_model


def test_minmax_matches_hand_computed_ranges():
    data = feeds(((1, 2, 5, 7), (1, 2, 9, 4), (1, 2, 6, 6)), seed=3, name="X")
    table = compute_ranges(mul_relu_conv(), data, "minmax", show_progress=False)
    x = np.concatenate([d["X"].ravel() for d in data])
    assert table["X"] == pytest.approx((x.min(), x.max()), rel=1e-6)
    assert table["m"] == pytest.approx((2 * x.min(), 2 * x.max()), rel=1e-6)
    assert table["r"] == pytest.approx((0.0, 2 * x.max()), rel=1e-6)
    # The conv output's range, from onnxruntime's FP32 outputs over the same feeds.
    y = np.concatenate([run(mul_relu_conv(), d)[0].ravel() for d in data])
    assert table["Y"] == pytest.approx((y.min(), y.max()), rel=1e-5)
    assert table.num_samples == 3 and table.method == "minmax"


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_methods_stay_inside_observed_range(method):
    # Mixed shapes: ORT's histogram calibrators crash on them unless fed one sample at a time.
    data = feeds(((1, 2, 5, 7), (1, 2, 9, 4), (1, 2, 6, 6)), seed=3, name="X")
    mm = compute_ranges(mul_relu_conv(), data, "minmax", show_progress=False)
    table = compute_ranges(mul_relu_conv(), data, method, show_progress=False)
    assert set(table.ranges) == set(mm.ranges)
    for name, (lo, hi) in table.ranges.items():
        assert mm[name][0] - 1e-6 <= lo <= hi <= mm[name][1] + 1e-6, name
    assert table["r"][0] == 0.0  # clipped to the observed minimum of a ReLU output, not -threshold


def test_num_samples_limits_the_feeds():
    table = compute_ranges(mul_relu_conv(), iter(feeds(name="X", shapes=[(1, 2, 4, 4)] * 5)), num_samples=2, show_progress=False)
    assert table.num_samples == 2


def test_table_round_trips_through_json_with_same_hash(tmp_path):
    table = compute_ranges(mul_relu_conv(), feeds(name="X", shapes=[(1, 2, 4, 4)] * 2), show_progress=False)
    again = CalibrationTable.from_json(table.to_json())
    assert again == table and again.sha256 == table.sha256
    path = table.save(tmp_path / "t.json")
    assert CalibrationTable.load(path).sha256 == table.sha256
    d = json.loads(table.to_json())
    d["ranges"]["X"][1] += 1.0
    with pytest.raises(CalibrationError, match="sha256"):
        CalibrationTable.from_json(json.dumps(d))
    with pytest.raises(CalibrationError, match="not valid JSON"):
        CalibrationTable.from_json("{")
    with pytest.raises(CalibrationError, match="min <= max"):
        CalibrationTable({"x": (1.0, 0.0)}, "minmax", 1, "0")


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_constant_data_is_rejected(value):
    data = [{"X": np.full((1, 2, 4, 4), value, np.float32)} for _ in range(3)]
    with pytest.raises(CalibrationError, match=r"degenerate calibration data: graph input 'X' always"):
        compute_ranges(mul_relu_conv(), data, show_progress=False)


def test_dead_activation_feeding_conv_is_rejected():
    # Negative inputs: Relu(2x) is 0 everywhere, so the conv's input has no scale.
    data = [{"X": -np.abs(np.random.default_rng(i).standard_normal((1, 2, 4, 4))).astype(np.float32) - 0.1} for i in range(2)]
    with pytest.raises(CalibrationError, match=r"activation\(s\) \['r'\] feeding Conv"):
        compute_ranges(mul_relu_conv(), data, show_progress=False)


def test_bad_data_is_rejected():
    m = mul_relu_conv()
    with pytest.raises(CalibrationError, match="yielded nothing"):
        compute_ranges(m, [], show_progress=False)
    with pytest.raises(CalibrationError, match=r"expected inputs \['X'\], got \['image'\]"):
        compute_ranges(m, feeds(), show_progress=False)
    with pytest.raises(CalibrationError, match="single dict"):
        compute_ranges(m, {"X": np.zeros((1, 2, 4, 4), np.float32)}, show_progress=False)
    with pytest.raises(CalibrationError, match="NaN"):
        compute_ranges(m, [{"X": np.full((1, 2, 4, 4), np.nan, np.float32)}], show_progress=False)
    with pytest.raises(CalibrationError, match="method must be one of"):
        compute_ranges(m, feeds(name="X"), "kl", show_progress=False)


def test_constant_node_weights_and_opset12_are_handled():
    m12 = with_constant_weights(mul_relu_conv(opset=12), opset=12)
    assert not m12.graph.initializer and m12.opset_import[0].version == 12
    prepared = prepare_model(m12)
    assert prepared.opset_import[0].version >= 13
    assert {"w", "b"} <= {i.name for i in prepared.graph.initializer}
    assert prepare_model(prepared).SerializeToString() == prepared.SerializeToString()  # idempotent
    data = feeds(name="X", shapes=[(1, 2, 6, 6)] * 3)
    table = compute_ranges(m12, data, show_progress=False)
    ref = run(mul_relu_conv(), data[0])[0]
    for place in (place_trt, place_ort):
        q = place(m12, table)
        dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)]
        assert dq, f"{place.__name__}: expected a per-channel weight DequantizeLinear"
        out = run(q, data[0])[0]
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


def _zero_queries_matmul():
    """DETR's decoder pattern: q = ConstantOfShape(Shape(X)) zeros -> MatMul(W) -> Add(X) -> Y, X [2, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["X"], ["s"], name="shape"),
             helper.make_node("ConstantOfShape", ["s"], ["zeros"], name="zeros_like",
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("MatMul", ["zeros", "w"], ["v"], name="v_proj"),
             helper.make_node("Add", ["v", "X"], ["Y"], name="add")]
    g = helper.make_graph(nodes, "zq", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 4])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 4])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_activation_computed_from_constants_only_is_not_degenerate():
    data = [{"X": np.random.default_rng(i).standard_normal((2, 4)).astype(np.float32)} for i in range(3)]
    table = compute_ranges(_zero_queries_matmul(), data, show_progress=False)
    assert table["zeros"] == (0.0, 0.0)          # recorded, but no data could have changed it
    for qdq in (place_ort(_zero_queries_matmul(), table), place_trt(_zero_queries_matmul(), table)):
        y = run(qdq, data[0])[0]
        np.testing.assert_allclose(y, data[0]["X"], atol=0.05)   # zeros @ W + X, X quantized at most


def test_excluded_nodes_are_not_judged_degenerate():
    data = [{"X": -np.abs(np.random.default_rng(i).standard_normal((1, 2, 4, 4))).astype(np.float32) - 0.1} for i in range(2)]
    table = compute_ranges(mul_relu_conv(), data, exclude=["conv"], show_progress=False)
    assert table["r"] == (0.0, 0.0)


def test_percentile_histograms_match_onnxruntimes_collector():
    """vkt's |x| histogram collector (numpy's uniform-bin path) against onnxruntime's own HistogramCollector, fed the
    same samples, whose growing scale widens the bins twice: same edges, the same counts and the same percentile ranges."""
    from types import SimpleNamespace

    from onnxruntime.quantization.calibrate import HistogramCollector

    from vkt.calibration.ranges import _abs_histogram_collector

    opts = dict(method="percentile", symmetric=True, num_bins=2048, num_quantized_bins=128, percentile=99.9, scenario="same")
    ours, peer = _abs_histogram_collector(SimpleNamespace(**opts)), HistogramCollector(**opts)
    rng = np.random.default_rng(0)
    for scale in (1.0, 3.0, 2.0, 7.5):
        sample = {"a": [(rng.standard_normal((1, 4, 64, 64)) * scale).astype(np.float32)],
                  "b": [rng.exponential(scale, (1, 8, 32, 32)).astype(np.float32) - 0.1]}
        ours.collect({k: list(v) for k, v in sample.items()})
        peer.collect(sample)
    for name in ("a", "b"):
        h, e, lo, hi = ours.histogram_dict[name]
        ph, pe, plo, phi = peer.histogram_dict[name]
        assert len(e) > 2049 and np.array_equal(e, pe) and (lo, hi) == (plo, phi)
        assert np.array_equal(h, ph)
    got, want = ours.compute_collection_result(), peer.compute_collection_result()
    for name in ("a", "b"):
        assert got[name][:2] == want[name][:2]


def test_a_first_sample_narrower_than_its_bins_is_binned_from_zero():
    """|x| spanning 3 float32 steps around 1.0 (numpy: "Too many bins for data range", which stopped a calibration of
    the randomly initialised PP-OCRv5 server detector): binned over [0, max |x|]; the percentile range stays within
    the observed one, and a later, wider sample widens the bins as usual."""
    from types import SimpleNamespace

    from vkt.calibration.ranges import _abs_histogram_collector

    opts = dict(method="percentile", symmetric=True, num_bins=2048, num_quantized_bins=128, percentile=99.9, scenario="same")
    ours = _abs_histogram_collector(SimpleNamespace(**opts))
    one = np.float32(1.0)
    narrow = np.array([one, np.nextafter(one, np.float32(2)), -np.nextafter(np.nextafter(one, np.float32(2)), np.float32(2))],
                      np.float32)
    with pytest.raises(ValueError, match="Too many bins"):  # the case: numpy's own binning of it fails
        np.histogram(np.abs(narrow), bins=2048)
    ours.collect({"t": [narrow.reshape(1, 3)], "z": [np.full((1, 4), 1e-44, np.float32)]})
    hist, edges, lo, hi = ours.histogram_dict["t"]
    assert edges[0] == 0 and edges[-1] == np.abs(narrow).max() and hist.sum() == 3
    assert (lo, hi) == (narrow.min(), narrow.max())
    assert ours.histogram_dict["z"][0].sum() == 4
    ours.collect({"t": [np.array([[3.0, -0.5]], np.float32)], "z": [np.zeros((1, 4), np.float32)]})
    assert ours.histogram_dict["t"][1][-1] >= 3.0 and ours.histogram_dict["t"][0].sum() == 5
    lo_t, hi_t = ours.compute_collection_result()["t"][:2]
    assert -3.0 <= float(lo_t) <= 0 <= float(hi_t) <= 3.0
