"""One call for any target's Q/DQ placement: onnxruntime's and TensorRT's (:mod:`vkt.calibration.qdq`) and OpenVINO's
(:mod:`vkt.calibration.place_ov`), so neither placement module needs to know the other."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vkt.calibration.bias import BiasShifts, apply_bias_shifts
from vkt.calibration.place_ov import place_ov
from vkt.calibration.qdq import place_ort, place_trt
from vkt.calibration.ranges import CalibrationTable
from vkt.errors import CalibrationError


def placement(model: Any, table: CalibrationTable, target: str, exclude: Iterable[str] = (), *, ort_ops: str = "all",
              bias: BiasShifts | None = None) -> Any:
    """Dispatch on ``target`` ("ort", "trt" or "openvino": :func:`vkt.calibration.place_ov.place_ov`); ``ort_ops`` is
    :func:`place_ort`'s ``ops``; ``bias``: shifts measured once (:func:`vkt.calibration.bias.measure_bias_shifts`)
    added to the openvino placement's quantized convs (the other placements do not use them)."""
    if target == "trt":
        return place_trt(model, table, exclude)
    if target == "ort":
        return place_ort(model, table, exclude, ops=ort_ops)
    if target == "openvino":
        q = place_ov(model, table, exclude)
        return apply_bias_shifts(q, bias)[0] if bias else q
    raise CalibrationError(f"placement target must be 'ort', 'trt' or 'openvino', got {target!r}")
