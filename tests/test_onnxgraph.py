"""Constant lifting: scalar and tensor Constant nodes become initializers, and the graph computes the same."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from vkt.onnxgraph import constants_to_initializers

SCALE = np.array(1.5, np.float32)                      # a scalar Constant (0-d)
SHIFT = np.array([0.5, -1.0, 2.0], np.float32)         # a tensor Constant, broadcast on the last axis
TABLE = np.arange(6, dtype=np.float32).reshape(2, 3)   # a Constant that is itself a graph output


def constant_graph():
    """y = x * SCALE + SHIFT, and the Constant TABLE returned as a second output."""
    nodes = [helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(SCALE)),
             helper.make_node("Constant", [], ["shift"], value=numpy_helper.from_array(SHIFT)),
             helper.make_node("Constant", [], ["table"], value=numpy_helper.from_array(TABLE)),
             helper.make_node("Mul", ["x", "scale"], ["m"]),
             helper.make_node("Add", ["m", "shift"], ["y"])]
    g = helper.make_graph(nodes, "consts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                           helper.make_tensor_value_info("table", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def test_scalar_and_tensor_constants_become_initializers_and_the_graph_runs_the_same():
    before = constant_graph()
    after = constant_graph()
    assert constants_to_initializers(after) == 3
    onnx.checker.check_model(after, full_check=True)
    assert [n.op_type for n in after.graph.node] == ["Mul", "Add"]
    inits = {i.name: numpy_helper.to_array(i) for i in after.graph.initializer}
    assert inits["scale"].shape == () and inits["scale"] == SCALE          # the scalar keeps its 0-d shape
    np.testing.assert_array_equal(inits["shift"], SHIFT)
    np.testing.assert_array_equal(inits["table"], TABLE)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    want = [x * SCALE + SHIFT, TABLE]                                      # computed by hand, not by either graph
    for got_before, got_after, w in zip(run(before, x), run(after, x), want):
        np.testing.assert_array_equal(got_after, got_before)
        np.testing.assert_allclose(got_after, w, rtol=1e-6)


def test_nothing_to_lift_leaves_the_graph_alone():
    m = constant_graph()
    constants_to_initializers(m)
    blob = m.SerializeToString()
    assert constants_to_initializers(m) == 0 and m.SerializeToString() == blob


def test_import_lifts_scalar_constants_too(tmp_path):
    """`vkt export onnx --no-optimize` ships the graph with every Constant tensor as an initializer."""
    from vkt.export.onnx_import import import_onnx

    src = tmp_path / "consts.onnx"
    onnx.save(constant_graph(), str(src))
    b = import_onnx(src, tmp_path / "consts.vkt", optimize=False)
    shipped = onnx.load(str(b.path("fp32 onnx")))
    assert "Constant" not in [n.op_type for n in shipped.graph.node]
    assert numpy_helper.to_array(next(i for i in shipped.graph.initializer if i.name == "scale")) == SCALE


def split_hardswish_graph(alpha: float = 1 / 6, opset: int = 14):
    """x -> Conv -> c -> HardSigmoid(alpha, 0.5) -> h; Mul(c, h) -> Conv -> y: HardSwish as onnxruntime's
    pre-processing splits it (and as bundles written before session 8 hold it)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c"], ["h"], name="hsig", alpha=alpha, beta=0.5),
             helper.make_node("Mul", ["c", "h"], ["m"], name="mul"),
             helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "h", "w"])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_rewrite_fp32_fuses_hardswish_exactly_also_in_an_already_prepared_graph():
    from vkt.onnxgraph import is_prepared, prepare_model, rewrite_fp32

    x = np.random.default_rng(1).standard_normal((1, 3, 10, 12)).astype(np.float32) * 4
    old = prepare_model(split_hardswish_graph())  # an old bundle's FP32: prepared, HardSwish split
    assert is_prepared(old) and "HardSigmoid" in [n.op_type for n in old.graph.node]
    new = rewrite_fp32(old)
    assert [n.op_type for n in new.graph.node] == ["Conv", "HardSwish", "Conv"]
    assert new.graph.node[1].name == "mul" and new.graph.node[1].output[0] == "m"  # a table's tensor names hold
    np.testing.assert_allclose(run(new, x)[0], run(old, x)[0], atol=1e-5, rtol=0)
    assert [n.op_type for n in rewrite_fp32(new).graph.node] == ["Conv", "HardSwish", "Conv"]  # idempotent


def test_fuse_hardswish_leaves_other_hardsigmoids_and_old_opsets():
    from vkt.onnxgraph import fuse_hardswish

    for m in (split_hardswish_graph(alpha=0.2), split_hardswish_graph(opset=13)):  # not HardSwish; no HardSwish op
        m, fused = fuse_hardswish(m)
        assert fused == [] and [n.op_type for n in m.graph.node] == ["Conv", "HardSigmoid", "Mul", "Conv"]
