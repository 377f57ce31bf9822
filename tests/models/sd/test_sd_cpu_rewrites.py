"""The exact CPU rewrites of SD graphs (vkt.models.sd.cpu_rewrites) against numpy references on small graphs.

References are written independently of the rewrite: up-sampling by ``np.repeat`` and a direct 3x3 conv
(sum over the nine shifted windows), attention as softmax(q k^T / sqrt(d)) v per head. Tolerances: the
rewrites only reorder float32 sums (the 2x2 kernels are sums of 3x3 taps), so outputs agree to ~1e-6 of
their magnitude; a wrong phase, pad or tap mapping moves them by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from vkt.models.sd.cpu_rewrites import self_attention_to_mha, subpixel_upsample_convs


def _model(nodes, inputs, inits, opsets=(("", 17),)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    m.ir_version = 8
    return m


def _run(m, feed):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _conv3x3(x, w, b):
    """Direct conv, stride 1, zero pad 1: x [N, C, H, W], w [M, C, 3, 3] -> [N, M, H, W] (float64)."""
    n, _, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, w.shape[0], h, wd)) + b[None, :, None, None]
    for dy in range(3):
        for dx in range(3):
            y += np.einsum("nchw,mc->nmhw", xp[:, :, dy:dy + h, dx:dx + wd], w[:, :, dy, dx])
    return y


def _upsample_conv_model(w, b, shape, coord=b"asymmetric", mode=b"nearest", strides=(1, 1), extra_consumer=False):
    nodes = [helper.make_node("Constant", [], ["scales"], value=numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32))),
             helper.make_node("Resize", ["x", "", "scales"], ["u"], mode=mode.decode(), nearest_mode="floor",
                              coordinate_transformation_mode=coord.decode()),
             helper.make_node("Conv", ["u", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=list(strides))]
    if extra_consumer:
        nodes += [helper.make_node("ReduceMean", ["u"], ["m"], axes=[1, 2, 3], keepdims=1),
                  helper.make_node("Add", ["c", "m"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"]))
    return _model(nodes, [("x", shape)], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])


@pytest.mark.parametrize("n, c, m, h, wd", [(1, 5, 7, 6, 4), (2, 16, 8, 5, 7)])
def test_subpixel_upsample_conv_matches_direct_conv(n, c, m, h, wd):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    want = _conv3x3(x.repeat(2, axis=2).repeat(2, axis=3), w, b)
    model = _upsample_conv_model(w, b, list(x.shape))
    assert np.abs(_run(model, {"x": x}) - want).max() < 1e-4 * np.abs(want).max()  # the plain graph agrees with numpy
    assert subpixel_upsample_convs(model) == 1
    ops = [nd.op_type for nd in model.graph.node]
    assert "Resize" not in ops and ops.count("Conv") == 4 and "DepthToSpace" in ops
    # the 3x3 kernel and the scales' Constant are gone; four 2x2 kernels are new
    assert {t.name for t in model.graph.initializer} == {"b"} | {f"c/subpixel_w{i}{j}" for i in (0, 1) for j in (0, 1)}
    assert all(nd.op_type != "Constant" for nd in model.graph.node)
    got = _run(model, {"x": x})
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("kw", [{"coord": b"half_pixel"}, {"mode": b"linear"}, {"strides": (2, 2)},
                                {"extra_consumer": True}])
def test_subpixel_leaves_other_patterns(kw):
    """Half-pixel or linear up-sampling, strided convs and up-sampled tensors read twice are not the pattern."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = _upsample_conv_model(w, np.zeros(4, np.float32), [1, 3, 4, 4], **kw)
    before = model.SerializeToString()
    assert subpixel_upsample_convs(model) == 0
    assert model.SerializeToString() == before


def _attention_ref(x, wqkv, bqkv, heads):
    """softmax(q k^T / sqrt(d)) v per head; x [B, S, E], wqkv [E, 3E] -> [B, S, E] (float64)."""
    qkv = x.astype(np.float64) @ wqkv + bqkv
    b, s, e3 = qkv.shape
    e = e3 // 3
    q, k, v = (qkv[..., i * e:(i + 1) * e].reshape(b, s, heads, e // heads).transpose(0, 2, 1, 3) for i in range(3))
    p = q @ k.transpose(0, 1, 3, 2) / np.sqrt(e // heads)
    p = np.exp(p - p.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(b, s, e)


@pytest.mark.parametrize("nonzero_bias", [False, True])
def test_self_attention_to_mha_matches_reference(nonzero_bias):
    rng = np.random.default_rng(2)
    B, S, E, heads = 2, 9, 16, 2
    x = rng.standard_normal((B, S, E)).astype(np.float32)
    w = (rng.standard_normal((E, 3 * E)) * E ** -0.5).astype(np.float32)
    bias = (rng.standard_normal(3 * E) if nonzero_bias else np.zeros(3 * E)).astype(np.float32)
    ctx = rng.standard_normal((B, 4, E)).astype(np.float32)
    zero = np.zeros(3 * E, np.float32)
    # self-attention as onnxruntime.transformers writes it, plus a cross-attention MHA with its all-zero bias
    nodes = [helper.make_node("Attention", ["x", "w", "b"], ["a"], domain="com.microsoft", num_heads=heads),
             helper.make_node("MultiHeadAttention", ["a", "ctx", "ctx", "zb"], ["y"], domain="com.microsoft", num_heads=heads)]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b"), numpy_helper.from_array(zero, "zb")]
    model = _model(nodes, [("x", [B, S, E]), ("ctx", [B, 4, E])], inits, opsets=(("", 17), ("com.microsoft", 1)))
    a = _attention_ref(x, w, bias, heads)
    # cross-attention reference: the same maths with q = a, k = v = ctx and no projections
    qh = a.reshape(B, S, heads, E // heads).transpose(0, 2, 1, 3)
    kh = ctx.astype(np.float64).reshape(B, 4, heads, E // heads).transpose(0, 2, 1, 3)
    p = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(E // heads)
    p = np.exp(p - p.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p @ kh).transpose(0, 2, 1, 3).reshape(B, S, E)
    feed = {"x": x, "ctx": ctx}
    assert np.abs(_run(model, feed) - want).max() < 1e-5 * np.abs(want).max()

    assert self_attention_to_mha(model) == 1
    ops = [nd.op_type for nd in model.graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "Attention" not in ops
    mha = [nd for nd in model.graph.node if nd.op_type == "MultiHeadAttention"]
    assert [len(nd.input) for nd in mha] == [4 if nonzero_bias else 3, 3]  # zero biases dropped, real ones kept
    assert "zb" not in {t.name for t in model.graph.initializer}
    got = _run(model, feed)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
