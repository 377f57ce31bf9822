"""The text-detection gate metric on the real PP-OCRv5 mobile detector: agreement with FP32, and the drop vs
held-out ICDAR labels when they are there (the gate bounds both)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vkt.models.textdet.int8 import textdet_metric
from vkt.eval.textdet import hmean_between
from vkt.export.textdet_bundle import make_textdet_bundle
from vkt.models import zoo
from vkt.runtime.textdet import TextDetector


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import onnx
    import skimage
    from onnx import numpy_helper

    tmp = tmp_path_factory.mktemp("gate_metric")
    src = zoo.ppocrv5_det_mobile_onnx()
    bundle = make_textdet_bundle(src, tmp / "pp.vkt")
    data = Path(skimage.__file__).parent / "data"
    hold = tmp / "holdout"
    hold.mkdir()
    paths = [Path(shutil.copy(data / n, hold / n)) for n in ("page.png", "text.png")]
    # A nearby model: the first conv's weights 1.6x (measured: 45 + 5 boxes vs FP32's 45 + 4, agreement 0.97)
    m = onnx.load(str(src))
    first = next(n for n in m.graph.node if n.op_type == "Conv")
    init = next(i for i in m.graph.initializer if i.name == first.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.6), init.name))
    return bundle, paths, m.SerializeToString()


def _factory(blob, bundle):
    from vkt.bundle import Bundle
    from vkt.runtime.ort import OrtRunner

    return lambda: OrtRunner(blob, threads=2, spec=Bundle.load(bundle).spec(), name="test")


def _detect(bundle, blob, paths):
    with TextDetector(_factory(blob, bundle)()) as det:
        return [det([str(p)])[0].polygons for p in paths]


def test_metric_without_labels_is_the_agreement(setup):
    from vkt.bundle import Bundle

    bundle, paths, nearby = setup
    metric = textdet_metric(Bundle.load(bundle), paths, threads=2, show_progress=False)
    assert metric.name == "hmean vs FP32 boxes" and metric.labelled == 0
    ref = metric.reference
    got = metric(_factory(nearby, bundle))
    assert got == pytest.approx(hmean_between(_detect(bundle, nearby, paths), ref))
    assert 0.5 < got < 1.0  # the nearby model really differs, and not wholesale


def test_use_labels_without_label_files_is_an_error(setup):
    from vkt.bundle import Bundle
    from vkt.errors import CalibrationError

    bundle, paths, _ = setup
    with pytest.raises(CalibrationError, match="none of the held-out images has an ICDAR label file"):
        textdet_metric(Bundle.load(bundle), paths, threads=2, show_progress=False, use_labels=True)


def test_metric_with_labels_bounds_the_label_drop_too(setup):
    """Labels for text.png = FP32's own boxes there: the label term is then the agreement on text.png alone,
    so the metric must equal min(agreement on both, agreement on text.png) (hand-derived); there the nearby
    model finds 5 boxes for FP32's 4, so the label term (8/9) binds below the overall agreement."""
    from vkt.bundle import Bundle
    from vkt.training.synth_text import format_label

    bundle, paths, nearby = setup
    b = Bundle.load(bundle)
    with TextDetector(bundle, threads=2) as det:
        text_boxes = det([str(paths[1])])[0].polygons
    gt = paths[1].parent / f"gt_{paths[1].stem}.txt"
    gt.write_text(format_label(text_boxes, ["x"] * len(text_boxes)), encoding="utf-8")
    try:
        plain = textdet_metric(b, paths, threads=2, show_progress=False)  # labels are opt-in
        assert plain.labelled == 0 and plain.name == "hmean vs FP32 boxes"
        metric = textdet_metric(b, paths, threads=2, show_progress=False, use_labels=True)
        assert metric.labelled == 1 and "labels" in metric.name
        assert metric(_factory(Bundle.load(bundle).path("fp32 onnx").read_bytes(), bundle)) == pytest.approx(1.0)
        got = metric(_factory(nearby, bundle))
        dets = _detect(bundle, nearby, paths)
        both = hmean_between(dets, metric.reference)
        text = hmean_between(dets[1:], [text_boxes])
        assert metric.last["agreement"] == pytest.approx(both)
        assert metric.last["labels_fp32"] == pytest.approx(1.0, abs=1e-6)
        assert text < both and got == pytest.approx(text, abs=1e-6)
    finally:
        gt.unlink()
