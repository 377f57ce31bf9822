"""quantize_bundle: calibrate a bundle's FP32 graph once, write one Q/DQ graph per target, record it all in the manifest."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.calibration.qdq import ORT_OPS
from vkt.errors import CalibrationError
from vkt.log import get_logger, timed

log = get_logger(__name__)

TARGETS = ("ort", "trt")
TABLE_ROLE = "calibration table"
QDQ_ROLE = "int8 qdq onnx"


class _Keep:
    """Pass feeds through while keeping the first ``n`` (to measure the placements' error afterwards)."""

    def __init__(self, data: Iterable[Mapping[str, np.ndarray]], n: int):
        self.data, self.n, self.kept = data, n, []

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        for feed in self.data:
            if len(self.kept) < self.n:
                self.kept.append(feed)
            yield feed


def quantize_bundle(bundle: Any, data: Iterable[Mapping[str, np.ndarray]], *, method: str = "minmax",
                    targets: Sequence[str] = TARGETS, exclude: Sequence[str] = (), num_samples: int | None = None,
                    component: str = "model", percentile: float = 99.999, eval_samples: int = 2,
                    weight_rounding: str = "nearest", ort_ops: str = "all", show_progress: bool = True) -> dict[str, Any]:
    """Calibrate once and add INT8 Q/DQ graphs for each target to a bundle.

    1. compute activation ranges of the component's ``fp32 onnx`` over ``data`` (once);
    2. store the table (role ``calibration table``);
    3. write each placement (role ``int8 qdq onnx``, meta ``{"placement": "ort"|"trt", ...}``);
    4. count fused/float ops in onnxruntime CPU's optimized graph of each placement and measure its
       output error vs FP32 on the first ``eval_samples`` calibration feeds;
    5. fill the manifest's ``calibration`` section and return it.

    Args:
        bundle: a :class:`vkt.bundle.Bundle` or the path of one.
        data: iterable of feeds ``{input name: ndarray}``, e.g. an ImageFolderReader (its
            ``describe()`` goes into the manifest).
        method: "minmax", "percentile" or "entropy".
        targets: any of "ort" (onnxruntime CPU: uint8 activations, fused kernels) and "trt"
            (TensorRT: int8 symmetric Q/DQ on Conv/MatMul/Gemm inputs).
        exclude: node names kept in float in every placement.
        num_samples: use at most this many feeds (default: all).
        component: which bundle component to quantize (default "model").
        percentile: for method "percentile".
        eval_samples: feeds kept to measure error vs FP32 (0: skip the measurement).
        weight_rounding: "nearest" (default: plain per-channel rounding) or "gptq" (conv weights rounded
            to int8 with GPTQ on the calibration feeds, :mod:`vkt.calibration.weights`; the placements
            then reproduce those codes; feeds are held in memory).
        ort_ops: what the "ort" placement quantizes: "all" (every op with an ORT integer kernel) or
            "compute" (Conv/MatMul/Gemm only, the ops between them in float; :func:`vkt.calibration.qdq.place_ort`).
    """
    return _quantize_bundle(bundle, data, method=method, targets=targets, exclude=exclude, num_samples=num_samples,
                            component=component, percentile=percentile, eval_samples=eval_samples,
                            weight_rounding=weight_rounding, ort_ops=ort_ops, show_progress=show_progress)[0]


WEIGHT_ROUNDING = ("gptq", "nearest")


def _quantize_bundle(bundle: Any, data: Iterable[Mapping[str, np.ndarray]], *, method: str, targets: Sequence[str],
                     exclude: Sequence[str], num_samples: int | None, component: str, percentile: float,
                     eval_samples: int, weight_rounding: str, show_progress: bool, ort_ops: str = "all") -> tuple[dict[str, Any], Any]:
    """:func:`quantize_bundle`, also returning the prepared graph the placements were written from."""
    from vkt import __version__
    from vkt.bundle import Bundle
    from vkt.calibration.qdq import placement
    from vkt.calibration.ranges import compute_ranges, model_sha256
    from vkt.calibration.report import count_ops, layer_errors
    from vkt.onnxgraph import prepare_model
    from vkt.onnxio import TWO_GB, load_onnx

    # 1. Check inputs before any heavy work
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    targets = [targets] if isinstance(targets, str) else list(targets)
    bad = [t for t in targets if t not in TARGETS]
    if not targets or bad:
        raise CalibrationError(f"targets must be a non-empty subset of {list(TARGETS)}, got {targets!r}")
    targets = list(dict.fromkeys(targets))
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    if isinstance(eval_samples, bool) or not isinstance(eval_samples, int) or eval_samples < 0:
        raise CalibrationError(f"eval_samples must be a non-negative integer, got {eval_samples!r}")
    if weight_rounding not in WEIGHT_ROUNDING:
        raise CalibrationError(f"weight_rounding must be one of {list(WEIGHT_ROUNDING)}, got {weight_rounding!r}")
    if ort_ops not in ORT_OPS:
        raise CalibrationError(f"ort_ops must be one of {list(ORT_OPS)}, got {ort_ops!r}")
    fp32_path = bundle.path("fp32 onnx", component)
    if os.path.getsize(fp32_path) >= TWO_GB or bundle.files("onnx external data", component):
        raise CalibrationError(f"{fp32_path.name!r} keeps its weights in external data (> 2 GB); vkt's Q/DQ writer handles "
                               "single-file graphs only so far")
    prepared = prepare_model(load_onnx(fp32_path))

    # 2. Weights rounded with GPTQ (needs the feeds twice: held in memory), then ranges, once
    kept = _Keep(data, eval_samples)
    weights_info: dict[str, Any] = {"rounding": weight_rounding}
    original = prepared  # errors are measured against the true FP32 graph
    if weight_rounding == "gptq":
        from vkt.calibration.ranges import _take
        from vkt.calibration.weights import round_conv_weights

        feeds = list(_take(kept, num_samples))
        if not feeds:
            raise CalibrationError("no calibration samples: the data iterable yielded nothing")
        prepared, rep = round_conv_weights(prepared, feeds, show_progress=show_progress)
        weights_info.update(convs=rep["convs"], feeds=rep["feeds"])
        data_for_ranges: Iterable[Mapping[str, np.ndarray]] = feeds
    else:
        data_for_ranges = kept
    table = compute_ranges(prepared, data_for_ranges, method, num_samples=num_samples, percentile=percentile, exclude=exclude,
                           show_progress=show_progress)
    table_name = f"{component}.calib.json"
    bundle.add_file(table.to_json().encode(), table_name, TABLE_ROLE, component,
                    meta={"method": table.method, "samples": table.num_samples, "table_sha256": table.sha256})

    # 3-4. One placement per target, from the same table. Placements from an earlier table are
    # dropped first: a bundle never mixes Q/DQ graphs of two calibrations.
    _drop_stale(bundle, component, {f"{component}.int8.{t}.onnx" for t in targets})
    placements: dict[str, Any] = {}
    for target in targets:
        with timed(f"writing the {target} Q/DQ placement", log):
            qdq = placement(prepared, table, target, exclude, ort_ops=ort_ops)
        blob = qdq.SerializeToString()
        if len(blob) >= TWO_GB:
            raise CalibrationError(f"the {target} Q/DQ graph is over 2 GB; external-data output is not supported yet")
        counts = count_ops(qdq)
        info: dict[str, Any] = {"path": f"{component}.int8.{target}.onnx", **counts.to_dict(),
                                "quantized_nodes": _quantized_nodes(prepared, qdq)}
        if target == "ort":
            info["ort_ops"] = ort_ops
        if kept.kept:
            rows = layer_errors(original, qdq, kept.kept)
            outs = [r for r in rows if r["op"] not in ("Conv", "ConvTranspose", "MatMul", "Gemm")] or rows[-1:]
            info["output_sqnr_db"] = {r["tensor"]: _num(r["sqnr_db"]) for r in outs}
            info["output_max_abs_diff"] = {r["tensor"]: _num(r["max_abs"]) for r in outs}
            info["worst_layers"] = [{"node": r["node"], "sqnr_db": _num(r["sqnr_db"])}
                                    for r in sorted(rows, key=lambda r: r["sqnr_db"])[:5]]
        meta = {"placement": target, "method": table.method, "table_sha256": table.sha256, "excluded": sorted(exclude),
                **({"ort_ops": ort_ops} if target == "ort" else {}),
                "fused_int8_ops": counts.fused, "float_compute_ops": counts.float_compute}
        bundle.add_file(blob, info["path"], QDQ_ROLE, component, meta=meta)
        placements[target] = info

    # 5. The manifest's record
    describe = getattr(data, "describe", None)
    section = {
        "component": component, "method": table.method, "options": dict(table.options),
        "data": describe() if callable(describe) else {"source": type(data).__name__},
        "samples": table.num_samples, "table": {"path": table_name, "sha256": table.sha256},
        "model_sha256": model_sha256(prepared), "excluded": sorted(exclude), "eval_samples": len(kept.kept),
        "weights": weights_info,
        "placements": placements, "tools": {"vkt": __version__, "onnxruntime": _version("onnxruntime"), "onnx": _version("onnx")},
    }
    bundle.update(calibration=section)
    return section, prepared


def _drop_stale(bundle: Any, component: str, keep: set[str]) -> None:
    stale = [e for e in bundle.files(QDQ_ROLE, component) if e.path not in keep]
    if not stale:
        return
    bundle.entries = [e for e in bundle.entries if e not in stale]
    bundle.save()
    for e in stale:
        if not any(x.path == e.path for x in bundle.entries):
            (bundle.root / e.path).unlink(missing_ok=True)
    log.info("removed %d Q/DQ graph(s) of an earlier calibration: %s", len(stale), [e.path for e in stale])


def qdq_path(bundle: Any, placement: str, component: str = "model") -> Path:
    """Path of the ``int8 qdq onnx`` file written for ``placement`` ("ort" or "trt")."""
    for e in reversed(bundle.files(QDQ_ROLE, component)):
        if e.meta.get("placement") == placement:
            return bundle.root / e.path
    have = sorted({e.meta.get("placement") for e in bundle.files(QDQ_ROLE, component)} - {None})
    raise CalibrationError(f"bundle {bundle.name!r} has no {placement!r} Q/DQ graph for {component!r} (it has {have}); "
                           "run `vkt quantize` with --target " + placement)


def _quantized_nodes(fp32: Any, qdq: Any) -> int:
    """How many Conv/ConvTranspose/MatMul/Gemm nodes read a DequantizeLinear output in ``qdq``."""
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in qdq.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
               and any(x in dq_out for x in n.input[:1]))


