"""Accuracy gate: keep the most sensitive layers in float, step by step, until the task metric holds; ship the fastest.

    ranking = layer_sensitivity(fp32, table, feeds)            # worst layers first
    result = accuracy_gate([GateCandidate("ptq", fp32, table)], metric, spec, max_drop=0.01,
                           sensitivity_feeds=feeds, latency_feed=feed)
    result.model                                               # the Q/DQ graph to ship (None: FP32 only)

``metric(runner_factory) -> float`` is the task's score on held-out data, higher is better;
``runner_factory()`` returns a fresh, not yet activated :class:`vkt.runtime.Runner` for the
graph under test (FP32 first: its score is the baseline). :func:`textdet_agreement` builds one for
text detection (hmean of the boxes against FP32's boxes); DETR (AP) and the SD UNet (image error)
plug in their own.

When no step meets the budget, nothing INT8 ships: a warning names the best step, the result's
``model`` is None and :func:`vkt.calibration.api.gate_bundle` removes the placement's Q/DQ graph,
so ``--precision int8`` fails loudly instead of running a model known to be out of budget
(``on_fail="best"`` ships the best-scoring step instead).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vkt.calibration.qdq import ort_uint8_params, with_tensor_qdq
from vkt.calibration.ranges import QUANTIZED_OPS as PREFIX_OPS
from vkt.errors import CalibrationError
from vkt.log import get_logger, progress

log = get_logger(__name__)

DEFAULT_STEPS = (0, 4, 8, 16, 24, 32, 48)  # tensors (or layers) kept in float
RANKING_METHODS = ("tensor", "jump", "sensitivity", "prefix")
PREFIX_STEPS = tuple(range(0, 65, 4))  # compute layers kept in float from the input, with ranking_method="prefix"
DEFAULT_MAX_DROP = 0.01  # 1.0 point of hmean / AP
ON_FAIL = ("fp32", "best")
# Below this many FP32 regions on the held-out images, an hmean moves by > 1 point per box: too
# coarse to gate a 1-point budget.
MIN_HOLDOUT_REGIONS = 20

Metric = Callable[[Callable[[], Any]], float]


@dataclass(frozen=True)
class GateCandidate:
    """A quantized model to gate: its prepared FP32 graph (tensor names of ``table``) and its ranges.

    name: "ptq", "qat", ...; ranking: precomputed ``layer_sensitivity`` rows (None: computed here).
    """

    name: str
    fp32: Any
    table: Any
    ranking: Sequence[Mapping[str, Any]] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateStep:
    """One measured model: its step ``k`` (the first k entries of the ranking in float: the unit of ``steps`` and
    ``--steps``, reported as "layers in float"), the nodes that keeps in float (``float_layers``: node names), its
    metric, drop vs FP32 (a fraction; ``drop_points`` = 100x, the unit of ``--max-drop``) and ORT CPU latency."""

    candidate: str
    k: int
    float_layers: tuple[str, ...]
    metric: float
    drop: float
    p50_ms: float
    fp32_p50_ms: float
    within: bool
    parts: Mapping[str, float] = field(default_factory=dict)  # the metric's components, when it reports them

    @property
    def speedup(self) -> float:
        return self.fp32_p50_ms / self.p50_ms if self.p50_ms > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["float_layers"] = list(self.float_layers)
        d["layers_kept_float"] = d.pop("k")  # the step, as in --steps, the log and the table
        d["nodes_kept_float"] = len(self.float_layers)
        d["drop_points"] = round(100 * self.drop, 3)
        d["speedup"] = round(self.speedup, 3)
        d["parts"] = {k: round(float(v), 5) for k, v in self.parts.items()}
        for k in ("metric", "drop"):
            d[k] = round(d[k], 5)
        for k in ("p50_ms", "fp32_p50_ms"):
            d[k] = round(d[k], 3)
        return d


@dataclass
class GateResult:
    """What the gate measured and chose. ``model``: the chosen Q/DQ ``onnx.ModelProto`` (None: FP32 only)."""

    baseline: float
    max_drop: float
    placement: str
    steps: list[GateStep]
    chosen: int | None
    passed: bool
    model: Any = None
    rankings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def chosen_step(self) -> GateStep | None:
        return None if self.chosen is None else self.steps[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        ch = self.chosen_step
        return {
            "baseline": round(self.baseline, 5), "max_drop": self.max_drop, "max_drop_points": round(100 * self.max_drop, 3),
            "placement": self.placement, "passed": self.passed,
            "chosen": None if ch is None else {"step": self.chosen, "candidate": ch.candidate, "layers_kept_float": ch.k,
                                               "nodes_kept_float": len(ch.float_layers),
                                               "float_layers": list(ch.float_layers), "metric": round(ch.metric, 5),
                                               "drop": round(ch.drop, 5), "drop_points": round(100 * ch.drop, 3),
                                               "speedup": round(ch.speedup, 3)},
            "steps": [s.to_dict() for s in self.steps],
            "ranking": {k: [{"node": r["node"], "op": r.get("op"), "output_sqnr_db": _num(r["output_sqnr_db"]),
                             **({"jump_db": _num(r["jump_db"])} if "jump_db" in r else {}),
                             **({"tensor": r["tensor"]} if "tensor" in r else {}), **({"nodes": list(r["nodes"])} if "nodes" in r else {})} for r in v[:64]]
                        for k, v in self.rankings.items()},
        }


def check_steps(steps: Sequence[int]) -> list[int]:
    """Validate ``steps`` (non-negative ints, e.g. (0, 2, 4, 8, 16)); returns them sorted and deduplicated."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise CalibrationError(f"gate steps must be a non-empty list of layer counts like [0, 2, 4, 8, 16], got {steps!r}")
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise CalibrationError(f"gate steps must be non-negative integers, got {bad}")
    return sorted(set(steps))


