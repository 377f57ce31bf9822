"""Fake quantization of a torch module's convs exactly as onnxruntime's CPU placement quantizes them (for QAT).

Inputs uint8 asymmetric per tensor, scale and zero point from the calibration range as onnxruntime derives
them (range widened to include 0, (max - min) / 255); weights int8 symmetric per output channel (amax / 127,
recomputed every step). torch is imported inside the functions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vkt.calibration.qdq import ort_uint8_params
from vkt.errors import ModelError

UINT8_MAX, INT8_MAX = 255, 127


def _make_qconv_class() -> type:
    import torch
    import torch.nn.functional as F

    class QConv(torch.nn.Module):
        """A conv whose input (uint8 per tensor) and weight (int8 per channel) pass through fake quantization."""

        def __init__(self, conv: torch.nn.Module, lo: float, hi: float):
            super().__init__()
            self.conv = conv
            scale, zp = (v.item() for v in ort_uint8_params(lo, hi))  # float32 scale, as the Q/DQ graph stores it
            self.register_buffer("in_range", torch.tensor([lo, hi], dtype=torch.float64))
            self.in_scale, self.in_zp = scale, zp
            self.enabled = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c = self.conv
            if not self.enabled:
                return c(x)
            x = torch.fake_quantize_per_tensor_affine(x, self.in_scale, self.in_zp, 0, UINT8_MAX)
            axis = 1 if isinstance(c, torch.nn.ConvTranspose2d) else 0
            w = c.weight
            amax = w.detach().abs().transpose(0, axis).reshape(w.shape[axis], -1).amax(dim=1)
            scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax)).float()
            wq = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), axis,
                                                        -INT8_MAX, INT8_MAX)
            if isinstance(c, torch.nn.ConvTranspose2d):
                return F.conv_transpose2d(x, wq, c.bias, c.stride, c.padding, c.output_padding, c.groups, c.dilation)
            return F.conv2d(x, wq, c.bias, c.stride, c.padding, c.dilation, c.groups)

    return QConv


def conv_modules(model: Any) -> list[tuple[str, Any]]:
    """(qualified name, module) of every Conv2d / ConvTranspose2d in forward call order (one traced call)."""
    import torch

    order: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(names[id(mod)]))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    mods = dict(model.named_modules())
    seen: list[str] = []
    for n in order:
        if n not in seen:
            seen.append(n)
    return [(n, mods[n]) for n in seen]


def match_onnx_convs(convs: Sequence[tuple[str, Any]], onnx_model: Any) -> dict[str, str]:
    """Module name -> input activation tensor of its ONNX Conv/ConvTranspose node.

    Matched in order among nodes whose weight has the same shape, choosing the largest |cosine|
    between weights (onnxruntime may fold a following scalar Mul into the conv, so values can
    differ by a factor). Raises ModelError when a conv finds no node.
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx_model.graph.initializer}
    nodes = [n for n in onnx_model.graph.node if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1
             and n.input[1] in inits]
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float64).ravel() for n in nodes}
    used: set[str] = set()
    out: dict[str, str] = {}
    for name, mod in convs:
        w = mod.weight.detach().double().numpy().ravel()
        shape = tuple(mod.weight.shape)
        cands = [n for n in nodes if n.name not in used and tuple(inits[n.input[1]].dims) == shape]
        if not cands:
            raise ModelError(f"conv {name!r} (weight {shape}) has no matching Conv node in the exported graph")
        best = max(cands, key=lambda n: abs(float(np.dot(w, weights[n.name]))) /
                   (np.linalg.norm(w) * np.linalg.norm(weights[n.name]) + 1e-30))
        used.add(best.name)
        out[name] = best.input[0]
    return out


def wrap_convs(model: Any, ranges: Mapping[str, tuple[float, float]]) -> Any:
    """Replace each named conv (``ranges``: module name -> input (lo, hi)) by a fake-quantizing QConv, in place."""
    qconv = _make_qconv_class()
    mods = dict(model.named_modules())
    for name, (lo, hi) in ranges.items():
        parent_name, _, attr = name.rpartition(".")
        parent = mods[parent_name] if parent_name else model
        setattr(parent, attr, qconv(mods[name], lo, hi))
    return model


def unwrap_convs(model: Any) -> Any:
    """A copy of ``model`` with every QConv replaced by its plain conv (for export)."""
    out = copy.deepcopy(model)
    for parent in list(out.modules()):
        for attr, child in list(parent.named_children()):
            if type(child).__name__ == "QConv":
                setattr(parent, attr, child.conv)
    return out
