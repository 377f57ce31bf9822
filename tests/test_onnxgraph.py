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
