"""Accuracy gate: keep the most sensitive layers in float, step by step, until the metric holds; ship the fastest.

    result = accuracy_gate([GateCandidate("ptq", fp32, table)], metric, spec, GateConfig(max_drop=0.01),
                           sensitivity_feeds=feeds, latency_feed=feed)
    result.model                                               # the Q/DQ graph to ship (None: FP32 only)

``metric(runner_factory) -> float`` is a family's score on held-out data, higher is better;
``runner_factory()`` returns a fresh, not yet activated :class:`vkt.runtime.Runner` for the
graph under test (FP32 first: its score is the baseline). The gate knows no family: each recipe
(vkt.models.*) brings its metric (text detection: hmean vs FP32 boxes; DETR: AP vs FP32 detections).

Speed: a step within budget is timed against FP32 (:func:`vkt.calibration.gate_timing.time_pair`: interleaved
turns as `vkt bench` takes them, bench's p50 ratio, the turns' ratios as a noise band); below ``min_speedup`` (default 1.1x) nothing INT8 ships either, and
the result's ``reason`` says why. Steps over budget are not timed (they cannot ship).

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
DEFAULT_MIN_SPEEDUP = 1.1  # INT8 slower than this over FP32 is not worth its accuracy loss: FP32 ships
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
    iters: timed calls per model in the first round (default 15), in turns of one untimed and 5 timed calls as `vkt bench`
        takes them; more rounds while the turns' ratios leave it uncertain by more than +-5% (a busy machine), up to 3.
    min_speedup: the least speed-up over FP32 that ships INT8 (default 1.1; 0: any); below it FP32 ships, and why
        is recorded. Checked only when the gate times (a latency feed).
    exhaustive: measure every step of every candidate instead of stopping at the first within budget (always so for an
        "openvino" placement whose float layers run in bf16: there a step keeping more layers float may be faster).
    float_precision: what OpenVINO runs the layers an "openvino" placement leaves in float in, when scoring and timing
        it: "f32" (default) or "bf16" (resolved by :func:`vkt.runtime.openvino.resolve_float_precision`); the FP32
        baseline stays f32.
    """

    max_drop: float = DEFAULT_MAX_DROP
    steps: tuple[int, ...] | None = None
    ranking: str = "tensor"
    placement: str = "ort"
    follow: tuple[str, ...] = ()
    on_fail: str = "fp32"
    ort_ops: str = "all"
    threads: int | None = None
    iters: int = 15
    exhaustive: bool = False
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    float_precision: str = "f32"

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
        m = self.min_speedup
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise CalibrationError(f"min_speedup must be a speed-up over FP32 >= 0 (1.1 = 10% faster; 0: any), got {m!r}")
        if self.float_precision not in ("f32", "bf16"):
            raise CalibrationError(f"float_precision must be 'f32' or 'bf16' (resolved), got {self.float_precision!r}")

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
    family's keep-list (None: ranked by the gate config's ``ranking``); meta: recorded in the manifest; bias: the
    openvino placement's bias shifts (:class:`vkt.calibration.bias.BiasShifts`), added to each of its steps.
    """

    name: str
    fp32: Any
    table: Any
    ranking: Sequence[Mapping[str, Any]] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    bias: Any = None


@dataclass(frozen=True)
class GateStep:
    """One measured model: its step ``k`` (the first k entries of the ranking in float: the unit of ``steps`` and
    ``--steps``, reported as "layers in float"), the nodes that keeps in float (``float_layers``: node names), its
    metric, drop vs FP32 (a fraction; ``drop_points`` = 100x, the unit of ``--max-drop``) and, for a step within
    budget, its latency against FP32 (``timing``: :class:`vkt.calibration.gate_timing.PairTiming`; None: not timed)."""

    candidate: str
    k: int
    float_layers: tuple[str, ...]
    metric: float
    drop: float
    within: bool
    parts: Mapping[str, float] = field(default_factory=dict)  # the metric's components, when it reports them
    timing: Any = None

    @property
    def int8_ms(self) -> float:
        return float("nan") if self.timing is None else self.timing.int8_ms

    @property
    def fp32_ms(self) -> float:
        return float("nan") if self.timing is None else self.timing.fp32_ms

    @property
    def speedup(self) -> float:
        return float("nan") if self.timing is None else self.timing.speedup

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["float_layers"] = list(self.float_layers)
        d["layers_kept_float"] = d.pop("k")  # the step, as in --steps, the log and the table
        d["nodes_kept_float"] = len(self.float_layers)
        d["drop_points"] = round(100 * self.drop, 3)
        d["parts"] = {k: round(float(v), 5) for k, v in self.parts.items()}
        for k in ("metric", "drop"):
            d[k] = round(d[k], 5)
        d["timing"] = None if self.timing is None else self.timing.to_dict()
        d["speedup"] = _num(self.speedup)  # JSON has no NaN: an untimed step records "nan"
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
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    reason: str | None = None  # why FP32 ships although a step met the budget (too slow)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase: ranking, placements, metric, timing
    # the shipped INT8 timed against the other CPU runtime's FP32 (openvino placement: onnxruntime FP32), and a note
    # when that FP32 is the faster choice
    vs_other_fp32: Any = None
    other_note: str | None = None

    @property
    def chosen_step(self) -> GateStep | None:
        return None if self.chosen is None else self.steps[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        ch = self.chosen_step
        return {
            "baseline": round(self.baseline, 5), "max_drop": self.max_drop, "max_drop_points": round(100 * self.max_drop, 3),
            "placement": self.placement, "passed": self.passed, "min_speedup": self.min_speedup,
            "shipped": "fp32" if self.model is None else "int8", "reason": self.reason,
            "chosen": None if ch is None else {"step": self.chosen, "candidate": ch.candidate, "layers_kept_float": ch.k,
                                               "nodes_kept_float": len(ch.float_layers),
                                               "float_layers": list(ch.float_layers), "metric": round(ch.metric, 5),
                                               "drop": round(ch.drop, 5), "drop_points": round(100 * ch.drop, 3),
                                               "speedup": _num(ch.speedup)},
            "steps": [s.to_dict() for s in self.steps],
            **({"vs_other_fp32": self.vs_other_fp32.to_dict(), "other_fp32_note": self.other_note}
               if self.vs_other_fp32 is not None else {}),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
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
                  reference: Any = None, fp32_runner: Callable[[], Any] | None = None,
                  other_fp32: Callable[[], Any] | None = None, show_progress: bool = True) -> GateResult:
    """Walk each candidate's steps (layers kept in float), measure metric and latency, choose the fastest within budget.

    For each candidate: rank layers (its own ``ranking`` rows, else ``config.ranking`` on
    ``sensitivity_feeds``, worst first), then for ``k`` in the config's steps keep the first ``k``
    in float, write the ``config.placement``, score it with ``metric`` and, within budget, time it against
    FP32 (ORT CPU; OpenVINO CPU for the "openvino" placement; turns interleaved so the ratio holds on a shared
    machine). A candidate stops at its first step within budget unless ``config.exhaustive`` or its float layers run
    in bf16 (then every step is walked: more float layers may be faster). The choice ships
    only when it is at least ``config.min_speedup`` times faster than FP32.

    Args:
        candidates: models to gate (PTQ first; QAT or others next).
        metric: ``metric(runner_factory) -> float``, higher is better (see module docstring).
        spec: the component's ExportSpec (given to the runners).
        config: budget, steps, ranking, placement, on_fail (:class:`GateConfig`).
        sensitivity_feeds: 1-4 small feeds for the ranking (needed unless every candidate has its ranking or the
            ranking is "prefix").
        latency_feed: the feed timed (None: latency not measured, recorded as NaN, ties go to fewer float layers,
            no speed check); to agree with ``vkt bench``, a feed at the shape it times.
        reference: the FP32 graph scored (and timed, without ``fp32_runner``) as the baseline (default: the first
            candidate's ``fp32``; pass the bundle's graph when candidates carry pre-rounded weights).
        fp32_runner: factory of the FP32 runner timed against (default: ``reference`` on the placement's runtime, ORT
            or OpenVINO CPU); pass the one ``vkt bench`` builds for the bundle so the speed-up is the one a user re-times.
        other_fp32: factory of the other CPU runtime's FP32 runner (for the openvino placement: onnxruntime's); the
            shipped INT8 is timed against it too, recorded, and a warning says when that FP32 is the faster choice
            (INT8 still ships: it is the fastest on its own runtime).
    """
    from vkt.bench import BenchConfig
    from vkt.calibration.gate_timing import runner_factory, score_graph, time_pair
    from vkt.calibration.placements import placement as place

    if not candidates:
        raise CalibrationError("accuracy_gate needs at least one candidate model")
    if not isinstance(config, GateConfig):
        raise CalibrationError(f"config must be a GateConfig, got {type(config).__name__}")
    if not callable(metric):
        raise CalibrationError(f"metric must be a callable runner_factory -> float, got {type(metric).__name__}")
    max_drop, placement, ort_ops, threads = config.max_drop, config.placement, config.ort_ops, config.threads
    steps = list(config.walk)
    clock: dict[str, float] = {}  # where the gate's time goes, recorded in the manifest
    score_graph, place, time_pair = (_clocked(clock, k, f) for k, f in (("metric", score_graph), ("placements", place),
                                                                          ("timing", time_pair)))
    ranker = _clocked(clock, "ranking", rank_layers)
    backend = "ov" if placement == "openvino" else "ort"  # the runner of the target that ships
    fp = config.float_precision if backend == "ov" else "f32"  # what the INT8 graphs' float layers run in
    # Fewer float layers is faster only while float means f32. In bf16, OpenVINO's float kernels match or beat its int8
    # ones plus the reorders around them on many convs (PP-OCRv5 mobile, 736², 2 threads: 32 convs kept float 1.88x
    # FP32, 52 kept 2.09x; 64 kept 1.48x): past the first step within budget the walk goes on, and the fastest ships.
    walk_on = config.exhaustive or fp == "bf16"

    # 1. Baseline: the reference FP32 graph (default: the first candidate's, i.e. the bundle's own graph)
    # With the exact float rewrites the INT8 placements start from (bundles written by vkt export since session 5 have
    # them already). Timed against: fp32_runner when given (gate_bundle: the bundle's file, as `vkt bench` runs it).
    from vkt.onnxgraph import rewrite_fp32

    fp32_blob = rewrite_fp32(reference if reference is not None else candidates[0].fp32).SerializeToString()
    baseline = score_graph(metric, fp32_blob, spec, threads, "FP32", backend=backend)
    log.info("gate baseline (FP32) metric %.4f; budget: drop <= %.2f point(s)", baseline, 100 * max_drop)

    result = GateResult(baseline, float(max_drop), placement, [], None, False, min_speedup=float(config.min_speedup))
    # Timed against the bundle's FP32 file as `vkt bench` runs it on the target's runtime (fp32_runner, when given): the
    # speed-up a user re-times. (vkt export ships HardSwish fused, so OpenVINO's FP32 is at its best there.)
    fp32_timed = fp32_runner or runner_factory(fp32_blob, spec, threads, backend)

    def timing(blob: bytes, fp32: Callable[[], Any] = fp32_timed) -> Any:
        """``blob`` on the placement's runtime timed against ``fp32`` (default: the FP32 the gate judges by)."""
        if latency_feed is None:
            return None
        return time_pair(fp32, runner_factory(blob, spec, threads, backend, fp), latency_feed,
                         turns=max(1, math.ceil(config.iters / BenchConfig().block)), threads=threads)

    for cand in candidates:
        # 2. Rank layers once per candidate (its node names are its own)
        ranking = ranker(cand, config, sensitivity_feeds, show_progress)
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
            q = place(cand.fp32, cand.table, placement, kept, ort_ops=ort_ops, bias=cand.bias)
            blob = q.SerializeToString()
            score = score_graph(metric, blob, spec, threads, f"{cand.name} k={k}", backend=backend, float_precision=fp)
            within = baseline - score <= max_drop + 1e-12
            step = GateStep(cand.name, k, kept, float(score), float(baseline - score), within,
                            dict(getattr(metric, "last", None) or {}), timing(blob) if within else None)  # only what can ship is timed
            result.steps.append(step)
            log.info("gate %s: %d layer(s) in float (%d nodes): metric %.4f (drop %.2f points)%s", cand.name, k, len(kept),
                     round(score, 5), round(100 * step.drop, 3), _timing_note(step))  # as to_dict() rounds
            if step.within:
                if result.model is None or _faster(step, result.chosen_step):
                    result.chosen, result.model = len(result.steps) - 1, q
                if not walk_on:
                    break

    # 4. Nothing within budget: the decision is on_fail's
    result.passed = result.chosen is not None
    if not result.passed:
        best = max(range(len(result.steps)), key=lambda i: result.steps[i].metric)
        b = result.steps[best]
        msg = (f"no INT8 model met the budget (drop <= {100 * max_drop:.2f} point(s)); best: {b.candidate} with {b.k} "
               f"layer(s) in float, metric {b.metric:.4f} vs FP32 {baseline:.4f} (drop {100 * b.drop:.2f} points)")
        if config.on_fail == "best":
            best_cand = next(c for c in candidates if c.name == b.candidate)
            result.model = place(best_cand.fp32, best_cand.table, placement, b.float_layers, ort_ops=ort_ops,
                                 bias=best_cand.bias)
            if b.timing is None:
                result.steps[best] = b = GateStep(b.candidate, b.k, b.float_layers, b.metric, b.drop, b.within, b.parts,
                                                  timing(result.model.SerializeToString()))
            result.chosen = best
            log.warning("%s; shipping it anyway (on_fail='best')", msg)
        else:
            log.warning("%s; shipping FP32 only (raise --max-drop, add more steps, or try --qat)", msg)

    # 5. Never INT8 slower than FP32: below min_speedup, FP32 ships and the reason is recorded
    ch = result.chosen_step
    if ch is not None and ch.timing is not None and not ch.speedup >= config.min_speedup:
        t = ch.timing
        result.reason = (f"INT8 ({ch.candidate}, {ch.k} layer(s) in float) measured {ch.speedup:.2f}x FP32 (noise band "
                         f"{t.band[0]:.2f}-{t.band[1]:.2f}x; {t.fp32_ms:.1f} vs {t.int8_ms:.1f} ms at "
                         f"{'x'.join(map(str, t.shape))}, {_threads(t.threads)}), below the minimum {config.min_speedup:g}x")
        log.warning("%s: shipping FP32 only (--min-speedup sets the minimum)", result.reason)
        result.chosen, result.model = None, None
    # 6. The other CPU runtime's FP32 may be faster still (OpenVINO's per-call cost on a small input): say so
    ch = result.chosen_step
    if other_fp32 is not None and ch is not None and ch.timing is not None and result.model is not None:
        result.vs_other_fp32 = t = timing(result.model.SerializeToString(), other_fp32)
        if not t.speedup >= config.min_speedup:
            result.other_note = (f"the shipped INT8 measured {t.speedup:.2f}x onnxruntime FP32 ({t.int8_ms:.1f} vs "
                                 f"{t.fp32_ms:.1f} ms at {'x'.join(map(str, t.shape))}, {_threads(t.threads)}), below "
                                 f"{config.min_speedup:g}x: FP32 on onnxruntime (--backend ort) is the faster choice here")
            log.warning("%s", result.other_note)
    result.seconds = dict(clock)
    log.info("gate: %s", ", ".join(f"{k} {v:.1f} s" for k, v in clock.items()))
    return result


def _clocked(clock: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` adding its wall time to ``clock[key]``."""
    import time

    def run(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock[key] = clock.get(key, 0.0) + time.perf_counter() - t0

    return run


def _threads(threads: int | None) -> str:
    return "the runtime's default threads" if threads is None else f"{threads} thread(s)"


def _timing_note(step: GateStep) -> str:
    t = step.timing
    if t is None:
        return "" if not step.within else " within budget (not timed)"
    return (f", {t.int8_ms:.1f} ms vs FP32 {t.fp32_ms:.1f} ms: {t.speedup:.2f}x (noise band {t.band[0]:.2f}-{t.band[1]:.2f}x)"
            " within budget")


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
    if np.isnan(a.speedup) or np.isnan(b.speedup):
        return len(a.float_layers) < len(b.float_layers)
    # Speed-ups within 3% are a tie on a shared machine: prefer the better metric. (Each step is timed against its
    # own interleaved FP32 turns, so its speed-up, not its raw latency, is what compares across steps.)
    if abs(a.speedup - b.speedup) <= 0.03 * min(a.speedup, b.speedup):
        return a.metric > b.metric
    return a.speedup > b.speedup


def _num(x: float) -> float | str:
    return round(x, 3) if np.isfinite(x) else str(x)
