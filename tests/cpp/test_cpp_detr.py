"""vkt_cpp on tiny DETR bundles (raw heads, in-graph post-processing, pixel mask) vs vkt.runtime.Detector on
OpenVINO: the same labels, boxes within 0.5 px and scores within 1e-4 on real photos; soft-NMS too."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cpp_tools import run_cpp, run_json

pytest.importorskip("openvino")

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
SIZE = {"shortest_edge": 400, "longest_edge": 666}   # tests/runtime/test_detection.py's quick settings
LABELS = ["cat", "cup", "person", "rocket", "spoon"]


@pytest.fixture(scope="module")
def detr_bundles(torch1, tmp_path_factory):
    """{kind: bundle} for the raw, post-processed and masked graphs of one tiny random DETR."""
    pytest.importorskip("transformers")
    from vkt.export.detr_bundle import make_detr_bundle
    from vkt.models.detr import tiny_detr
    from vkt.models.detr.export import export_detr

    model = tiny_detr(num_labels=5, num_queries=10)
    root = tmp_path_factory.mktemp("cpp-detr")
    out = {}
    for kind, kw in (("raw", {}), ("post", {"postprocess": True, "top_k": 10}), ("mask", {"pixel_mask": True})):
        rep = export_detr(model, root / f"{kind}.onnx", check_shape=None, **kw)
        out[kind] = make_detr_bundle(rep.path, root / f"{kind}.vkt", labels=LABELS, spec=rep.spec,
                                     score_threshold=0.665, **SIZE)
    return out


def assert_same_objects(got: dict, want, where: str) -> None:
    assert (got["height"], got["width"]) == want.image_size, where
    assert [d["label"] for d in got["detections"]] == want.labels.tolist(), where
    assert [d["name"] for d in got["detections"]] == want.names, where
    if len(want):
        boxes = np.array([d["box"] for d in got["detections"]], np.float32)
        scores = np.array([d["score"] for d in got["detections"]], np.float32)
        assert np.abs(boxes - want.boxes).max() <= 0.5, (where, boxes, want.boxes)
        assert np.abs(scores - want.scores).max() <= 1e-4, where


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["raw", "post", "mask"])
def test_detections_match_python(vkt_cpp, detr_bundles, skimage_data, kind):
    from vkt.runtime.detection import Detector

    paths = [skimage_data / n for n in PHOTOS]
    got = run_json(vkt_cpp, "--bundle", detr_bundles[kind], "--threads", "2", *paths)
    with Detector(detr_bundles[kind], backend="ov", threads=2) as det:
        want = det(paths)
    for g, w, p in zip(got, want, paths):
        assert_same_objects(g, w, f"{kind} {p.name}")
    assert sum(len(w) for w in want) >= 3  # the threshold lets some through: the comparison is not of empty lists


@pytest.mark.torch
def test_soft_nms_matches_python(vkt_cpp, detr_bundles, skimage_data, tmp_path):
    """Postprocess keys from the manifest: soft-NMS on, a lower threshold (many overlapping candidates)."""
    from vkt.runtime.detection import Detector

    bundle = tmp_path / "snms.vkt"
    shutil.copytree(detr_bundles["raw"], bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    m["postprocess"].update(soft_nms=True, soft_nms_sigma=2.0, score_threshold=0.3, top_k=6)
    (bundle / "manifest.json").write_text(json.dumps(m))
    paths = [skimage_data / n for n in PHOTOS[:2]]
    got = run_json(vkt_cpp, "--bundle", bundle, "--threads", "2", *paths)
    with Detector(bundle, backend="ov", threads=2) as det:
        want = det(paths)
    for g, w, p in zip(got, want, paths):
        assert_same_objects(g, w, p.name)
    with Detector(bundle, backend="ov", threads=2, soft_nms=False) as det:
        plain = det(paths)
    # soft-NMS acted: the runner-up survives with a decayed score, below its plain softmax score
    assert all(len(w) >= 2 and w.scores[1] < p.scores[1] for w, p in zip(want, plain))


@pytest.mark.torch
def test_shape_outside_the_profile_is_an_error_naming_it(vkt_cpp, detr_bundles, tmp_path):
    """A 1000 x 100 image resizes to 666 x 67; the profile's width starts at 320: a clear error, like Python's."""
    import cv2

    from vkt.errors import VktError
    from vkt.runtime.detection import Detector

    thin = tmp_path / "thin.png"
    cv2.imwrite(str(thin), np.full((1000, 100, 3), 127, np.uint8))
    p = run_cpp(vkt_cpp, "--bundle", detr_bundles["raw"], thin)
    assert p.returncode == 2 and p.stderr.startswith("error: "), p.stderr
    assert "[1, 3, 666, 67]" in p.stderr and "outside the model's shape profile" in p.stderr and "67" in p.stderr
    with Detector(detr_bundles["raw"], backend="ov", threads=2) as det, pytest.raises(VktError, match="67"):
        det([thin])
