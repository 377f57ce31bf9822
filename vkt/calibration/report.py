"""What a Q/DQ graph became on onnxruntime CPU (fused integer ops vs float compute) and its per-layer error vs FP32."""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.calibration.ranges import QUANTIZED_OPS
from vkt.errors import CalibrationError
from vkt.log import get_logger

log = get_logger(__name__)

# Integer kernels onnxruntime's CPU provider fuses Q/DQ patterns into (op_type; domains vary:
# "", com.microsoft, com.microsoft.nchwc).
INT8_OPS = frozenset({
    "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger",
    "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
    "QLinearConvTranspose", "QAttention", "QEmbedLayerNormalization",
})
# Float compute the Q/DQ was meant to replace.
FLOAT_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "NhwcFusedConv"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@dataclass(frozen=True)
class OpCounts:
    """Op types in onnxruntime's optimized graph, split into integer kernels, float compute and Q/DQ."""

    int8: Mapping[str, int]
    float: Mapping[str, int]
    qdq: int

    @property
    def fused(self) -> int:
        return sum(self.int8.values())

    @property
    def float_compute(self) -> int:
        return sum(self.float.values())

    def to_dict(self) -> dict[str, Any]:
        return {"fused_int8_ops": self.fused, "float_compute_ops": self.float_compute, "qdq_ops": self.qdq,
                "int8": dict(sorted(self.int8.items())), "float": dict(sorted(self.float.items()))}


def optimized_graph(model: Any, threads: int = 1, level: str = "all") -> Any:
    """onnxruntime CPU's optimized graph of ``model`` (ModelProto or path) as an ``onnx.ModelProto``."""
    import onnx

    from vkt.runtime.ort import OrtRunner

    with tempfile.TemporaryDirectory(prefix="vkt-opt-") as tmp:
        src = model if isinstance(model, (str, os.PathLike)) else _save(model, Path(tmp) / "in.onnx")
        out = Path(tmp) / "optimized.onnx"
        runner = OrtRunner(src, threads=threads, graph_optimization=level, optimized_model_path=str(out))
        runner.activate()
        runner.deactivate()
        return onnx.load(str(out))


def count_ops(model: Any, threads: int = 1) -> OpCounts:
    """Count fused integer vs float compute ops in onnxruntime CPU's optimized graph of ``model``."""
    ops = Counter(n.op_type for n in optimized_graph(model, threads).graph.node)
    return OpCounts(int8={k: v for k, v in ops.items() if k in INT8_OPS},
                    float={k: v for k, v in ops.items() if k in FLOAT_OPS},
                    qdq=sum(v for k, v in ops.items() if k in QDQ_OPS))


def _save(model: Any, path: Path) -> str:
    import onnx

    onnx.save(model, str(path))
    return str(path)