def _num(x: float) -> float | str:
    # JSON has no inf: a bit-exact tensor records "inf".
    return x if np.isfinite(x) else str(x)


def _version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def image_preprocess(bundle: Any, component: str = "model") -> Any:
    """``preprocess(path)`` from the manifest (vkt.runtime.image) or, without a preprocess section, pixels / 255."""
    spec = bundle.spec(component)
    images = [t for t in spec.inputs if len(t.shape) == 4 and t.dtype == "float32"]
    if len(spec.inputs) != 1 or not images:
        raise CalibrationError(f"`vkt quantize --calib DIR` feeds one [N, 3, H, W] float32 image input; component {component!r} "
                               f"takes {[(t.name, t.dtype, list(t.shape)) for t in spec.inputs]}; call "
                               "vkt.calibration.quantize_bundle() with your own feeds instead")
    name = images[0].name
    cfg = bundle.preprocess
    if cfg.get("resize"):
        from vkt.runtime.image import Preprocessor, read_image

        max_side = None
        if spec.profiles:
            hw = [spec.profiles[0].axes[d][2] for d in images[0].shape[2:] if isinstance(d, str) and d in spec.profiles[0].axes]
            max_side = min(hw) if hw else None
        pre = Preprocessor(cfg, max_side=max_side)
        return lambda path: {name: pre([read_image(path)])[0]}
    from vkt.calibration.data import simple_image_preprocess

    return simple_image_preprocess(name, scale=float(cfg.get("scale", 1 / 255)), mean=cfg.get("mean", (0.0, 0.0, 0.0)),
                                   std=cfg.get("std", (1.0, 1.0, 1.0)), color=cfg.get("color", "BGR"))