def accuracy_gate(candidates: Sequence[GateCandidate], metric: Metric, spec: Any, *, max_drop: float = DEFAULT_MAX_DROP,
                  steps: Sequence[int] = DEFAULT_STEPS, placement: str = "ort", sensitivity_feeds: Sequence[Mapping] = (),
                  latency_feed: Mapping[str, np.ndarray] | None = None, threads: int | None = None, iters: int = 10,
                  exhaustive: bool = False, on_fail: str = "fp32", ranking_method: str = "tensor",
                  reference: Any = None, ort_ops: str = "all", show_progress: bool = True) -> GateResult:
    """Walk each candidate's steps (layers kept in float), measure metric and latency, choose the fastest within budget.

    For each candidate: rank layers by :func:`vkt.calibration.report.layer_sensitivity` on
    ``sensitivity_feeds`` (worst first), then for ``k`` in ``steps`` keep the ``k`` worst layers in
    float, write the ``placement``, score it with ``metric`` and time it against FP32 (ORT CPU,
    calls interleaved so the ratio holds on a shared machine). A candidate stops at its first step
    within budget unless ``exhaustive``.

    Args:
        candidates: models to gate (PTQ first; QAT next when trained).
        metric: ``metric(runner_factory) -> float``, higher is better (see module docstring).
        spec: the component's ExportSpec (given to the runners).
        max_drop: allowed ``baseline - metric`` (default 0.01 = 1 point of hmean), >= 0.
        steps: how many of the most sensitive tensors (or layers) to keep in float (default 0, 4, 8, 16, 24, 32, 48;
            counts beyond the number of layers are dropped).
        placement: "ort" (onnxruntime CPU) or "trt".
        sensitivity_feeds: 1-4 small feeds for the ranking (needed unless every candidate has ``ranking``).
        ranking_method: "tensor" (default: :func:`tensor_sensitivity`, output SQNR with one activation tensor
            quantized at a time; a step keeps the first k tensors in float, i.e. every node reading them),
            "jump" (:func:`error_jumps`, every quantized op, two runs), "sensitivity"
            (:func:`layer_sensitivity`: Conv/MatMul/Gemm only, one placement per layer) or "prefix"
            (:func:`prefix_ranking`: step k keeps the graph up to its k-th Conv/MatMul/Gemm in float; no runs).
        reference: the FP32 graph scored and timed as the baseline (default: the first candidate's ``fp32``;
            pass the bundle's graph when candidates carry pre-rounded weights).
        latency_feed: the feed timed (None: latency not measured, recorded as NaN, ties go to fewer float layers).
        iters: timed calls per model (median reported).
        on_fail: "fp32" (ship nothing INT8) or "best" (ship the best-scoring step) when no step fits.
        ort_ops: with placement "ort", what it quantizes: "all" or "compute" (:func:`vkt.calibration.qdq.place_ort`).
    """
    from vkt.calibration.qdq import placement as place
    from vkt.calibration.report import layer_sensitivity

    if not candidates:
        raise CalibrationError("accuracy_gate needs at least one candidate model")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop < 1 or math.isnan(max_drop):
        raise CalibrationError(f"max_drop must be a fraction in [0, 1) of the metric (0.01 = 1 point), got {max_drop!r}")
    if on_fail not in ON_FAIL:
        raise CalibrationError(f"on_fail must be one of {list(ON_FAIL)}, got {on_fail!r}")
    if placement not in ("ort", "trt"):
        raise CalibrationError(f"gate placement must be 'ort' or 'trt', got {placement!r}")
    if not callable(metric):
        raise CalibrationError(f"metric must be a callable runner_factory -> float, got {type(metric).__name__}")
    steps = check_steps(steps)
    if ranking_method not in RANKING_METHODS:
        raise CalibrationError(f"ranking_method must be one of {list(RANKING_METHODS)}, got {ranking_method!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise CalibrationError(f"iters must be a positive integer, got {iters!r}")

    # 1. Baseline: the reference FP32 graph (default: the first candidate's, i.e. the bundle's own graph)
    # With the exact float rewrites the INT8 placements start from, so a speed-up is INT8's own (bundles written by
    # vkt export since session 5 have them already; older ones would otherwise count the rewrites' gain too).
    from vkt.onnxgraph import rewrite_fp32

    fp32_blob = rewrite_fp32(reference if reference is not None else candidates[0].fp32).SerializeToString()
    baseline = _score(metric, fp32_blob, spec, threads, "FP32")
    log.info("gate baseline (FP32) metric %.4f; budget: drop <= %.2f point(s)", baseline, 100 * max_drop)

    result = GateResult(baseline, float(max_drop), placement, [], None, False)
    for cand in candidates:
        # 2. Rank layers once per candidate (its node names are its own)
        ranking = list(cand.ranking) if cand.ranking is not None else None
        if ranking is None and ranking_method == "prefix":
            ranking = prefix_ranking(cand.fp32)
        if ranking is None:
            if not sensitivity_feeds:
                raise CalibrationError("the gate needs sensitivity_feeds (a few feeds) to rank layers, or a ranking per candidate")
            if ranking_method == "tensor":
                ranking = tensor_sensitivity(cand.fp32, cand.table, sensitivity_feeds, threads=threads,
                                             show_progress=show_progress)
            elif ranking_method == "jump":
                ranking = error_jumps(cand.fp32, cand.table, sensitivity_feeds, placement, threads=threads, ort_ops=ort_ops)
            else:
                ranking = layer_sensitivity(cand.fp32, cand.table, sensitivity_feeds, threads=threads,
                                            show_progress=show_progress)
        result.rankings[cand.name] = ranking
        order = [r["node"] for r in ranking]
        todo = [k for k in steps if k <= len(order)]
        nodes_of = [tuple(r.get("nodes") or (r["node"],)) for r in ranking]
        if len(todo) < len(steps):
            log.info("%s: %d rankable layers; dropping steps %s", cand.name, len(order), [k for k in steps if k > len(order)])
        # 3. One model per step
        for k in progress(todo, f"gate ({cand.name})", enabled=show_progress):
            # A tensor ranking keeps tensors in float: every node that reads one of the first k.
            kept = tuple(dict.fromkeys(x for nodes in nodes_of[:k] for x in nodes))
            q = place(cand.fp32, cand.table, placement, kept, ort_ops=ort_ops)
            blob = q.SerializeToString()
            score = _score(metric, blob, spec, threads, f"{cand.name} k={k}")
            fp_ms, q_ms = _time_pair(fp32_blob, blob, latency_feed, threads, iters) if latency_feed is not None else (np.nan, np.nan)
            step = GateStep(cand.name, k, kept, float(score), float(baseline - score), float(q_ms), float(fp_ms),
                            baseline - score <= max_drop + 1e-12, dict(getattr(metric, "last", None) or {}))
            result.steps.append(step)
            log.info("gate %s: %d layer(s) in float (%d nodes): metric %.4f (drop %.2f points), %.1f ms vs FP32 %.1f ms%s",
                     cand.name, k, len(kept), round(score, 5), round(100 * step.drop, 3), q_ms, fp_ms,  # as to_dict() rounds
                     " within budget" if step.within else "")
            if step.within:
                if result.model is None or _faster(step, result.chosen_step):
                    result.chosen, result.model = len(result.steps) - 1, q
                if not exhaustive:
                    break

    # 4. Nothing within budget: the decision is on_fail's
    result.passed = result.chosen is not None
    if not result.passed:
        best = max(range(len(result.steps)), key=lambda i: result.steps[i].metric)
        b = result.steps[best]
        msg = (f"no INT8 model met the budget (drop <= {100 * max_drop:.2f} point(s)); best: {b.candidate} with {b.k} "
               f"layer(s) in float, metric {b.metric:.4f} vs FP32 {baseline:.4f} (drop {100 * b.drop:.2f} points)")
        if on_fail == "best":
            result.chosen = best
            result.model = place(next(c for c in candidates if c.name == b.candidate).fp32,
                                 next(c for c in candidates if c.name == b.candidate).table, placement, b.float_layers,
                                 ort_ops=ort_ops)
            log.warning("%s; shipping it anyway (on_fail='best')", msg)
        else:
            log.warning("%s; shipping FP32 only (raise --max-drop, add more steps, or try --qat)", msg)
    return result


def tensor_sensitivity(fp32: Any, table: Any, feeds: Sequence[Mapping[str, np.ndarray]], *, threads: int | None = None,
                       show_progress: bool = True) -> list[dict[str, Any]]:
    """Rank activation tensors by the model's output SQNR when only that tensor is quantized, worst first.

    Each tensor with a range in ``table`` gets one QuantizeLinear -> DequantizeLinear pair with the
    onnxruntime placement's uint8 rule (range widened to include 0, scale = (max - min) / 255,
    zero point round(-min / scale)); everything else, weights included, stays float. This measures
    each tensor's *effect on the output* — its own rounding error times the network's gain from it
    to the output. On PP-OCRv5 mobile det that gain ranges from -35 dB (head) to +20 dB (first block):
    tensors with a 25 dB own SQNR cost 11 dB at the output, and per-op error rankings miss them.

    Returns ``[{"node": producer, "tensor", "nodes": reading nodes, "op", "output_sqnr_db"}]``.
    One session per tensor: give small feeds (e.g. two 320x320 crops).
    """
    from vkt.calibration.ranges import data_independent_tensors
    from vkt.calibration.report import sqnr_db
    from vkt.runtime.ort import OrtRunner

    feeds = list(feeds)
    if not feeds:
        raise CalibrationError("tensor_sensitivity needs at least one feed")
    g = fp32.graph
    const = data_independent_tensors(fp32)
    readers: dict[str, list[str]] = {}
    for n in g.node:
        for x in n.input:
            if x:
                readers.setdefault(x, []).append(n.name)
    producer = {o: n for n in g.node for o in n.output}
    outputs = [o.name for o in g.output]
    tensors = [t for t in dict.fromkeys([i.name for i in g.input] + list(producer))
               if t in table and t in readers and t not in const]

    def run(model: Any) -> list[np.ndarray]:
        with OrtRunner(model.SerializeToString(), threads=threads, name="sensitivity") as r:
            return [np.concatenate([np.ravel(r.infer(f, check=False)[o]) for o in outputs]) for f in feeds]

    ref = np.concatenate(run(fp32))
    rows = []
    for t in progress(tensors, "tensor sensitivity", enabled=show_progress):
        scale, zp = ort_uint8_params(*table[t])
        out = np.concatenate(run(with_tensor_qdq(fp32, t, scale, zp)))
        p = producer.get(t)
        rows.append({"node": p.name if p is not None else t, "tensor": t, "nodes": tuple(readers[t]),
                     "op": p.op_type if p is not None else "input", "output_sqnr_db": sqnr_db(ref, out)})
    return sorted(rows, key=lambda r: r["output_sqnr_db"])


def prefix_ranking(fp32: Any, ops: Sequence[str] = PREFIX_OPS) -> list[dict[str, Any]]:
    """One row per compute layer (``ops``) in graph order; row k's ``nodes`` are the nodes after layer k-1 up to layer k.

    A gate step k therefore keeps one contiguous float region: everything from the input up to and
    including the k-th Conv/MatMul/Gemm (its Mul/Add/activation neighbours too), the rest INT8. For
    networks whose quantization noise is born early and amplified on the way out, this beats
    per-tensor rankings, which scatter float islands: on PP-OCRv5 mobile det (short side 736, held-out
    page/text + 8 synthetic pages) the first 32 of 62 convs in float kept hmean 0.99 vs FP32 where the
    tensor ranking's best was 0.94 (benchmarks/results/textdet_int8_gate_prefix.json vs textdet_int8_gate.json).
    ``output_sqnr_db`` is NaN (not measured).
    """
    rows: list[dict[str, Any]] = []
    pending: list[str] = []
    for n in fp32.graph.node:
        if not n.name:
            raise CalibrationError("prefix_ranking needs named nodes; prepare the graph first (vkt.onnxgraph.prepare_model)")
        pending.append(n.name)
        if n.op_type in ops:
            rows.append({"node": n.name, "op": n.op_type, "nodes": tuple(pending), "output_sqnr_db": float("nan")})
            pending = []
    return rows


def error_jumps(fp32: Any, table: Any, feeds: Sequence[Mapping[str, np.ndarray]], placement: str = "ort",
                threads: int | None = None, cap_db: float = 60.0, ort_ops: str = "all") -> list[dict[str, Any]]:
    """Rank nodes by how much error appears at them in the full placement (one FP32 and one Q/DQ run), worst first.

    For each node the SQNR (vs FP32) of its output is compared with the worst SQNR of its float
    inputs (capped at ``cap_db``; graph inputs and weights count as exact): the difference is the
    error its quantized inputs and weights add. Keeping such a node in float makes it read the float
    tensors. Unlike :func:`layer_sensitivity` this sees every quantized op (Mul, Add, HardSigmoid,
    Resize ... on the ORT placement), where most of a mobile detector's error can come from, and
    costs two runs instead of one per layer.

    Returns ``[{"node", "op", "output_sqnr_db", "jump_db"}]`` sorted by ``jump_db`` descending.
    """
    from vkt.calibration.qdq import placement as place
    from vkt.calibration.report import layer_errors

    ops = sorted({n.op_type for n in fp32.graph.node})
    q = place(fp32, table, placement, ort_ops=ort_ops)
    rows = layer_errors(fp32, q, feeds, op_types=ops, threads=threads)
    sq = {r["tensor"]: min(cap_db, r["sqnr_db"]) for r in rows}
    out = []
    for n in fp32.graph.node:
        if not n.output or n.output[0] not in sq:
            continue
        ins = [min(cap_db, sq[x]) for x in n.input if x in sq]
        before = min(ins) if ins else cap_db
        out.append({"node": n.name, "op": n.op_type, "output_sqnr_db": sq[n.output[0]], "jump_db": before - sq[n.output[0]]})
    return sorted(out, key=lambda r: -r["jump_db"])


def _faster(a: GateStep, b: GateStep | None) -> bool:
    if b is None:
        return True
    if np.isnan(a.p50_ms) or np.isnan(b.p50_ms):
        return len(a.float_layers) < len(b.float_layers)
    # Latencies within 3% are a tie on a shared machine: prefer the better metric.
    if abs(a.p50_ms - b.p50_ms) <= 0.03 * min(a.p50_ms, b.p50_ms):
        return a.metric > b.metric
    return a.p50_ms < b.p50_ms


def _factory(blob: bytes, spec: Any, threads: int | None) -> Callable[[], Any]:
    from vkt.runtime.ort import OrtRunner

    return lambda: OrtRunner(blob, threads=threads, spec=spec, name="gate")


def _score(metric: Metric, blob: bytes, spec: Any, threads: int | None, what: str) -> float:
    value = metric(_factory(blob, spec, threads))
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"the gate metric must return a number, got {type(value).__name__} for {what}") from None
    if not np.isfinite(value):
        raise CalibrationError(f"the gate metric returned {value} for {what}; expected a finite number")
    return value


