"""DETR bundles: an exported DETR graph (raw heads or in-graph post-processing) with its manifest."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vkt.errors import InputError, ModelError


def make_detr_bundle(onnx_path: str | os.PathLike, dest: str | os.PathLike, labels: Sequence[str] | None = None,
                     spec: Any = None, overwrite: bool = False, name: str | None = None, fp16: bool = False,
                     **param_overrides: Any) -> Path:
    """Write a DETR bundle around an exported graph (vkt.models.detr.export); ``vkt.runtime.detection.Detector``
    runs it.

    Args:
        onnx_path: the ``.onnx`` file.
        dest: bundle folder.
        labels: class names by class id (written to ``postprocess.labels``).
        fp16: also write ``model.fp16.onnx`` (sensitive ops and I/O kept in FP32; :func:`vkt.export.fp16.add_fp16`).
        spec: its ExportSpec (``ExportReport.spec``); default: read from the graph, with
            ``TASKS["detr"].profile`` for dynamic graphs.
        **param_overrides: postprocess keys, or resize keys shortest_edge / longest_edge
            (:func:`vkt.runtime.detection.detr_settings`).
    Returns the bundle folder. Raises InputError / ModelError / BundleError on bad input.
    """
    from vkt.bundle import BundleWriter
    from vkt.runtime.detection import FINAL_OUTPUTS, RAW_OUTPUTS, DetrParams, detr_settings
    from vkt.specs import ExportSpec
    from vkt.tasks import TASKS

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"ONNX file not found: {str(onnx_path)!r}")
    t = TASKS["detr"]
    if spec is None:
        raw = ExportSpec.from_onnx(onnx_path)
        spec = raw.with_profiles(t.profile) if raw.input_axes else raw
    elif not isinstance(spec, ExportSpec):
        raise InputError(f"spec must be a vkt.specs.ExportSpec, got {type(spec).__name__}")
    outs = set(spec.output_names)
    if not (set(RAW_OUTPUTS) <= outs or set(FINAL_OUTPUTS) <= outs):
        raise ModelError(f"{str(onnx_path)!r} is not a DETR graph: outputs {spec.output_names}, expected "
                         f"{list(RAW_OUTPUTS)} or {list(FINAL_OUTPUTS)}")
    pre = {**t.preprocess, "input": spec.input_names[0], "resize": dict(t.preprocess["resize"])}
    post = dict(t.postprocess)
    if labels is not None:
        post["labels"] = [str(x) for x in labels]
    pre, post = detr_settings(pre, post, param_overrides, "DETR parameter")
    post = DetrParams.from_dict(post).to_dict()
    with BundleWriter(dest, family=t.family, task=t.task, name=name, overwrite=overwrite) as w:
        w.add_component("model", spec)
        w.add_file(onnx_path, "model.onnx", role="fp32 onnx")
        if fp16:
            from vkt.export.fp16 import add_fp16
            from vkt.onnxio import load_onnx

            add_fp16(w, load_onnx(onnx_path))
        w.manifest["preprocess"] = pre
        w.manifest["postprocess"] = post
    return Path(dest)
