"""Accuracy gate: keep the most sensitive layers in float, step by step, until the metric holds; ship the fastest.

    result = accuracy_gate([GateCandidate("ptq", fp32, table)], metric, spec, GateConfig(max_drop=0.01),
                           sensitivity_feeds=feeds, latency_feed=feed)
    result.model                                               # the Q/DQ graph to ship (None: FP32 only)

``metric(runner_factory) -> float`` is a family's score on held-out data, higher is better;
``runner_factory()`` returns a fresh, not yet activated :class:`vkt.runtime.Runner` for the
graph under test (FP32 first: its score is the baseline). The gate knows no family: each recipe
(vkt.models.*) brings its metric (text detection: hmean vs FP32 boxes; DETR: AP vs FP32 detections).

When no step meets the budget, nothing INT8 ships: a warning names the best step, the result's
``model`` is None and :func:`vkt.calibration.api.gate_bundle` removes the placement's Q/DQ graph,
so ``--precision int8`` fails loudly instead of running a model known to be out of budget
(``on_fail="best"`` ships the best-scoring step instead).
Rankings live in :mod:`vkt.calibration.rankings`, timing in :mod:`vkt.calibration.gate_timing`,
the table in :mod:`vkt.calibration.gate_report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vkt.calibration.rankings import RANKING_METHODS
from vkt.errors import CalibrationError
from vkt.log import get_logger, progress

log = get_logger(__name__)

DEFAULT_STEPS = (0, 4, 8, 16, 24, 32, 48)  # tensors (or layers) kept in float
PREFIX_STEPS = tuple(range(0, 65, 4))  # compute layers kept in float from the input, with the prefix ranking
DEFAULT_MAX_DROP = 0.01  # 1.0 point of the metric
ON_FAIL = ("fp32", "best")
PLACEMENTS = ("ort", "trt", "openvino")

Metric = Callable[[Callable[[], Any]], float]
# Builds an extra gate candidate (e.g. QAT) from (bundle, calibration image paths, preprocess, resolved Int8Config).
CandidateFactory = Callable[[Any, Sequence[Any], Callable[[Any], Mapping[str, np.ndarray]], Any], "GateCandidate"]


@dataclass(frozen=True)
class GateConfig:
    """How the accuracy gate walks and decides. Values are checked when the config is made.

    max_drop: allowed ``baseline - metric`` as a fraction of the metric, in [0, 1) (default 0.01 = 1 point).
    steps: layers kept in float per step, e.g. (0, 2, 4, 8) (None: every 4th layer up to 64 with the "prefix"
        ranking, else 0, 4, 8, 16, 24, 32, 48; counts beyond the number of layers are dropped).
    ranking: what is kept in float first, for candidates without their own ranking rows: "tensor" (default),
        "jump", "sensitivity" or "prefix" (:mod:`vkt.calibration.rankings`).
    placement: the placement scored and timed, "ort" (onnxruntime CPU, default), "trt" (scored on onnxruntime CPU)
        or "openvino" (scored and timed on OpenVINO CPU, against the FP32 graph on OpenVINO).
    follow: other placements rewritten with the chosen step's float nodes (not measured themselves), or
        removed with it when nothing ships (default none).
    on_fail: "fp32" (default: ship no INT8 graph) or "best" (ship the best-scoring step) when no step fits.
    ort_ops: what an "ort" placement quantizes: "all" (default) or "compute" (:func:`vkt.calibration.qdq.place_ort`).
    threads: onnxruntime intra-op threads (None: onnxruntime's default).
    iters: timed calls per model, median reported (default 10).
    exhaustive: measure every step of every candidate instead of stopping at the first within budget.
    """

    max_drop: float = DEFAULT_MAX_DROP
    steps: tuple[int, ...] | None = None
    ranking: str = "tensor"
    placement: str = "ort"
    follow: tuple[str, ...] = ()
    on_fail: str = "fp32"
    ort_ops: str = "all"
    threads: int | None = None
    iters: int = 10
    exhaustive: bool = False

    def __post_init__(self) -> None:
        from vkt.calibration.qdq import ORT_OPS

        d = self.max_drop
        if isinstance(d, bool) or not isinstance(d, (int, float)) or math.isnan(d) or not 0 <= d < 1:
            raise CalibrationError(f"max_drop must be a fraction in [0, 1) of the metric (0.01 = 1 point), got {d!r}")
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(check_steps(self.steps)))
        if self.ranking not in RANKING_METHODS:
            raise CalibrationError(f"ranking must be one of {list(RANKING_METHODS)}, got {self.ranking!r}")
        if self.placement not in PLACEMENTS:
            raise CalibrationError(f"gate placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        follow = (self.follow,) if isinstance(self.follow, str) else tuple(self.follow)
        if any(p not in PLACEMENTS for p in follow):
            raise CalibrationError(f"follow must name placements among {list(PLACEMENTS)}, got {list(follow)}")
        object.__setattr__(self, "follow", tuple(p for p in dict.fromkeys(follow) if p != self.placement))
        if self.on_fail not in ON_FAIL:
            raise CalibrationError(f"on_fail must be one of {list(ON_FAIL)}, got {self.on_fail!r}")
        if self.ort_ops not in ORT_OPS:
            raise CalibrationError(f"ort_ops must be one of {list(ORT_OPS)}, got {self.ort_ops!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise CalibrationError(f"threads must be a positive integer, got {self.threads!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise CalibrationError(f"iters must be a positive integer, got {self.iters!r}")

    @property
    def walk(self) -> tuple[int, ...]:
        """The steps walked: ``steps``, or the default for the ranking."""
        if self.steps is not None:
            return self.steps
        return PREFIX_STEPS if self.ranking == "prefix" else DEFAULT_STEPS


@dataclass(frozen=True)
class GateCandidate:
    """A quantized model to gate: its prepared FP32 graph (tensor names of ``table``) and its ranges.

    name: "ptq", "qat", ...; ranking: precomputed rows ``{"node", "op", "output_sqnr_db"[, "nodes"]}``, e.g. a
    family's keep-list (None: ranked by the gate config's ``ranking``); meta: recorded in the manifest.
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


