"""Tiny graphs and feeds for the calibration tests (built with onnx.helper; no downloads)."""

from __future__ import annotations

import numpy as np


def feeds(shapes=((1, 3, 16, 16), (1, 3, 24, 20), (1, 3, 32, 32)), seed: int = 0, name: str = "image"):
    """Random-normal feeds at mixed shapes (the profile allows them)."""
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(s).astype(np.float32)} for s in shapes]


def mul_relu_conv(opset: int = 17):
    """X [1, 2, H, W] -> Mul(2) -> m -> Relu -> r -> Conv(3x3, 4 out, bias) -> Y: ranges computable by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["X", "two"], ["m"], name="mul"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w", "b"], ["Y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(b, "b")]
    g = helper.make_graph(nodes, "mrc", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2, "h", "w"])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, "h", "w"])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def linear_layers():
    """X [2, 8] -> MatMul(W1 [8, 6]) -> Relu -> Gemm(W2 [5, 6], transB=1, bias) -> Relu ->
    Unsqueeze to [2, 5, 1, 1] -> ConvTranspose(W3 [5, 3, 2, 2]) -> Y [2, 3, 2, 2]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("W1", (8, 6)), ("W2", (5, 6)), ("B2", (5,)), ("W3", (5, 3, 2, 2)))]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h1"], name="matmul"),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "W2", "B2"], ["h2"], name="gemm", transB=1),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Unsqueeze", ["a2", "axes"], ["a4"], name="unsqueeze"),
        helper.make_node("ConvTranspose", ["a4", "W3"], ["Y"], name="deconv", strides=[2, 2]),
    ]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3, 2, 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def with_constant_weights(model, opset: int | None = None):
    """The same graph with every initializer moved into a Constant node (as some exporters write)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = [helper.make_node("Constant", [], [i.name], value=i, name=f"const_{i.name}") for i in m.graph.initializer]
    del m.graph.initializer[:]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    if opset is not None:
        m.opset_import[0].version = opset
    onnx.checker.check_model(m)
    return m


def run(model, feed):
    """Run a ModelProto on onnxruntime CPU (one thread: the machine is shared)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feed)


def trt_build(model, profile: dict | None = None) -> bytes:
    """Parse with TensorRT-RTX's ONNX parser (strongly typed) and build a plan for SM89; raise on failure."""
    import tensorrt_rtx as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    net = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(net, logger)
    if not parser.parse(model.SerializeToString()):
        raise AssertionError("; ".join(parser.get_error(i).desc() for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    if profile:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)
    plan = builder.build_serialized_network(net, config)
    assert plan is not None and plan.nbytes > 0, "TensorRT-RTX built no plan"
    return bytes(plan)


def affine_chain_net(seed: int = 3):
    """A PP-OCRv5-like block chain with dynamic H/W: X [1, 3, H, 16] ->
    Conv(3->8) -> Mul(scalar) -> Add(scalar) -> hard-swish (HardSigmoid, Mul) -> Mul(scalar) -> Add(scalar) ->
    depthwise Conv(8, 3x3, pad 1) -> Mul([1, 8, 1, 1]) -> Add([8, 1, 1]) -> Conv 1x1 (8->4) -> Mul([16], along W:
    must not fold) -> Y. Channel scales differ by ~100x, as PP-OCRv5's first block's do."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    spread = np.geomspace(0.05, 5.0, 8).astype(np.float32)
    arrays = {
        "w0": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None],
        "b0": rng.standard_normal(8).astype(np.float32) * 0.1,
        "a0": np.array([1.7], np.float32), "c0": np.array(0.2, np.float32),
        "a1": np.array(0.8, np.float32), "c1": np.array([-0.1], np.float32),
        "w1": rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "s1": rng.uniform(0.5, 2.0, (1, 8, 1, 1)).astype(np.float32), "t1": rng.standard_normal((8, 1, 1)).astype(np.float32),
        "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3, "b2": np.zeros(4, np.float32),
        "sw": rng.uniform(0.5, 1.5, 16).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["X", "w0", "b0"], ["y0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["y0", "a0"], ["m0"], name="lab0_mul"),
        helper.make_node("Add", ["c0", "m0"], ["l0"], name="lab0_add"),
        helper.make_node("HardSigmoid", ["l0"], ["hs0"], name="hsig0", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["l0", "hs0"], ["h0"], name="hswish0"),
        helper.make_node("Mul", ["a1", "h0"], ["m1"], name="act_mul"),
        helper.make_node("Add", ["m1", "c1"], ["x1"], name="act_add"),
        helper.make_node("Conv", ["x1", "w1", "b1"], ["y1"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Mul", ["y1", "s1"], ["m2"], name="ch_mul"),
        helper.make_node("Add", ["m2", "t1"], ["x2"], name="ch_add"),
        helper.make_node("Conv", ["x2", "w2", "b2"], ["y2"], name="pw"),
        helper.make_node("Mul", ["y2", "sw"], ["Y"], name="width_mul"),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in arrays.items()]
    g = helper.make_graph(nodes, "affine_chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, "h", 16])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, "h", 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m
