"""`vkt export onnx --task textdet`: the graph must be a text detector, settings come from options or inference.yml."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vkt.bundle import Bundle
from vkt.cli.main import main
from vkt.errors import InputError
from vkt.export.onnx_import import import_onnx
from vkt.export.paddle_config import read_inference_yml
from vkt.export.toy import toy_text_detector
from vkt.runtime.textdet import TextDetector

SAMPLE_YML = Path(__file__).parent / "data" / "inference.yml"
rng = np.random.default_rng(0)


def _model(nodes, inp, out, inits, opset=17):
    g = helper.make_graph(nodes, "g", [inp], [out], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def _w(name, *shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def classifier(batch="N", side: int | str = "H"):
    """Conv -> GlobalAveragePool -> Flatten -> Gemm -> Softmax: [N, 3, H, W] -> [N, 1000]."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["l"]),
             helper.make_node("Softmax", ["l"], ["probs"])]
    side_w = side if isinstance(side, int) else "W"
    return _model(nodes, helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, side, side_w]),
                  helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 1000]),
                  [_w("w1", 8, 3, 3, 3), _w("w2", 8, 1000)])


def half_resolution():
    """A stride-2 conv + sigmoid: a one-channel map at half the input's size, its dims named by the exporter."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2]),
             helper.make_node("Sigmoid", ["c"], ["prob"])]
    return _model(nodes, helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
                  helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["Conv_o0__d0", "Conv_o0__d1", "Conv_o0__d2",
                                                                            "Conv_o0__d3"]),
                  [_w("w", 1, 3, 1, 1)])


def undeclared(model):
    """The same graph with output 0's dims all dynamic, named by the exporter: only a run can tell their sizes."""
    for i, d in enumerate(model.graph.output[0].type.tensor_type.shape.dim):
        d.dim_param = f"Conv_o0__d{i}"
    return model


def logits_map():
    nodes = [helper.make_node("Conv", ["x", "w"], ["logits"])]
    w = numpy_helper.from_array(np.full((1, 3, 1, 1), 20.0, np.float32), "w")
    return _model(nodes, helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
                  helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, "H", "W"]), [w])


