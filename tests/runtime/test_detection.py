"""The torch-free DETR runtime: post-processing, soft-NMS, Detector on bundles vs transformers on real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vkt.errors import BundleError, InputError, ModelError
from vkt.export.detr_bundle import make_detr_bundle
from vkt.runtime.detection import Detections, DetrParams, Detector, box_iou, decode_raw, draw_detections, select, soft_nms

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")
SIZE = {"shortest_edge": 400, "longest_edge": 666}   # smaller than DETR's 800/1333: quick on CPU
LABELS = ["cat", "cup", "person", "rocket", "spoon"]


def photo_path(name: str) -> Path:
    skimage = pytest.importorskip("skimage")
    return Path(skimage.__file__).parent / "data" / name


# ---- numpy post-processing -------------------------------------------------------------------------------
def test_decode_raw_softmax_and_boxes():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 5.0]], np.float32)     # [Q=2, C+1=3]
    boxes = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.2, 0.2, 0.2]], np.float32)
    scores, labels, xyxy = decode_raw(logits, boxes)
    e = np.exp([2.0, 0.0, 1.0])
    assert labels.tolist() == [0, 0]
    np.testing.assert_allclose(scores[0], e[0] / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(xyxy[0], [0.4, 0.3, 0.6, 0.7], atol=1e-6)
    with pytest.raises(InputError, match=r"logits \[Q, C \+ 1\]"):
        decode_raw(logits, boxes[:1])


def test_select_threshold_topk_and_scaling():
    scores = np.array([0.2, 0.9, 0.6, 0.7], np.float32)
    labels = np.array([0, 1, 2, 1])
    boxes = np.tile(np.array([[0.0, 0.0, 0.5, 0.5]], np.float32), (4, 1))
    det = select(scores, labels, boxes, (100, 200), DetrParams(score_threshold=0.5, top_k=2, labels=("a", "b")), True)
    assert det.scores.tolist() == pytest.approx([0.9, 0.7]) and det.labels.tolist() == [1, 1]
    assert det.names == ["b", "b"] and det.boxes[0].tolist() == [0.0, 0.0, 100.0, 50.0]
    d = det.to_dict()
    assert d["image_size"] == {"height": 100, "width": 200} and d["detections"][0]["name"] == "b"
    json.dumps(d)
    assert DetrParams().name(7) == "class_7"


def test_soft_nms_decays_overlaps_by_gaussian_iou():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], np.float32)   # box 1 overlaps box 0 by IoU 0.5
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    keep, new = soft_nms(boxes, scores, sigma=0.5, threshold=0.0)
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(0.5)
    # 0.8 * exp(-0.5^2 / 0.5) = 0.485 drops below the untouched 0.7.
    assert keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(new, [0.9, 0.7, 0.8 * np.exp(-0.25 / 0.5)], rtol=1e-6)
    keep, _ = soft_nms(boxes, scores, sigma=0.5, threshold=0.5)
    assert keep.tolist() == [0, 2]
    # In select(): per class by default, so a different class is never suppressed.
    det = select(scores, np.array([0, 1, 0]), boxes / 30, (30, 30), DetrParams(score_threshold=0.5, soft_nms=True), True)
    assert det.labels.tolist() == [0, 1, 0] and det.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    det = select(scores, np.array([0, 1, 0]), boxes / 30, (30, 30),
                 DetrParams(score_threshold=0.5, soft_nms=True, class_agnostic=True), True)
    assert det.scores.tolist() == pytest.approx([0.9, 0.7])


def test_params_errors():
    with pytest.raises(InputError, match="score_threshold must be a number in \\[0, 1\\], got 1.5"):
        DetrParams(score_threshold=1.5)
    with pytest.raises(InputError, match="top_k"):
        DetrParams(top_k=0)
    with pytest.raises(InputError, match="soft_nms_sigma"):
        DetrParams(soft_nms_sigma=0)
    with pytest.raises(InputError, match="unknown postprocess keys \\['nms'\\]"):
        DetrParams.from_dict({"type": "detr", "nms": True})
    with pytest.raises(InputError, match="'db'"):
        DetrParams.from_dict({"type": "db"})
    with pytest.raises(InputError, match="labels"):
        DetrParams(labels="cat")


def test_runtime_does_not_import_torch():
    code = "import sys, vkt.runtime.detection; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


# ---- the Detector against transformers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def peer():
    """(tiny DETR in torch, transformers' image processor) — the peer implementation."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from vkt.models.detr import tiny_detr

    return tiny_detr(num_labels=5, num_queries=10), transformers.DetrImageProcessor(size=SIZE)


@pytest.fixture(scope="module")
def bundles(peer, tmp_path_factory):
    """{kind: bundle folder} for the raw, post-processed and masked graphs of the peer model."""
    from vkt.models.detr.export import export_detr

    model, _ = peer
    root = tmp_path_factory.mktemp("detr-bundles")
    out = {}
    for kind, kw in (("raw", {}), ("post", {"postprocess": True, "top_k": 10}), ("mask", {"pixel_mask": True})):
        rep = export_detr(model, root / f"{kind}.onnx", check_shape=None, **kw)   # parity: tests/models/detr
        out[kind] = make_detr_bundle(rep.path, root / f"{kind}.vkt", labels=LABELS, spec=rep.spec,
                                     score_threshold=0.665, **SIZE)
    return out


def transformers_detections(peer, pixel_values: np.ndarray, src_size: tuple[int, int], threshold: float):
    """transformers' forward + post_process_object_detection on the very tensor the Detector built."""
    import torch

    model, processor = peer
    with torch.no_grad():
        out = model(torch.from_numpy(pixel_values))
    r = processor.post_process_object_detection(out, threshold=threshold, target_sizes=[src_size])[0]
    order = torch.argsort(r["scores"], descending=True)
    return r["scores"][order].numpy(), r["labels"][order].numpy(), r["boxes"][order].numpy()


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["raw", "post"])
def test_detector_matches_transformers_on_real_photos(peer, bundles, kind):
    from vkt.runtime.image import read_image

    with Detector(bundles[kind], threads=2) as det:
        assert det.kind == ("raw" if kind == "raw" else "postprocessed")
        total = 0
        for name in PHOTOS:
            img = read_image(photo_path(name))
            d = det(img)[0]
            pv, _ = det.pre([img])                       # the Detector's own input tensor
            s, c, b = transformers_detections(peer, pv, img.shape[:2], 0.665)
            assert len(d) == len(s), name
            np.testing.assert_array_equal(d.labels, c)
            np.testing.assert_allclose(d.scores, s, atol=1e-5)
            np.testing.assert_allclose(d.boxes, b, atol=1e-3)
            assert d.names == [LABELS[i] for i in c] and d.image_size == img.shape[:2]
            total += len(d)
        assert 0 < total < 30


