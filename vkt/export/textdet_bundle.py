"""Text-detection bundles from a DB detector ONNX file (any exporter's: Paddle's, vkt's, ...), with their manifests.

The bundle has the layout ``vkt run / eval / bench / build`` and ``TextDetector`` take as is; a PyTorch
detector becomes one through :func:`vkt.models.textdet.bundle.export_textdet_bundle`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def textdet_manifest(overrides: Mapping[str, Any] | None = None, resize: Mapping[str, Any] | None = None,
                     what: str = "textdet parameter") -> tuple[dict[str, Any], dict[str, Any]]:
    """A textdet bundle's ``preprocess`` / ``postprocess``: ``TASKS["textdet"]``'s, with ``resize`` merged into
    ``preprocess["resize"]`` (a training run's validation rule) and ``overrides`` (``textdet_settings`` keys)
    applied, all checked (InputError naming the key or value, ``what`` naming the caller's word for them).
    The caller adds ``preprocess["input"]`` once the graph is known."""
    from vkt.runtime.textdet import textdet_settings
    from vkt.tasks import TASKS

    t = TASKS["textdet"]
    pre = {**t.preprocess, "resize": {**t.preprocess["resize"], **(resize or {})}}
    return textdet_settings(pre, t.postprocess, overrides or {}, what)


def make_textdet_bundle(onnx_path: str | os.PathLike, dest: str | os.PathLike, overwrite: bool = False,
                        name: str | None = None, optimize: bool = True, **param_overrides: Any) -> Path:
    """Write a textdet bundle around a DB detector ONNX (input [N, 3, H, W], output [N, 1, H, W]).

    The input's dynamic axes are renamed by position to batch / height / width (exporters name them
    differently, e.g. Paddle's ``DynamicDimension.0``) and get ``TASKS["textdet"].profile``; the graph is
    checked to be a text detector and its map's axes named after the input's
    (:func:`vkt.export.textdet_check.check_text_detector`); the manifest gets ``TASKS["textdet"]``'s
    preprocess/postprocess with ``param_overrides`` (``textdet_settings`` keys) applied. With
    ``optimize`` the FP32 graph gets the exact float rewrites of ``vkt export onnx``
    (:func:`vkt.export.optimize.optimize_fp32`, checked on a random 1x3x64x64 input). Needs onnx and
    onnxruntime's quantization tools (export time, not the runtime). Returns the bundle folder. Raises InputError / ModelError / BundleError on bad input.
    """
    import numpy as np

    from vkt.bundle import BundleWriter
    from vkt.errors import ModelError
    from vkt.export.onnx_import import name_image_axes
    from vkt.export.textdet_check import check_text_detector
    from vkt.onnxio import load_onnx
    from vkt.specs import ExportSpec
    from vkt.tasks import TASKS

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"ONNX file not found: {str(onnx_path)!r}")
    t = TASKS["textdet"]
    pre, post = textdet_manifest(param_overrides)
    model = load_onnx(onnx_path)
    name_image_axes(model)
    check_text_detector(model, t.profile, post.get("channel"))  # and names the map's axes after the input's
    spec = ExportSpec.from_onnx(model, profiles=[t.profile])
    pre["input"] = spec.inputs[0].name
    graph: Any = model.SerializeToString()
    meta: dict[str, Any] = {}
    if optimize:
        from vkt.export.optimize import optimize_fp32

        model, rewrites = optimize_fp32(model, {spec.inputs[0].name: np.random.default_rng(0).standard_normal(
            (1, 3, 64, 64)).astype(np.float32)})
        meta["rewrites"] = rewrites
        if "kept_original" not in rewrites:
            graph = model.SerializeToString()
    with BundleWriter(dest, family=t.family, task=t.task, name=name, overwrite=overwrite) as w:
        w.add_component("model", spec)
        w.add_file(graph, "model.onnx", role="fp32 onnx", meta=meta)
        w.manifest["preprocess"] = pre
        w.manifest["postprocess"] = post
    return Path(dest)


__all__ = ["make_textdet_bundle", "textdet_manifest"]