def _time_pair(a: bytes, b: bytes, feed: Mapping[str, np.ndarray], threads: int | None, iters: int) -> tuple[float, float]:
    """Median ms of two graphs on ORT CPU after two warm-up calls each, timed in alternating turns of one
    untimed and up to five timed calls (:func:`vkt.bench.time_turns`: at more than one thread, a call made
    right after the other session's would share the cores with that session's still-spinning workers)."""
    from vkt.bench import time_turns
    from vkt.runtime.ort import OrtRunner

    runners = [OrtRunner(x, threads=threads, name="time") for x in (a, b)]
    for r in runners:
        r.activate()
    try:
        for r in runners:
            for _ in range(2):
                r.infer(feed, check=False)
        times = time_turns([(lambda r=r: r.infer(feed, check=False)) for r in runners], iters, block=5, settle=1)
        return float(np.median(times[0]) * 1e3), float(np.median(times[1]) * 1e3)
    finally:
        for r in runners:
            r.deactivate()


def _num(x: float) -> float | str:
    return round(x, 3) if np.isfinite(x) else str(x)


# ---- presentation ----------------------------------------------------------------------------
def render_gate_table(gate: Mapping[str, Any], title: str | None = None) -> Any:
    """A rich Table of ``GateResult.to_dict()``: one row per step (FP32 first), the shipped one marked.

    Drops ("drop pt") are in points (100x the metric), as ``--max-drop``; "layers in float" is the step, as ``--steps``."""
    from rich.table import Table

    budget = 100 * gate["max_drop"]
    t = Table(title=title or f"accuracy gate (metric vs FP32, budget: drop <= {budget:g} point(s); ORT CPU latency)")
    for col in ("model", "layers in float", "metric", "drop pt", "p50 ms", "speedup", ""):  # fits 80 columns
        t.add_column(col, justify="left" if col in ("model", "") else "right")
    t.add_row("fp32", "all", f"{gate['baseline']:.4f}", "-", "-", "1.00x", "")
    chosen = (gate.get("chosen") or {}).get("step")
    for i, s in enumerate(gate["steps"]):
        mark = "shipped" if i == chosen else ("within budget" if s["within"] else "over budget")
        style = "bold green" if i == chosen else ("" if s["within"] else "yellow")
        t.add_row(s["candidate"], str(s["layers_kept_float"]), f"{s['metric']:.4f}", f"{s.get('drop_points', 100 * s['drop']):+.2f}",
                  f"{s['p50_ms']:.1f}", f"{s['speedup']:.2f}x", mark, style=style)
    return t


