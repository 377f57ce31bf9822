"""Tiny ONNX models built with onnx.helper (no torch): for demos, benches and tests."""

from __future__ import annotations

import numpy as np

from vkt.specs import ExportSpec, Profile, TensorSpec


def toy_convnet_spec(channels: int = 3, classes: int = 8) -> ExportSpec:
    return ExportSpec(
        inputs=(TensorSpec("image", "float32", ("batch", channels, "height", "width")),),
        outputs=(TensorSpec("features", "float32", ("batch", classes, "height", "width")),),
        profiles=(Profile({"batch": (1, 1, 8), "height": (16, 64, 256), "width": (16, 64, 256)}),),
        opset=17,
    )


def toy_convnet(channels: int = 3, width: int = 16, classes: int = 8, depth: int = 2, seed: int = 0):
    """Conv-BN-free ReLU stack with a residual Add and a sigmoid head; dynamic batch/height/width.

    Returns ``(onnx.ModelProto, ExportSpec)``. Same-padded 3x3 convs keep the spatial size, so the
    output has shape ``[batch, classes, height, width]``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    spec = toy_convnet_spec(channels, classes)
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, name: str, k: int = 3) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.out"], name=name,
                                      pads=[k // 2] * 4, kernel_shape=[k, k]))
        return f"{name}.out"

    def relu(x: str, name: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [f"{name}.out"], name=name))
        return f"{name}.out"

    h = relu(conv("image", channels, width, "stem"), "stem_relu")
    for i in range(depth):
        y = relu(conv(h, width, width, f"block{i}.conv1"), f"block{i}.relu1")
        y = conv(y, width, width, f"block{i}.conv2")
        nodes.append(helper.make_node("Add", [h, y], [f"block{i}.add"], name=f"block{i}.add"))
        h = relu(f"block{i}.add", f"block{i}.relu2")
    logits = conv(h, width, classes, "head", k=1)
    nodes.append(helper.make_node("Sigmoid", [logits], ["features"], name="head_sigmoid"))

    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(spec.inputs[0].shape))
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, list(spec.outputs[0].shape))
    graph = helper.make_graph(nodes, "vkt_toy_convnet", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", spec.opset)], producer_name="vkt")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model, spec


def toy_text_detector(channels: int = 1, text_channel: int = 0, gain: float = 10.0):
    """A 1x1-conv "text detector": dark pixels are text. Returns an onnx.ModelProto.

    Input ``x`` [batch, 3, height, width] (normalised as the textdet task does: white 1, black -1); output
    ``prob`` [batch, channels, height, width] where channel ``text_channel`` is sigmoid(-gain * mean(x))
    (near 1 on black) and every other channel sigmoid(+gain * mean(x)) (near 1 on white).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((channels, 3, 1, 1), gain / 3.0, np.float32)
    w[text_channel] *= -1
    nodes = [helper.make_node("Conv", ["x", "w"], ["logits"], name="conv"),
             helper.make_node("Sigmoid", ["logits"], ["prob"], name="sigmoid")]
    graph = helper.make_graph(
        nodes, "vkt_toy_text_detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", channels, "height", "width"])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="vkt")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