def _save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# ---- the graph check -------------------------------------------------------------------------------------
BAD = {
    # name: (graph, what the message must name)
    "two channels": (lambda: toy_text_detector(2), r"output 'prob' has shape \['batch', 2, 'height', 'width'\].*--channel"),
    "two channels, undeclared": (lambda: undeclared(toy_text_detector(2)),
                                 r"output 'prob' has shape \[1, 2, 32, 32\] for an input of \[1, 3, 32, 32\]"),
    "classifier": (classifier, r"output 'probs' has shape \['batch', 1000\]"),
    "fixed-shape classifier": (lambda: classifier(1, 224), r"output 'probs' has shape \[1, 1000\]"),
    "fixed-shape classifier, undeclared": (lambda: undeclared(classifier(1, 224)),
                                           r"output 'probs' has shape \['Conv_o0__d0', 'Conv_o0__d1'\]"),
    "half resolution": (half_resolution, r"output 'prob' has shape \[1, 1, 16, 16\] for an input of \[1, 3, 32, 32\]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_what_is_not_a_text_detector_is_refused_at_import(case, tmp_path):
    graph, found = BAD[case]
    src = _save(graph(), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"^this is not a text detector: " + found) as e:
        import_onnx(src, tmp_path / "b.vkt", task="textdet")
    assert "channel" in str(e.value) or "expected a one-channel probability map [N, 1, H, W] at the input's resolution" \
        in str(e.value)
    assert not (tmp_path / "b.vkt").exists()
    # the CLI: one error line, exit 2, nothing written
    assert main(["export", "onnx", str(src), "--task", "textdet", "-o", str(tmp_path / "c.vkt")]) == 2
    assert not (tmp_path / "c.vkt").exists()


def test_a_logits_map_is_refused(tmp_path):
    src = _save(logits_map(), tmp_path / "m.onnx")
    with pytest.raises(InputError, match=r"not a text detector: output 'logits' holds values in .*expected probabilities"):
        import_onnx(src, tmp_path / "b.vkt", task="textdet")


def test_generic_import_still_takes_a_classifier(tmp_path):
    b = import_onnx(_save(classifier(), tmp_path / "m.onnx"), tmp_path / "b.vkt",
                    profile={"N": (1, 1, 2), "H": (32, 32, 64), "W": (32, 32, 64)})
    assert b.spec().outputs[0].shape == ("N", 1000)


def test_the_maps_axes_are_named_after_the_input(tmp_path):
    # The exporter named the map's dims Conv_o0__d*; after the check they are the input's, in the spec and in the file.
    m = toy_text_detector()
    for d, name in zip(m.graph.output[0].type.tensor_type.shape.dim, ("ConvTranspose_497_o0__d0", "ConvTranspose_497_o0__d1",
                                                                      "ConvTranspose_497_o0__d2", "ConvTranspose_497_o0__d3")):
        d.dim_param = name
    b = import_onnx(_save(m, tmp_path / "m.onnx"), tmp_path / "b.vkt", task="textdet")
    assert b.spec().outputs[0].shape == ("batch", 1, "height", "width")
    shipped = onnx.load(str(b.path("fp32 onnx")))
    dims = shipped.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, "height", "width"]


def test_channel_picks_the_map_and_the_runtime_uses_it(tmp_path):
    """A 2-channel map whose channel 1 is the text: imported with channel 1, boxes cover the black bar;
    the same graph read at channel 0 (the inverse map) does not give that box."""
    src = _save(toy_text_detector(2, text_channel=1), tmp_path / "m.onnx")
    with pytest.raises(InputError, match="out of range|C > 2"):
        import_onnx(src, tmp_path / "x.vkt", task="textdet", postprocess={"channel": 2})
    b = import_onnx(src, tmp_path / "b.vkt", task="textdet", postprocess={"channel": 1})
    assert b.postprocess["channel"] == 1 and b.spec().outputs[0].shape == ("batch", 2, "height", "width")
    img = np.full((200, 400, 3), 255, np.uint8)
    img[80:120, 50:350] = 0                                # the "text": x 50..349, y 80..119
    with TextDetector(b) as det:
        (found,) = det(img)
    assert len(found) == 1
    p = found.polygons[0]
    # the bar grown by DB's unclip (d = area * 1.6 / perimeter ~ 30 px at this scale) and clipped to the image
    assert 10 < p[:, 0].min() < 50 and 349 < p[:, 0].max() < 390 and 40 < p[:, 1].min() < 80 and 119 < p[:, 1].max() < 160
    with TextDetector(b, channel=0) as det:
        (other,) = det(img)
    assert all(not np.allclose(q, p, atol=5) for q in other.polygons)


# ---- settings: options and inference.yml ------------------------------------------------------------------
def test_inference_yml_is_read_as_paddleocr_runs_it():
    cfg = read_inference_yml(SAMPLE_YML)
    s = cfg.settings
    assert cfg.model_name == "PP-OCRv5_server_det"
    assert (s["thresh"], s["box_thresh"], s["unclip_ratio"], s["max_candidates"]) == (0.2, 0.4, 1.4, 3000)
    assert s["mean"] == [0.485, 0.456, 0.406] and s["std"] == [0.229, 0.224, 0.225]
    assert s["scale"] == pytest.approx(1 / 255) and s["color"] == "BGR"
    assert (s["limit_side_len"], s["limit_type"]) == (960, "max")      # resize_long 960, as PaddleX runs it
    assert s["use_dilation"] is False                                 # PaddleX's DBPostProcess default


def test_export_records_the_file_and_options_win(tmp_path, capsys):
    src = _save(toy_text_detector(), tmp_path / "m.onnx")
    out = tmp_path / "b.vkt"
    assert main(["export", "onnx", str(src), "--task", "textdet", "-o", str(out), "--config", str(SAMPLE_YML),
                 "--thresh", "0.25", "--max-side", "1024", "--std", "0.2,0.2,0.2"]) == 0
    b = Bundle.load(out)
    assert b.postprocess["thresh"] == 0.25 and b.postprocess["box_thresh"] == 0.4
    assert b.postprocess["unclip_ratio"] == 1.4 and b.postprocess["max_candidates"] == 3000
    assert b.preprocess["mean"] == [0.485, 0.456, 0.406] and b.preprocess["std"] == [0.2, 0.2, 0.2]
    assert b.preprocess["resize"] == {"mode": "limit_side", "limit_type": "max", "limit_side_len": 960, "round_to": 32,
                                      "max_side_len": 1024}
    printed = capsys.readouterr().out
    assert "thresh 0.25" in printed and "resize_long 960" in printed
    # the runtime takes what the manifest says: normalisation a = scale / std, b = -mean / std
    with TextDetector(b) as det:
        np.testing.assert_allclose(det.pre.a, (1 / 255) / 0.2, rtol=1e-6)
        np.testing.assert_allclose(det.pre.b, -np.array([0.485, 0.456, 0.406]) / 0.2, rtol=1e-6)


def _yml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inference.yml"
    p.write_text(text)
    return p


def test_bad_inference_yml_values_name_key_and_value(tmp_path):
    base = SAMPLE_YML.read_text()
    cases = {
        "thresh: high": ("thresh: 0.2", "thresh: high", r"PostProcess\.thresh must be a number, got 'high'"),
        "thresh out of range": ("thresh: 0.2", "thresh: 1.5", r"thresh must be a number in \(0, 1\), got 1.5"),
        "max_candidates": ("max_candidates: 3000", "max_candidates: -3", r"PostProcess\.max_candidates must be a positive integer, got -3"),
        "mean": ("      - 0.406\n      order", "      order", r"NormalizeImage\.mean must be a list of 3 numbers"),
        "scale": ("scale: 1./255.", "scale: one/255", r"NormalizeImage\.scale must be a number or a fraction"),
        "resize": ("resize_long: 960", "image_shape: [736, 736]", r"image_shape .* not supported"),
        "not DB": ("name: DBPostProcess", "name: EASTPostProcess", r"must be DBPostProcess"),
        "gray": ("img_mode: BGR", "img_mode: GRAY", r"img_mode must be BGR or RGB .*got 'GRAY'"),
    }
    for name, (old, new, msg) in cases.items():
        assert old in base, name
        with pytest.raises(InputError, match=msg):
            read_inference_yml(_yml(tmp_path, base.replace(old, new)))
    with pytest.raises(InputError, match="not a readable YAML"):
        read_inference_yml(_yml(tmp_path, "PostProcess: [unclosed"))
    with pytest.raises(InputError, match="not a PaddleOCR inference.yml"):
        read_inference_yml(_yml(tmp_path, "- just\n- a list\n"))
    with pytest.raises(InputError, match="config file not found"):
        read_inference_yml(tmp_path / "missing.yml")
    # the CLI: exit 2 before the graph is loaded
    src = _save(toy_text_detector(), tmp_path / "m.onnx")
    bad = _yml(tmp_path, base.replace("thresh: 0.2", "thresh: high"))
    assert main(["export", "onnx", str(src), "--task", "textdet", "--config", str(bad), "-o", str(tmp_path / "o")]) == 2


def test_unknown_inference_yml_keys_warn(tmp_path, caplog):
    text = SAMPLE_YML.read_text().replace("  unclip_ratio: 1.4", "  unclip_ratio: 1.4\n  det_db_magic: 7") \
        + "Extra:\n  x: 1\n"
    text = text.replace("  - ToCHWImage: null", "  - ToCHWImage: null\n  - GrayscaleAugment: {p: 1}")
    with caplog.at_level(logging.WARNING, logger="vkt"):
        cfg = read_inference_yml(_yml(tmp_path, text))
    assert cfg.settings["unclip_ratio"] == 1.4
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "PostProcess.det_db_magic" in warned and "section Extra" in warned and "GrayscaleAugment" in warned


def test_missing_pyyaml_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)   # import yaml -> ImportError
    with pytest.raises(InputError, match="pip install pyyaml"):
        read_inference_yml(SAMPLE_YML)


