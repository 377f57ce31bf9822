"""FP32 float rewrites at import: exact folds checked against the original graph on onnxruntime."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from vkt.export import optimize as opt
from vkt.export.onnx_import import import_onnx


def lab_convnet():
    """Conv -> Identity -> Mul(scalar) -> Add(scalar) -> HardSwish -> Conv: PP-OCRv5's learnable-affine block."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array(np.array([1.7], np.float32), "s"),
             numpy_helper.from_array(np.array([-0.3], np.float32), "t"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Identity", ["c1"], ["i1"], name="id1"),
             helper.make_node("Mul", ["i1", "s"], ["m1"], name="mul1"),
             helper.make_node("Add", ["m1", "t"], ["a1"], name="add1"),
             helper.make_node("HardSwish", ["a1"], ["h1"], name="hs1"),
             helper.make_node("Conv", ["h1", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "lab", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "height", "width"])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


def run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_folds_the_affine_into_the_conv_and_matches_the_original():
    m = lab_convnet()
    x = np.random.default_rng(1).standard_normal((1, 3, 20, 24)).astype(np.float32)
    new, report = opt.optimize_fp32(m, {"x": x[:, :, :8, :8]})
    assert "kept_original" not in report and report["folded_into_conv"] == 2  # Mul and Add into conv1
    ops = [n.op_type for n in new.graph.node]
    assert "Mul" not in ops[:2] and "Identity" not in ops and ops.count("Conv") == 2
    # HardSwish stays one op (quant_pre_process splits it into HardSigmoid * x; OpenVINO fuses only the op)
    assert ops == ["Conv", "HardSwish", "Conv"] and report["hardswish_fused"] == 1
    assert report["nodes_before"] == 6 and report["nodes_after"] == len(ops) < 6
    ref, got = run(m, x), run(new, x)  # a shape the check did not see
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert report["max_abs_diff"] <= 1e-4


def test_keeps_the_original_when_the_check_fails_or_there_is_no_feed(monkeypatch):
    m = lab_convnet()
    x = np.zeros((1, 3, 8, 8), np.float32)
    kept, report = opt.optimize_fp32(m, None)
    assert kept is m and "no feed" in report["kept_original"]
    monkeypatch.setattr(opt, "_max_diff", lambda a, b, feed: (1.0, 1e-3))
    kept, report = opt.optimize_fp32(m, {"x": x})
    assert kept is m and "differ by 1 > 0.001" in report["kept_original"]


def test_a_failing_rewrite_never_fails_the_export(monkeypatch, tmp_path):
    def boom(model):
        raise RuntimeError("shape inference exploded")

    monkeypatch.setattr(opt, "prepare_model", boom)
    m = lab_convnet()
    kept, report = opt.optimize_fp32(m, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert kept is m and "shape inference exploded" in report["kept_original"]


@pytest.mark.parametrize("optimize", [True, False])
def test_import_records_the_rewrites(tmp_path, optimize):
    src = tmp_path / "lab.onnx"
    onnx.save(lab_convnet(), str(src))
    b = import_onnx(src, tmp_path / "lab.vkt", profile={"batch": (1, 1, 2), "height": (8, 32, 64), "width": (8, 32, 64)},
                    optimize=optimize)
    meta = json.loads((b.root / "manifest.json").read_text())["files"][0]["meta"]
    shipped = onnx.load(str(b.path("fp32 onnx")))
    if optimize:
        assert meta["rewrites"]["folded_into_conv"] == 2 and meta["nodes"] == len(shipped.graph.node) < 6
    else:
        assert "rewrites" not in meta and len(shipped.graph.node) == 6
