"""Exact rewrites that make SD graphs cheaper on onnxruntime CPU: the same maths with fewer FLOPs or a faster kernel.

- ``subpixel_upsample_convs``: nearest x2 up-sampling followed by a 3x3 conv (every UNet and VAE up-sampler)
  becomes four 2x2 convs on the low-resolution input, one per output phase, interleaved by DepthToSpace.
  Output pixel (2a+i, 2b+j) of conv3x3(upsample(x)) reads only 2x2 distinct input pixels (rows a-1+i, a+i;
  columns b-1+j, b+j), each weighted by a sum of 3x3 taps; so 16 instead of 36 multiply-adds per low-resolution
  pixel and channel pair (2.25x fewer), and the 4x up-sampled tensor is never written. Summing taps changes
  float rounding only (~1e-7 relative).
- ``self_attention_to_mha``: onnxruntime.transformers writes UNet self-attention as com.microsoft ``Attention``
  (packed QKV weights), whose CPU kernel materialises the S x S probabilities per head (4096 x 4096 at 512 px);
  ``MatMul`` + ``Split`` + ``MultiHeadAttention`` computes the same projections and runs onnxruntime's CPU
  flash-attention kernel. All-zero attention biases (the fusion adds them to every MultiHeadAttention) are
  dropped on the way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Output phase i (row or column parity) of conv3x3(upsample2x(x)): which 3x3 taps fall on input offset 0 and 1
# of the 2-tap window that starts at a-1+i.
_PHASE_TAPS = {0: ([0], [1, 2]), 1: ([0, 1], [2])}


class _Graph:
    """Node/initializer lookups over a GraphProto, for small in-place rewrites."""

    def __init__(self, graph: Any, base_dir: Path | None) -> None:
        self.g, self.base_dir = graph, base_dir
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output (external data read from ``base_dir``), else None."""
        from onnx import helper, numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name], base_dir=str(self.base_dir or ""))
        n = self.producer.get(name)
        if n is not None and n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(helper.get_attribute_value(a))
        return None

    def only_consumer(self, name: str) -> Any | None:
        c = self.consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in self.outputs else None

    def unused(self, names: set[str]) -> set[str]:
        used = {i for n in self.g.node for i in n.input} | self.outputs
        return names - used

    def drop_unused(self, names: set[str]) -> None:
        """Remove initializers and Constant nodes among ``names`` that nothing reads any more."""
        dead = self.unused(names)
        keep_inits = [t for t in self.g.initializer if t.name not in dead]
        del self.g.initializer[:]
        self.g.initializer.extend(keep_inits)
        keep_nodes = [n for n in self.g.node if not (n.op_type == "Constant" and n.output[0] in dead)]
        del self.g.node[:]
        self.g.node.extend(keep_nodes)


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _is_nearest_x2(g: _Graph, node: Any) -> bool:
    """Resize that repeats each pixel 2x2: nearest, asymmetric coordinates, scales [1, 1, 2, 2]."""
    if node.op_type != "Resize" or node.domain not in ("", "ai.onnx") or len(node.input) < 3:
        return False
    a = _attrs(node)
    if a.get("mode", b"nearest") != b"nearest" or a.get("coordinate_transformation_mode", b"half_pixel") != b"asymmetric":
        return False
    if a.get("nearest_mode", b"round_prefer_floor") not in (b"floor", b"round_prefer_floor"):
        return False  # at exact x2 / asymmetric both pick input pixel floor(o / 2); the others do not
    if len(node.input) > 3 and node.input[3]:
        return False  # sizes instead of scales
    scales = g.const(node.input[2])
    return scales is not None and scales.shape == (4,) and np.array_equal(scales, [1, 1, 2, 2])


