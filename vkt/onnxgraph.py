"""Exact float rewrites of ONNX graphs, shared by export (the FP32 graph it ships) and calibration (the graph it quantizes).

    constants_to_initializers(model)  Constant-node tensors become initializers (in place)
    prepare_model(model)              that, opset >= 13, onnxruntime's quant_pre_process, every node named
    fold_conv_affine(model)           constant Mul/Add/BatchNormalization after a Conv folded into it
    fuse_hardswish(model)             HardSigmoid(x) * x back to HardSwish(x), as the exporter wrote it
    split_hardswish(model)            the reverse: the graph calibration ranges and places Q/DQ on
    rewrite_fp32(model)               prepare_model, fold_conv_affine, fuse_hardswish: the float graph vkt
                                      ships and every Q/DQ placement starts from

Torch-free: onnx and onnxruntime's quantization tools are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import ModelError
from vkt.log import get_logger

log = get_logger(__name__)

MIN_OPSET = 13  # per-channel DequantizeLinear (axis attribute) arrived in opset 13
MAX_IR_VERSION = 10  # read by every onnxruntime >= 1.20 (vkt's floor)
PREPARED_KEY = "vkt.calibration.prepared"  # metadata_props marker: prepare_model() already ran


# ---- graph helpers -------------------------------------------------------------------------------
def constants_to_initializers(model: Any) -> int:
    """In place: every default-domain ``Constant`` node holding a tensor (``value``), scalars included,
    becomes an initializer of the same name; returns how many moved.

    Quantizers and TensorRT's refit see only initializers, and :func:`fold_conv_affine` folds a scalar
    Mul/Add only when its constant is one. The graph computes exactly what it did.
    """
    from onnx import numpy_helper

    g = model.graph
    keep = []
    for node in g.node:
        if (node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1
                and node.attribute[0].name == "value"):
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0]))
        else:
            keep.append(node)
    moved = len(g.node) - len(keep)
    if moved:
        del g.node[:]
        g.node.extend(keep)
    return moved


def readers(graph: Any) -> dict[str, list[Any]]:
    """Tensor name -> the nodes that read it, in graph order."""
    out: dict[str, list[Any]] = {}
    for n in graph.node:
        for x in n.input:
            out.setdefault(x, []).append(n)
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """onnxruntime's quantization tools print() statistics and log warnings; keep them out of the user's console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


# ---- preparation ---------------------------------------------------------------------------------
def is_prepared(model: Any) -> bool:
    return any(p.key == PREPARED_KEY for p in model.metadata_props)


def prepare_model(model: Any) -> Any:
    """The graph calibration and placement work on (returns a new ``onnx.ModelProto``).

    1. weights held by ``Constant`` nodes become initializers (:func:`constants_to_initializers`);
    2. opsets below 13 are converted to 13 (per-channel DequantizeLinear needs ``axis``);
    3. onnxruntime's ``quant_pre_process`` infers shapes (``auto_merge=True``: dynamic axes named
       differently by producers would otherwise stop symbolic inference) and folds BN/constants;
    4. unnamed nodes get unique names (placements keep nodes in float by name).

    ``model``: an ``onnx.ModelProto`` or a path. Idempotent: a prepared model carries a metadata marker
    and is returned unchanged (copied).
    """
    import onnx

    model = _as_model(model)
    if is_prepared(model):
        return _copy(model)
    model = _copy(model)
    moved = constants_to_initializers(model)
    if moved:
        log.debug("lifted %d Constant nodes to initializers", moved)
    if model.ir_version > MAX_IR_VERSION:
        # onnx writes the newest IR version by default, which onnxruntime may not read yet; the
        # opsets in use decide what the graph needs.
        model.ir_version = max(MAX_IR_VERSION, onnx.helper.find_min_ir_version_for(list(model.opset_import), True))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError("the ONNX model imports no default-domain opset; cannot quantize it")
    if opset < MIN_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:
            raise ModelError(f"cannot convert the model from opset {opset} to {MIN_OPSET} for per-channel Q/DQ: {e}") from None
        log.info("converted the model from opset %d to %d (per-channel DequantizeLinear needs 13)", opset, MIN_OPSET)
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="vkt-prep-") as tmp:
        out = Path(tmp) / "prepared.onnx"
        try:
            with quiet():
                quant_pre_process(model, out, auto_merge=True, skip_symbolic_shape=False)
        except Exception as e:
            raise ModelError(f"onnxruntime's quant_pre_process failed on the model: {type(e).__name__}: {str(e)[:400]}") from None
        model = onnx.load(str(out))
    _name_nodes(model)
    model.metadata_props.add(key=PREPARED_KEY, value="1")
    return model


