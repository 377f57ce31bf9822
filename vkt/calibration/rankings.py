"""Gate rankings: which layers (or tensors) the accuracy gate keeps in float first, worst first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vkt.calibration.qdq import ort_uint8_params, with_tensor_qdq
from vkt.calibration.ranges import QUANTIZED_OPS
from vkt.errors import CalibrationError
from vkt.log import progress

RANKING_METHODS = ("tensor", "jump", "sensitivity", "prefix")
PREFIX_OPS = QUANTIZED_OPS  # the graph from its input up to the k-th of these



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
            raise CalibrationError("prefix_ranking needs named nodes; prepare the graph first (vkt.calibration.ranges.prepare_model)")
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
    from vkt.calibration.placements import placement as place
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
