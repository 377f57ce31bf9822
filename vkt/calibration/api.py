"""The bundle-level INT8 API: calibrate a bundle's FP32 graph once, write one Q/DQ graph per target, gate them,
and record it all in the manifest.

    section = quantize_bundle(bundle, feeds, Int8Config(method="percentile"))   # table + a Q/DQ graph per target
    section = gate_bundle(bundle, metric, GateConfig(max_drop=0.01, follow=("trt",)), latency_feed=feed)

Both know no family: a family's recipe (vkt.models) chooses the data, the defaults and the metric.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.calibration.config import DEFAULT_TARGETS, TARGETS, WEIGHT_ROUNDING, Int8Config
from vkt.calibration.gate import GateCandidate, GateConfig
from vkt.calibration.ranges import QUANTIZED_OPS
from vkt.errors import CalibrationError
from vkt.log import get_logger, timed

log = get_logger(__name__)

TABLE_ROLE = "calibration table"
QDQ_ROLE = "int8 qdq onnx"
__all__ = ["QDQ_ROLE", "TABLE_ROLE", "TARGETS", "WEIGHT_ROUNDING", "Calibrated", "calibrate_bundle", "gate_bundle",
           "qdq_path", "quantize_bundle"]


UNGATED_ERRORS = ("output_sqnr_db", "output_max_abs_diff", "worst_layers")  # a placement's error vs FP32, as written
BIAS_FEEDS = 8  # calibration feeds the openvino placement's bias correction is measured on (held in memory)


class _Keep:
    """Pass feeds through while keeping the first ``n`` (to measure the placements' error afterwards)."""

    def __init__(self, data: Iterable[Mapping[str, np.ndarray]], n: int):
        self.data, self.n, self.kept = data, n, []

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        for feed in self.data:
            if len(self.kept) < self.n:
                self.kept.append(feed)
            yield feed


@dataclass(frozen=True)
class Calibrated:
    """What :func:`calibrate_bundle` wrote: the manifest's calibration ``section`` and the prepared FP32 ``graph``
    the placements were written from (GPTQ-rounded weights when asked): gate and follow-up placements start from it."""

    section: dict[str, Any]
    graph: Any
    bias: Any = None  # BiasShifts measured for the openvino placement (None: no bias correction); the gate reuses them
    float_precision: str = "f32"  # what the openvino placement's float layers run in, resolved once; its gate scores so


def quantize_bundle(bundle: Any, data: Iterable[Mapping[str, np.ndarray]], config: Int8Config | None = None, *,
                    component: str = "model", eval_samples: int = 2, show_progress: bool = True) -> dict[str, Any]:
    """Calibrate once and add INT8 Q/DQ graphs for each target to a bundle; returns the manifest's calibration section.

    1. compute activation ranges of the component's ``fp32 onnx`` over ``data`` (once);
    2. store the table (role ``calibration table``);
    3. write each placement (role ``int8 qdq onnx``, meta ``{"placement": "ort"|"trt"|"openvino", ...}``);
    4. count fused/float ops in onnxruntime CPU's optimized graph of each placement and measure its
       output error vs FP32 on the first ``eval_samples`` calibration feeds;
    5. fill the manifest's ``calibration`` section and return it.

    Args:
        bundle: a :class:`vkt.bundle.Bundle` or the path of one.
        data: iterable of feeds ``{input name: ndarray}``, e.g. an ImageFolderReader (its
            ``describe()`` goes into the manifest).
        config: the calibration options read here (:class:`Int8Config`): ``method`` (default "minmax"),
            ``percentile`` (99.999), ``weight_rounding`` ("nearest"; "gptq": conv weights rounded to int8
            with GPTQ on the calibration feeds, :mod:`vkt.calibration.weights`, feeds held in memory),
            ``ort_ops`` ("all"; "compute": Conv/MatMul/Gemm only, :func:`vkt.calibration.qdq.place_ort`),
            ``targets`` ("ort": onnxruntime CPU, uint8 activations, fused kernels; "trt": TensorRT, int8
            symmetric Q/DQ on Conv/MatMul/Gemm inputs; "openvino": OpenVINO CPU, :mod:`vkt.calibration.place_ov`;
            None: "ort" and "trt"), ``exclude`` (node names kept in float everywhere)
            and ``num_images`` (use at most this many feeds).
        component: which bundle component to quantize (default "model").
        eval_samples: feeds kept to measure error vs FP32 (0: skip the measurement).
    """
    return calibrate_bundle(bundle, data, config, component=component, eval_samples=eval_samples,
                            show_progress=show_progress).section


def calibrate_bundle(bundle: Any, data: Iterable[Mapping[str, np.ndarray]], config: Int8Config | None = None, *,
                     component: str = "model", eval_samples: int = 2, show_progress: bool = True) -> Calibrated:
    """:func:`quantize_bundle`, also returning the prepared graph the placements were written from."""
    from vkt import __version__
    from vkt.bundle import Bundle
    from vkt.calibration.placements import placement
    from vkt.calibration.ranges import compute_ranges, model_sha256
    from vkt.calibration.report import count_ops, layer_errors
    from vkt.onnxio import TWO_GB, load_onnx

    # 1. Check inputs before any heavy work
    cfg = config if config is not None else Int8Config()
    if not isinstance(cfg, Int8Config):
        raise CalibrationError(f"config must be an Int8Config, got {type(cfg).__name__}")
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if isinstance(eval_samples, bool) or not isinstance(eval_samples, int) or eval_samples < 0:
        raise CalibrationError(f"eval_samples must be a non-negative integer, got {eval_samples!r}")
    method, percentile = cfg.method or "minmax", 99.999 if cfg.percentile is None else cfg.percentile
    weight_rounding, ort_ops = cfg.weight_rounding or "nearest", cfg.ort_ops or "all"
    targets, exclude, num_samples = list(cfg.targets or DEFAULT_TARGETS), list(cfg.exclude), cfg.num_images
    float_precision = "f32"
    if "openvino" in targets:
        from vkt.errors import BackendError
        from vkt.runtime.openvino import resolve_float_precision

        try:
            float_precision = resolve_float_precision(cfg.float_precision)
        except BackendError as e:
            raise CalibrationError(str(e)) from None
    fp32_path = bundle.path("fp32 onnx", component)
    if os.path.getsize(fp32_path) >= TWO_GB or bundle.files("onnx external data", component):
        raise CalibrationError(f"{fp32_path.name!r} keeps its weights in external data (> 2 GB); vkt's Q/DQ writer handles "
                               "single-file graphs only so far")
    prepared = calibration_graph(load_onnx(fp32_path))

    # 2. Weights rounded with GPTQ (needs the feeds twice: held in memory), then ranges, once
    bias_n = BIAS_FEEDS if cfg.bias_correction and "openvino" in targets else 0
    kept = _Keep(data, max(eval_samples, bias_n))
    weights_info: dict[str, Any] = {"rounding": weight_rounding}
    original = prepared  # errors are measured against the true FP32 graph
    if weight_rounding == "gptq":
        from vkt.calibration.weights import round_conv_weights

        feeds = list(itertools.islice(kept, num_samples))
        if not feeds:
            raise CalibrationError("no calibration samples: the data iterable yielded nothing")
        prepared, rep = round_conv_weights(prepared, feeds, show_progress=show_progress)
        weights_info.update(convs=rep["convs"], feeds=rep["feeds"])
        data_for_ranges: Iterable[Mapping[str, np.ndarray]] = feeds
    else:
        data_for_ranges = kept
    t0 = time.perf_counter()
    table = compute_ranges(prepared, data_for_ranges, method, num_samples=num_samples, percentile=percentile, exclude=exclude,
                           show_progress=show_progress)
    seconds = {"ranges": time.perf_counter() - t0}  # where an export's time goes (with the gate's own record)
    table_name = f"{component}.calib.json"
    bundle.add_file(table.to_json().encode(), table_name, TABLE_ROLE, component,
                    meta={"method": table.method, "samples": table.num_samples, "table_sha256": table.sha256})

    # 3-4. One placement per target, from the same table. Placements from an earlier table are
    # dropped first: a bundle never mixes Q/DQ graphs of two calibrations.
    _drop_stale(bundle, component, {f"{component}.int8.{t}.onnx" for t in targets})
    placements: dict[str, Any] = {}
    bias = None
    for target in targets:
        with timed(f"writing the {target} Q/DQ placement", log):
            qdq = placement(prepared, table, target, exclude, ort_ops=ort_ops)
        if target == "openvino" and bias_n:
            from vkt.calibration.bias import apply_bias_shifts, measure_bias_shifts

            t1 = time.perf_counter()
            with timed(f"bias correction of the openvino placement on {len(kept.kept[:bias_n])} calibration feeds", log):
                bias = measure_bias_shifts(qdq, prepared, kept.kept[:bias_n], threads=cfg.threads)
                qdq, shifted = apply_bias_shifts(qdq, bias)
            seconds["bias_correction"] = time.perf_counter() - t1
        blob = qdq.SerializeToString()
        if len(blob) >= TWO_GB:
            raise CalibrationError(f"the {target} Q/DQ graph is over 2 GB; external-data output is not supported yet")
        counts = count_ops(qdq)
        info: dict[str, Any] = {"path": f"{component}.int8.{target}.onnx", **counts.to_dict(),
                                "quantized_nodes": _quantized_nodes(prepared, qdq)}
        if target == "ort":
            info["ort_ops"] = ort_ops
        if target == "openvino":
            from vkt.calibration.place_ov import openvino_precisions

            info["openvino_compute"] = openvino_precisions(blob)
            if bias is not None:
                info["bias_correction"] = {"convs": len(shifted), "feeds": bias.feeds,
                                           "max_abs_shift": round(max(shifted.values(), default=0.0), 6)}
        if kept.kept[:eval_samples]:
            rows = layer_errors(original, qdq, kept.kept[:eval_samples])
            outs = [r for r in rows if r["op"] not in QUANTIZED_OPS] or rows[-1:]
            info["output_sqnr_db"] = {r["tensor"]: _num(r["sqnr_db"]) for r in outs}
            info["output_max_abs_diff"] = {r["tensor"]: _num(r["max_abs"]) for r in outs}
            info["worst_layers"] = [{"node": r["node"], "sqnr_db": _num(r["sqnr_db"])}
                                    for r in sorted(rows, key=lambda r: r["sqnr_db"])[:5]]
        if target == "openvino":
            info["float_precision"] = float_precision
        meta = {"placement": target, "method": table.method, "table_sha256": table.sha256, "excluded": sorted(exclude),
                **({"ort_ops": ort_ops} if target == "ort" else {}),
                **({"float_precision": float_precision} if target == "openvino" else {}),
                "fused_int8_ops": counts.fused, "float_compute_ops": counts.float_compute}
        bundle.add_file(blob, info["path"], QDQ_ROLE, component, meta=meta)
        placements[target] = info
    seconds["placements"] = time.perf_counter() - t0 - seconds["ranges"] - seconds.get("bias_correction", 0.0)

    # 5. The manifest's record
    describe = getattr(data, "describe", None)
    section = {
        "component": component, "method": table.method, "options": dict(table.options),
        "data": describe() if callable(describe) else {"source": type(data).__name__},
        "samples": table.num_samples, "table": {"path": table_name, "sha256": table.sha256},
        "model_sha256": model_sha256(prepared), "excluded": sorted(exclude), "eval_samples": len(kept.kept[:eval_samples]),
        "weights": weights_info,
        "placements": placements, "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "tools": {"vkt": __version__, "onnxruntime": _version("onnxruntime"), "onnx": _version("onnx"),
                  **({"openvino": _version("openvino")} if "openvino" in targets else {})},
    }
    bundle.update(calibration=section)
    return Calibrated(section, prepared, bias, float_precision)


