"""place_ov: where its Q/DQ goes, that OpenVINO runs it on integer kernels, the HardSwish re-fusion, and its gate."""

from __future__ import annotations

import numpy as np
import pytest
from calib_helpers import feeds, run

from vkt.calibration import compute_ranges
from vkt.calibration.place_ov import fuse_hardswish, place_ov
from vkt.onnxgraph import prepare_model

pytest.importorskip("openvino")  # the test extra installs it


@pytest.fixture(scope="module")
def toy():
    from vkt.export.toy import toy_convnet

    model, _ = toy_convnet()
    data = feeds()
    return prepare_model(model), compute_ranges(model, data, show_progress=False), data


def _dq_readers(model) -> dict[str, set[int]]:
    """node name -> indices of its inputs that are DequantizeLinear outputs."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: {i for i, x in enumerate(n.input) if x in dq} for n in model.graph.node}


def test_quantizes_conv_inputs_and_weights_and_both_residual_branches(toy):
    fp32, table, _ = toy
    q = place_ov(fp32, table)
    reads = _dq_readers(q)
    convs = [n.name for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == 6 and all(reads[c] == {0, 1} for c in convs)  # activation and weight, bias float
    adds = [n.name for n in q.graph.node if n.op_type == "Add"]
    assert adds and all(reads[a] == {0, 1} for a in adds)  # both branches of each residual Add
    assert reads["head_sigmoid"] == set()  # the output's activation stays float
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["vkt.qdq.placement"] == "openvino" and meta["vkt.qdq.table_sha256"] == table.sha256


def test_openvino_runs_every_conv_on_integers_close_to_fp32(toy):
    from vkt.runtime.openvino import OvRunner

    fp32, table, data = toy
    q = place_ov(fp32, table)
    feed = data[2]
    with OvRunner(q.SerializeToString(), threads=1) as ov8, OvRunner(fp32.SerializeToString(), threads=1) as ov32:
        assert ov8.executed_precisions() == {"Convolution": {"u8": 6}}  # OpenVINO's runtime graph, not a guess
        assert ov32.executed_precisions() == {"Convolution": {"f32": 6}}
        got, ref = ov8.infer(feed, check=False), ov32.infer(feed, check=False)
    name = next(iter(ref))
    err = np.linalg.norm(got[name] - ref[name]) / np.linalg.norm(ref[name])
    # onnxruntime running the same Q/DQ graph as the simulation of it: OpenVINO's error is of its size, and not zero
    ort_got = run(q, feed)[0]
    ort_err = np.linalg.norm(ort_got - ref[name]) / np.linalg.norm(ref[name])
    assert 0 < err < 0.05 and err <= 1.5 * ort_err + 1e-3, (err, ort_err)


def test_excluded_conv_stays_float_on_openvino(toy):
    from vkt.runtime.openvino import OvRunner

    fp32, table, _ = toy
    q = place_ov(fp32, table, exclude=["block0.conv1"])
    reads = _dq_readers(q)
    assert reads["block0.conv1"] == set()
    # its input is also the residual branch of block0.add: quantized for all readers or none, so the Add reads it
    # float too (its other input, block0.conv2's output, keeps its quantizer)
    x = next(n.input[0] for n in q.graph.node if n.name == "block0.conv1")
    add = next(n for n in q.graph.node if n.name == "block0.add")
    assert x in add.input and reads["block0.add"] == {1 - list(add.input).index(x)}
    with OvRunner(q.SerializeToString(), threads=1) as r:
        assert r.executed_precisions() == {"Convolution": {"u8": 5, "f32": 1}}


def _hardswish_graph(alpha: float = 1 / 6):
    """X -> Conv -> c -> HardSigmoid(alpha, 0.5) -> h; Mul(c, h) -> Y (HardSwish as onnxruntime's pre-processing splits it)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c"], ["h"], name="hsig", alpha=alpha, beta=0.5),
             helper.make_node("Mul", ["c", "h"], ["Y"], name="mul")]
    g = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, 8, 8])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def test_fuse_hardswish_is_exact_and_leaves_other_hardsigmoids():
    m = _hardswish_graph()
    x = {"X": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32) * 4}
    want = run(m, x)[0]
    import onnx

    fused = onnx.ModelProto()
    fused.CopyFrom(m)
    fused, names = fuse_hardswish(fused)
    assert names == ["mul"] and [n.op_type for n in fused.graph.node] == ["Conv", "HardSwish"]
    assert fused.graph.node[1].output[0] == "Y"  # the Mul's output name: a table of the split graph still applies
    np.testing.assert_allclose(run(fused, x)[0], want, atol=1e-5, rtol=0)
    other, names = fuse_hardswish(_hardswish_graph(alpha=0.2))  # HardSigmoid(0.2) * x is not HardSwish
    assert names == [] and [n.op_type for n in other.graph.node] == ["Conv", "HardSigmoid", "Mul"]


