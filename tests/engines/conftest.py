"""Fixtures for engine-builder tests: the toy conv net as an ONNX file and as a bundle (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(path to toy.onnx, ExportSpec) — dynamic batch/height/width, one profile."""
    import onnx

    from vkt.export.toy import toy_convnet

    model, spec = toy_convnet()
    path = tmp_path_factory.mktemp("toy_engines") / "toy.onnx"
    onnx.save(model, str(path))
    return path, spec


@pytest.fixture()
def toy_bundle_dir(tmp_path, toy) -> Path:
    """A fresh bundle holding the toy model as 'fp32 onnx' (function-scoped: tests add plans to it)."""
    from vkt.bundle import BundleWriter

    path, spec = toy
    dest = tmp_path / "toy.vkt"
    with BundleWriter(dest, family="generic", task="tensor") as w:
        w.add_component("model", spec)
        w.add_file(path, "model.onnx", role="fp32 onnx")
    return dest


@pytest.fixture(scope="module")
def nonzero_onnx(tmp_path_factory) -> Path:
    """A one-node graph with NonZero (node 'find_nz'), which TensorRT-RTX cannot build."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, "k"])
    graph = helper.make_graph([helper.make_node("NonZero", ["x"], ["y"], name="find_nz")], "nz", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("nz") / "nonzero.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def qdq_onnx(tmp_path_factory):
    """(path, ExportSpec) of an explicit-INT8 conv: Q/DQ on the activation, int8 per-channel weights, float bias."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vkt.specs import ExportSpec, Profile, TensorSpec

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(8, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(8, np.int8), "w_zp"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_quant"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x_dequant"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="w_dequant", axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq", "bias"], ["conv"], name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["y"], name="relu"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, "height", "width"])
    model = helper.make_model(helper.make_graph(nodes, "qdq_conv", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path_factory.mktemp("qdq") / "qdq.onnx"
    onnx.save(model, str(path))
    spec = ExportSpec((TensorSpec("x", "float32", ("batch", 3, "height", "width")),),
                      (TensorSpec("y", "float32", ("batch", 8, "height", "width")),),
                      (Profile({"batch": (1, 1, 4), "height": (16, 64, 128), "width": (16, 64, 128)}),))
    return path, spec