@pytest.mark.torch
def test_fp16_graph_is_added_to_the_bundle_and_agrees_with_fp32(bundles, tmp_path):
    """``make_detr_bundle(fp16=True)`` (``vkt export detr --fp16``): the FP16 graph, its meta and precision entry."""
    from vkt.bundle import Bundle
    from vkt.export.fp16 import SENSITIVE_OPS
    from vkt.runtime.image import read_image

    dest = make_detr_bundle(Path(bundles["raw"]) / "model.onnx", tmp_path / "half.vkt", labels=LABELS, fp16=True,
                            score_threshold=0.0, top_k=5, **SIZE)
    b = Bundle.load(dest)
    entry = b.entry("fp16 onnx")
    assert entry.path == "model.fp16.onnx" and entry.meta == {"kept_fp32_ops": list(SENSITIVE_OPS), "io": "float32"}
    assert b.manifest["precision"] == {"fp16": "model.fp16.onnx"}
    img = read_image(photo_path("astronaut.png"))
    with Detector(dest, threads=2) as d32, Detector(dest, precision="fp16", threads=2) as d16:
        a, h = d32(img)[0], d16(img)[0]
    np.testing.assert_allclose(h.scores, a.scores, atol=2e-2)           # FP16 rounding, same detections
    np.testing.assert_allclose(h.boxes, a.boxes, atol=2.0)


