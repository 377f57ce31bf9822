"""PyTorch DB text detector -> textdet bundle: dynamic-shape ONNX (and FP16), parity-checked against torch.

The detector comes from imported PP-OCRv5 mobile weights or a vkt training checkpoint
(:func:`vkt.training.textdet_ckpt.load_textdet_source`); the threshold branch used in training is not
exported. The bundle has the layout of :func:`vkt.export.textdet_bundle.make_textdet_bundle`, so
``vkt run / eval / bench / build`` and ``TextDetector`` take it as is.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkt.errors import InputError, ModelError
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
    from vkt.export.fp16 import add_fp16
    from vkt.models.textdet.export import (
        export_textdet,
        onnx_parity,
        prob_map_module,
        textdet_spec,
    )
    from vkt.export.textdet_bundle import textdet_manifest
    from vkt.tasks import TASKS

    t = TASKS["textdet"]
    spec = textdet_spec(opset, profile)
    pre, post = textdet_manifest(resize=resize, what="resize key")
    pre["input"] = spec.input_names[0]
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise InputError(f"{str(dest)!r} already exists; pass --force to replace it")

    def fp16_parity(path: Path) -> dict[str, Any]:
        """The FP16 graph against torch at ``check_shapes``: max abs difference each, ModelError past ``atol_fp16``."""
        ref = prob_map_module(model)
        p16 = {"x".join(map(str, s)): onnx_parity(ref, path, s, spec) for s in check_shapes}
        bad = {k: v for k, v in p16.items() if not v <= atol_fp16}
        if bad:
            raise ModelError(f"the FP16 graph differs from torch by more than {atol_fp16}: {bad}")
        return {"parity_max_abs_vs_torch": p16}

    with tempfile.TemporaryDirectory(prefix=".textdet-export-", dir=dest.parent if dest.parent.is_dir() else None) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        with timed("export textdet ONNX (fused, dynamic batch/height/width)", log):
            report = export_textdet(model, onnx_path, spec=spec, opset=opset, check_shapes=check_shapes, atol=atol)
        p16 = None
        with BundleWriter(dest, family=t.family, task=t.task, name=name, overwrite=overwrite) as w:
            w.add_component("model", spec, source=source)
            w.add_file(onnx_path, "model.onnx", role="fp32 onnx",
                       meta={"opset": opset, "exporter": report.exporter, "parity_max_abs_vs_torch": report.parity,
                                 "bn_fold_max_abs": report.fold_deviation})
            w.manifest["precision"] = {"fp32": "model.onnx"}
            if fp16:
                with timed("convert to fp16", log):
                    p16 = add_fp16(w, onnx.load(str(onnx_path)), check=fp16_parity)["parity_max_abs_vs_torch"]
            w.manifest["preprocess"] = pre
            w.manifest["postprocess"] = post
    return TextDetBundleReport(dest, report.parity, p16, source)


__all__ = ["TextDetBundleReport", "export_textdet_bundle"]
