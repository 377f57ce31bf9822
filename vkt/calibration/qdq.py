"""Q/DQ placements written from one CalibrationTable: TensorRT's (inputs of Conv/MatMul/Gemm) and onnxruntime CPU's
(OpenVINO's: :mod:`vkt.calibration.place_ov`; one call for any target: :mod:`vkt.calibration.placements`).

No placement runs calibration data: both read the ranges of :func:`vkt.calibration.ranges.compute_ranges`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.calibration.ranges import QUANTIZED_OPS, CalibrationTable, model_sha256
from vkt.errors import CalibrationError, ModelError
from vkt.log import get_logger
from vkt.onnxgraph import fold_conv_affine, prepare_model, quiet, readers

log = get_logger(__name__)

# Kept in float on onnxruntime CPU: normalisation and softmax statistics lose too much in 8 bits,
# and ORT has no fused integer kernels for them on x86 anyway.
ORT_FLOAT_OPS = ("Softmax", "LayerNormalization", "InstanceNormalization", "EmbedLayerNormalization")
# What place_ort quantizes: "all" = every op onnxruntime has an integer (QLinear*/QDQ) kernel for;
# "compute" = only the ops below, Q/DQ on their inputs *and* outputs so ORT still fuses them into
# QLinearConv / QLinearMatMul, with everything between them (elementwise, activations) in float.
ORT_OPS = ("all", "compute")
ORT_COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
INT8_MAX = 127


def prepared_for_table(model: Any, table: CalibrationTable) -> Any:
    """Prepare the model and check that the table was computed on this graph."""
    if not isinstance(table, CalibrationTable):
        raise CalibrationError(f"expected a CalibrationTable, got {type(table).__name__}")
    prepared = prepare_model(model)
    sha = model_sha256(prepared)
    if sha != table.model_sha256:
        # Different bytes can still be the same graph (other onnx version, metadata); names decide.
        log.warning("calibration table was computed on graph %s…, this graph is %s…; matching tensors by name",
                    table.model_sha256[:12], sha[:12])
    return prepared


def check_exclude(model: Any, exclude: Iterable[str]) -> set[str]:
    if isinstance(exclude, str):
        exclude = [exclude]
    exclude = set(exclude)
    names = {n.name for n in model.graph.node}
    unknown = sorted(exclude - names)
    if unknown:
        sample = sorted(n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS)[:8]
        raise CalibrationError(f"cannot exclude {unknown}: no node has that name (quantizable nodes include {sample})")
    return exclude


# ---- one Q/DQ pair per tensor ------------------------------------------------------------------
def ort_uint8_params(lo: Any, hi: Any) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's uint8 rule for ranges (scalars or per-channel arrays): widened to include 0, scale
    (hi - lo) / 255 (1 for an empty range), zero point round(-lo / scale). Returns (float32 scale, uint8 zero point)."""
    lo, hi = np.minimum(np.asarray(lo, np.float64), 0.0), np.maximum(np.asarray(hi, np.float64), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0)
    return scale.astype(np.float32), np.clip(np.round(-lo / scale), 0, 255).astype(np.uint8)


def insert_qdq(model: Any, params: Mapping[str, tuple[Any, Any]], axis: int | None = None) -> None:
    """In place: every reader of each tensor in ``params`` reads QuantizeLinear -> DequantizeLinear(tensor) instead.

    ``params``: tensor -> (scale, zero point), scalars (per tensor) or 1-D arrays along ``axis`` (per
    channel). Each pair goes right after its producer (first, for a graph input), so a topologically
    sorted graph stays sorted.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    dq_of = {t: f"{t}_vkt_dq" for t in params}
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in dq_of:
                n.input[i] = dq_of[x]
    kw = {} if axis is None else {"axis": axis}
    after: dict[str, list[Any]] = {}
    for t, (scale, zp) in params.items():
        s, z, q = f"{t}_vkt_s", f"{t}_vkt_z", f"{t}_vkt_q"
        g.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), s),
                              numpy_helper.from_array(np.asarray(zp, np.uint8), z)])
        after[t] = [helper.make_node("QuantizeLinear", [t, s, z], [q], **kw),
                    helper.make_node("DequantizeLinear", [q, s, z], [dq_of[t]], **kw)]
    nodes = [pair for t in list(after) if t not in {o for n in g.node for o in n.output} for pair in after.pop(t)]
    for n in g.node:
        nodes.append(n)
        for o in n.output:
            nodes.extend(after.pop(o, ()))
    del g.node[:]
    g.node.extend(nodes)


def with_tensor_qdq(model: Any, tensor: str, scale: Any, zero_point: Any, axis: int | None = None) -> Any:
    """A copy of ``model`` whose readers of ``tensor`` read QuantizeLinear -> DequantizeLinear(tensor) instead."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    insert_qdq(m, {tensor: (scale, zero_point)}, axis=axis)
    return m


