"""place_trt / place_ort: where Q/DQ goes, that TensorRT-RTX builds it, that onnxruntime fuses it, and accuracy."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from calib_helpers import feeds, linear_layers, run, trt_build

from vkt.calibration import compute_ranges, count_ops, layer_errors, place_ort, place_trt
from vkt.errors import CalibrationError
from vkt.onnxgraph import prepare_model

needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="needs tensorrt-rtx (pip install 'vkt[rtx]')")
TOY_PROFILE = {"image": ((1, 3, 16, 16), (1, 3, 32, 32), (2, 3, 64, 64))}

# Accuracy bound for the toy net on its own calibration data. One 8-bit uniform quantizer of a
# tensor clipped at its observed max (~4 sigma for these Gaussian-fed convs) gives an SQNR of about
# 6.02*8 + 1.76 - 20*log10(4) ~ 38 dB; the toy has ~12 quantized tensors (activations + weights)
# whose independent noise powers add (-10.8 dB) -> ~27 dB, i.e. a relative L2 error of ~4.5%.
# Measured: 1.5-2.5%. A bound of 5% passes a correct placement and fails a wrong scale/axis/sign,
# which gives errors of 30% and more.
REL_L2_BOUND = 0.05


@pytest.fixture(scope="module")
def toy():
    from vkt.export.toy import toy_convnet

    model, _ = toy_convnet()
    data = feeds()
    return prepare_model(model), compute_ranges(model, data, show_progress=False), data


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _inits(model):
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_ort_uint8_params_match_onnxruntime():
    """The one uint8 rule (the ORT placement, the gate's per-tensor Q/DQ and QAT's fake quantization) is ORT's own."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    from vkt.calibration.qdq import ort_uint8_params

    ranges = ((-1.3, 2.7), (0.0, 6.0), (0.5, 3.0), (-4.0, -1.0), (0.0, 0.0))
    for lo, hi in ranges:
        zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.array(0, np.uint8), np.array(255, np.uint8))
        s, z = ort_uint8_params(lo, hi)
        assert s.dtype == np.float32 and z.dtype == np.uint8
        assert int(z) == int(zp) and float(s) == pytest.approx(float(scale), rel=1e-6)
    s, z = ort_uint8_params(*np.array(ranges).T)  # per channel: the same rule element-wise
    assert [int(v) for v in z] == [int(ort_uint8_params(lo, hi)[1]) for lo, hi in ranges]


def test_trt_placement_quantizes_every_conv_input_and_weight(toy):
    fp32, table, _ = toy
    q = place_trt(fp32, table)
    prod, inits = _producers(q), _inits(q)
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == 6
    for conv in convs:
        x_dq, w_dq = prod[conv.input[0]], prod[conv.input[1]]
        assert x_dq.op_type == "DequantizeLinear" and prod[x_dq.input[0]].op_type == "QuantizeLinear", conv.name
        assert w_dq.op_type == "DequantizeLinear", conv.name
        # activations: per-tensor int8, zero point 0, scale = amax / 127
        zp, scale = inits[x_dq.input[2]], inits[x_dq.input[1]]
        assert zp.dtype == np.int8 and zp.shape == () and zp == 0
        src = prod[x_dq.input[0]].input[0]
        assert scale == pytest.approx(table.amax(src) / 127, rel=1e-6)
        # weights: int8, per-channel along the output channels (axis 0), zero points 0
        w, wscale, wzp = (inits[x] for x in w_dq.input)
        assert w.dtype == np.int8 and np.abs(w).max() == 127
        assert {a.name: a.i for a in w_dq.attribute} == {"axis": 0}
        assert wscale.shape == (w.shape[0],) and wzp.dtype == np.int8 and not wzp.any()
        # bias stays a float initializer (TensorRT rejects an int32 bias DequantizeLinear)
        assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32
    assert not [n for n in q.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.int8(0)).dtype == np.int32]
    assert q.opset_import[0].version >= 13


def test_trt_placement_axes_for_matmul_gemm_convtranspose():
    m = linear_layers()
    data = [{"X": np.random.default_rng(i).standard_normal((2, 8)).astype(np.float32)} for i in range(3)]
    q = place_trt(m, compute_ranges(m, data, show_progress=False))
    prod, inits = _producers(q), _inits(q)
    axis = {}
    for n in q.graph.node:
        if n.op_type in ("MatMul", "Gemm", "ConvTranspose"):
            dq = prod[n.input[1]]
            assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int8
            assert prod[n.input[0]].op_type == "DequantizeLinear"
            axis[n.op_type] = ({a.name: a.i for a in dq.attribute}["axis"], inits[dq.input[1]].shape)
    # MatMul W [8, 6] -> 6 output columns (axis 1); Gemm transB W [5, 6] -> axis 0; deconv W [5, 3, 2, 2] -> axis 1
    assert axis == {"MatMul": (1, (6,)), "Gemm": (0, (5,)), "ConvTranspose": (1, (3,))}
    gemm = next(n for n in q.graph.node if n.op_type == "Gemm")
    assert gemm.input[2] == "B2"  # float bias
    assert _rel_l2(run(m, data[0])[0], run(q, data[0])[0]) < REL_L2_BOUND


