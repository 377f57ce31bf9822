"""INT8 post-training quantization: calibrate once, place Q/DQ per backend (TensorRT, onnxruntime CPU).

    table = compute_ranges(model, feeds, "minmax")   # the only step that runs data
    trt = place_trt(model, table)                     # int8 symmetric Q/DQ on Conv/MatMul/Gemm inputs
    ort = place_ort(model, table)                     # uint8 activations, fused integer kernels on CPU
    quantize_bundle(bundle, feeds, Int8Config())      # all of it, recorded in the bundle's manifest
    gate_bundle(bundle, metric, GateConfig())         # the accuracy gate on held-out data, its choice shipped

The graph they work on is ``vkt.onnxgraph.prepare_model(model)`` (done inside when not yet done).
Family-blind: each family's recipe (vkt.models.recipe_for) picks data, defaults and metric.
Heavy imports (onnx, onnxruntime) happen inside the functions.
"""

from vkt.calibration.api import gate_bundle, qdq_path, quantize_bundle
from vkt.calibration.config import Int8Config
from vkt.calibration.data import ImageFolderReader, array_feeds, calibration_shapes, simple_image_preprocess
from vkt.calibration.gate import GateConfig
from vkt.calibration.placements import placement
from vkt.calibration.qdq import place_ort, place_trt
from vkt.calibration.ranges import CalibrationTable, compute_ranges
from vkt.calibration.report import (count_ops, layer_errors, layer_sensitivity, render_counts_table, render_layer_table,
                                   sqnr_db)

__all__ = [
    "CalibrationTable", "GateConfig", "ImageFolderReader", "Int8Config", "array_feeds", "calibration_shapes",
    "compute_ranges", "count_ops", "gate_bundle", "layer_errors", "layer_sensitivity", "place_ort", "place_trt",
    "placement", "qdq_path", "quantize_bundle",
    "render_counts_table", "render_layer_table", "simple_image_preprocess", "sqnr_db",
]