def task_metric(bundle: Any, holdout: Sequence[Path], threads: int | None = None, show_progress: bool = True,
                use_labels: bool = False) -> Metric:
    """The gate metric for the bundle's task on held-out images (text detection only so far).

    Text detection: hmean of the INT8 boxes against FP32's. With ``use_labels`` and ICDAR labels beside
    some held-out images (``gt_<image stem>.txt``, as ``vkt synth textdet`` writes), the metric is
    ``min(agreement, 1 - (FP32's hmean vs labels - INT8's))``, so ``--max-drop`` bounds both drops. Off by
    default: on synthetic pages whose word quads DB's unclipped boxes match near IoU 0.5, hmean vs labels
    swings by up to 17 points between steps whose boxes agree with FP32's at 0.994 (session 4), so the gate
    would choose by that noise; the paired agreement with FP32 is the steadier signal.
    """
    if bundle.task == "text-detection":
        from vkt.eval.textdet import gt_path_for, load_icdar_gt

        labels = {}
        for p in holdout if use_labels else ():
            gt = gt_path_for(Path(p), Path(p).parent)
            if gt is not None:
                labels[Path(p)] = load_icdar_gt(gt)
        if use_labels and not labels:
            raise CalibrationError("use_labels: none of the held-out images has an ICDAR label file beside it "
                                   "(gt_<image stem>.txt, as `vkt synth textdet` writes)")
        m = textdet_agreement(bundle, holdout, threads=threads, show_progress=show_progress, labels=labels or None)
        m.name = ("min(hmean vs FP32 boxes, 1 - hmean drop vs labels)" if labels else "hmean vs FP32 boxes")  # type: ignore[attr-defined]
        return m
    raise CalibrationError(f"no held-out metric for task {bundle.task!r} (family {bundle.family!r}) yet; the gate knows "
                           "'text-detection'. Call vkt.calibration.api.gate_bundle() with your own metric(runner_factory)")