@needs_rtx
def test_trt_placement_parses_and_builds_in_tensorrt_rtx(toy):
    fp32, table, _ = toy
    assert len(trt_build(place_trt(fp32, table), TOY_PROFILE)) > 0
    m = linear_layers()
    data = [{"X": np.random.default_rng(i).standard_normal((2, 8)).astype(np.float32)} for i in range(2)]
    assert len(trt_build(place_trt(m, compute_ranges(m, data, show_progress=False)))) > 0


@needs_rtx
def test_ort_placement_is_rejected_by_tensorrt(toy):
    # Why two placements exist: quantize_static's int32 bias DequantizeLinear does not parse.
    fp32, table, _ = toy
    with pytest.raises(AssertionError, match="Int32"):
        trt_build(place_ort(fp32, table), TOY_PROFILE)


def test_trt_placement_stays_close_to_fp32(toy):
    fp32, table, data = toy
    q = place_trt(fp32, table)
    for feed in data:
        assert _rel_l2(run(fp32, feed)[0], run(q, feed)[0]) < REL_L2_BOUND


def test_ort_placement_fuses_every_conv_and_stays_close(toy):
    fp32, table, data = toy
    q = place_ort(fp32, table)
    counts = count_ops(q)
    assert counts.int8.get("QLinearConv") == 6 and counts.float_compute == 0, counts
    for feed in data:
        assert _rel_l2(run(fp32, feed)[0], run(q, feed)[0]) < REL_L2_BOUND
    # uint8 activations: that is what makes x86 fuse them
    inits = _inits(q)
    act_zps = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert act_zps and all(z.dtype == np.uint8 for z in act_zps)
    rows = layer_errors(fp32, q, data[:1])
    assert rows and all(r["sqnr_db"] > 20 for r in rows), rows


def test_fp32_has_float_convs_only(toy):
    counts = count_ops(toy[0])
    assert counts.fused == 0 and counts.float_compute == 6


def test_excluded_nodes_stay_float(toy):
    fp32, table, _ = toy
    q = place_trt(fp32, table, exclude=["block0.conv1"])
    prod = _producers(q)
    conv = next(n for n in q.graph.node if n.name == "block0.conv1")
    assert all(x not in prod or prod[x].op_type != "DequantizeLinear" for x in conv.input)
    assert sum(1 for n in q.graph.node if n.op_type == "Conv" and n.input[1] in prod) == 5
    q = place_ort(fp32, table, exclude=["block0.conv1", "head"])
    prod = _producers(q)
    for name in ("block0.conv1", "head"):
        node = next(n for n in q.graph.node if n.name == name)
        assert all(x not in prod or prod[x].op_type != "DequantizeLinear" for x in node.input), name
    counts = count_ops(q)
    assert counts.int8["QLinearConv"] == 4 and counts.float_compute == 2, counts
    feed = toy[2][0]
    assert _rel_l2(run(fp32, feed)[0], run(q, feed)[0]) < REL_L2_BOUND
    with pytest.raises(CalibrationError, match=r"cannot exclude \['nope'\]"):
        place_trt(fp32, table, exclude=["nope"])
    with pytest.raises(CalibrationError, match=r"cannot exclude \['nope'\]"):
        place_ort(fp32, table, exclude=["nope"])


def test_ort_keeps_softmax_float():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["h"], name="mm"),
                           helper.make_node("Softmax", ["h"], ["Y"], name="sm", axis=-1)], "s",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    data = [{"X": np.random.default_rng(i).standard_normal((4, 8)).astype(np.float32)} for i in range(2)]
    q = place_ort(m, compute_ranges(m, data, show_progress=False))
    prod = _producers(q)
    sm = next(n for n in q.graph.node if n.op_type == "Softmax")
    assert prod[sm.input[0]].op_type != "DequantizeLinear" and "Y" == sm.output[0]


def test_placement_rejects_bad_table(toy):
    with pytest.raises(CalibrationError, match="expected a CalibrationTable"):
        place_trt(toy[0], {"image": (0, 1)})


def test_layer_sensitivity_ranks_every_conv(toy):
    from vkt.calibration import layer_sensitivity

    fp32, table, data = toy
    rows = layer_sensitivity(fp32, table, data[:1], show_progress=False)
    assert sorted(r["node"] for r in rows) == sorted(n.name for n in fp32.graph.node if n.op_type == "Conv")
    sq = [r["output_sqnr_db"] for r in rows]
    assert sq == sorted(sq) and all(30 < s < 80 for s in sq), rows  # one quantized layer: small, non-zero error


# ---- the "compute" ORT placement: Conv/MatMul/Gemm only, affine folded, the chains between in float ----
@pytest.fixture(scope="module")
def chain():
    from calib_helpers import affine_chain_net

    m = prepare_model(affine_chain_net())
    data = feeds(shapes=((1, 3, 16, 16), (1, 3, 24, 16), (1, 3, 32, 16)), name="X")
    return m, compute_ranges(m, data, show_progress=False), data


