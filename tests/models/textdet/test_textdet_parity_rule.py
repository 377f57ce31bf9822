"""The export parity rule for steep models: ONNX as far from the float64 truth as torch float32 is = exported right."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from vkt.models.textdet.export import _beyond_float32_rounding, textdet_spec  # noqa: E402


class Steep(torch.nn.Module):
    """conv -> BatchNorm -> relu -> conv -> sigmoid, where the BatchNorm subtracts a large mean and divides by a
    tiny std when ``offset`` is set (what a few steps from scratch leave behind): the float32 rounding of
    the first conv's output (~1e-3 at 1e4) is multiplied by 1e3 and shows in the map."""

    def __init__(self, offset: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.b = torch.nn.Conv2d(16, 1, 3, padding=1)
        with torch.no_grad():
            self.a.weight.copy_(torch.randn(self.a.weight.shape, generator=g) * 1e-3)
            self.a.bias.fill_(offset)
            self.bn.running_mean.fill_(offset)
            self.bn.running_var.fill_(1e-6 if offset else 1e-6 + 1.0)
            self.b.weight.copy_(torch.randn(self.b.weight.shape, generator=g) * 0.1)
            self.b.bias.zero_()

    def forward(self, x):
        return torch.sigmoid(self.b(torch.relu(self.bn(self.a(x)))))


def _export(module, path):
    spec = textdet_spec()
    torch.onnx.export(module, (torch.zeros(1, 3, 32, 32),), str(path), input_names=spec.input_names,
                      output_names=spec.output_names, opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    m.ir_version = 8
    onnx.save(m, str(path))
    return spec


def test_faithful_graph_of_a_steep_model_passes_and_a_different_graph_fails(tmp_path):
    steep = Steep(offset=1e4).eval()
    spec = _export(steep, tmp_path / "steep.onnx")
    shape = (1, 3, 32, 32)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32))
    with torch.no_grad():
        e32 = (steep(x).double() - Steep(offset=1e4).double().eval()(x.double())).abs().max().item()
    assert e32 > 1e-4  # steep enough that plain atol parity would reject even torch against itself
    # the same maths: no shape flagged, whatever the float32 noise
    assert _beyond_float32_rounding(steep, tmp_path / "steep.onnx", [shape], spec, atol=1e-4) == {}
    # a graph of other weights (an export fault): flagged with its error vs float64
    other = Steep(offset=1e4, seed=1).eval()
    bad = _beyond_float32_rounding(other, tmp_path / "steep.onnx", [shape], spec, atol=1e-4)
    assert set(bad) == {"1x3x32x32"} and bad["1x3x32x32"] > 0.1


def test_tame_model_needs_to_be_within_atol(tmp_path):
    tame = Steep(offset=0.0).eval()
    spec = _export(tame, tmp_path / "tame.onnx")
    with torch.no_grad():
        tame.b.bias.add_(1e-3)  # a small real difference is not hidden behind float32 noise (~1e-7 here)
    bad = _beyond_float32_rounding(tame, tmp_path / "tame.onnx", [(1, 3, 32, 32)], spec, atol=1e-4)
    assert set(bad) == {"1x3x32x32"}
    assert np.isclose(bad["1x3x32x32"], 2.5e-4, rtol=0.2)  # sigmoid'(~0) * 1e-3