def test_bad_export_options_exit_2_before_the_load(tmp_path, capsys):
    src = _save(toy_text_detector(), tmp_path / "m.onnx")
    cases = {("--thresh", "0"): "thresh must be a number in (0, 1), got 0.0",
             ("--unclip-ratio", "0"): "unclip_ratio must be a number > 0",
             ("--max-candidates", "0"): "max_candidates must be a positive integer",
             ("--limit-side-len", "0"): "limit_side_len must be a positive integer",
             ("--limit-type", "middle"): "limit_type must be 'min' or 'max'",
             ("--max-side", "-5"): "max_side_len must be a positive integer",
             ("--mean", "0.5,0.5"): "--mean must be 3 comma-separated numbers",
             ("--std", "0.5,0,0.5"): "std must be 3 positive numbers",
             ("--channel", "-1"): "channel must be an integer >= 0"}
    for args, msg in cases.items():
        capsys.readouterr()
        assert main(["export", "onnx", str(src), "--task", "textdet", "-o", str(tmp_path / "o"), *args]) == 2, args
        err = capsys.readouterr().err
        assert msg in " ".join(err.split()) and "internal error" not in err, (args, err)
    assert main(["export", "onnx", str(src), "-o", str(tmp_path / "o"), "--thresh", "0.2"]) == 2
    assert "only apply to --task textdet" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_manifest_is_plain_json(tmp_path):
    b = import_onnx(_save(toy_text_detector(), tmp_path / "m.onnx"), tmp_path / "b.vkt", task="textdet",
                    preprocess={"resize": {"limit_side_len": 640}})
    manifest = json.loads((b.root / "manifest.json").read_text())
    assert manifest["preprocess"]["resize"]["limit_side_len"] == 640
    assert manifest["preprocess"]["resize"]["max_side_len"] == 2048        # merged into the default resize rule