def accuracy_gate(candidates: Sequence[GateCandidate], metric: Metric, spec: Any, config: GateConfig = GateConfig(), *,
                  sensitivity_feeds: Sequence[Mapping] = (), latency_feed: Mapping[str, np.ndarray] | None = None,
                  reference: Any = None, show_progress: bool = True) -> GateResult:
    """Walk each candidate's steps (layers kept in float), measure metric and latency, choose the fastest within budget.

    For each candidate: rank layers (its own ``ranking`` rows, else ``config.ranking`` on
    ``sensitivity_feeds``, worst first), then for ``k`` in the config's steps keep the first ``k``
    in float, write the ``config.placement``, score it with ``metric`` and time it against FP32
    (ORT CPU; OpenVINO CPU for the "openvino" placement; calls interleaved so the ratio holds on a shared machine). A candidate stops at its
    first step within budget unless ``config.exhaustive``.

    Args:
        candidates: models to gate (PTQ first; QAT or others next).
        metric: ``metric(runner_factory) -> float``, higher is better (see module docstring).
        spec: the component's ExportSpec (given to the runners).
        config: budget, steps, ranking, placement, on_fail (:class:`GateConfig`).
        sensitivity_feeds: 1-4 small feeds for the ranking (needed unless every candidate has its ranking or the
            ranking is "prefix").
        latency_feed: the feed timed (None: latency not measured, recorded as NaN, ties go to fewer float layers).
        reference: the FP32 graph scored and timed as the baseline (default: the first candidate's ``fp32``;
            pass the bundle's graph when candidates carry pre-rounded weights).
    """
    from vkt.calibration.gate_timing import score_graph, time_pair
    from vkt.calibration.qdq import placement as place

    if not candidates:
        raise CalibrationError("accuracy_gate needs at least one candidate model")
    if not isinstance(config, GateConfig):
        raise CalibrationError(f"config must be a GateConfig, got {type(config).__name__}")
    if not callable(metric):
        raise CalibrationError(f"metric must be a callable runner_factory -> float, got {type(metric).__name__}")
    max_drop, placement, ort_ops, threads = config.max_drop, config.placement, config.ort_ops, config.threads
    steps = list(config.walk)
    backend = "ov" if placement == "openvino" else "ort"  # the runner of the target that ships

    # 1. Baseline: the reference FP32 graph (default: the first candidate's, i.e. the bundle's own graph)
    # With the exact float rewrites the INT8 placements start from, so a speed-up is INT8's own (bundles written by
    # vkt export since session 5 have them already; older ones would otherwise count the rewrites' gain too).
    from vkt.onnxgraph import rewrite_fp32

    fp32 = rewrite_fp32(reference if reference is not None else candidates[0].fp32)
    if backend == "ov":  # OpenVINO runs HardSigmoid * x as a reference kernel: FP32 at its best there too
        from vkt.calibration.place_ov import fuse_hardswish

        fp32 = fuse_hardswish(fp32)[0]
    fp32_blob = fp32.SerializeToString()
    baseline = score_graph(metric, fp32_blob, spec, threads, "FP32", backend=backend)
    log.info("gate baseline (FP32) metric %.4f; budget: drop <= %.2f point(s)", baseline, 100 * max_drop)

    result = GateResult(baseline, float(max_drop), placement, [], None, False)
    for cand in candidates:
        # 2. Rank layers once per candidate (its node names are its own)
        ranking = rank_layers(cand, config, sensitivity_feeds, show_progress)
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
            score = score_graph(metric, blob, spec, threads, f"{cand.name} k={k}", backend=backend)
            fp_ms, q_ms = (np.nan, np.nan) if latency_feed is None else time_pair(fp32_blob, blob, latency_feed, threads,
                                                                                   config.iters, backend=backend)
            step = GateStep(cand.name, k, kept, float(score), float(baseline - score), float(q_ms), float(fp_ms),
                            baseline - score <= max_drop + 1e-12, dict(getattr(metric, "last", None) or {}))
            result.steps.append(step)
            log.info("gate %s: %d layer(s) in float (%d nodes): metric %.4f (drop %.2f points), %.1f ms vs FP32 %.1f ms%s",
                     cand.name, k, len(kept), round(score, 5), round(100 * step.drop, 3), q_ms, fp_ms,  # as to_dict() rounds
                     " within budget" if step.within else "")
            if step.within:
                if result.model is None or _faster(step, result.chosen_step):
                    result.chosen, result.model = len(result.steps) - 1, q
                if not config.exhaustive:
                    break

    # 4. Nothing within budget: the decision is on_fail's
    result.passed = result.chosen is not None
    if not result.passed:
        best = max(range(len(result.steps)), key=lambda i: result.steps[i].metric)
        b = result.steps[best]
        msg = (f"no INT8 model met the budget (drop <= {100 * max_drop:.2f} point(s)); best: {b.candidate} with {b.k} "
               f"layer(s) in float, metric {b.metric:.4f} vs FP32 {baseline:.4f} (drop {100 * b.drop:.2f} points)")
        if config.on_fail == "best":
            result.chosen = best
            result.model = place(next(c for c in candidates if c.name == b.candidate).fp32,
                                 next(c for c in candidates if c.name == b.candidate).table, placement, b.float_layers,
                                 ort_ops=ort_ops)
            log.warning("%s; shipping it anyway (on_fail='best')", msg)
        else:
            log.warning("%s; shipping FP32 only (raise --max-drop, add more steps, or try --qat)", msg)
    return result


