"""DETR export: ONNX on onnxruntime vs transformers in torch on real photos, in-graph post-processing, masks, RTX build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

from vkt.errors import InputError, ShapeError, SpecError  # noqa: E402
from vkt.models.detr import tiny_detr  # noqa: E402
from vkt.models.detr.export import detr_spec, export_detr, export_module  # noqa: E402

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png")
# Shorter sides than DETR's 800/1333 keep the tests quick on two CPU cores; the graph is the same.
SIZE = {"shortest_edge": 400, "longest_edge": 666}
ATOL = 1e-4


def photo(name: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] from scikit-image's bundled data."""
    skimage = pytest.importorskip("skimage")
    from vkt.runtime.image import read_image

    return read_image(Path(skimage.__file__).parent / "data" / name)[:, :, ::-1].copy()


@pytest.fixture(scope="module")
def model():
    return tiny_detr(num_labels=5, num_queries=10)


@pytest.fixture(scope="module")
def processor():
    return transformers.DetrImageProcessor(size=SIZE)


@pytest.fixture(scope="module")
def raw_onnx(model, tmp_path_factory) -> Path:
    return export_detr(model, tmp_path_factory.mktemp("detr") / "raw.onnx").path


@pytest.fixture(scope="module")
def post_onnx(model, tmp_path_factory) -> Path:
    return export_detr(model, tmp_path_factory.mktemp("detr") / "post.onnx", postprocess=True, top_k=10).path


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_graph_has_named_dynamic_axes_and_no_nonzero(raw_onnx, post_onnx):
    import onnx

    for path in (raw_onnx, post_onnx):
        g = onnx.load(str(path)).graph
        ops = {n.op_type for n in g.node}
        assert not ops & {"NonZero", "Compress"}, ops
        dims = [d.dim_param for d in g.input[0].type.tensor_type.shape.dim]
        assert dims == ["batch", "", "height", "width"]
    assert [o.name for o in onnx.load(str(post_onnx)).graph.output] == ["scores", "labels", "boxes"]


def test_raw_parity_with_transformers_on_real_photos(model, processor, raw_onnx):
    sess = session(raw_onnx)
    worst = {"logits": 0.0, "pred_boxes": 0.0}
    for name in PHOTOS:
        pv = processor(images=photo(name), return_tensors="pt")["pixel_values"]      # [1, 3, h, w]
        logits, boxes = sess.run(["logits", "pred_boxes"], {"pixel_values": pv.numpy()})
        with torch.no_grad():
            want = model(pv)                                                           # the reference forward
        assert logits.shape == (1, 10, 6) and boxes.shape == (1, 10, 4)
        worst["logits"] = max(worst["logits"], float(np.abs(logits - want.logits.numpy()).max()))
        worst["pred_boxes"] = max(worst["pred_boxes"], float(np.abs(boxes - want.pred_boxes.numpy()).max()))
    assert worst["logits"] < ATOL and worst["pred_boxes"] < ATOL, worst


def test_dynamic_batch_matches_single_images(raw_onnx, processor):
    sess = session(raw_onnx)
    img = photo("coffee.png")
    pv = processor(images=[img, img[:, ::-1].copy()], return_tensors="np")["pixel_values"]   # [2, 3, h, w]
    both = sess.run(["logits"], {"pixel_values": pv})[0]
    for i in range(2):
        one = sess.run(["logits"], {"pixel_values": pv[i:i + 1]})[0]
        np.testing.assert_allclose(both[i:i + 1], one, atol=1e-5)


def test_in_graph_postprocess_matches_transformers(model, processor, post_onnx):
    sess = session(post_onnx)
    threshold = 0.665
    total = 0
    for name in PHOTOS:
        img = photo(name)
        h, w = img.shape[:2]
        pv = processor(images=img, return_tensors="pt")["pixel_values"]
        scores, labels, boxes = sess.run(None, {"pixel_values": pv.numpy(), "orig_sizes": np.array([[h, w]], np.float32)})
        assert labels.dtype == np.int32 and np.all(np.diff(scores[0]) <= 0)   # sorted, best first
        with torch.no_grad():
            out = model(pv)
        want = processor.post_process_object_detection(out, threshold=threshold, target_sizes=[(h, w)])[0]
        order = torch.argsort(want["scores"], descending=True)
        keep = scores[0] > threshold
        assert keep.sum() == len(order), name
        total += int(keep.sum())
        np.testing.assert_array_equal(labels[0][keep], want["labels"][order].numpy())
        np.testing.assert_allclose(scores[0][keep], want["scores"][order].numpy(), atol=1e-5)
        np.testing.assert_allclose(boxes[0][keep], want["boxes"][order].numpy(), atol=1e-3)   # source pixels
    assert 0 < total < 30  # the threshold splits the queries: the comparison is not vacuous