# ---- text detection: hmean of INT8 boxes against FP32 boxes ----------------------------------
def holdout_images(folder: str | os.PathLike, min_images: int = 1) -> list[Path]:
    """Image paths in ``folder`` (sorted, not recursive); CalibrationError when missing or with too few images."""
    from vkt.calibration.data import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"holdout folder not found or not a folder: {str(root)!r}")
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if len(paths) < min_images:
        raise CalibrationError(f"holdout folder {str(root)!r} holds {len(paths)} image(s); the accuracy gate needs at least "
                               f"{min_images} held-out image(s) ({', '.join(sorted(IMAGE_EXTENSIONS))}) not used for calibration")
    return paths


def load_holdout_images(images: Sequence[Any], who: str) -> list[np.ndarray]:
    """Held-out images (paths or arrays) as BGR uint8 arrays; CalibrationError naming an unreadable one, or none."""
    from vkt.runtime.image import load_image

    imgs = []
    for i, im in enumerate(images):
        try:
            imgs.append(load_image(im, i))
        except Exception as e:
            raise CalibrationError(f"held-out image {str(im)[:200]!r} cannot be read: {str(e).splitlines()[0][:200]}") from None
    if not imgs:
        raise CalibrationError(f"{who} needs at least one held-out image, got none")
    return imgs