def test_gate_scores_and_times_the_openvino_placement_on_openvino(toy_bundle):
    from vkt.bundle import Bundle
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration.api import gate_bundle
    from vkt.calibration.gate import GateConfig
    from vkt.runtime.openvino import OvRunner

    quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("ort", "openvino")), eval_samples=0, show_progress=False)
    seen = []

    def metric(factory) -> float:
        r = factory()
        seen.append(type(r).__name__)
        with r:
            return 1.0 if isinstance(r, OvRunner) else 0.0  # FP32 and INT8 alike: any non-OpenVINO runner fails

    sens = feeds(((1, 3, 16, 16),), seed=3)
    section = gate_bundle(toy_bundle, metric, GateConfig(placement="openvino", steps=(0,), iters=2, ranking="prefix",
                                                           min_speedup=0),
                          latency_feed=sens[0], show_progress=False)
    assert seen == ["OvRunner", "OvRunner"]  # FP32 baseline, then step 0
    gate = section["openvino_gate"]
    timing = gate["steps"][0]["timing"]
    assert gate["placement"] == "openvino" and gate["passed"] and timing["int8_ms"] > 0 and timing["fp32_ms"] > 0
    assert timing["runner"]["backend"] == "ov"  # timed on OpenVINO too, not only scored there
    b = Bundle.load(toy_bundle)
    assert b.manifest["calibration"]["openvino_gate"] == gate and "gate" not in b.manifest["calibration"]
    assert {e.meta["placement"] for e in b.files("int8 qdq onnx")} == {"ort", "openvino"}


def test_quantize_prints_the_openvino_gate_and_its_bench_command(toy_bundle, capsys):
    """`vkt quantize` printed only the ort gate: the openvino placement's own gate (what it shipped, its speed-up on
    OpenVINO and the `vkt bench` command with ov targets) was in the manifest alone."""
    from vkt.bundle import Bundle
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration.api import gate_bundle
    from vkt.calibration.gate import GateConfig
    from vkt.cli.quantize import print_calibration

    quantize_bundle(toy_bundle, feeds(), Int8Config(targets=("ort", "openvino")), eval_samples=0, show_progress=False)
    sens = feeds(((1, 3, 16, 16),), seed=3)
    for placement in ("ort", "openvino"):
        gate_bundle(toy_bundle, lambda factory: 1.0, GateConfig(placement=placement, steps=(0,), iters=2,
                                                                ranking="prefix", min_speedup=0),
                    latency_feed=sens[0], show_progress=False)
    b = Bundle.load(toy_bundle)
    print_calibration(b, b.manifest["calibration"])
    out = " ".join(capsys.readouterr().out.split())
    assert "in float (ort placement)" in out and "in float (openvino placement)" in out
    assert "on OpenVINO CPU at 1x3x" in out and "-t ort:fp32 -t ov:fp32 -t ov:int8" in out
    assert "-t ort:fp32 -t ort:int8" in out  # the ort gate's own command is still there