def test_a_bundle_from_inference_yml_detects_as_rapidocr_with_those_settings(tmp_path):
    """PP-OCRv5 mobile imported with the sample inference.yml (limit 960 max, ImageNet mean/std, thresh 0.2,
    box_thresh 0.4, unclip 1.4, max_candidates 3000, no dilation) against rapidocr-onnxruntime given the same
    values, on real photos: the settings reach the runtime as PaddleOCR states them."""
    import skimage
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector as RapidTextDetector

    from vkt.cli.textdet_options import import_settings
    from vkt.eval.textdet import hmean_between
    from vkt.models.zoo import ppocrv5_det_mobile_onnx
    from vkt.runtime.image import read_image

    pre, post, _ = import_settings(SAMPLE_YML, None, {})
    b = import_onnx(ppocrv5_det_mobile_onnx(), tmp_path / "pp.vkt", task="textdet", preprocess=pre, postprocess=post,
                    optimize=False)
    s = read_inference_yml(SAMPLE_YML).settings
    peer = RapidTextDetector({**{k: s[k] for k in ("limit_side_len", "limit_type", "mean", "std", "thresh", "box_thresh",
                                                     "max_candidates", "unclip_ratio", "use_dilation", "score_mode")},
                              "model_path": str(ppocrv5_det_mobile_onnx()), "intra_op_num_threads": -1,
                              "inter_op_num_threads": -1, "use_cuda": False, "use_dml": False})
    data = Path(skimage.__file__).parent / "data"
    photos = [read_image(data / n) for n in ("page.png", "text.png", "rocket.jpg", "astronaut.png", "logo.png")]  # < 960 px
    with TextDetector(b, threads=2) as det:
        ours = [d.polygons for d in det(photos)]
    theirs = [list(peer(img)[0]) for img in photos]
    assert sum(map(len, theirs)) > 20
    assert hmean_between(ours, theirs) >= 0.99
    # and the settings differ from the task's defaults enough to matter: the default bundle finds another set
    with TextDetector(b, threads=2, thresh=0.3, box_thresh=0.5, unclip_ratio=1.6, use_dilation=True,
                      mean=[0.5] * 3, std=[0.5] * 3) as det:
        assert [len(d) for d in det(photos)] != [len(t) for t in theirs]
