"""Turn an existing ONNX file (any exporter's style) into a verified bundle for a task."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.bundle import Bundle, BundleWriter
from vkt.errors import ModelError, SpecError
from vkt.log import get_logger, timed
from vkt.onnxgraph import constants_to_initializers
from vkt.onnxio import load_onnx
from vkt.specs import ExportSpec, Profile
from vkt.tasks import task_defaults

log = get_logger(__name__)
IMAGE_AXES = ("batch", None, "height", "width")  # NCHW: the channel dim stays static
# What a task checks of what it imports: a module with check_settings(preprocess, postprocess), run before the
# graph is loaded, and check_graph(model, profile axes, postprocess), run on the loaded graph (image axes named).
TASK_CHECKS = {"textdet": "vkt.export.textdet_check"}


def name_image_axes(model: Any) -> dict[str, str]:
    """Rename the dynamic dims of every rank-4 NCHW input (and matching outputs) to batch/height/width.

    Exporters name them ``DynamicDimension.0``, ``p2o.DynamicDimension.1``, ``N`` or leave them
    unnamed; the task's profile uses batch/height/width. Returns {old name: new name}.
    """
    renames: dict[str, str] = {}
    init = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != 4:
            continue
        for d, new in zip(dims, IMAGE_AXES):
            if new is None:
                continue
            if d.HasField("dim_value") and d.dim_value > 0:
                continue  # static: keep
            old = d.dim_param if d.HasField("dim_param") else ""
            if old and old in renames and renames[old] != new:
                continue  # the same name used for two roles: leave the graph alone
            if old:
                renames[old] = new
            d.dim_param = new
    for vi in [*model.graph.output, *model.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in renames:
                d.dim_param = renames[d.dim_param]
    return renames


def import_onnx(src: str | os.PathLike, dest: str | os.PathLike, task: str = "generic",
                profile: Profile | Mapping[str, Sequence[int]] | None = None, name: str | None = None,
                overwrite: bool = False, preprocess: Mapping[str, Any] | None = None,
                postprocess: Mapping[str, Any] | None = None, verify: bool = True, fp16: bool = False,
                optimize: bool = True) -> Bundle:
    """Make a bundle from an ONNX file.

    Args:
        src: the .onnx file.
        dest: bundle folder to create (atomically; ``overwrite`` to replace an existing bundle).
        task: a key of ``vkt.tasks.TASKS`` ("generic", "textdet", "detr"): family, default profile,
            pre/post-processing written to the manifest. A task in ``TASK_CHECKS`` also checks its settings
            and the graph ("textdet": :mod:`vkt.export.textdet_check`, whatever ``verify`` says).
        profile: axis ranges overriding the task's default profile.
        preprocess / postprocess: key overrides merged into the task's defaults (a ``resize`` dict is merged
            into the default one). For "textdet", postprocess ``channel`` names the probability channel of a
            multi-channel output map.
        verify: run the graph once on onnxruntime at the profile's min shape before writing.
        fp16: also write an FP16 graph (role "fp16 onnx"; sensitive ops and I/O stay FP32).
        optimize: ship the FP32 graph after exact float rewrites (:func:`vkt.export.optimize.optimize_fp32`:
            Identity/constant/BatchNorm folding, constant Mul/Add folded into convs), checked against the
            original on onnxruntime; the manifest's ``fp32 onnx`` entry records them under ``rewrites``.
    """
    import onnx

    defaults = task_defaults(task)
    pre = {**defaults.preprocess, **(preprocess or {})}
    if "resize" in defaults.preprocess:
        pre["resize"] = {**defaults.preprocess["resize"], **(preprocess or {}).get("resize", {})}
    post = {**defaults.postprocess, **(postprocess or {})}
    checks = importlib.import_module(TASK_CHECKS[task]) if task in TASK_CHECKS else None
    if checks is not None:
        checks.check_settings(pre, post)  # bad settings fail before the (possibly long) load
    with timed(f"import {src}", log):
        model = load_onnx(src)
        renames = name_image_axes(model) if defaults.profile else {}
        if renames:
            log.info("named dynamic axes %s", ", ".join(f"{k or '?'} -> {v}" for k, v in renames.items()))
        moved = constants_to_initializers(model)
        if moved:
            log.info("moved %d Constant-node weights into initializers", moved)
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            raise ModelError(f"{str(src)!r} fails the ONNX checker: {e}") from None
        prof = profile if profile is not None else (defaults.profile or None)
        if checks is not None:
            checks.check_graph(model, prof.axes if isinstance(prof, Profile) else dict(prof or {}), post)
        try:
            spec = ExportSpec.from_onnx(model, profiles=[prof] if prof else [])
        except SpecError as e:
            raise SpecError(f"{e} (pass a profile naming the model's axes, e.g. --profile 'batch=1:1:8,...')") from None
        rewrites: dict[str, Any] = {}
        if optimize:
            from vkt.export.optimize import optimize_fp32

            with timed("float rewrites", log):
                model, rewrites = optimize_fp32(model, _min_feed(spec))
        data = model.SerializeToString()
        if verify:
            _smoke_run(data, spec)
        with BundleWriter(dest, family=defaults.family, task=defaults.task, name=name, overwrite=overwrite) as w:
            w.add_component("model", spec, source=str(Path(src).name))
            w.add_file(data, "model.onnx", role="fp32 onnx", meta={"opset": spec.opset, "nodes": len(model.graph.node),
                                                                       **({"rewrites": rewrites} if rewrites else {})})
            w.manifest["preprocess"] = pre
            if defaults.preprocess:
                w.manifest["preprocess"].setdefault("input", spec.input_names[0])
            w.manifest["postprocess"] = post
            w.manifest["precision"] = {"fp32": "model.onnx"}
            if fp16:
                from vkt.export.fp16 import add_fp16

                with timed("convert to fp16", log):
                    add_fp16(w, model, check=(lambda path: _smoke_run(path, spec)) if verify else None)
    return Bundle.load(dest)


def _min_feed(spec: ExportSpec) -> dict[str, np.ndarray] | None:
    """Random inputs at the profile's smallest shapes (None when dynamic axes have no profile)."""
    feed = {}
    rng = np.random.default_rng(0)
    for name, (lo, _, _) in spec.profile_shapes(0).items() if spec.profiles or not spec.input_axes else []:
        dt = np.dtype(spec.input(name).dtype)
        feed[name] = rng.standard_normal(lo).astype(dt) if dt.kind == "f" else np.zeros(lo, dt)
    return feed or None


def _smoke_run(data: bytes | Path, spec: ExportSpec) -> None:
    """Run the graph once at the smallest profile shape so a broken graph never becomes a bundle."""
    from vkt.runtime.ort import OrtRunner

    feed = _min_feed(spec)
    if not feed:
        log.warning("no profile for dynamic axes %s: skipping the smoke run", sorted(spec.input_axes))
        return
    with OrtRunner(data, spec=spec) as r:
        r.infer(feed)