def rank_layers(cand: GateCandidate, config: GateConfig, feeds: Sequence[Mapping[str, np.ndarray]],
                show_progress: bool = True) -> list[dict[str, Any]]:
    """The candidate's ranking rows: its own, else ``config.ranking`` computed on ``feeds`` (worst first)."""
    from vkt.calibration import rankings
    from vkt.calibration.report import layer_sensitivity

    if cand.ranking is not None:
        return list(cand.ranking)
    if config.ranking == "prefix":  # graph order: nothing to run
        return rankings.prefix_ranking(cand.fp32)
    if not feeds:
        raise CalibrationError("the gate needs sensitivity_feeds (a few feeds) to rank layers, or a ranking per candidate")
    if config.ranking == "tensor":
        return rankings.tensor_sensitivity(cand.fp32, cand.table, feeds, threads=config.threads, show_progress=show_progress)
    if config.ranking == "jump":
        return rankings.error_jumps(cand.fp32, cand.table, feeds, config.placement, threads=config.threads,
                                    ort_ops=config.ort_ops)
    return layer_sensitivity(cand.fp32, cand.table, feeds, threads=config.threads, show_progress=show_progress)


def _faster(a: GateStep, b: GateStep | None) -> bool:
    if b is None:
        return True
    if np.isnan(a.p50_ms) or np.isnan(b.p50_ms):
        return len(a.float_layers) < len(b.float_layers)
    # Latencies within 3% are a tie on a shared machine: prefer the better metric.
    if abs(a.p50_ms - b.p50_ms) <= 0.03 * min(a.p50_ms, b.p50_ms):
        return a.metric > b.metric
    return a.p50_ms < b.p50_ms


def _num(x: float) -> float | str:
    return round(x, 3) if np.isfinite(x) else str(x)
