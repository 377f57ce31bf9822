"""DETR INT8: the keep-list groups, AP of detections against reference detections, the gated `quantize_detr` path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pycocotools")

from vkt.errors import CalibrationError  # noqa: E402
from vkt.models.detr.int8 import KEEP_GROUPS, agreement_ap, keep_list, quantize_detr, split_holdout  # noqa: E402
from vkt.runtime.detection import Detections  # noqa: E402

SIZE = {"shortest_edge": 96, "longest_edge": 128}


def dets(boxes, scores, labels) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64), [str(c) for c in labels], (100, 100))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from vkt.models.detr import tiny_detr
    from vkt.models.detr.export import export_bundle

    return export_bundle(tiny_detr(num_labels=3, num_queries=10), tmp_path_factory.mktemp("detr-int8") / "d.vkt",
                         profile={"batch": (1, 1, 2), "height": (32, 96, 128), "width": (32, 128, 128)}, **SIZE)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    import cv2

    from vkt.training.detr_data import synthetic_shapes

    folder = tmp_path_factory.mktemp("shapes")
    for s in synthetic_shapes(10, size=(96, 128), seed=3):
        cv2.imwrite(str(folder / f"{s.image_id:02d}.png"), s.image)
    return folder


def test_agreement_ap_against_hand_counted_matches():
    ref = [dets([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.8], [1, 2])]
    assert agreement_ap(ref, ref, [(100, 100)])["AP"] == pytest.approx(1.0)
    # the first box shifted by 8 px: IoU 32*40 / (40*40 + 40*40 - 32*40) = 0.667 -> matched at 0.50..0.65 only
    moved = [dets([[18, 10, 58, 50], [60, 60, 90, 90]], [0.9, 0.8], [1, 2])]
    m = agreement_ap(ref, moved, [(100, 100)])
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.5)   # category 1 misses at 0.75
    assert m["AP"] == pytest.approx((4 / 10 + 1.0) / 2, abs=1e-3) and m["gt_boxes"] == 2
    # ground truth is the reference's boxes above the threshold: a low-scoring reference box is not expected
    low = [dets([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.3], [1, 2])]
    assert agreement_ap(low, low, [(100, 100)])["gt_boxes"] == 1
    assert agreement_ap(low, low, [(100, 100)], gt_top=2)["gt_boxes"] == 2
    with pytest.raises(CalibrationError, match="one of each per image"):
        agreement_ap(ref, ref + ref, [(100, 100)])


def test_keep_list_groups_in_order(bundle):
    import onnx

    from vkt.bundle import Bundle

    model = onnx.load(str(Bundle.load(bundle).path("fp32 onnx")))
    rows, steps = keep_list(model)
    groups = [r["group"] for r in rows]
    assert [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g] == [g for g, _ in KEEP_GROUPS]
    assert steps == [0] + [groups.index(g) for g, _ in KEEP_GROUPS[1:]] + [len(rows)]
    heads = [r["node"] for r in rows if r["group"] == "heads"]
    assert any("bbox_predictor" in n for n in heads) and any("class_labels_classifier" in n for n in heads)
    assert all(r["node"].startswith("/decoder/") for r in rows if r["group"] == "decoder")
    assert not any(r["node"].startswith("/model/encoder/") for r in rows)       # the backbone's stages stay INT8
    from vkt.export.toy import toy_convnet

    with pytest.raises(CalibrationError, match="keep-list"):
        keep_list(toy_convnet()[0])


def test_split_holdout(images, tmp_path):
    calib, held = split_holdout(images)
    assert len(held) == 2 and len(calib) == 8 and not set(calib) & set(held)
    assert split_holdout(images, min_images=11) is None
    with pytest.raises(CalibrationError, match="not found"):
        split_holdout(tmp_path / "none")


def test_quantize_detr_gates_with_the_keep_list(bundle, images, tmp_path):
    import shutil

    from vkt.bundle import Bundle

    b = Bundle.load(shutil.copytree(bundle, tmp_path / "q.vkt"))
    # untrained: FP32's scores are near-uniform, so all its 10 boxes per image are the ground truth
    section = quantize_detr(b, images, max_drop=0.0, on_fail="best", gt_top=10, threads=1, show_progress=False)
    gate = section["gate"]
    assert gate["metric_name"] == "COCO AP vs FP32 detections" and gate["baseline"] == pytest.approx(1.0)
    assert gate["holdout"]["images"] == 2 and section["data"]["held_out_for_gate"] == 2 and section["samples"] == 8
    b = Bundle.load(b.root)
    from vkt.calibration.ranges import prepare_model
    from vkt.onnxio import load_onnx

    rows, steps = keep_list(prepare_model(load_onnx(b.path("fp32 onnx"))))   # the gate's names: the prepared graph's
    assert [s["layers_kept_float"] for s in gate["steps"]] == steps[:len(gate["steps"])]
    chosen = sorted(gate["chosen"]["float_layers"])
    meta = {e.meta["placement"]: e.meta for e in b.files("int8 qdq onnx")}
    assert sorted(meta["ort"]["excluded"]) == chosen and sorted(meta["trt"]["excluded"]) == chosen
    assert set(chosen) == {r["node"] for r in rows[:len(chosen)]}      # a prefix of the keep-list
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(images.iterdir())[0], one)
    with pytest.raises(CalibrationError, match="at least 20"):     # 10 queries: too few boxes for a gate
        quantize_detr(b, images, holdout=one, threads=1, show_progress=False)