@pytest.mark.torch
def test_preprocessing_is_close_to_transformers(peer, bundles):
    """vkt resizes with cv2 (bilinear, no antialias), transformers with torchvision: same size, close pixels."""
    from vkt.runtime.image import read_image

    _, processor = peer
    with Detector(bundles["raw"], threads=2) as det:
        for name in PHOTOS:
            bgr = read_image(photo_path(name))
            mine, _ = det.pre([bgr])
            theirs = processor(images=bgr[:, :, ::-1].copy(), return_tensors="np")["pixel_values"]
            assert mine.shape == theirs.shape
            # upscaled photos agree to rounding; astronaut (512 -> 400, downscaled) differs by antialiasing
            assert float(np.abs(mine - theirs).mean()) < 0.02, name


@pytest.mark.torch
def test_batching_equals_one_by_one(bundles):
    from vkt.runtime.image import read_image

    coffee = read_image(photo_path("coffee.png"))
    imgs = [read_image(photo_path(n)) for n in PHOTOS] + [coffee[:, ::-1].copy()]
    with Detector(bundles["raw"], threads=2, score_threshold=0.0) as det:
        together = det(imgs)      # bucketed by resized shape: coffee + flipped coffee share a call
        for img, d in zip(imgs, together):
            alone = det([img])[0]
            np.testing.assert_array_equal(d.labels, alone.labels)
            np.testing.assert_allclose(d.scores, alone.scores, atol=1e-5)
    # With a mask input, same-size images need no padding and match too. (Padded ones do not, exactly:
    # DETR is not padding-invariant — the feature grid and conv borders change — which is why the
    # masked batch is compared with transformers on the same padded batch below.)
    with Detector(bundles["mask"], threads=2, score_threshold=0.0) as det:
        together = det([coffee, imgs[-1]])
        for img, d in zip([coffee, imgs[-1]], together):
            np.testing.assert_allclose(d.scores, det([img])[0].scores, atol=1e-5)


@pytest.mark.torch
def test_masked_padded_batch_matches_transformers(peer, bundles):
    """Different sizes in one padded batch (graph with pixel_mask) == transformers with the same mask."""
    import torch

    from vkt.runtime.image import read_image

    model, processor = peer
    imgs = [read_image(photo_path(n)) for n in ("chelsea.png", "astronaut.png")]
    with Detector(bundles["mask"], threads=2, score_threshold=0.0) as det:
        got = det(imgs)
    batch = processor(images=[im[:, :, ::-1].copy() for im in imgs], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    want = processor.post_process_object_detection(out, threshold=0.0, target_sizes=[im.shape[:2] for im in imgs])
    for d, w in zip(got, want):
        order = torch.argsort(w["scores"], descending=True)
        np.testing.assert_array_equal(d.labels, w["labels"][order].numpy())
        # inputs differ slightly (cv2 vs torchvision resize), hence the looser tolerance than on shared tensors
        np.testing.assert_allclose(d.scores, w["scores"][order].numpy(), atol=2e-2)


@pytest.mark.torch
def test_draw_and_errors(bundles, tmp_path):
    from vkt.runtime.image import read_image

    img = read_image(photo_path("chelsea.png"))
    with Detector(bundles["post"], threads=2, score_threshold=0.0) as det:
        d = det(str(photo_path("chelsea.png")))[0]
        assert len(d) == 10
        drawn = draw_detections(img, d)
        assert drawn.shape == img.shape and drawn.dtype == np.uint8 and (drawn != img).any()
        assert (img == read_image(photo_path("chelsea.png"))).all()   # the input is not drawn on
        assert det([]) == []
        with pytest.raises(InputError, match="expected an image of shape"):
            det(np.zeros((4, 4, 2), np.uint8))
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), [], img.shape[:2])
    assert (draw_detections(img, empty) == img).all()
    with pytest.raises(InputError, match="unknown Detector option 'thresh'"):
        Detector(bundles["raw"], thresh=0.3)
    with pytest.raises(InputError, match="score_threshold"):
        Detector(bundles["raw"], score_threshold=2)
    with pytest.raises(BundleError):
        Detector(tmp_path / "missing.vkt")
    with pytest.raises(InputError, match="unknown DETR parameter 'unclip_ratio'"):
        make_detr_bundle(Path(bundles["raw"]) / "model.onnx", tmp_path / "x.vkt", unclip_ratio=1.5)
    with pytest.raises(ModelError, match="not found"):
        make_detr_bundle(tmp_path / "none.onnx", tmp_path / "y.vkt")
    manifest = json.loads((Path(bundles["raw"]) / "manifest.json").read_text())
    assert manifest["task"] == "object-detection" and manifest["postprocess"]["labels"] == LABELS
    assert manifest["preprocess"]["resize"] == {"mode": "shortest_edge", **SIZE}


