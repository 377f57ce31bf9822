"""INT8 UNet and onnxruntime-fused graphs of an SD bundle, on tiny random components.

INT8 tolerance: decoded images of the INT8-UNet pipeline vs FP32 at equal seeds, PSNR >= 29 dB (measured
31-34 dB on these components with 4 DDIM steps at guidance 7.5), and the UNet's noise predictions on
inputs captured from other prompts than the calibration's, SQNR >= 12 dB (calibration reported ~17.5).
With random tiny weights the images are dominated by the seed's noise through the VAE, so even a UNet
whose Q/DQ ranges are 100x too wide keeps ~26 dB of image PSNR: the bound is checked to fail there,
and the SQNR of the UNet output is the sharper check. The images must differ (PSNR < inf): INT8 ran.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vkt.errors import BundleError, CalibrationError

pytestmark = pytest.mark.torch

PROMPTS = ["a photo of the cats", "the dog"]
IMAGE_PSNR_DB = 29.0
UNET_SQNR_DB = 12.0


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    from vkt.models.sd import SDProfile, export_sd
    from vkt.models.sd.tiny import tiny_pipeline

    root = tmp_path_factory.mktemp("sd-int8")
    pipe = tiny_pipeline(root / "tokenizer", size=64, seed=0)
    try:
        report = export_sd(pipe, root / "b", profile=SDProfile(max_batch=2, min_size=32, opt_size=64, max_size=64),
                           int8=True, calib_prompts=["a photo of the cats", "the cat", "a dog"], calib_steps=4)
    finally:
        torch.set_num_threads(before)
    return report.bundle


def test_int8_bundle_layout(int8_bundle):
    from vkt.bundle import Bundle

    b = Bundle.load(int8_bundle)
    qdq = {e.meta["placement"]: e.path for e in b.files("int8 qdq onnx", "unet")}
    assert qdq == {"ort": "unet.int8.ort.onnx", "trt": "unet.int8.trt.onnx"}
    assert not b.files("int8 qdq onnx", "text_encoder") and not b.files("int8 qdq onnx", "vae_decoder")
    cal = b.manifest["calibration"]
    assert cal["component"] == "unet" and cal["samples"] == 3 * 4  # 3 prompts x 4 steps, one feed per step
    ort = cal["placements"]["ort"]
    assert ort["fused_int8_ops"] > 0 and ort["int8"].get("QLinearConv", 0) > 0
    # Softmax / LayerNorm / GroupNorm (InstanceNormalization) stay float in both placements
    import onnx

    for path in qdq.values():
        g = onnx.load(str(b.root / path)).graph
        dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
        kept = [n for n in g.node if n.op_type in ("Softmax", "LayerNormalization", "InstanceNormalization")]
        assert kept and not any(x in dq_out for n in kept for x in n.input)


def test_int8_images_close_to_fp32(int8_bundle):
    from vkt.models.sd.int8 import image_psnr
    from vkt.runtime.txt2img import Txt2Img

    with Txt2Img(int8_bundle, precision="int8", threads=1, progress_bar=False) as pipe:
        assert pipe.precisions == {"text_encoder": "fp32", "unet": "int8", "vae_decoder": "fp32"}
        assert str(pipe.runners["unet"].model).endswith("unet.int8.ort.onnx")
    res = image_psnr(int8_bundle, PROMPTS, steps=4, threads=1)
    print(f"INT8 vs FP32 PSNR: {res['psnr_db']}")
    assert all(float(im.std()) > 5 for im in res["images"]["fp32"])  # not flat images
    assert IMAGE_PSNR_DB <= res["min_psnr_db"] < float("inf"), res["psnr_db"]


def _unet_sqnr(bundle, qdq_path, feeds):
    """SQNR (dB) of a Q/DQ UNet's noise predictions vs the FP32 UNet's on ``feeds``."""
    import onnxruntime as ort

    from vkt.calibration import sqnr_db

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(str(bundle.path("fp32 onnx", "unet")), so, providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(qdq_path), so, providers=["CPUExecutionProvider"])
    a = np.concatenate([ref.run(None, f)[0].ravel() for f in feeds])
    b = np.concatenate([q.run(None, f)[0].ravel() for f in feeds])
    return sqnr_db(a, b)


def test_broken_ranges_are_caught(int8_bundle, tmp_path):
    """The bounds above can fail: ranges widened 100x (a few levels per activation) fall below both."""
    import dataclasses
    import shutil

    from vkt.bundle import Bundle
    from vkt.calibration import CalibrationTable, place_ort
    from vkt.models.sd.int8 import capture_unet_feeds, image_psnr
    from vkt.onnxgraph import prepare_model
    from vkt.onnxio import load_onnx

    dst = tmp_path / "broken"
    shutil.copytree(int8_bundle, dst)
    b = Bundle.load(dst)
    feeds = capture_unet_feeds(b, ["a red dog"], steps=2, seed=7, threads=1)  # not calibration data
    good = _unet_sqnr(b, b.root / "unet.int8.ort.onnx", feeds)
    table = CalibrationTable.from_json(b.path("calibration table", "unet").read_text())
    table = dataclasses.replace(table, ranges={k: (lo * 100, hi * 100) for k, (lo, hi) in table.ranges.items()})
    qdq = place_ort(prepare_model(load_onnx(b.path("fp32 onnx", "unet"))), table)
    b.add_file(qdq.SerializeToString(), "unet.int8.ort.onnx", "int8 qdq onnx", "unet", meta={"placement": "ort"})
    bad = _unet_sqnr(b, b.root / "unet.int8.ort.onnx", feeds)
    res = image_psnr(b, PROMPTS[:1], steps=4, threads=1)
    print(f"UNet output SQNR: calibrated {good:.1f} dB, broken {bad:.1f} dB; broken image PSNR {res['psnr_db']}")
    assert good >= UNET_SQNR_DB > bad + 5
    assert res["min_psnr_db"] < IMAGE_PSNR_DB, res["psnr_db"]


def test_fused_graphs_are_ort_only(int8_bundle):
    """The bundle's onnxruntime backend runs the fused graphs, TensorRT-bound paths the plain ones; both agree."""
    from vkt.bundle import Bundle
    from vkt.models.sd.optimize import CPU_CONTRIB_OPS, max_rel_diff

    b = Bundle.load(int8_bundle)
    e = b.entry("fp32 onnx", "unet", placement="ort")
    assert e.path == "unet.ort.onnx" and e.meta["fused"].get("MultiHeadAttention", 0) > 0
    assert set(e.meta["fused"]) <= CPU_CONTRIB_OPS
    assert b.entry("fp32 onnx", "unet", placement="trt").path == "unet.onnx"
    assert b.path("fp32 onnx", "unet").name == "unet.onnx"  # calibration and TensorRT read the canonical graph
    assert max_rel_diff(b.path("fp32 onnx", "unet"), b.root / e.path, b.spec("unet")) < 1e-4


def test_int8_errors(int8_bundle, tmp_path):
    import shutil

    from vkt.bundle import Bundle
    from vkt.models.sd.int8 import capture_unet_feeds, quantize_unet
    from vkt.runtime.txt2img import Txt2Img

    dst = tmp_path / "fp32only"
    shutil.copytree(int8_bundle, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["files"] = [f for f in m["files"] if f["role"] != "int8 qdq onnx"]
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="has no int8 UNet"):
        Txt2Img(Bundle.load(dst), precision="int8")
    with pytest.raises(CalibrationError, match="no calibration feeds"):
        quantize_unet(dst, [])
    with pytest.raises(CalibrationError, match="non-empty list of strings"):
        capture_unet_feeds(dst, "a cat")

    from vkt.models.sd.int8 import psnr

    a = np.zeros((2, 2, 3), np.uint8)
    assert np.isinf(psnr(a, a)) and psnr(a, a + 1) == pytest.approx(10 * np.log10(255.0 ** 2))