def test_fold_conv_affine_is_exact_and_keeps_output_names(chain):
    from calib_helpers import affine_chain_net

    from vkt.onnxgraph import fold_conv_affine

    _, _, data = chain
    fp32 = affine_chain_net()  # unprepared: quant_pre_process already folds the per-channel constants itself
    folded, names = fold_conv_affine(fp32)
    # the scalar, [1, C, 1, 1] and [C, 1, 1] constants fold; the one broadcasting along W ([16]) must not
    assert sorted(names) == ["ch_add", "ch_mul", "lab0_add", "lab0_mul"], names
    ops = [n.op_type for n in folded.graph.node]
    assert ops.count("Mul") == 3 and ops.count("Add") == 1, ops  # hswish0, act_mul, width_mul; act_add stay
    convs = {n.name: n.output[0] for n in folded.graph.node if n.op_type == "Conv"}
    assert convs == {"conv0": "l0", "dw": "x2", "pw": "y2"}  # a table of the unfolded graph still names them
    for feed in data:
        ref, got = run(fp32, feed)[0], run(folded, feed)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def test_compute_placement_quantizes_only_conv_inputs_and_outputs(chain):
    fp32, table, data = chain
    q = place_ort(fp32, table, ops="compute")
    assert {p.key: p.value for p in q.metadata_props}["vkt.qdq.ops"] == "compute"
    counts = count_ops(q)
    assert counts.int8 == {"QLinearConv": 3} and counts.float_compute == 0, counts  # all three convs fused, nothing else
    prod = _producers(q)
    readers = {}
    for n in q.graph.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    n_q = 0
    for n in q.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        n_q += 1
        src = n.input[0]
        feeds_conv = all(r.op_type == "Conv" for dq in readers[n.output[0]] for r in readers.get(dq.output[0], []))
        from_conv = src in prod and prod[src].op_type == "Conv"
        assert feeds_conv or from_conv, f"Q/DQ on {src!r}: neither a conv input nor a conv output"
    assert n_q == 5  # X, x1, the dw output (folded: x2), l0 (conv0's folded output), y2 (pw output, read by width_mul)
    for feed in data:
        assert _rel_l2(run(fp32, feed)[0], run(q, feed)[0]) < REL_L2_BOUND


def test_compute_placement_is_closer_than_all_on_spread_channels(chain):
    """The chain's per-tensor Q/DQ points in "all" lose the small channels; "compute" keeps them float."""
    fp32, table, data = chain
    err = {ops: np.mean([_rel_l2(run(fp32, f)[0], run(place_ort(fp32, table, ops=ops), f)[0]) for f in data])
           for ops in ("all", "compute")}
    assert err["compute"] < err["all"], err


def test_place_ort_rejects_unknown_ops(chain):
    fp32, table, _ = chain
    with pytest.raises(CalibrationError, match="ops must be one of"):
        place_ort(fp32, table, ops="convs")


def test_fold_conv_transpose_bias_add_and_batchnorm():
    """PP-OCRv5's head: ConvTranspose -> Add(bias) -> BatchNormalization -> Relu -> ConvTranspose -> Add; the grouped one stays."""
    from onnx import TensorProto, helper, numpy_helper

    from vkt.onnxgraph import fold_conv_affine

    rng = np.random.default_rng(3)

    def init(name, *shape, positive=False):
        a = rng.standard_normal(shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(a) + 0.5 if positive else a, name)

    inits = [init("w1", 6, 4, 2, 2), init("b1", 1, 4, 1, 1), init("g", 4), init("be", 4), init("mu", 4),
             init("var", 4, positive=True), init("w2", 4, 1, 2, 2), init("b2", 1), init("w3", 2, 1, 3, 3), init("b3", 1, 2, 1, 1)]
    nodes = [helper.make_node("ConvTranspose", ["x", "w1"], ["t1"], name="up1", strides=[2, 2]),
             helper.make_node("Add", ["t1", "b1"], ["a1"], name="add1"),
             helper.make_node("BatchNormalization", ["a1", "g", "be", "mu", "var"], ["bn"], name="bn1", epsilon=1e-5),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("ConvTranspose", ["r", "w2"], ["t2"], name="up2", strides=[2, 2]),
             helper.make_node("Add", ["t2", "b2"], ["a2"], name="add2"),
             helper.make_node("Concat", ["a2", "a2"], ["cc"], name="cat", axis=1),
             helper.make_node("ConvTranspose", ["cc", "w3"], ["t3"], name="up3", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["t3", "b3"], ["y"], name="add3")]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    folded, names = fold_conv_affine(m)
    assert names == ["add1", "bn1", "add2"], names  # the grouped ConvTranspose keeps its Add
    assert [n.op_type for n in folded.graph.node] == ["ConvTranspose", "Relu", "ConvTranspose", "Concat", "ConvTranspose", "Add"]
    assert [n.output[0] for n in folded.graph.node if n.name in ("up1", "up2")] == ["bn", "a2"]
    x = {"x": rng.standard_normal((1, 6, 5, 7)).astype(np.float32)}
    ref, got = run(m, x)[0], run(folded, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
