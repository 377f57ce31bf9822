"""FP16 graphs: convert an FP32 ONNX to FP16, keeping numerically sensitive ops and the I/O in FP32, and add it to a bundle."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from vkt.errors import ModelError

# Ops whose FP16 versions overflow or lose too much (reductions over large extents, exp/log/pow, norms,
# index and shape maths). LayerNorm/Softmax in FP32 is what TensorRT's own FP16 recipes keep too.
SENSITIVE_OPS = (
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Sqrt", "Exp", "Log",
    "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
    "Range", "TopK", "NonMaxSuppression", "CumSum", "RoiAlign", "Resize", "Upsample", "Einsum",
)


def convert_fp16(model: Any, keep_ops: Iterable[str] = SENSITIVE_OPS, keep_nodes: Iterable[str] = (),
                 keep_io_types: bool = True) -> Any:
    """Return an FP16 copy of an ``onnx.ModelProto``.

    Args:
        keep_ops: op types left in FP32 (Casts are inserted around them).
        keep_nodes: node names left in FP32.
        keep_io_types: graph inputs/outputs stay FP32, so callers feed the same arrays as for FP32.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    try:
        out = convert_float_to_float16(
            model, keep_io_types=keep_io_types, op_block_list=sorted({*DEFAULT_OP_BLOCK_LIST, *keep_ops}),
            node_block_list=list(keep_nodes), disable_shape_infer=False,
        )
    except Exception as e:  # the converter's failures are asserts and KeyErrors from odd graphs
        raise ModelError(f"FP16 conversion failed ({type(e).__name__}: {e})") from None
    _unique_node_names(out)
    _topological_sort(out.graph)
    return out


def add_fp16(writer: Any, model: Any, component: str = "model",
             check: Callable[[Path], Mapping[str, Any] | None] | None = None,
             meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Add the FP16 copy of ``model`` (an FP32 ``onnx.ModelProto``, :func:`convert_fp16`) to the bundle being written.

    ``writer``: a ``vkt.bundle.BundleWriter`` that already has ``component``. The graph goes to
    ``<component>.fp16.onnx``, role "fp16 onnx" (with an "onnx external data" file beside it over 2 GB);
    ``check(path)`` runs first on the written graph and raises to stop the bundle, and what it returns joins
    the file's meta, after ``{"kept_fp32_ops": [...], "io": "float32", **meta}``. The manifest's
    ``precision["fp16"]`` names the file (``"<component>.fp16.onnx"`` for a multi-graph bundle).
    Returns the meta recorded.
    """
    from vkt.onnxio import save_onnx

    name = f"{component}.fp16.onnx"
    files = save_onnx(convert_fp16(model), writer.staged(name))
    recorded = {"kept_fp32_ops": list(SENSITIVE_OPS), "io": "float32", **(meta or {})}
    if check is not None:
        recorded.update(check(files[0]) or {})
    writer.add_file(files[0], name, role="fp16 onnx", component=component, meta=recorded)
    if len(files) > 1:
        writer.add_file(files[1], files[1].name, role="onnx external data", component=component)
    writer.manifest["precision"]["fp16"] = name if component == "model" else "<component>.fp16.onnx"
    return recorded


def _topological_sort(graph: Any) -> None:
    """The converter appends the input Casts after their consumers; ONNX requires producers first."""
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:  # a cycle or a dangling input: leave the rest as they were and let the checker say so
            ordered.extend(pending)
            break
        for n in ready:
            ordered.append(n)
            produced.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def _unique_node_names(model: Any) -> None:
    """The converter names the Cast it puts before a kept-FP32 node after the tensor, so one tensor feeding
    two such nodes yields two identical Casts (same name, same output), which onnx.checker and TensorRT
    reject: drop exact duplicates, then rename any remaining repeated node names."""
    by_output: dict[str, Any] = {}
    keep = []
    for node in model.graph.node:
        first = by_output.get(node.output[0]) if node.output else None
        if first is not None and first.SerializeToString() == node.SerializeToString():
            continue
        for o in node.output:
            by_output.setdefault(o, node)
        keep.append(node)
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)
    seen: dict[str, int] = {}
    for node in model.graph.node:
        if not node.name:
            continue
        n = seen.get(node.name, 0)
        seen[node.name] = n + 1
        if n:
            node.name = f"{node.name}_{n}"