def quantize_from_images(bundle: Any, folder: str | os.PathLike, *, method: str = "minmax",
                         targets: Sequence[str] = TARGETS, exclude: Sequence[str] = (), num_images: int | None = None,
                         shapes: Sequence[tuple[int, int]] | None = None, component: str = "model",
                         percentile: float = 99.999, holdout: str | os.PathLike | None = None,
                         max_drop: float = 0.01, steps: Sequence[int] | None = None, placement: str = "ort",
                         qat: bool = False, qat_options: Mapping[str, Any] | None = None, on_fail: str = "fp32",
                         weight_rounding: str | None = None, ranking_method: str | None = None, threads: int | None = None,
                         ort_ops: str | None = None, holdout_labels: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """:func:`quantize_bundle` on a folder of images pre-processed as the bundle's manifest says, then
    (with ``holdout``) the accuracy gate on held-out images and (with ``qat``) quantization-aware distillation.

    Args:
        shapes: calibrate at these (H, W), images cycling through them; default: the manifest's
            resize rule, or shapes inside the profile when the manifest has none.
        holdout: folder of held-out images (not in ``folder``): runs :func:`gate_bundle` with the
            task's metric (text detection: hmean of INT8 boxes vs FP32 boxes).
        max_drop: the gate's budget as a fraction (default 0.01 = 1 point).
        steps: layers kept in float per gate step (default ``gate.PREFIX_STEPS`` with the prefix ranking, else
            ``gate.DEFAULT_STEPS``).
        placement: the placement the gate chooses for ("ort" default: it is timed on ORT CPU).
        qat: also fine-tune the reference PyTorch module with fake quantization (needs ``holdout``;
            the gate picks QAT or PTQ); ``qat_options``: keyword arguments of
            :class:`vkt.calibration.qat.QatConfig` (steps, minutes, checkpoint, ...).
        on_fail: gate policy when nothing fits: "fp32" (ship no INT8 graph) or "best".
        weight_rounding: "gptq" or "nearest" (see :func:`quantize_bundle`; default "nearest"). On PP-OCRv5
            mobile GPTQ lifts the weight-only output SQNR (12.8 -> 22.2 dB) yet scores lower once the
            activations are INT8 too: held-out hmean vs FP32 0.911 vs 0.967 (page.png, all INT8) and 0.983 vs
            0.9915 (first 32 convs in float).
        ranking_method: how the gate orders what it keeps in float (see :func:`vkt.calibration.gate.accuracy_gate`);
            default "prefix" for text detection (a contiguous float region from the input: PP-OCRv5's
            quantization noise is born in its first blocks), "tensor" otherwise. With "prefix" and no
            ``steps`` the gate walks every 4th compute layer (``gate.PREFIX_STEPS``).
        ort_ops: what the "ort" placement quantizes (:func:`vkt.calibration.qdq.place_ort`). Default "all",
            except text detection without ``holdout``: "compute" (Conv only, elementwise chains in float). On
            PP-OCRv5 mobile (736) with every conv INT8, held-out hmean vs FP32 is 0.91 with "compute" vs 0.72 with
            "all"; but once the gate keeps a float prefix, "all" ships models within 1 point that run faster
            (session 5, vs the rewritten FP32, same float prefix, 1 thread: 1.28-1.34x vs 1.18-1.22x at 736,
            1.35-1.37x vs 1.30-1.34x at 960; benchmarks/results/textdet_int8_shipped_fair_fp32.json).
        holdout_labels: text detection: the gate also bounds the hmean drop vs ICDAR labels beside held-out
            images (see :func:`vkt.calibration.gate.task_metric`; off by default: that hmean is noisy).
    """
    from vkt.bundle import Bundle
    from vkt.calibration.data import ImageFolderReader, calibration_shapes

    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    spec = b.spec(component)
    if qat and holdout is None:
        raise CalibrationError("--qat needs --holdout DIR: the accuracy gate decides whether the QAT or the PTQ model ships")
    if qat:
        from vkt.calibration.qat import reference_module_for

        reference_module_for(b, component)  # fails now, naming the family, rather than after calibrating
    if holdout is not None:
        from vkt.calibration.gate import check_steps, holdout_images

        holdout_images(holdout)
        check_steps(steps if steps is not None else (0,))
    if shapes is None and not b.preprocess.get("resize"):
        shapes = calibration_shapes(spec)
    pre = image_preprocess(b, component)
    reader = ImageFolderReader(folder, pre, shapes=shapes, limit=num_images, spec=spec, show_progress=show_progress)
    if weight_rounding is None:
        weight_rounding = "nearest"
    if ranking_method is None:
        ranking_method = "prefix" if b.task == "text-detection" else "tensor"
    if ort_ops is None:  # text detection without a gate: the scope that keeps accuracy with every conv INT8
        ort_ops = "compute" if b.task == "text-detection" and holdout is None else "all"
    section, graph = _quantize_bundle(b, reader, method=method, targets=targets, exclude=exclude, num_samples=None,
                                      component=component, percentile=percentile, eval_samples=2,
                                      weight_rounding=weight_rounding, ort_ops=ort_ops, show_progress=show_progress)
    if holdout is None:
        return section
    from vkt.calibration.data import resize_feed
    from vkt.calibration.gate import (
        DEFAULT_STEPS,
        PREFIX_STEPS,
        holdout_images,
        task_metric,
    )

    paths = holdout_images(holdout)
    metric = task_metric(b, paths, threads=threads, show_progress=show_progress, use_labels=holdout_labels)
    # Ranking on two calibration images (one session per tensor/layer): the tensor ranking at their
    # deployment size (on PP-OCRv5 mobile, ranked at 320x320 it kept the wrong tensors: pooled hmean
    # 0.78 with 32 in float, vs 0.99 real / 0.93 synthetic ranked at 736), the others at a small size;
    # latency on the first held-out image at its deployment size.
    if ranking_method == "prefix":  # ranked by graph order: nothing to run
        sens = []
    else:
        sens = [pre(p) if ranking_method == "tensor" else resize_feed(pre(p), _small(spec)) for p in reader.paths[:2]]
    if steps is None:
        steps = PREFIX_STEPS if ranking_method == "prefix" else DEFAULT_STEPS
    latency = pre(paths[0])
    extra = []
    if qat:
        from vkt.calibration.qat import QatConfig, qat_candidate

        cfg = QatConfig(**dict(qat_options or {}))
        extra.append(qat_candidate(b, reader.paths, pre, method=method, percentile=percentile, config=cfg,
                                   component=component, show_progress=show_progress))
    return gate_bundle(b, metric, sensitivity_feeds=sens, latency_feed=latency, max_drop=max_drop,
                       steps=steps, placement=placement, component=component, extra_candidates=extra, on_fail=on_fail,
                       threads=threads, show_progress=show_progress,
                       holdout={"path": str(holdout), "images": len(paths)}, ranking_method=ranking_method,
                       fp32_graph=graph, ort_ops=ort_ops)


def _small(spec: Any) -> tuple[int, int]:
    """A small (H, W) inside the profile for sensitivity ranking: 320 when allowed, rounded to 32."""
    if spec.profiles:
        axes = spec.profiles[0].axes
        hw = [axes[d] for d in spec.inputs[0].shape[2:] if isinstance(d, str) and d in axes]
        if len(hw) == 2:
            return tuple(min(hi, max(lo, 320)) for lo, _, hi in hw)  # type: ignore[return-value]
    return (320, 320)


def gate_bundle(bundle: Any, metric: Any, *, sensitivity_feeds: Sequence[Mapping[str, np.ndarray]],
                latency_feed: Mapping[str, np.ndarray] | None, max_drop: float = 0.01, steps: Sequence[int] | None = None,
                placement: str = "ort", component: str = "model", extra_candidates: Sequence[Any] = (),
                on_fail: str = "fp32", threads: int | None = None, iters: int = 10, exhaustive: bool = False,
                holdout: Mapping[str, Any] | None = None, ranking_method: str = "tensor",
                ranking: Sequence[Mapping[str, Any]] | None = None, fp32_graph: Any = None, ort_ops: str = "all",
                show_progress: bool = True) -> dict[str, Any]:
    """Run :func:`vkt.calibration.gate.accuracy_gate` on a calibrated bundle and ship its choice.

    The bundle must hold a ``calibration table`` (run :func:`quantize_bundle` first). The chosen
    model replaces the ``placement``'s ``int8 qdq onnx`` (meta: placement, candidate, layers kept
    in float, metric); when nothing fits and ``on_fail="fp32"``, that placement's Q/DQ graph is
    removed. ``manifest["calibration"]["gate"]`` records baseline, budget, every step and the choice.
    ``ranking``: the PTQ candidate's layer order (rows with ``node``, ``op``, ``output_sqnr_db``), e.g. a
    family's keep-list (vkt.models.detr.int8); None: ranked by ``ranking_method`` on ``sensitivity_feeds``.
    ``fp32_graph``: the prepared graph the table was computed on when it is not the bundle's own
    (GPTQ-rounded weights, as :func:`quantize_from_images` passes); the baseline is always the bundle's FP32.
    ``ort_ops``: what an "ort" placement quantizes (:func:`vkt.calibration.qdq.place_ort`).
    Returns the updated calibration section (the gate's record under ``"gate"``).
    """
    from vkt.bundle import Bundle
    from vkt.calibration.gate import DEFAULT_STEPS, GateCandidate, accuracy_gate
    from vkt.calibration.ranges import CalibrationTable
    from vkt.calibration.report import count_ops
    from vkt.onnxgraph import prepare_model
    from vkt.onnxio import load_onnx

    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    tables = [e for e in bundle.files(TABLE_ROLE, component) if e.meta.get("source") != "qat"]
    section = bundle.manifest.get("calibration")
    if not tables or not isinstance(section, dict):
        raise CalibrationError(f"bundle {bundle.name!r} has no calibration table for {component!r}; run `vkt quantize "
                               "--calib DIR` (or quantize_bundle) before the accuracy gate")
    table = CalibrationTable.load(bundle.root / tables[-1].path)
    fp32 = prepare_model(load_onnx(bundle.path("fp32 onnx", component)))
    ptq = GateCandidate("ptq", fp32 if fp32_graph is None else fp32_graph, table, ranking=ranking)
    result = accuracy_gate([ptq, *extra_candidates], metric, bundle.spec(component), max_drop=max_drop,
                           steps=steps if steps is not None else DEFAULT_STEPS, placement=placement,
                           sensitivity_feeds=sensitivity_feeds, latency_feed=latency_feed, threads=threads, iters=iters,
                           exhaustive=exhaustive, on_fail=on_fail, ranking_method=ranking_method,
                           reference=fp32, ort_ops=ort_ops, show_progress=show_progress)
    gate = result.to_dict()
    gate["metric_name"] = getattr(metric, "name", getattr(metric, "__name__", "metric"))
    gate["holdout"] = dict(holdout or {})
    name = f"{component}.int8.{placement}.onnx"
    placements = dict(section.get("placements", {}))
    step = result.chosen_step
    if result.model is None:
        bundle.entries = [e for e in bundle.entries if not (e.role == QDQ_ROLE and e.path == name)]
        bundle.save()
        (bundle.root / name).unlink(missing_ok=True)
        placements.pop(placement, None)
    else:
        cand = next(c for c in [ptq, *extra_candidates] if c.name == step.candidate)
        counts = count_ops(result.model)
        meta = {"placement": placement, "method": cand.table.method, "table_sha256": cand.table.sha256,
                "excluded": sorted(step.float_layers), "candidate": cand.name, "metric": round(step.metric, 5),
                "metric_drop": round(step.drop, 5), "fused_int8_ops": counts.fused, "float_compute_ops": counts.float_compute,
                **({"ort_ops": ort_ops} if placement == "ort" else {})}
        if cand.name != "ptq":
            tname = f"{component}.{cand.name}.calib.json"
            bundle.add_file(cand.table.to_json().encode(), tname, TABLE_ROLE, component,
                            meta={"source": cand.name, "method": cand.table.method, "table_sha256": cand.table.sha256})
            gate[cand.name] = {"table": {"path": tname, "sha256": cand.table.sha256}, **dict(cand.meta)}
        bundle.add_file(result.model.SerializeToString(), name, QDQ_ROLE, component, meta=meta)
        placements[placement] = {**placements.get(placement, {}), "path": name, **counts.to_dict(),
                                 "candidate": cand.name, "gate_excluded": sorted(step.float_layers),
                                 **({"ort_ops": ort_ops} if placement == "ort" else {})}
    section = {**section, "placements": placements, "gate": gate}
    bundle.update(calibration=section)
    return section