# ---- per-layer error -------------------------------------------------------------------------
def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio 10*log10(sum(ref^2) / sum((ref-test)^2)) in dB (inf: identical)."""
    ref = np.asarray(ref, np.float64)
    noise = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def layer_errors(fp32: Any, qdq: Any, feeds: Iterable[Mapping[str, np.ndarray]], *, op_types: Sequence[str] = QUANTIZED_OPS,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """Per-layer error of a Q/DQ graph against its FP32 source, in graph order.

    Both graphs are run (optimizations at "basic", so every compared tensor stays observable) with
    the outputs of ``op_types`` nodes (and the graph outputs) added as outputs; a tensor is compared
    when both graphs produce it under the same name (placements keep producers' output names).

    Args:
        fp32: the prepared FP32 ``onnx.ModelProto`` (tensor names must match ``qdq``).
        qdq: a placement of it.
        feeds: a few feeds (errors are pooled over them).
    Returns:
        ``[{"tensor", "node", "op", "sqnr_db", "max_abs", "rel_l2"}]``; sqnr_db is inf for identical tensors.
    """
    import onnx

    def producers(m: Any) -> dict[str, tuple[str, str]]:
        return {o: (n.name, n.op_type) for n in m.graph.node for o in n.output if o}

    fp_prod, q_prod = producers(fp32), producers(qdq)
    outputs = [o.name for o in fp32.graph.output]
    names = [t for t, (_, op) in fp_prod.items() if op in op_types and t in q_prod and t not in outputs]
    names += [o for o in outputs if o in q_prod or o in {x.name for x in qdq.graph.output}]
    if not names:
        raise CalibrationError("the FP32 and Q/DQ graphs share no Conv/MatMul/Gemm output names to compare")

    def with_outputs(m: Any) -> Any:
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        have = {o.name for o in m2.graph.output}
        for t in names:
            if t not in have:
                m2.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
        return m2

    feeds = list(feeds)
    if not feeds:
        raise CalibrationError("layer_errors needs at least one feed")
    acc: dict[str, list[float]] = {t: [0.0, 0.0, 0.0] for t in names}  # signal, noise, max_abs
    with tempfile.TemporaryDirectory(prefix="vkt-err-") as tmp:
        results = []
        for tag, m in (("fp32", fp32), ("qdq", qdq)):
            path = _save(with_outputs(m), Path(tmp) / f"{tag}.onnx")
            results.append(_run_all(path, names, feeds, threads))
    for ref_run, q_run in zip(*results):
        for t in names:
            r, q = ref_run[t].astype(np.float64), q_run[t].astype(np.float64)
            if r.shape != q.shape:
                continue
            acc[t][0] += float(np.sum(r**2))
            acc[t][1] += float(np.sum((r - q) ** 2))
            acc[t][2] = max(acc[t][2], float(np.max(np.abs(r - q))) if r.size else 0.0)
    rows = []
    for t in names:
        signal, noise, mx = acc[t]
        sq = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
        node, op = fp_prod.get(t, ("", "output"))
        rows.append({"tensor": t, "node": node, "op": op, "sqnr_db": sq, "max_abs": mx,
                     "rel_l2": math.sqrt(noise / signal) if signal > 0 else (0.0 if noise == 0 else math.inf)})
    return rows


def _run_all(path: str, names: list[str], feeds: list[Mapping[str, np.ndarray]], threads: int | None) -> list[dict[str, np.ndarray]]:
    from vkt.runtime.ort import OrtRunner

    with OrtRunner(path, threads=threads, graph_optimization="basic") as r:
        out = []
        for f in feeds:
            res = r.infer(f, check=False)
            out.append({t: res[t] for t in names})
        return out


# ---- presentation ----------------------------------------------------------------------------
def render_layer_table(rows: Sequence[Mapping[str, Any]], title: str = "per-layer error vs FP32", worst: int | None = 20) -> Any:
    """A rich Table of :func:`layer_errors` rows, worst SQNR first (``worst``: how many; None: all)."""
    from rich.table import Table

    rows = sorted(rows, key=lambda r: r["sqnr_db"])
    if worst is not None:
        rows = rows[:worst]
    t = Table(title=title)
    for col, just in (("node", "left"), ("op", "left"), ("SQNR dB", "right"), ("max |diff|", "right"), ("rel L2", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        sq = r["sqnr_db"]
        style = "red" if sq < 20 else ("yellow" if sq < 30 else "")
        t.add_row(r["node"] or r["tensor"], r["op"], f"{sq:.1f}", f"{r['max_abs']:.3g}", f"{r['rel_l2']:.3g}", style=style)
    return t


def render_counts_table(counts: Mapping[str, OpCounts], title: str = "onnxruntime CPU kernels") -> Any:
    """A rich Table with one row per placement: fused int8 ops, float compute ops, leftover Q/DQ."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("placement", "fused int8", "float compute", "Q/DQ left", "int8 kernels"):
        t.add_column(col)
    for name, c in counts.items():
        t.add_row(name, str(c.fused), str(c.float_compute), str(c.qdq), ", ".join(f"{k}×{v}" for k, v in sorted(c.int8.items())))
    return t


# ---- sensitivity (the start of accuracy-gated fallback) ---------------------------------------
def layer_sensitivity(fp32: Any, table: Any, feeds: Iterable[Mapping[str, np.ndarray]], *,
                      op_types: Sequence[str] = QUANTIZED_OPS, threads: int | None = None,
                      show_progress: bool = True) -> list[dict[str, Any]]:
    """Output error when one layer alone is quantized (TensorRT placement), worst first.

    For each Conv/ConvTranspose/MatMul/Gemm node, every other quantizable node is excluded and the
    graph outputs are compared with FP32 over ``feeds``: the layers at the top are the ones to keep
    in float (``exclude=``) first. Costs one placement and one session per layer.

    Args:
        fp32: the prepared FP32 ``onnx.ModelProto`` the table was computed on.
        table: its CalibrationTable.
        feeds: a few feeds (errors pooled over them).
    Returns:
        ``[{"node", "op", "output_sqnr_db"}]`` sorted by ``output_sqnr_db`` ascending (the minimum
        over graph outputs).
    """
    from vkt.calibration.qdq import place_trt
    from vkt.log import progress

    feeds = list(feeds)
    if not feeds:
        raise CalibrationError("layer_sensitivity needs at least one feed")
    nodes = [(n.name, n.op_type) for n in fp32.graph.node if n.op_type in op_types]
    if not nodes:
        raise CalibrationError(f"the graph has no {list(op_types)} nodes to rank")
    outputs = [o.name for o in fp32.graph.output]
    with tempfile.TemporaryDirectory(prefix="vkt-sens-") as tmp:
        ref = _run_all(_save(fp32, Path(tmp) / "fp32.onnx"), outputs, feeds, threads)
        rows = []
        for name, op in progress(nodes, "layer sensitivity", enabled=show_progress):
            q = place_trt(fp32, table, exclude=[n for n, _ in nodes if n != name], op_types=op_types)
            got = _run_all(_save(q, Path(tmp) / "q.onnx"), outputs, feeds, threads)
            worst = math.inf
            for o in outputs:
                r = np.concatenate([x[o].ravel() for x in ref])
                t = np.concatenate([x[o].ravel() for x in got])
                worst = min(worst, sqnr_db(r, t))
            rows.append({"node": name, "op": op, "output_sqnr_db": worst})
    return sorted(rows, key=lambda r: r["output_sqnr_db"])