def _is_plain_conv3x3(g: _Graph, node: Any) -> bool:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[1] not in g.inits:
        return False
    a = _attrs(node)
    w = g.inits[node.input[1]]
    return (list(w.dims[2:]) == [3, 3] and a.get("group", 1) == 1 and list(a.get("strides", [1, 1])) == [1, 1]
            and list(a.get("dilations", [1, 1])) == [1, 1] and list(a.get("pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
            and a.get("auto_pad", b"NOTSET") == b"NOTSET")


def subpixel_kernels(w: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """3x3 kernel ``w`` [M, C, 3, 3] -> {(i, j): 2x2 kernel [M, C, 2, 2]} for output phase (i, j), summed in float64."""
    w64 = w.astype(np.float64)
    out = {}
    for i in (0, 1):
        for j in (0, 1):
            k = np.empty(w.shape[:2] + (2, 2))
            for r, rows in enumerate(_PHASE_TAPS[i]):
                for c, cols in enumerate(_PHASE_TAPS[j]):
                    k[:, :, r, c] = w64[:, :, rows][:, :, :, cols].sum(axis=(2, 3))
            out[(i, j)] = k.astype(w.dtype)
    return out


def subpixel_upsample_convs(model: Any, base_dir: str | Path | None = None) -> int:
    """Rewrite every Resize(nearest x2) -> Conv3x3(pad 1) pair in ``model`` (in place); returns how many.

    ``base_dir``: where the model's external-data files are (to read the conv weights); the new 2x2
    kernels are written inline.
    """
    from onnx import helper, numpy_helper

    g = _Graph(model.graph, Path(base_dir) if base_dir else None)
    done, old_names = 0, set()
    new_nodes = []
    pairs = {}
    for n in model.graph.node:
        if _is_nearest_x2(g, n):
            conv = g.only_consumer(n.output[0])
            if conv is not None and conv.input[0] == n.output[0] and _is_plain_conv3x3(g, conv):
                pairs[id(conv)] = n
    skip = {id(r) for r in pairs.values()}
    for n in model.graph.node:
        if id(n) in skip:
            continue
        resize = pairs.get(id(n))
        if resize is None:
            new_nodes.append(n)
            continue
        w = g.const(n.input[1])
        bias = [n.input[2]] if len(n.input) > 2 and n.input[2] else []
        base = n.name or n.output[0]
        phases = []
        for (i, j), k in subpixel_kernels(w).items():
            kname = f"{base}/subpixel_w{i}{j}"
            model.graph.initializer.append(numpy_helper.from_array(k, kname))
            out = f"{base}/subpixel_{i}{j}"
            # window rows a-1+i, a+i: pad top 1-i, bottom i (likewise for columns)
            new_nodes.append(helper.make_node("Conv", [resize.input[0], kname, *bias], [out], name=out,
                                              kernel_shape=[2, 2], pads=[1 - i, 1 - j, i, j]))
            phases.append(out)
        cat = f"{base}/subpixel_phases"
        new_nodes.append(helper.make_node("Concat", phases, [cat], name=cat, axis=1))
        # DCR: channel (2i + j) * M + m goes to output pixel (2a + i, 2b + j) of channel m
        new_nodes.append(helper.make_node("DepthToSpace", [cat], [n.output[0]], name=f"{base}/subpixel_interleave",
                                          blocksize=2, mode="DCR"))
        old_names.update([n.input[1], resize.input[2]])
        done += 1
    if done:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        g.drop_unused(old_names)
    return done


def self_attention_to_mha(model: Any) -> int:
    """Replace com.microsoft Attention(x, W_qkv, b_qkv) by MatMul + Split + MultiHeadAttention (in place); drop
    all-zero MultiHeadAttention biases. Returns how many Attention nodes were replaced."""
    from onnx import helper, numpy_helper

    g = _Graph(model.graph, None)
    done, old_names = 0, set()
    new_nodes = []
    for n in model.graph.node:
        if n.op_type == "MultiHeadAttention" and n.domain == "com.microsoft" and len(n.input) > 3 and n.input[3]:
            b = g.const(n.input[3])
            if b is not None and not np.any(b):
                old_names.add(n.input[3])
                ins = list(n.input)
                ins[3] = ""
                while ins and not ins[-1]:
                    ins.pop()
                del n.input[:]
                n.input.extend(ins)
        a = _attrs(n)
        if not (n.op_type == "Attention" and n.domain == "com.microsoft" and len([i for i in n.input if i]) in (2, 3)
                and len(n.input) <= 3 and set(a) <= {"num_heads"} and len(n.output) == 1 and n.input[1] in g.inits):
            new_nodes.append(n)
            continue
        w = g.inits[n.input[1]]
        if len(w.dims) != 2 or w.dims[1] % 3:
            new_nodes.append(n)
            continue
        e = int(w.dims[1]) // 3
        bias = g.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        base = n.name or n.output[0]
        qkv, split = f"{base}/qkv", f"{base}/qkv_split"
        model.graph.initializer.append(numpy_helper.from_array(np.array([e, e, e], np.int64), split))
        q, k, v = (f"{base}/{s}" for s in "qkv")
        new_nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1]], [qkv], name=qkv))
        new_nodes.append(helper.make_node("Split", [qkv, split], [q, k, v], name=f"{base}/split", axis=-1))
        ins = [q, k, v] + ([n.input[2]] if bias is not None and np.any(bias) else [])
        new_nodes.append(helper.make_node("MultiHeadAttention", ins, list(n.output), name=base, domain="com.microsoft",
                                          num_heads=int(a["num_heads"])))
        if len(n.input) > 2 and n.input[2] and not ins[3:]:
            old_names.add(n.input[2])
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    g.drop_unused(old_names)
    return done


__all__ = ["self_attention_to_mha", "subpixel_kernels", "subpixel_upsample_convs"]
