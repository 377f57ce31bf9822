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