def textdet_agreement(bundle: Any, images: Sequence[Any], *, min_regions: int = MIN_HOLDOUT_REGIONS,
                      iou_thresh: float = 0.5, threads: int | None = None, show_progress: bool = True,
                      labels: Mapping[Any, Sequence[Any]] | None = None) -> Metric:
    """Text-detection gate metric: hmean of a model's boxes scored against the bundle's FP32 boxes.

    FP32 detections on ``images`` (paths or BGR uint8 arrays) are computed once here, through
    :class:`vkt.runtime.textdet.TextDetector` with the bundle's pre/post-processing. Raises
    CalibrationError when FP32 finds fewer than ``min_regions`` regions in all (default 20): an
    hmean over so few boxes moves by more than a point per box.

    ``labels``: ground truth (GtRegion lists or polygons) for some of ``images``, keyed by the same
    objects (paths). The metric is then ``min(agreement, 1 - (FP32 hmean - model hmean))`` over the
    labelled images: agreement with FP32 can stay high while boxes near the IoU threshold of the
    labels move, so the budget bounds both. ``metric.last`` holds the parts of the latest call.
    """
    from vkt.eval.textdet import evaluate, hmean_between
    from vkt.runtime import make_runner

    if bundle.task != "text-detection":
        raise CalibrationError(f"textdet_agreement scores text detectors; bundle {bundle.name!r} is for task {bundle.task!r}")
    imgs = load_holdout_images(images, "the text-detection gate")
    spec = bundle.spec()
    overrides = {k: v for k, v in bundle.postprocess.items() if k != "type"}
    overrides.update({k: v for k, v in bundle.preprocess.get("resize", {}).items()
                      if k in ("limit_side_len", "limit_type", "round_to", "max_side_len")})
    overrides.update({k: v for k, v in bundle.preprocess.items() if k in ("mean", "std", "scale", "color")})

    def detect(runner: Any) -> list[list[np.ndarray]]:
        from vkt.runtime.textdet import TextDetector

        with TextDetector(runner, **overrides) as det:
            return [det([im])[0].polygons for im in progress(imgs, "held-out images", enabled=show_progress)]

    ref = detect(make_runner(bundle, "ort", "fp32", threads=threads))
    n = sum(len(r) for r in ref)
    if n < min_regions:
        raise CalibrationError(f"FP32 finds {n} text region(s) on the {len(imgs)} held-out image(s); the gate needs at least "
                               f"{min_regions} to measure a 1-point drop: add held-out images with text")
    by_path = {Path(k): v for k, v in (labels or {}).items()}
    labelled = [i for i, im in enumerate(images) if isinstance(im, (str, os.PathLike)) and Path(im) in by_path]
    gts = [by_path[Path(images[i])] for i in labelled]

    def vs_labels(dets: Sequence[Any]) -> float:
        return evaluate([dets[i] for i in labelled], gts, iou_thresh=iou_thresh)["hmean"]

    fp32_labels = vs_labels(ref) if labelled else None

    def metric(factory: Callable[[], Any]) -> float:
        runner = factory()
        if getattr(runner, "_spec", None) is None:
            runner._spec = spec  # bare runners: give them the bundle's profile (TextDetector caps sizes by it)
        dets = detect(runner)
        agreement = hmean_between(dets, ref, iou_thresh)
        metric.last = {"agreement": agreement}  # type: ignore[attr-defined]
        if not labelled:
            return agreement
        got = vs_labels(dets)
        metric.last.update(labels_hmean=got, labels_fp32=fp32_labels)  # type: ignore[attr-defined]
        return min(agreement, 1.0 - (fp32_labels - got))

    metric.reference = ref  # type: ignore[attr-defined]
    metric.regions = n  # type: ignore[attr-defined]
    metric.labelled = len(labelled)  # type: ignore[attr-defined]
    metric.last = {}  # type: ignore[attr-defined]
    return metric
