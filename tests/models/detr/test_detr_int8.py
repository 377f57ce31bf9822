"""DETR INT8: the keep-list groups, AP of detections against reference detections, the recipe's gated path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pycocotools")

from vkt.calibration.config import Int8Config  # noqa: E402
from vkt.calibration.holdout import split_holdout  # noqa: E402
from vkt.errors import CalibrationError  # noqa: E402
from vkt.models.detr.int8 import KEEP_GROUPS, DetrRecipe, agreement_ap, keep_list  # noqa: E402
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
    # of the backbone's stages only the last one's residual sums (block outputs) join, no conv
    import re

    last = max(int(m.group(1)) for n in model.graph.node if (m := re.match(r"^/model/encoder/stages\.(\d+)/", n.name)))
    sums = sorted(n.name for n in model.graph.node if re.fullmatch(rf"/model/encoder/stages\.{last}/layers\.\d+/Add", n.name))
    assert last >= 1 and sums
    assert sorted(r["node"] for r in rows if r["node"].startswith("/model/encoder/")) == sums
    assert {r["group"] for r in rows if r["node"] in sums} == {"backbone_residual"}
    from vkt.export.toy import toy_convnet

    with pytest.raises(CalibrationError, match="keep-list"):
        keep_list(toy_convnet()[0])


def test_split_holdout(images, tmp_path):
    calib, held = split_holdout(images)
    assert len(held) == 2 and len(calib) == 8 and not set(calib) & set(held)
    assert split_holdout(images, min_images=11) is None
    with pytest.raises(CalibrationError, match="not found"):
        split_holdout(tmp_path / "none")


@pytest.fixture(scope="module")
def gated(bundle, images, tmp_path_factory):
    """(bundle copy, calibration section) of one DETR recipe run with the defaults, gated on `--holdout auto`."""
    import shutil

    from vkt.bundle import Bundle

    b = Bundle.load(shutil.copytree(bundle, tmp_path_factory.mktemp("gated") / "q.vkt"))
    # untrained: FP32's scores are near-uniform, so all its 10 boxes per image are the ground truth
    # min_speedup 0: a tiny DETR's INT8 need not beat its FP32 (the gate's speed check has its own tests)
    cfg = Int8Config(calib=images, holdout="auto", max_drop=0.0, on_fail="best", threads=1, min_speedup=0)
    return b, DetrRecipe(gt_top=10).quantize(b, cfg, show_progress=False)


def test_detr_recipe_gates_with_the_keep_list(gated, images, tmp_path):
    import shutil

    from vkt.bundle import Bundle

    b, section = gated
    gate = section["gate"]
    assert gate["metric_name"] == "COCO AP vs FP32 detections" and gate["baseline"] == pytest.approx(1.0)
    assert gate["holdout"]["images"] == 2 and section["data"]["held_out_for_gate"] == 2 and section["samples"] == 8
    assert gate["holdout"]["split"] == "every 4th calibration image"
    b = Bundle.load(b.root)
    from vkt.onnxgraph import prepare_model
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
    rest = tmp_path / "rest"
    shutil.copytree(images, rest, ignore=shutil.ignore_patterns(sorted(p.name for p in images.iterdir())[0]))
    with pytest.raises(CalibrationError, match="at least 20"):     # 10 queries: too few boxes for a gate
        DetrRecipe().quantize(Bundle.load(shutil.copytree(b.root, tmp_path / "again.vkt")),
                              Int8Config(calib=rest, holdout=one, threads=1), show_progress=False)


def _conv_weights_of(qdq) -> dict[str, np.ndarray]:
    """Conv node -> its dequantized weight (int8 codes x per-channel scale) in a Q/DQ graph."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    dq = {n.output[0]: n for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    out = {}
    for n in qdq.graph.node:
        if n.op_type == "Conv" and n.input[1] in dq:
            d = dq[n.input[1]]
            q, s = inits[d.input[0]].astype(np.float64), inits[d.input[1]].astype(np.float64)
            out[n.name] = q * s.reshape(-1, *([1] * (q.ndim - 1)))
    return out


def test_detr_recipe_ships_gptq_weights_that_lower_conv_error(gated, images):
    """Default DETR calibration: GPTQ conv weights reach both shipped placements (through the gate) and give each
    conv a lower output error ||(W - Q) X|| on the calibration images than round-to-nearest; ranges at 99.99."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from vkt.bundle import Bundle
    from vkt.calibration.images import image_preprocess
    from vkt.onnxgraph import prepare_model
    from vkt.calibration.weights import _patches
    from vkt.onnxio import load_onnx

    b, section = gated
    fp32 = prepare_model(load_onnx(b.path("fp32 onnx")))
    convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    assert section["weights"] == {"rounding": "gptq", "convs": len(convs), "feeds": 8}
    assert section["options"]["percentile"] == pytest.approx(99.99)
    b = Bundle.load(b.root)
    placed = {e.meta["placement"]: _conv_weights_of(onnx.load(str(b.root / e.path))) for e in b.files("int8 qdq onnx")}
    kept = set(section["gate"]["chosen"]["float_layers"])
    int8_convs = sorted(set(convs) - kept)
    assert int8_convs and sorted(placed["ort"]) == int8_convs == sorted(placed["trt"])
    # conv inputs on the calibration images (the 8 not held out), through the float graph
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    names = sorted({convs[c].input[0] for c in int8_convs})
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    pre = image_preprocess(b)
    calib, _ = split_holdout(images)
    acts = [dict(zip(names, sess.run(names, pre(p)))) for p in calib]
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in fp32.graph.initializer}
    rng = np.random.default_rng(0)
    for c in int8_convs:
        node = convs[c]
        w = inits[node.input[1]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("group", 1) == 1
        x = np.concatenate([_patches(a[node.input[0]][0], attrs, w.shape[2:], rng).reshape(np.prod(w.shape[1:]), -1)
                            for a in acts], axis=1).astype(np.float64)          # [Cin*kh*kw, positions]
        flat = w.reshape(w.shape[0], -1)
        s = np.abs(flat).max(axis=1, keepdims=True) / 127
        rtn = np.clip(np.rint(flat / s), -127, 127) * s
        np.testing.assert_allclose(placed["ort"][c], placed["trt"][c], rtol=1e-6, atol=1e-9)   # same codes and scales
        got = placed["ort"][c].reshape(flat.shape)
        np.testing.assert_allclose(np.abs(got).max(axis=1), np.abs(flat).max(axis=1), rtol=1e-5)  # the placements' scale rule
        err_gptq, err_rtn = np.linalg.norm((flat - got) @ x), np.linalg.norm((flat - rtn) @ x)
        assert err_gptq < 0.9 * err_rtn, (c, err_gptq / err_rtn)       # measured on this model: 0.25-0.79