# ---- TensorRT ----------------------------------------------------------------------------------
def place_trt(model: Any, table: CalibrationTable, exclude: Iterable[str] = (), *,
              op_types: Sequence[str] = QUANTIZED_OPS, per_channel: bool = True) -> Any:
    """Q/DQ where TensorRT fuses it (as NVIDIA ModelOpt places it); returns a new ``onnx.ModelProto``.

    For each Conv / ConvTranspose / MatMul / Gemm node not in ``exclude``:
      * activation inputs (Conv X, MatMul A and a non-constant B, Gemm A): QuantizeLinear ->
        DequantizeLinear, int8, symmetric (scale = amax / 127, zero point 0), one pair per tensor;
      * constant weights: stored as int8 with a per-channel DequantizeLinear on the output-channel
        axis (Conv: 0; ConvTranspose: 1; MatMul B [K, N]: last; Gemm B: 1, or 0 when transB=1);
      * bias stays float (TensorRT rejects an int32 bias DequantizeLinear).
    Outputs are not quantized: TensorRT picks output precision itself in strongly typed networks.

    Args:
        model: ``onnx.ModelProto`` or path (prepared here if it was not).
        table: ranges from :func:`compute_ranges` on the same model.
        exclude: node names to keep in float.
        op_types: which op types get Q/DQ (default: all four).
        per_channel: per-channel weight scales (False: one scale per weight tensor).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    bad_ops = sorted(set(op_types) - set(QUANTIZED_OPS))
    if bad_ops:
        raise CalibrationError(f"place_trt quantizes only {list(QUANTIZED_OPS)}, got op types {bad_ops}")
    prepared = prepared_for_table(model, table)
    excluded = check_exclude(prepared, exclude)
    g = prepared.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, int] = {}
    for node in g.node:
        for x in node.input:
            consumers[x] = consumers.get(x, 0) + 1

    made: dict[str, str] = {}  # float tensor -> its DequantizeLinear output
    new_inits: list[Any] = []
    pre_nodes: list[Any] = []  # weight DQs: no inputs but initializers, so they can go first
    out_nodes: list[Any] = []
    skipped: list[str] = []

    def act_qdq(x: str, emit: list) -> str | None:
        if x in made:
            return made[x]
        if x not in table:
            return None
        amax = table.amax(x)
        if amax == 0.0:
            return None
        scale, zp = f"{x}_scale", f"{x}_zero_point"
        new_inits.append(numpy_helper.from_array(np.array(amax / INT8_MAX, np.float32), scale))
        new_inits.append(numpy_helper.from_array(np.array(0, np.int8), zp))
        emit.append(helper.make_node("QuantizeLinear", [x, scale, zp], [f"{x}_quantized"], name=f"{x}_QuantizeLinear"))
        emit.append(helper.make_node("DequantizeLinear", [f"{x}_quantized", scale, zp], [f"{x}_dequantized"],
                                     name=f"{x}_DequantizeLinear"))
        made[x] = f"{x}_dequantized"
        return made[x]

    def weight_dq(w: str, axis: int | None) -> str:
        if w in made:
            return made[w]
        arr = numpy_helper.to_array(inits[w]).astype(np.float32)
        if axis is None or not per_channel:
            amax = np.array(np.abs(arr).max(), np.float32)
        else:
            amax = np.abs(np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)).max(axis=1).astype(np.float32)
        # An all-zero channel quantizes to 0 under any scale; 1.0 keeps the scale positive as TRT demands.
        scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
        bshape = [1] * arr.ndim
        if scale.ndim:
            bshape[axis] = -1  # type: ignore[index]
        q = np.clip(np.rint(arr / scale.reshape(bshape)), -INT8_MAX, INT8_MAX).astype(np.int8)
        names = (f"{w}_quantized", f"{w}_scale", f"{w}_zero_point")
        new_inits.append(numpy_helper.from_array(q, names[0]))
        new_inits.append(numpy_helper.from_array(scale, names[1]))
        new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8), names[2]))
        attrs = {"axis": axis} if scale.ndim else {}
        pre_nodes.append(helper.make_node("DequantizeLinear", list(names), [f"{w}_dequantized"], name=f"{w}_DequantizeLinear", **attrs))
        made[w] = f"{w}_dequantized"
        return made[w]

    for node in g.node:
        if node.op_type not in op_types or node.name in excluded or node.domain not in ("", "ai.onnx"):
            out_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        emit: list = []
        roles = _trt_inputs(node, inits, attrs)
        new_inputs = list(node.input)
        ok = True
        for idx, axis in roles:
            x = node.input[idx]
            if x in inits and inits[x].data_type == TensorProto.FLOAT:
                new_inputs[idx] = weight_dq(x, axis)
            else:
                dq = act_qdq(x, emit)
                if dq is None:
                    ok = False
                    break
                new_inputs[idx] = dq
        if not ok:
            skipped.append(node.name)
            out_nodes.append(node)
            continue
        out_nodes.extend(emit)
        del node.input[:]
        node.input.extend(new_inputs)
        out_nodes.append(node)
    if skipped:
        log.warning("kept %d node(s) in float (activation range missing or zero): %s", len(skipped), skipped[:8])

    del g.node[:]
    g.node.extend(pre_nodes + out_nodes)
    g.initializer.extend(new_inits)
    # Weights now live only as int8 copies; drop float originals nobody else reads.
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    set_placement_meta(prepared, "trt", table, excluded)
    try:
        onnx.checker.check_model(prepared)
    except Exception as e:  # a bug here, but say what broke
        raise ModelError(f"the TensorRT Q/DQ graph fails onnx.checker: {e}") from None
    return prepared


def _trt_inputs(node: Any, inits: dict, attrs: dict) -> list[tuple[int, int | None]]:
    """(input index, per-channel axis for a constant weight) pairs to quantize for one node."""
    def rank(name: str) -> int:
        return len(inits[name].dims) if name in inits else 0

    op = node.op_type
    if op == "Conv":
        return [(0, None), (1, 0)]
    if op == "ConvTranspose":
        # Weight [C_in, C_out / group, k...]: output channels are axis 1, but only group 1 makes
        # that axis span all outputs; grouped deconvs get one scale per tensor.
        return [(0, None), (1, 1 if attrs.get("group", 1) == 1 else None)]
    if op == "MatMul":
        b = node.input[1]
        return [(0, None), (1, rank(b) - 1 if rank(b) >= 2 else None)]
    if op == "Gemm":
        return [(0, None), (1, 0 if attrs.get("transB", 0) else 1)]
    return []


def set_placement_meta(model: Any, placement: str, table: CalibrationTable, excluded: set[str]) -> None:
    for k, v in (("vkt.qdq.placement", placement), ("vkt.qdq.table_sha256", table.sha256),
                 ("vkt.qdq.method", table.method), ("vkt.qdq.excluded", ",".join(sorted(excluded)))):
        model.metadata_props.add(key=k, value=v)


# ---- onnxruntime CPU ---------------------------------------------------------------------------
def place_ort(model: Any, table: CalibrationTable, exclude: Iterable[str] = (), *, per_channel: bool = True,
              keep_float_ops: Sequence[str] = ORT_FLOAT_OPS, ops: str = "all") -> Any:
    """Q/DQ that onnxruntime's CPU provider fuses into integer kernels; returns a new ``onnx.ModelProto``.

    Activations uint8 (asymmetric), weights int8 symmetric per-channel, int32 bias: on x86 with
    VNNI this turns DQ->Conv->Q into QLinearConv (signed activations leave many convs in float
    and run slower than FP32). Written by onnxruntime's ``quantize_static`` reading the table as
    its calibration cache, so no data is run again.

    Args:
        model: ``onnx.ModelProto`` or path (prepared here if it was not).
        table: ranges from :func:`compute_ranges` on the same model.
        exclude: node names to keep in float: they read the float tensors, not Q/DQ copies (a
            producer whose output an excluded node reads then stays float on ORT too).
        per_channel: per-channel weight scales (default True).
        keep_float_ops: op types never quantized (default: Softmax and the normalisations).
        ops: "all" (default): every op type onnxruntime has an integer kernel for (QLinearConv, QLinearMul,
            QLinearAdd, pooling, ...); "compute": only Conv/MatMul/Gemm quantized, with Q/DQ on their outputs
            too so they still fuse, and every op between them (elementwise, activations, ...) in float. Both
            first fold constant Mul/Add after a Conv into it (:func:`vkt.onnxgraph.fold_conv_affine`, exact). On PP-OCRv5
            mobile det (short side 736, every conv INT8) "compute" keeps held-out hmean vs FP32 at 0.91 where
            "all" gives 0.72 ("all" quantizes the hard-swish chains per tensor, losing the small channels);
            with the first convs in float (the gate's prefix) "all" is within 1 point and faster
            (benchmarks/results/textdet_int8_gate_fair_fp32.json).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if ops not in ORT_OPS:
        raise CalibrationError(f"ops must be one of {list(ORT_OPS)}, got {ops!r}")
    prepared = prepared_for_table(model, table)
    excluded = check_exclude(prepared, exclude)
    keep = set(keep_float_ops)
    prepared, folded = fold_conv_affine(prepared)  # exact; bundles from vkt export are folded already
    excluded -= set(folded)
    if ops == "compute":
        keep |= {n.op_type for n in prepared.graph.node} - set(ORT_COMPUTE_OPS)
    op_types = sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - keep)
    float_nodes = sorted(n.name for n in prepared.graph.node if n.op_type in keep)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[table.method]
    with tempfile.TemporaryDirectory(prefix="vkt-qdq-") as tmp:
        src, dst, cache = Path(tmp) / "prepared.onnx", Path(tmp) / "qdq.onnx", Path(tmp) / "ranges.json"
        onnx.save(prepared, str(src))
        save_tensors_data(table.to_ort(), cache)
        try:
            with quiet():
                quantize_static(
                    str(src), str(dst), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types, per_channel=per_channel, reduce_range=False,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=sorted(excluded | set(float_nodes)), calibrate_method=method,
                    calibration_cache_path=str(cache),
                    # Keeping Relu/Clip keeps every Q's input the true float tensor, which
                    # excluded nodes read (ORT's ReluQuantFusion still folds them when fusing).
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True,
                                   "QDQKeepRemovableActivations": True},
                )
        except Exception as e:
            raise CalibrationError(f"onnxruntime's quantize_static could not place Q/DQ: {type(e).__name__}: {str(e)[:400]}") from None
        out = onnx.load(str(dst))
    _float_inputs(out, excluded | set(float_nodes))
    if ops == "compute":
        _quantize_outputs(out, table, excluded)
    set_placement_meta(out, "ort", table, excluded)
    out.metadata_props.add(key="vkt.qdq.ops", value=ops)
    return out