def test_pixel_mask_padded_batch_matches_transformers(model, processor, tmp_path):
    rep = export_detr(model, tmp_path / "mask.onnx", pixel_mask=True)
    sess = session(rep.path)
    # Two photos of different sizes: the processor pads them to one batch and returns the mask.
    inputs = processor(images=[photo("chelsea.png"), photo("astronaut.png")], return_tensors="pt")
    assert not bool(inputs["pixel_mask"].all())   # padding present
    logits, boxes = sess.run(None, {"pixel_values": inputs["pixel_values"].numpy(),
                                    "pixel_mask": inputs["pixel_mask"].numpy().astype(np.float32)})
    with torch.no_grad():
        want = model(**inputs)
    assert float(np.abs(logits - want.logits.numpy()).max()) < ATOL
    assert float(np.abs(boxes - want.pred_boxes.numpy()).max()) < ATOL


def test_static_shape_variant(model, tmp_path):
    from vkt.runtime.ort import OrtRunner

    attn = model.config._attn_implementation
    rep = export_detr(model, tmp_path / "static.onnx", postprocess=True, static_shape=(1, 320, 480))
    assert model.config._attn_implementation == attn   # export switches to eager attention, then restores
    assert rep.spec.input("pixel_values").shape == (1, 3, 320, 480) and not rep.spec.profiles
    assert max(rep.parity.values()) < 1e-3
    with OrtRunner(rep.path, spec=rep.spec) as r:
        with pytest.raises(ShapeError, match="dim 2: expected 320"):
            r.infer({"pixel_values": np.zeros((1, 3, 352, 480), np.float32), "orig_sizes": np.ones((1, 2), np.float32)})


def test_learned_position_embedding_exports(tmp_path):
    m = tiny_detr(position_embedding_type="learned")
    rep = export_detr(m, tmp_path / "learned.onnx", check_shape=(1, 3, 320, 448))
    assert max(rep.parity.values()) < ATOL


def test_rtx_build_of_dynamic_and_postprocessed_graphs(raw_onnx, post_onnx):
    pytest.importorskip("tensorrt_rtx")
    from vkt.engines import BuildConfig, build

    cfg = BuildConfig(module="tensorrt_rtx", compute_capabilities=("SM89",))
    for path, spec in ((raw_onnx, detr_spec(10, 5)), (post_onnx, detr_spec(10, 5, postprocess=True, top_k=10))):
        result = build(path, spec, cfg)
        assert len(result.plan) > 100_000
        assert result.meta["profiles"]


def test_fp16_graph_builds_with_rtx_and_stays_close(raw_onnx, tmp_path):
    """vkt's FP16 conversion of the DETR graph: close to FP32 on ORT, and it builds (a float Range did not)."""
    pytest.importorskip("tensorrt_rtx")
    import onnx

    from vkt.engines import BuildConfig, build
    from vkt.export.fp16 import convert_fp16

    half = tmp_path / "raw.fp16.onnx"
    onnx.save(convert_fp16(onnx.load(str(raw_onnx))), str(half))
    x = {"pixel_values": np.random.default_rng(0).uniform(-2, 2, (1, 3, 320, 448)).astype(np.float32)}
    full, low = session(raw_onnx).run(None, x), session(half).run(None, x)
    assert float(np.abs(full[0] - low[0]).max()) < 1e-2 and float(np.abs(full[1] - low[1]).max()) < 1e-3
    plan = build(half, detr_spec(10, 5), BuildConfig(module="tensorrt_rtx", compute_capabilities=("SM89",), precision="fp16")).plan
    assert len(plan) > 100_000


def test_bad_arguments(model, tmp_path):
    with pytest.raises(InputError, match="DetrForObjectDetection"):
        export_module(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="top_k"):
        export_module(model, top_k=0)
    with pytest.raises(SpecError, match="static_shape"):
        detr_spec(10, 5, static_shape=(1, 320))
    with pytest.raises(SpecError, match="num_queries"):
        detr_spec(0, 5)
    with pytest.raises(InputError, match="check_shape"):
        export_detr(model, tmp_path / "x.onnx", check_shape=(1, 1, 64, 64))
    with pytest.raises(SpecError, match="min <= opt <= max"):
        detr_spec(10, 5, profile={"batch": (1, 1, 4), "height": (800, 320, 1333), "width": (320, 800, 1333)})
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_detr_r50_architecture_exports_and_builds(tmp_path):
    """The real DETR-R50 architecture (random weights: none ship): ~166 MB graph, ORT parity, RTX plan."""
    pytest.importorskip("tensorrt_rtx")
    from transformers import DetrConfig, DetrForObjectDetection

    from vkt.engines import BuildConfig, build
    from vkt.models.detr.checkpoints import resnet_backbone_config

    torch.manual_seed(0)
    m = DetrForObjectDetection(DetrConfig(use_timm_backbone=False, backbone_config=resnet_backbone_config("resnet50"),
                                          num_labels=91)).eval()
    rep = export_detr(m, tmp_path / "r50.onnx", postprocess=True, check_shape=(1, 3, 320, 416))
    assert rep.spec.output_names == ["scores", "labels", "boxes"] and rep.parity["scores"] < ATOL
    result = build(rep.path, rep.spec, BuildConfig(module="tensorrt_rtx", compute_capabilities=("SM89",)))
    assert len(result.plan) > 100e6
