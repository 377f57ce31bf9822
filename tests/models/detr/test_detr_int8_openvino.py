"""The DETR recipe gated for OpenVINO (`vkt quantize -t openvino` on a DETR bundle): the gate scores and ships the
openvino placement on OpenVINO's runner, and what it records is what that runner gives."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pycocotools")
pytest.importorskip("openvino")

from vkt.calibration.config import Int8Config  # noqa: E402
from vkt.models.detr.int8 import DetrRecipe, detr_agreement, keep_list  # noqa: E402


@pytest.fixture(scope="module")
def gated_ov(tmp_path_factory) -> tuple[Path, dict, Path]:
    """(bundle, calibration section, held-out folder) of one DETR recipe run for the openvino target only."""
    import cv2

    from vkt.models.detr import tiny_detr
    from vkt.models.detr.export import export_bundle
    from vkt.training.detr_data import synthetic_shapes

    root = tmp_path_factory.mktemp("detr-ov")
    bundle = export_bundle(tiny_detr(num_labels=3, num_queries=10), root / "d.vkt", shortest_edge=96, longest_edge=128,
                           profile={"batch": (1, 1, 2), "height": (32, 96, 128), "width": (32, 128, 128)})
    calib, held = root / "calib", root / "held"
    for folder, seed in ((calib, 3), (held, 4)):
        folder.mkdir()
        for s in synthetic_shapes(3 if folder == held else 8, size=(96, 128), seed=seed):
            cv2.imwrite(str(folder / f"{s.image_id:02d}.png"), s.image)
    # untrained: FP32's scores are near-uniform, so its 10 boxes per image are the ground truth (gt_top=10);
    # max_drop 0 walks the keep-list; min_speedup 0: a tiny DETR's INT8 need not beat FP32 (the gate's speed
    # check has its own tests); round-to-nearest weights: GPTQ has its own test (test_detr_int8.py)
    cfg = Int8Config(calib=calib, holdout=held, targets=("openvino",), max_drop=0.0, on_fail="best", threads=1,
                     min_speedup=0, weight_rounding="nearest")
    return bundle, DetrRecipe(gt_top=10).quantize(bundle, cfg, show_progress=False), held


def test_detr_openvino_gate_ships_what_openvino_scores(gated_ov):
    from vkt.bundle import Bundle
    from vkt.onnxgraph import prepare_model
    from vkt.onnxio import load_onnx
    from vkt.runtime import make_runner

    bundle, section, held = gated_ov
    gate = section["openvino_gate"]
    assert gate["placement"] == "openvino" and gate["metric_name"] == "COCO AP vs FP32 detections"
    assert "gate" not in section                       # the openvino placement's gate is recorded under its own key
    b = Bundle.load(bundle)
    assert [e.meta["placement"] for e in b.files("int8 qdq onnx")] == ["openvino"]
    # the steps walk the DETR keep-list (groups kept in float cheapest first), not a per-layer ranking
    rows, steps = keep_list(prepare_model(load_onnx(b.path("fp32 onnx"))))
    assert [s["layers_kept_float"] for s in gate["steps"]] == steps[:len(gate["steps"])]
    chosen = gate["chosen"]
    meta = b.entry("int8 qdq onnx", placement="openvino").meta
    assert sorted(meta["excluded"]) == sorted(chosen["float_layers"]) == sorted(r["node"] for r in rows[:chosen["layers_kept_float"]])
    # the recorded metric is the shipped graph's AP on OpenVINO, re-measured here from scratch
    metric = detr_agreement(b, sorted(held.iterdir()), gt_top=10, threads=1, show_progress=False)
    runner = make_runner(b, "ov", "int8", threads=1)
    assert metric(lambda: runner) == pytest.approx(chosen["metric"], abs=1e-4)
    # and OpenVINO runs it in integer: some convolutions execute in u8/i8 (its runtime graph, not the file)
    runner.activate()
    try:
        convs = runner.executed_precisions().get("Convolution", {})
    finally:
        runner.deactivate()
    assert convs.get("u8", 0) + convs.get("i8", 0) > 0, convs
