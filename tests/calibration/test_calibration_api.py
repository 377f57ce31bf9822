"""quantize_bundle and `vkt quantize`: one table, one Q/DQ graph per target, a filled manifest section."""

from __future__ import annotations

import json

import numpy as np
import pytest
from calib_helpers import feeds

from vkt.bundle import Bundle
from vkt.calibration import CalibrationTable, Int8Config, qdq_path, quantize_bundle
from vkt.errors import BundleError, CalibrationError


def test_quantize_bundle_writes_table_placements_and_manifest(toy_bundle):
    section = quantize_bundle(toy_bundle, feeds(), Int8Config(exclude=("head",)), show_progress=False)
    b = Bundle.load(toy_bundle)  # verifies every sha256
    assert b.manifest["calibration"] == section
    table = CalibrationTable.load(b.path("calibration table"))
    assert table.sha256 == section["table"]["sha256"] and section["samples"] == table.num_samples == 3
    assert section["method"] == "minmax" and section["excluded"] == ["head"]
    metas = {e.meta["placement"]: e.meta for e in b.files("int8 qdq onnx")}
    assert set(metas) == {"ort", "trt"} and all(m["table_sha256"] == table.sha256 for m in metas.values())
    ort, trt = section["placements"]["ort"], section["placements"]["trt"]
    assert ort["fused_int8_ops"] > 0 and ort["int8"]["QLinearConv"] == 5 and ort["float"] == {"Conv": 1}  # head
    assert trt["fused_int8_ops"] == 0 and trt["quantized_nodes"] == 5  # ORT does not fuse TRT's placement
    for p in (ort, trt):
        (name, sqnr), = p["output_sqnr_db"].items()
        assert name == "features" and sqnr > 25
    assert qdq_path(b, "trt").name == "model.int8.trt.onnx"


def test_quantize_bundle_one_target_and_bad_inputs(toy_bundle):
    quantize_bundle(toy_bundle, feeds(), Int8Config(targets="ort"), eval_samples=0, show_progress=False)
    section = quantize_bundle(toy_bundle, feeds(), Int8Config(targets="trt", method="percentile"), eval_samples=0,
                              show_progress=False)
    assert list(section["placements"]) == ["trt"] and "output_sqnr_db" not in section["placements"]["trt"]
    assert not (toy_bundle / "model.int8.ort.onnx").exists()  # the earlier calibration's graph is gone
    with pytest.raises(CalibrationError, match="no 'ort' Q/DQ graph"):
        qdq_path(Bundle.load(toy_bundle), "ort")
    with pytest.raises(CalibrationError, match=r"targets must be a non-empty subset of \['ort', 'trt', 'openvino'\], got \['gpu'\]"):
        quantize_bundle(toy_bundle, feeds(), Int8Config(targets=["gpu"]))
    with pytest.raises(CalibrationError, match="degenerate"):
        quantize_bundle(toy_bundle, [{"image": np.zeros((1, 3, 16, 16), np.float32)}] * 2, show_progress=False)
    with pytest.raises(BundleError, match="component 'unet' has no 'fp32 onnx' file"):
        quantize_bundle(toy_bundle, feeds(), component="unet")


def _write_images(folder, n):
    import cv2

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return folder


def test_cli_quantize(toy_bundle, tmp_path, capsys):
    from vkt.cli.main import main

    calib = _write_images(tmp_path / "calib", 3)
    rc = main(["quantize", str(toy_bundle), "--calib", str(calib), "--target", "ort", "--shape", "32x32", "--json"])
    assert rc == 0
    section = json.loads(capsys.readouterr().out)
    assert section["data"]["images"] == 3 and section["data"]["shapes"] == [[32, 32]]
    assert Bundle.load(toy_bundle).manifest["calibration"]["placements"]["ort"]["int8"]["QLinearConv"] == 6


@pytest.mark.parametrize("args, match", [
    (["--calib", "{empty}"], "is empty"),
    (["--calib", "{calib}", "--method", "kl"], "method must be one of"),
    (["--calib", "{calib}", "--target", "gpu"], "targets must be"),
    (["--calib", "{calib}", "--exclude", "nope"], "cannot exclude"),
    (["--calib", "{calib}", "--shape", "32"], "HEIGHTxWIDTH"),
])
def test_cli_quantize_errors_are_one_line(toy_bundle, tmp_path, capsys, args, match):
    from vkt.cli.main import main

    calib = _write_images(tmp_path / "calib", 2)
    (tmp_path / "empty").mkdir()
    args = [a.format(calib=calib, empty=tmp_path / "empty") for a in args]
    assert main(["quantize", str(toy_bundle), *args]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and match.split(".*")[0] in err.replace("\n", " ")


def _hardswish_net():
    """x -> Conv -> HardSwish -> Conv -> y (opset 14), as exporters write PP-OCRv5's blocks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["hs"], name="hswish"),
             helper.make_node("Conv", ["hs", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "height", "width"])], inits)
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


def test_a_bundle_shipping_hardswish_fused_calibrates_the_graph_quant_pre_process_writes(tmp_path):
    """vkt export ships HardSwish fused (OpenVINO's FP32 needs it); the ort/trt placements are written from the graph
    onnxruntime's pre-processing gives the original (HardSwish split into HardSigmoid * x, both quantized), as before."""
    import onnx

    from vkt.calibration import compute_ranges
    from vkt.calibration.placements import placement
    from vkt.export.onnx_import import import_onnx
    from vkt.onnxgraph import prepare_model

    src = tmp_path / "hs.onnx"
    onnx.save(_hardswish_net(), str(src))
    b = import_onnx(src, tmp_path / "hs.vkt", profile={"batch": (1, 1, 1), "height": (8, 16, 32), "width": (8, 16, 32)})
    assert "HardSwish" in [n.op_type for n in onnx.load(str(b.path("fp32 onnx"))).graph.node]
    data = feeds(name="x")
    quantize_bundle(b, data, Int8Config(targets=("ort", "openvino"), ort_ops="all"), eval_samples=0, show_progress=False)
    ref = prepare_model(_hardswish_net())  # what calibrating the original graph places
    want = placement(ref, compute_ranges(ref, data, show_progress=False), "ort", ())
    got = onnx.load(str(qdq_path(Bundle.load(b.root), "ort")))

    def ops(m):
        return sorted(n.op_type for n in m.graph.node)

    assert "HardSigmoid" in ops(got) and ops(got) == ops(want)
    assert "HardSwish" in ops(onnx.load(str(qdq_path(Bundle.load(b.root), "openvino"))))
