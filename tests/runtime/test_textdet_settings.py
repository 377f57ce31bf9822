"""TextDetector settings: overrides (mean/std, resize, DB values, channel), the long-side cap note, JSON precision."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from vkt.errors import InputError
from vkt.export.onnx_import import import_onnx
from vkt.export.toy import toy_text_detector
from vkt.runtime.textdet import DBParams, Detections, TextDetector, textdet_settings
from vkt.tasks import TASKS


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A 2-channel toy detector (channel 1: dark pixels are text), imported with channel 1."""
    root = tmp_path_factory.mktemp("toydet")
    onnx.save(toy_text_detector(2, text_channel=1), str(root / "m.onnx"))
    return import_onnx(root / "m.onnx", root / "b.vkt", task="textdet", postprocess={"channel": 1}).root


def _bar_image(h: int, w: int) -> np.ndarray:
    img = np.full((h, w, 3), 255, np.uint8)
    img[h * 2 // 5:h * 3 // 5, w // 10:w * 9 // 10] = 0      # a black bar, the "text"
    return img


def test_mean_and_std_are_accepted_and_applied(bundle):
    with TextDetector(bundle, mean=[0.485, 0.456, 0.406], std=(0.229, 0.224, 0.225)) as det:
        # x * a + b == (x / 255 - mean) / std, checked on the three channels of one pixel value
        x = 200.0
        np.testing.assert_allclose(x * det.pre.a + det.pre.b,
                                   (x / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5)
    for bad, msg in (({"mean": [0.5, 0.5]}, "mean must be 3 numbers"), ({"std": [1, 0, 1]}, "std must be 3 positive"),
                     ({"mean": "0.5"}, "mean must be 3 numbers"), ({"thresh": 0.0}, r"thresh must be a number in \(0, 1\)"),
                     ({"unclip_ratio": 0}, "unclip_ratio must be a number > 0"), ({"channel": -1}, "channel must be"),
                     ({"max_side_len": "big"}, "max_side_len must be a positive integer"),
                     ({"channel": 2}, r"channel 2 is out of range: output 'prob' has 2 channel\(s\)")):
        with pytest.raises(InputError, match=msg):
            TextDetector(bundle, **bad)


def test_settings_reject_unknown_keys_naming_all_lists():
    t = TASKS["textdet"]
    with pytest.raises(InputError, match=r"unknown setting 'unclip'.*unclip_ratio.*max_side_len.*mean"):
        textdet_settings(t.preprocess, t.postprocess, {"unclip": 2}, "setting")
    pre, post = textdet_settings(t.preprocess, t.postprocess, {"max_side_len": 1024, "thresh": 0.2, "mean": (0.1, 0.2, 0.3)})
    assert pre["resize"]["max_side_len"] == 1024 and post["thresh"] == 0.2 and pre["mean"] == [0.1, 0.2, 0.3]
    assert t.preprocess["resize"]["max_side_len"] == 2048       # the defaults are not touched


def test_a_capped_image_is_reported(bundle, caplog):
    wide = _bar_image(100, 3000)
    with caplog.at_level(logging.WARNING, logger="vkt"):
        with TextDetector(bundle) as det:
            capped, plain = det([wide, _bar_image(300, 600)])
    # limit_side min 736 would make it 736 x 22080; the cap (2048: the manifest's and the profile's) brings it to 64 x 2048
    assert capped.meta["input_size"] == {"height": 64, "width": 2048}
    r = capped.meta["resized"]
    assert r["from"] == [100, 3000] and r["to"] == [64, 2048] and r["without_cap"] == [736, 22080]
    assert r["reason"].startswith("long side capped at 2048")
    assert "resized" not in plain.meta
    assert any("100x3000 image runs at 64x2048" in rec.getMessage() for rec in caplog.records)
    # the boxes are still in source pixels, on the bar (x 300..2699, y 40..59)
    (p,) = capped.polygons
    assert p[:, 0].min() < 300 < 2699 < p[:, 0].max() and p[:, 1].min() < 40 and p[:, 1].max() > 59
    with TextDetector(bundle, max_side_len=1024) as det:
        (small,) = det(wide)
    assert small.meta["resized"]["to"] == [32, 1024] and small.meta["resized"]["reason"] == \
        "long side capped at 1024 (max_side_len)"


def test_json_coordinates_carry_no_float32_noise():
    poly = np.array([[12.34, 5.5], [100.127, 5.5], [100.127, 20.01], [12.34, 20.01]], np.float32)
    d = Detections([poly], np.array([0.91234567], np.float32), (50, 200)).to_dict()
    assert d["detections"][0]["polygon"] == [[12.34, 5.5], [100.13, 5.5], [100.13, 20.01], [12.34, 20.01]]
    assert d["detections"][0]["score"] == 0.91235


def test_db_params_ranges():
    for kw in ({"thresh": 1.0}, {"thresh": 0}, {"box_thresh": 1.1}, {"unclip_ratio": -1}, {"max_candidates": 0},
               {"channel": 1.5}, {"thresh": float("nan")}):
        with pytest.raises(InputError):
            DBParams(**kw)
    assert DBParams(box_thresh=0.0, channel=3).channel == 3


def test_server_task_reads_the_channel(bundle):
    """The server's TextDetectTask takes the map from the manifest's channel, as TextDetector does."""
    from vkt.bundle import Bundle
    from vkt.runtime.ort import OrtRunner
    from vkt.runtime.server.tasks import TextDetectTask

    b = Bundle.load(bundle)
    task = TextDetectTask(b.preprocess, b.postprocess, b.spec())
    img = _bar_image(200, 400)
    with OrtRunner(str(b.path("fp32 onnx")), spec=b.spec()) as r, TextDetector(b) as det:
        served = task.detections(img, r.infer)
        (local,) = det(img)
    assert len(served) == len(local) == 1
    np.testing.assert_allclose(served.polygons[0], local.polygons[0], atol=1e-3)


def test_the_int8_gate_detects_with_the_bundles_normalisation(tmp_path):
    """The gate's FP32 reference runs the bundle's mean/std: with mean 1.5 every pixel of the toy reads as text
    (one box over the image), with the default 0.5 only the bar does."""
    from vkt.models.textdet.int8 import textdet_agreement

    onnx.save(toy_text_detector(), str(tmp_path / "m.onnx"))
    b = import_onnx(tmp_path / "m.onnx", tmp_path / "b.vkt", task="textdet", preprocess={"mean": [1.5, 1.5, 1.5]})
    img = _bar_image(200, 400)
    with TextDetector(b) as det:
        (own,) = det(img)
    assert len(own) == 1 and np.ptp(own.polygons[0][:, 1]) > 190      # the whole image
    metric = textdet_agreement(b, [img], min_regions=1, show_progress=False)
    (ref,) = metric.reference
    assert len(ref) == 1
    np.testing.assert_allclose(ref[0], own.polygons[0], atol=1e-3)
    # its resolution is the drop of one FP32 region missed, as the evaluator scores it
    from vkt.eval.textdet import hmean_between

    assert metric.resolution == pytest.approx(1.0 - hmean_between([[]], metric.reference))
    five = [np.array([[10 * i, 0], [10 * i + 8, 0], [10 * i + 8, 5], [10 * i, 5]], np.float32) for i in range(5)]
    assert 1.0 / (2 * 5 - 1) == pytest.approx(1.0 - hmean_between([five[1:]], [five]))  # the formula, at n = 5


def test_a_bundle_whose_output_is_no_map_is_refused_by_the_runtime(tmp_path, toy_onnx):
    """A bundle imported before the import check (here: a generic import retagged by hand) with a [N, 8]
    output: TextDetector says what it found instead of failing with an IndexError on the first image."""
    import onnx.helper as oh

    m = onnx.load(str(toy_onnx))
    m.graph.node.append(oh.make_node("ReduceMean", ["features"], ["pooled"], axes=[2, 3], keepdims=0))
    m.graph.output[0].CopyFrom(oh.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["batch", 8]))
    onnx.save(m, str(tmp_path / "cls.onnx"))
    b = import_onnx(tmp_path / "cls.onnx", tmp_path / "cls.vkt",
                    profile={"batch": (1, 1, 2), "height": (32, 64, 128), "width": (32, 64, 128)})
    t = TASKS["textdet"]
    b.update(task="text-detection", family="textdet", preprocess={**t.preprocess, "input": "image"},
             postprocess=t.postprocess)
    with pytest.raises(InputError, match=r"output 'pooled' has shape \['batch', 8\]; a text detector's output is a "
                                         r"probability map"):
        TextDetector(b.root)