def calibration_graph(model: Any) -> Any:
    """The graph ranges are computed and Q/DQ placed on: the bundle's FP32 prepared
    (:func:`vkt.onnxgraph.prepare_model`, a no-op for graphs vkt wrote) with HardSwish split into HardSigmoid * x
    again, as onnxruntime's pre-processing writes it: vkt ships HardSwish fused (OpenVINO's FP32 runs it fused), while
    the ort and trt placements quantize the two halves, so bundles old and new calibrate the same graph."""
    from vkt.onnxgraph import prepare_model, split_hardswish

    return split_hardswish(prepare_model(model))[0]


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
    """Path of the ``int8 qdq onnx`` file written for ``placement`` ("ort", "trt" or "openvino")."""
    for e in reversed(bundle.files(QDQ_ROLE, component)):
        if e.meta.get("placement") == placement:
            return bundle.root / e.path
    have = sorted({e.meta.get("placement") for e in bundle.files(QDQ_ROLE, component)} - {None})
    raise CalibrationError(f"bundle {bundle.name!r} has no {placement!r} Q/DQ graph for {component!r} (it has {have}); "
                           "run `vkt quantize` with --target " + placement)


def _quantized_nodes(fp32: Any, qdq: Any) -> int:
    """How many Conv/ConvTranspose/MatMul/Gemm nodes read a DequantizeLinear output in ``qdq``."""
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in qdq.graph.node if n.op_type in QUANTIZED_OPS
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