def _name_nodes(model: Any) -> None:
    """Give unnamed nodes unique names (``{op}.vkt{i}``): placements keep nodes in float by name, and
    exporters leave some unnamed (PP-OCRv5's 24 HardSwish = HardSigmoid + Mul, its largest INT8 error)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}.vkt{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)


def _as_model(model: Any) -> Any:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        from vkt.onnxio import load_onnx

        return load_onnx(model)
    raise ModelError(f"expected an onnx.ModelProto or a path to an .onnx file, got {type(model).__name__}")


def _copy(model: Any) -> Any:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


# ---- folding -------------------------------------------------------------------------------------
def rewrite_fp32(model: Any) -> Any:
    """The float graph every placement starts from: :func:`prepare_model`, :func:`fold_conv_affine` and
    :func:`fuse_hardswish` (all exact). Idempotent; ``vkt export`` ships it as the FP32 graph, so INT8 is timed
    against the same float graph. A bundle written before HardSwish was fused gets it here too."""
    return fuse_hardswish(fold_conv_affine(prepare_model(model))[0])[0]


def fuse_hardswish(model: Any) -> tuple[Any, list[str]]:
    """``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))`` -> ``HardSwish(x)`` in place; returns (model, names of the
    Mul nodes rewritten).

    The same function (ONNX defines HardSwish as that product). onnxruntime's ``quant_pre_process`` splits
    HardSwish so, and OpenVINO's CPU plugin then runs the split pair as reference kernels between layout reorders
    instead of fusing HardSwish into the convolution before it (PP-OCRv5 mobile det's FP32 at 0.6-0.9x the speed).
    The HardSwish node takes the Mul's name and output, so a calibration table of the split graph still has its
    range. Graphs below opset 14 (no HardSwish) are left as they are.
    """
    from onnx import helper

    if not any(o.domain in ("", "ai.onnx") and o.version >= 14 for o in model.opset_import):
        return model, []
    g = model.graph
    read_by = readers(g)
    graph_outputs = {o.name for o in g.output}
    dropped, fused = set(), []
    for i, n in enumerate(g.node):
        if n.op_type != "HardSigmoid" or n.domain not in ("", "ai.onnx") or n.output[0] in graph_outputs:
            continue
        attrs = {a.name: a.f for a in n.attribute}
        rd = read_by.get(n.output[0], [])
        if (abs(attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(attrs.get("beta", 0.5) - 0.5) > 1e-6 or len(rd) != 1
                or rd[0].op_type != "Mul" or sorted(rd[0].input) != sorted([n.input[0], n.output[0]])):
            continue
        mul = rd[0]
        mul.CopyFrom(helper.make_node("HardSwish", [n.input[0]], [mul.output[0]], name=mul.name))
        dropped.add(i)
        fused.append(mul.name)
    if dropped:
        nodes = [n for i, n in enumerate(g.node) if i not in dropped]
        del g.node[:]
        g.node.extend(nodes)
    return model, fused


def fold_conv_affine(model: Any) -> tuple[Any, list[str]]:
    """Fold constant Mul/Add that follow a Conv into its weights and bias (exact); returns (new model, folded node names).

    A Conv (or ungrouped ConvTranspose) whose only reader is ``Mul(y, c)`` or ``Add(y, c)`` with ``c`` a constant
    scalar or per-output-channel tensor, or an inference ``BatchNormalization`` with constant parameters, is
    rewritten as one node (weights * scale, bias * scale + shift), repeatedly, so PP-OCRv5's
    ``Conv -> Mul(scale) -> Add(bias)`` learnable-affine blocks become one Conv and its head's
    ``ConvTranspose -> Add(bias) -> BatchNormalization`` one ConvTranspose (onnxruntime fuses neither). The node
    keeps its name and takes the last folded node's output name, so a calibration table of the unfolded graph
    still has its range.
    """
    from onnx import numpy_helper

    m = _copy(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    read_by = readers(g)
    folded: list[str] = []
    for conv in [n for n in g.node if n.op_type in ("Conv", "ConvTranspose")]:
        if len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        transposed = conv.op_type == "ConvTranspose"
        if transposed and any(a.name == "group" and a.i != 1 for a in conv.attribute):
            continue  # grouped ConvTranspose: output channels span two weight axes
        while True:
            y = conv.output[0]
            rd = read_by.get(y, [])
            if y in graph_outputs or len(rd) != 1 or not rd[0].name:
                break
            op = rd[0]
            w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
            cout = w.shape[1] if transposed else w.shape[0]
            scale_shift = _affine_of(op, y, inits, cout, w.ndim - 2)
            if scale_shift is None:
                break
            scale, shift = scale_shift
            b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(cout)
            w = w * scale.reshape((1, -1) + (1,) * (w.ndim - 2) if transposed else (-1,) + (1,) * (w.ndim - 1))
            b = b * scale + shift
            wn, bn = f"{conv.name}_vkt_w{len(folded)}", f"{conv.name}_vkt_b{len(folded)}"
            g.initializer.extend([numpy_helper.from_array(w.astype(np.float32), wn), numpy_helper.from_array(b.astype(np.float32), bn)])
            inits[wn], inits[bn] = g.initializer[-2], g.initializer[-1]
            del conv.input[1:]
            conv.input.extend([wn, bn])
            conv.output[0] = op.output[0]
            folded.append(op.name)
    gone = set(folded)
    nodes = [n for n in g.node if n.name not in gone]
    del g.node[:]
    g.node.extend(nodes)
    used = {x for n in g.node for x in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return m, folded


def _affine_of(op: Any, y: str, inits: Mapping[str, Any], cout: int, spatial: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per output channel when ``op`` reading ``y`` is ``y * scale + shift`` with constants (Mul,
    Add, inference BatchNormalization), else None."""
    from onnx import numpy_helper

    if op.op_type in ("Mul", "Add"):
        if len(op.input) != 2 or op.input[0] == op.input[1]:
            return None
        other = op.input[1] if op.input[0] == y else op.input[0]
        if other not in inits:
            return None
        c = numpy_helper.to_array(inits[other]).astype(np.float64)
        if c.size == 1:
            c = np.full(cout, float(c.reshape(-1)[0]))
        elif c.size == cout and c.ndim >= spatial + 1 and c.shape[-(spatial + 1)] == cout:
            c = c.reshape(cout)  # broadcasts on the channel axis, -(spatial + 1)
        else:
            return None
        return (c, np.zeros(cout)) if op.op_type == "Mul" else (np.ones(cout), c)
    if op.op_type == "BatchNormalization" and len(op.input) == 5 and op.input[0] == y and len(op.output) == 1:
        if any(a.name == "training_mode" and a.i for a in op.attribute) or not all(x in inits for x in op.input[1:]):
            return None
        gamma, beta, mean, var = (numpy_helper.to_array(inits[x]).astype(np.float64).reshape(-1) for x in op.input[1:])
        if gamma.size != cout:
            return None
        eps = next((a.f for a in op.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        return scale, beta - mean * scale
    return None


def split_hardswish(model: Any) -> tuple[Any, list[str]]:
    """``HardSwish(x)`` -> ``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))`` in place, as onnxruntime's
    ``quant_pre_process`` writes it (the same function); returns (model, names of the HardSwish nodes split).

    The graph calibration works on: the ort and trt placements quantize the two halves, so the table needs the
    HardSigmoid's range (the openvino placement fuses them again). The Mul takes the HardSwish's name and output.
    """
    from onnx import helper

    g = model.graph
    nodes, split = [], []
    for n in g.node:
        if n.op_type != "HardSwish" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        h = f"{n.output[0]}_vkt_hsig"
        nodes += [helper.make_node("HardSigmoid", [n.input[0]], [h], name=f"{n.name}_vkt_hsig", alpha=1 / 6, beta=0.5),
                  helper.make_node("Mul", [n.input[0], h], [n.output[0]], name=n.name)]
        split.append(n.name)
    if split:
        del g.node[:]
        g.node.extend(nodes)
    return model, split
