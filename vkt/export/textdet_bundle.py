"""Text-detection bundles: from a DB detector ONNX file (make_textdet_bundle), or from a PyTorch DB detector
(export_textdet_bundle: dynamic-shape ONNX + FP16, parity-checked), with their manifests.

Sources: the imported PP-OCRv5 mobile weights (``pretrained="ppocrv5-mobile"``) or a vkt training
checkpoint (``vkt train textdet`` writes ``RUN/ckpt.pt``); the threshold branch used in training is
not exported. The bundle has the layout of :func:`make_textdet_bundle`, so
``vkt run / eval / bench / build`` and ``TextDetector`` take it as is.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkt.errors import InputError
from vkt.log import get_logger, timed

log = get_logger(__name__)


@dataclass(frozen=True)
class TextDetBundleReport:
    """Where the bundle went, ORT-vs-torch max abs differences per checked input shape (FP32, and FP16 if
    written), and where the model came from."""

    path: Path
    parity: dict[str, float]
    parity_fp16: dict[str, float] | None
    source: str


def load_textdet_source(source: str | os.PathLike) -> tuple[Any, dict[str, Any] | None, str]:
    """(detector, resize rule or None, description) for ``"ppocrv5-mobile"`` or a checkpoint / run folder."""
    from vkt.training.textdet import PRETRAINED, val_resize

    if str(source) in PRETRAINED:
        from vkt.models.textdet.loader import load_ppocrv5_mobile_det

        return load_ppocrv5_mobile_det(), None, f"pretrained {source}"
    from vkt.training.textdet_ckpt import load_checkpoint, model_from_checkpoint

    state = load_checkpoint(source)
    size = int(state["train_config"].get("size", 0) or 0)
    return model_from_checkpoint(state), (val_resize(size) if size else None), f"{state['path']} (step {state['step']})"


def export_textdet_bundle(model: Any, dest: str | os.PathLike, profile: dict[str, tuple[int, int, int]] | None = None,
                          fp16: bool = False, resize: dict[str, Any] | None = None, overwrite: bool = False,
                          name: str | None = None, source: str = "torch", opset: int = 17,
                          check_shapes: tuple[tuple[int, int, int, int], ...] = ((1, 3, 64, 96), (2, 3, 96, 64)),
                          atol: float = 1e-4, atol_fp16: float = 2e-2) -> TextDetBundleReport:
    """Export ``model`` (transformers PP-OCR detector) to a textdet bundle at ``dest``.

    Args:
        profile: ``{"batch"|"height"|"width": (min, opt, max)}`` (default ``TASKS["textdet"].profile``).
        fp16: also write ``model.fp16.onnx`` (I/O and sensitive ops FP32), parity-checked within ``atol_fp16``.
        resize: resize keys merged into the manifest's ``preprocess.resize`` (a checkpoint's training size).
        check_shapes: ``(B, 3, H, W)`` inputs at which onnxruntime must match torch (noise in [-1, 1]).
    Raises:
        SpecError for a bad profile; ModelError when a graph fails the checker or parity.
    """
    import onnx

    from vkt.bundle import BundleWriter
    from vkt.errors import ModelError
    from vkt.export.fp16 import SENSITIVE_OPS, convert_fp16
    from vkt.models.textdet.export import (
        export_textdet,
        onnx_parity,
        prob_map_module,
        textdet_spec,
    )
    from vkt.runtime.image import Preprocessor
    from vkt.runtime.textdet import DBParams
    from vkt.tasks import TASKS

    t = TASKS["textdet"]
    spec = textdet_spec(opset, profile)
    pre = {**t.preprocess, "input": spec.input_names[0], "resize": {**t.preprocess["resize"], **(resize or {})}}
    Preprocessor(pre)
    post = dict(t.postprocess)
    DBParams.from_dict(post)
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise InputError(f"{str(dest)!r} already exists; pass --force to replace it")
    with tempfile.TemporaryDirectory(prefix=".textdet-export-", dir=dest.parent if dest.parent.is_dir() else None) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        with timed("export textdet ONNX (fused, dynamic batch/height/width)", log):
            report = export_textdet(model, onnx_path, spec=spec, opset=opset, check_shapes=check_shapes, atol=atol)
        p16 = None
        if fp16:
            with timed("convert to fp16", log):
                m16 = convert_fp16(onnx.load(str(onnx_path)))
                onnx.save(m16, str(Path(tmp) / "model.fp16.onnx"))
            ref = prob_map_module(model)
            p16 = {"x".join(map(str, s)): onnx_parity(ref, Path(tmp) / "model.fp16.onnx", s, spec) for s in check_shapes}
            bad = {k: v for k, v in p16.items() if not v <= atol_fp16}
            if bad:
                raise ModelError(f"the FP16 graph differs from torch by more than {atol_fp16}: {bad}")
        with BundleWriter(dest, family=t.family, task=t.task, name=name, overwrite=overwrite) as w:
            w.add_component("model", spec, source=source)
            w.add_file(onnx_path, "model.onnx", role="fp32 onnx",
                       meta={"opset": opset, "exporter": report.exporter, "parity_max_abs_vs_torch": report.parity,
                                 "bn_fold_max_abs": report.fold_deviation})
            w.manifest["precision"] = {"fp32": "model.onnx"}
            if fp16:
                w.add_file(Path(tmp) / "model.fp16.onnx", "model.fp16.onnx", role="fp16 onnx",
                           meta={"kept_fp32_ops": list(SENSITIVE_OPS), "io": "float32", "parity_max_abs_vs_torch": p16})
                w.manifest["precision"]["fp16"] = "model.fp16.onnx"
            w.manifest["preprocess"] = pre
            w.manifest["postprocess"] = post
    return TextDetBundleReport(dest, report.parity, p16, source)


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
    from vkt.runtime.textdet import textdet_settings
    from vkt.specs import ExportSpec
    from vkt.tasks import TASKS

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"ONNX file not found: {str(onnx_path)!r}")
    t = TASKS["textdet"]
    pre = {**t.preprocess, "resize": dict(t.preprocess["resize"])}
    pre, post = textdet_settings(pre, dict(t.postprocess), param_overrides, "textdet parameter")
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


__all__ = ["TextDetBundleReport", "export_textdet_bundle", "load_textdet_source", "make_textdet_bundle"]