def gate_bundle(bundle: Any, metric: Any, config: GateConfig = GateConfig(), *,
                sensitivity_feeds: Sequence[Mapping[str, np.ndarray]] = (), latency_feed: Mapping[str, np.ndarray] | None = None,
                component: str = "model", candidates: Sequence[GateCandidate] = (), ranking: Sequence[Mapping[str, Any]] | None = None,
                fp32_graph: Any = None, holdout: Mapping[str, Any] | None = None, bias: Any = None,
                show_progress: bool = True) -> dict[str, Any]:
    """Run :func:`vkt.calibration.gate.accuracy_gate` on a calibrated bundle and ship its choice.

    The bundle must hold a ``calibration table`` (run :func:`quantize_bundle` first). The chosen
    model replaces the ``config.placement``'s ``int8 qdq onnx`` (meta: placement, candidate, layers
    kept in float, metric) and each placement in ``config.follow`` is rewritten with the same nodes
    in float (not measured itself); when nothing fits and ``on_fail="fp32"``, those Q/DQ graphs are
    removed. ``manifest["calibration"]["gate"]`` records baseline, budget, every step and the choice
    (``["openvino_gate"]`` for the "openvino" placement, which is gated on its own).

    Args:
        metric: ``metric(runner_factory) -> float``, higher is better (the family's, on held-out data).
        config: budget, steps, ranking, placement, follow, on_fail (:class:`vkt.calibration.gate.GateConfig`).
        sensitivity_feeds, latency_feed: see :func:`vkt.calibration.gate.accuracy_gate`.
        candidates: further candidates after PTQ (e.g. QAT).
        ranking: the PTQ candidate's layer order (rows with ``node``, ``op``, ``output_sqnr_db``), e.g. a family's
            keep-list; None: ranked by ``config.ranking``.
        fp32_graph: the prepared graph the table was computed on when it is not the bundle's own (GPTQ-rounded
            weights: :attr:`Calibrated.graph`); the baseline is always the bundle's FP32.
        holdout: what the manifest records about the held-out data.
        bias: the openvino placement's bias shifts (:attr:`Calibrated.bias`): every step the gate places is corrected
            with them, as the placement written by calibration was.
    Returns the updated calibration section (the gate's record under ``"gate"``).
    """
    from vkt.bundle import Bundle
    from vkt.calibration.gate import accuracy_gate
    from vkt.calibration.ranges import CalibrationTable
    from vkt.onnxio import load_onnx

    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    tables = [e for e in bundle.files(TABLE_ROLE, component) if e.meta.get("source") is None]
    section = bundle.manifest.get("calibration")
    if not tables or not isinstance(section, dict):
        raise CalibrationError(f"bundle {bundle.name!r} has no calibration table for {component!r}; run `vkt quantize "
                               "--calib DIR` (or quantize_bundle) before the accuracy gate")
    table = CalibrationTable.load(bundle.root / tables[-1].path)
    fp32 = calibration_graph(load_onnx(bundle.path("fp32 onnx", component)))
    coarse = _coarse_holdout(metric, config.max_drop)
    ptq = GateCandidate("ptq", fp32 if fp32_graph is None else fp32_graph, table, ranking=ranking, bias=bias)
    cands = [ptq, *candidates]
    from vkt.runtime import make_runner

    # Timed against the bundle's FP32 file on the runner `vkt bench -t ort:fp32` (`-t ov:fp32` for the openvino
    # placement) builds: the speed-up a user re-times.
    backend = "ov" if config.placement == "openvino" else "ort"
    fp32_runner = lambda: make_runner(bundle, backend, "fp32", component=component, threads=config.threads)  # noqa: E731
    other = (lambda: make_runner(bundle, "ort", "fp32", component=component, threads=config.threads)  # noqa: E731
             ) if backend == "ov" else None
    result = accuracy_gate(cands, metric, bundle.spec(component), config, sensitivity_feeds=sensitivity_feeds,
                           latency_feed=latency_feed, reference=fp32, fp32_runner=fp32_runner, other_fp32=other,
                           show_progress=show_progress)
    gate = result.to_dict()
    gate["metric_name"] = getattr(metric, "name", getattr(metric, "__name__", "metric"))
    gate["holdout"] = dict(holdout or {})
    if config.placement == "openvino":
        gate["float_precision"] = config.float_precision
    if getattr(metric, "resolution", None) is not None:
        gate["resolution_points"] = round(100.0 * float(metric.resolution), 3)
    if coarse:
        gate["resolution_warning"] = coarse
    placements = dict(section.get("placements", {}))
    step = result.chosen_step
    if result.model is None:
        for p in (config.placement, *config.follow):
            _remove_placement(bundle, component, p, placements)
    else:
        cand = next(c for c in cands if c.name == step.candidate)
        if cand.name != "ptq":
            tname = f"{component}.{cand.name}.calib.json"
            bundle.add_file(cand.table.to_json().encode(), tname, TABLE_ROLE, component,
                            meta={"source": cand.name, "method": cand.table.method, "table_sha256": cand.table.sha256})
            gate[cand.name] = {"table": {"path": tname, "sha256": cand.table.sha256}, **dict(cand.meta)}
        extra = {"candidate": cand.name, "metric": round(step.metric, 5), "metric_drop": round(step.drop, 5)}
        _ship(bundle, component, config.placement, result.model, cand, step.float_layers, config.ort_ops, extra, placements,
              config.float_precision)
        for p in config.follow:
            from vkt.calibration.placements import placement as place

            q = place(cand.fp32, cand.table, p, sorted(step.float_layers), ort_ops=config.ort_ops, bias=cand.bias)
            note = {"candidate": cand.name, "gate": f"same nodes in float as the {config.placement} placement's gate "
                    "choice (not measured on this placement)"}
            _ship(bundle, component, p, q, cand, step.float_layers, config.ort_ops, note, placements)
    # The openvino placement has a gate of its own (scored and timed on OpenVINO): recorded beside the ort/trt one.
    section = {**section, "placements": placements, ("openvino_gate" if config.placement == "openvino" else "gate"): gate}
    bundle.update(calibration=section)
    return section