def _quantize_outputs(model: Any, table: CalibrationTable, excluded: set[str]) -> None:
    """Q/DQ on the output of each quantized Conv/MatMul/Gemm that lacks one, so ORT fuses DQ -> op -> Q.

    A node counts as quantized when its first input is a DequantizeLinear output. Outputs that are
    graph outputs or have no range in the table stay float (the node then runs in float on ORT).
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    read_by = readers(g)
    graph_outputs = {o.name for o in g.output}
    params = {}
    for n in g.node:
        if n.op_type not in ORT_COMPUTE_OPS or n.name in excluded or not n.input:
            continue
        src = producer.get(n.input[0])
        if src is None or src.op_type != "DequantizeLinear":
            continue
        y = n.output[0]
        rd = read_by.get(y, [])
        if not rd or y in graph_outputs or y not in table or all(r.op_type == "QuantizeLinear" for r in rd):
            continue
        params[y] = ort_uint8_params(*table[y])
    insert_qdq(model, params)


def _float_inputs(model: Any, nodes: set[str]) -> None:
    """Make ``nodes`` read the float tensors again instead of Q->DQ copies of them.

    ``nodes_to_exclude`` alone does not keep a node in float on onnxruntime: a neighbour's Q/DQ on
    its input and output is enough for ORT's weight/bias quantization pass to turn DQ->Conv->Q into
    QLinearConv anyway. Without a DequantizeLinear input the pattern cannot match.
    """
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    for node in g.node:
        if node.name not in nodes:
            continue
        for i, x in enumerate(node.input):
            dq = prod.get(x)
            q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    # Drop Q/DQ pairs nobody reads any more (repeat: removing a DQ frees its Q).
    while True:
        used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)