@pytest.mark.torch
def test_bundle_of_another_task_is_refused(bundles, tmp_path):
    import shutil

    from vkt.bundle import Bundle

    shutil.copytree(bundles["raw"], tmp_path / "other.vkt")
    b = Bundle.load(tmp_path / "other.vkt")
    b.update(task="text-detection")
    with pytest.raises(InputError, match="task 'text-detection'; Detector needs 'object-detection'"):
        Detector(b)


@pytest.mark.torch
def test_checkpoint_to_bundle_to_detections_to_coco_ap(tmp_path):
    """End to end: .pth-free HF folder -> export_bundle -> Detector -> COCO results -> pycocotools."""
    pytest.importorskip("pycocotools")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from vkt.bundle import Bundle
    from vkt.eval.coco import coco_ap, coco_ground_truth, to_coco_results
    from vkt.models.detr import tiny_detr
    from vkt.models.detr.checkpoints import load_checkpoint
    from vkt.models.detr.export import export_bundle
    from vkt.runtime.image import read_image

    m = tiny_detr(num_labels=3)
    m.config.id2label = {0: "cat", 1: "cup", 2: "person"}
    m.save_pretrained(tmp_path / "ckpt")
    model = load_checkpoint(tmp_path / "ckpt")
    dest = export_bundle(model, tmp_path / "detr.vkt", postprocess=True, top_k=10, score_threshold=0.0, **SIZE)
    b = Bundle.load(dest)
    assert b.postprocess["labels"] == ["cat", "cup", "person"] and b.manifest["export"]["postprocess_in_graph"]
    imgs = [read_image(photo_path(n)) for n in PHOTOS]
    with Detector(dest, threads=2) as det:
        dets = det(imgs)
    assert all(len(d) == 10 and set(d.names) <= {"cat", "cup", "person"} for d in dets)
    # Ground truth = the detections themselves: pycocotools must then report a perfect score.
    gt = coco_ground_truth([{"id": i + 1, "height": im.shape[0], "width": im.shape[1]} for i, im in enumerate(imgs)],
                           [{"id": c, "name": n} for c, n in enumerate(["cat", "cup", "person"])],
                           [np.clip(d.boxes, 0, None) for d in dets], [d.labels for d in dets])
    for d in dets:
        d.boxes = np.clip(d.boxes, 0, None)
    assert coco_ap(gt, to_coco_results(dets, [1, 2, 3]))["AP50"] == pytest.approx(1.0)
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none")


@pytest.mark.torch
def test_static_graph_bundle(peer, tmp_path):
    from vkt.errors import ShapeError
    from vkt.models.detr.export import export_detr
    from vkt.runtime.image import read_image

    model, _ = peer
    rep = export_detr(model, tmp_path / "static.onnx", postprocess=True, top_k=10, static_shape=(2, 400, 400))
    dest = make_detr_bundle(rep.path, tmp_path / "static.vkt", spec=rep.spec, score_threshold=0.0, **SIZE)
    astronaut = read_image(photo_path("astronaut.png"))          # 512 x 512 -> 400 x 400: fits
    with Detector(dest, threads=2) as det:
        assert det.max_batch == 2
        one = det([astronaut])[0]                                 # a batch of one, padded to the static two
        assert len(one) == 10 and one.image_size == (512, 512)
        with pytest.raises(ShapeError, match="dim 3: expected 400"):
            det([read_image(photo_path("coffee.png"))])           # 400 x 600: does not