def _coarse_holdout(metric: Any, max_drop: float) -> str | None:
    """A warning (logged, and returned for the manifest) when one item of the held-out set moves ``metric`` by more
    than the budget: the gate can then ship only steps that change nothing on it, a loose bound on the drop elsewhere.
    ``metric.resolution`` (the smallest drop one item makes, e.g. one missed text region) is optional; None: fine."""
    res = getattr(metric, "resolution", None)
    if not isinstance(res, (int, float)) or not max_drop > 0 or res <= max_drop:
        return None
    regions = getattr(metric, "regions", None)
    need = math.ceil((1.0 / max_drop + 1.0) / 2.0)  # n with 1 / (2n - 1) <= max_drop (the textdet hmean's step)
    what = f"one of its {regions} FP32 regions" if regions else "one item"
    msg = (f"the held-out set is too small for a {100 * max_drop:g}-point budget: {what} moves the metric by "
           f"{100 * res:.2f} points, so the gate can ship only a step that changes nothing on it, which bounds the drop "
           f"on other images loosely" + (f"; held-out images with at least {need} FP32 regions resolve the budget"
                                         if regions else ""))
    log.warning(msg)
    return msg


def _ship(bundle: Any, component: str, target: str, model: Any, cand: GateCandidate, float_layers: Sequence[str],
          ort_ops: str, meta: Mapping[str, Any], placements: dict[str, Any], float_precision: str = "f32") -> None:
    """Write ``model`` as the ``target`` placement's Q/DQ graph and record it in ``placements``."""
    from vkt.calibration.report import count_ops

    name = f"{component}.int8.{target}.onnx"
    counts = count_ops(model)
    kept = sorted(float_layers)
    # ort: what it quantizes; openvino: what its float layers ran in when gated (the runtime runs them so, where it can)
    scope = ({"ort_ops": ort_ops} if target == "ort" else {"float_precision": float_precision} if target == "openvino"
             else {})
    bundle.add_file(model.SerializeToString(), name, QDQ_ROLE, component,
                    meta={"placement": target, "method": cand.table.method, "table_sha256": cand.table.sha256,
                          "excluded": kept, **meta, "fused_int8_ops": counts.fused,
                          "float_compute_ops": counts.float_compute, **scope})
    # The ungated placement's error vs FP32 does not describe a graph with nodes kept in float: dropped then.
    before = {k: v for k, v in placements.get(target, {}).items() if not kept or k not in UNGATED_ERRORS}
    placements[target] = {**before, "path": name, **counts.to_dict(), "candidate": cand.name, "gate_excluded": kept, **scope}


def _remove_placement(bundle: Any, component: str, target: str, placements: dict[str, Any]) -> None:
    name = f"{component}.int8.{target}.onnx"
    bundle.entries = [e for e in bundle.entries if not (e.role == QDQ_ROLE and e.path == name)]
    bundle.save()
    (bundle.root / name).unlink(missing_ok=True)
    placements.pop(target, None)
