"""The OpenVINO placement: Q/DQ written from one CalibrationTable where OpenVINO's CPU plugin runs integer kernels.

OpenVINO reads each QuantizeLinear -> DequantizeLinear pair as a FakeQuantize; its low-precision transformations
then move the dequantization through the graph and run the ops between quantizers in u8/i8. Which tensors get a
quantizer follows what NNCF 3.4 writes for the CPU device (measured on PP-OCRv5 mobile det):
  * the activation input of every Conv / ConvTranspose / MatMul / Gemm, weights int8 per output channel;
  * both inputs of an Add or Mul whose inputs are both activations (residual branches, squeeze-excite gates);
  * the inputs of GlobalAveragePool / ReduceMean, Resize and Concat, so they run in u8 between quantized convs.
Activations are uint8 with a zero point (onnxruntime's rule, :func:`vkt.calibration.qdq.ort_uint8_params`).
Activations fused into a convolution by the plugin (HardSwish, Relu, scalar Mul/Add) get no quantizer of
their own: the next consumer's quantizer is fused into the convolution's output. Before placing, HardSigmoid(x)
* x is rewritten to HardSwish(x) (:func:`vkt.onnxgraph.fuse_hardswish`, exact): onnxruntime's pre-processing splits HardSwish
so, and OpenVINO runs a split HardSwish as a reference kernel between layout reorders (a third of the INT8
model's time on PP-OCRv5 mobile det) instead of fusing it into the convolution.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from vkt.calibration.qdq import INT8_MAX, check_exclude, insert_qdq, ort_uint8_params, prepared_for_table, set_placement_meta
from vkt.calibration.ranges import CalibrationTable
from vkt.errors import ModelError
from vkt.log import get_logger
from vkt.onnxgraph import fuse_hardswish, readers

log = get_logger(__name__)

PLACEMENT = "openvino"
# Ops whose activation input 0 is quantized, with the axis of their weight's output channels.
OV_COMPUTE_OPS = {"Conv": 0, "ConvTranspose": 1, "MatMul": -1, "Gemm": 1}
# Ops with two activation inputs that run in integer when both are quantized.
OV_BINARY_OPS = ("Add", "Mul")
# Ops whose (activation) inputs are quantized so that they run in u8 between quantized layers.
OV_PASS_OPS = ("GlobalAveragePool", "ReduceMean", "Resize", "Concat", "MaxPool", "AveragePool")


def place_ov(model: Any, table: CalibrationTable, exclude: Iterable[str] = (), *, per_channel: bool = True) -> Any:
    """Q/DQ that OpenVINO's CPU plugin runs as integer kernels (module doc); returns a new ``onnx.ModelProto``.

    Args:
        model: ``onnx.ModelProto`` or path (prepared here if it was not).
        table: ranges from :func:`vkt.calibration.ranges.compute_ranges` on the same model.
        exclude: node names kept in float: they read float tensors and their weights stay float.
        per_channel: per-output-channel weight scales (default True; False: one scale per weight).

    Bias correction (:mod:`vkt.calibration.bias`) is applied on top by :func:`vkt.calibration.placements.placement`,
    with shifts measured once per calibration (PP-OCRv5 mobile det, 360 boxes of 40 synthetic pages, every conv INT8:
    hmean vs FP32 0.979 -> 0.989; the gated placement 0.9945 -> 0.9972).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    prepared = prepared_for_table(model, table)
    excluded = check_exclude(prepared, exclude)
    prepared, _ = fuse_hardswish(prepared)
    g = prepared.graph
    inits = {i.name: i for i in g.initializer}
    consts = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}

    def usable(x: str) -> bool:
        return bool(x) and x not in consts and x in table and table.amax(x) > 0.0

    # 1. Which tensors get a quantizer, and which readers read it
    wanted: dict[str, set[str]] = {}  # tensor -> names of the nodes that read its Q/DQ copy
    weights: dict[str, tuple[str, int | None]] = {}  # weight initializer -> (name of its node, channel axis)
    for n in g.node:
        if n.name in excluded or n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type in OV_COMPUTE_OPS and len(n.input) >= 2:
            if not usable(n.input[0]):
                continue
            w = n.input[1]
            if w in inits and inits[w].data_type == TensorProto.FLOAT:
                weights.setdefault(w, (n.name, _weight_axis(n, inits[w])))
            elif not usable(w):
                continue  # MatMul with a second activation input that has no range: leave the node in float
            else:
                wanted.setdefault(w, set()).add(n.name)
            wanted.setdefault(n.input[0], set()).add(n.name)
        elif n.op_type in OV_BINARY_OPS and len(n.input) == 2 and all(x not in consts for x in n.input):
            if all(usable(x) for x in n.input):
                for x in n.input:
                    wanted.setdefault(x, set()).add(n.name)
        elif n.op_type in OV_PASS_OPS:
            xs = [x for x in (n.input[:1] if n.op_type != "Concat" else n.input) if x not in consts]
            if xs and all(usable(x) for x in xs):
                for x in xs:
                    wanted.setdefault(x, set()).add(n.name)

    # A tensor is quantized for all of its readers or for none (one FakeQuantize per tensor, as NNCF places them): a
    # reader kept in float (excluded, or an op that wants no quantizer) keeps the whole tensor float, so OpenVINO never
    # sees a tensor both through a FakeQuantize and directly. (OpenVINO 2026.4 is fragile around partly quantized
    # blocks: with the squeeze-excite Mul left unquantized and every conv INT8 it computed garbage on PP-OCRv5, hmean 0
    # where onnxruntime running the same Q/DQ graph keeps 0.94; the gate scores on OpenVINO, so it would see that.)
    read_by = readers(g)
    graph_outputs = {o.name for o in g.output}
    wanted = {x: who for x, who in wanted.items()
              if x not in graph_outputs and {r.name for r in read_by.get(x, [])} <= who}

    # 2. Activations: one Q/DQ pair per tensor, read by every reader
    insert_qdq(prepared, {x: ort_uint8_params(*table[x]) for x in wanted})

    # 3. Weights: int8, symmetric, per output channel
    pre: list[Any] = []
    new_inits: list[Any] = []
    dq_of = {}
    for w, (_, axis) in weights.items():
        arr = numpy_helper.to_array(inits[w]).astype(np.float32)
        ax = None if axis is None or not per_channel else axis % arr.ndim
        amax = (np.abs(arr).max() if ax is None else np.abs(np.moveaxis(arr, ax, 0).reshape(arr.shape[ax], -1)).max(axis=1))
        scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
        shape = [1] * arr.ndim
        if ax is not None:
            shape[ax] = -1
        q = np.clip(np.rint(arr / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
        names = (f"{w}_vkt_i8", f"{w}_vkt_ws", f"{w}_vkt_wz")
        new_inits += [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1]),
                      numpy_helper.from_array(np.zeros(scale.shape, np.int8), names[2])]
        pre.append(helper.make_node("DequantizeLinear", list(names), [f"{w}_vkt_wdq"], name=f"{w}_vkt_wdq",
                                    **({} if ax is None else {"axis": ax})))
        dq_of[w] = f"{w}_vkt_wdq"
    quantized_nodes = {name for name, _ in weights.values()}
    for n in g.node:
        if n.name in quantized_nodes and n.input[1] in dq_of:
            n.input[1] = dq_of[n.input[1]]
    nodes = pre + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    set_placement_meta(prepared, PLACEMENT, table, excluded)
    try:
        onnx.checker.check_model(prepared)
    except Exception as e:  # a bug here, but say what broke
        raise ModelError(f"the OpenVINO Q/DQ graph fails onnx.checker: {e}") from None
    return prepared


def openvino_precisions(blob: bytes) -> dict[str, dict[str, int]] | str:
    """``{layer type: {precision: count}}`` of the compute layers OpenVINO's CPU plugin runs for the serialized graph
    (:meth:`vkt.runtime.openvino.OvRunner.executed_precisions`), or a note when OpenVINO is not installed."""
    import importlib.util

    from vkt.runtime.openvino import OvRunner

    if importlib.util.find_spec("openvino") is None:
        return "not measured: openvino is not installed"
    with OvRunner(blob, threads=1, name="placement") as runner:
        return runner.executed_precisions()


def _weight_axis(node: Any, weight: Any) -> int | None:
    """Output-channel axis of a node's constant weight (None: one scale for the tensor)."""
    attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
    if node.op_type == "ConvTranspose":
        return 1 if attrs.get("group", 1) == 1 else None  # grouped: output channels span two axes
    if node.op_type == "Gemm":
        return 0 if attrs.get("transB", 0) else 1
    if node.op_type == "MatMul":
        return -1 if len(weight.dims) >= 2 else None
    return 0
