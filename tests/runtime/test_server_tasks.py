"""Task endpoints of vkt serve: /detect answers what TextDetector / Detector answer in-process; bad input gets a 4xx."""

from __future__ import annotations

import http.client
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from vkt.runtime.server import InferenceServer, ServerConfig, models_from_bundles
from vkt.runtime.server.image_body import image_info
from vkt.runtime.server.tasks import TaskLimits, add_task_routes

from test_server_hardening import _jpeg_claiming, _tiff_claiming, _webp_claiming  # tests/runtime is on sys.path (prepend mode)

skimage = pytest.importorskip("skimage")
DATA = Path(skimage.__file__).parent / "data"
TEXTDET = "ppocrv5-det-mobile"


def post(port: int, path: str, body: bytes, ctype: str = "image/png") -> tuple[int, dict | bytes, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("POST", path, body, {"Content-Type": ctype})
        r = c.getresponse()
        data = r.read()
        headers = {k.lower(): v for k, v in r.getheaders()}
        return r.status, (json.loads(data) if headers.get("content-type", "").startswith("application/json") else data), headers
    finally:
        c.close()


def png_header(width: int, height: int) -> bytes:
    """A PNG signature + IHDR claiming ``width x height`` (no pixel data): what a decompression bomb starts with."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


# ---- text detection through `vkt serve` (the CLI picks the route by the bundle's task) -------------------
@pytest.fixture(scope="module")
def textdet_bundle(tmp_path_factory) -> Path:
    from vkt.models import zoo

    return zoo.ppocrv5_det_mobile_bundle(tmp_path_factory.mktemp("tasks") / "ppocrv5")


@pytest.fixture(scope="module")
def cli_server(textdet_bundle, toy_onnx, tmp_path_factory):
    """`python -m vkt serve` of the PP-OCRv5 bundle and the toy tensor bundle, on an ephemeral loopback port."""
    from vkt.export.onnx_import import import_onnx

    toy = tmp_path_factory.mktemp("tasks") / "toy"
    import_onnx(toy_onnx, toy, profile={"batch": (1, 1, 8), "height": (16, 64, 256), "width": (16, 64, 256)})
    proc = subprocess.Popen([sys.executable, "-m", "vkt", "serve", str(textdet_bundle), str(toy), "--port", "0",
                             "--threads", "2", "--max-image-mpix", "1"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert " on http://127.0.0.1:" in line, line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


@pytest.fixture(scope="module")
def text_detector(textdet_bundle):
    from vkt.runtime.textdet import TextDetector

    with TextDetector(textdet_bundle, threads=2) as det:
        yield det


@pytest.mark.parametrize("name", ["page.png", "text.png"])
def test_detect_text_equals_text_detector(cli_server, text_detector, name):
    status, got, _ = post(cli_server, f"/v2/models/{TEXTDET}/detect", (DATA / name).read_bytes())
    assert status == 200, got
    want = text_detector(str(DATA / name))[0].to_dict()
    assert got["task"] == "text-detection" and got["model_name"] == TEXTDET
    assert got["image_size"] == want["image_size"] and got["input_size"] == want["input_size"]
    assert len(want["detections"]) >= 4  # page.png: 45 lines, text.png: 4 words: the comparison is not of nothing
    assert got["detections"] == want["detections"]


def test_detect_jpeg_and_versioned_path(cli_server, text_detector):
    import cv2

    img = cv2.imread(str(DATA / "page.png"))
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    info = image_info(jpg.tobytes())
    assert ok and (info.height, info.width) == img.shape[:2]
    status, got, _ = post(cli_server, f"/v2/models/{TEXTDET}/versions/1/detect", jpg.tobytes(), "image/jpeg")
    assert status == 200, got
    assert got["detections"] == text_detector(cv2.imdecode(jpg, cv2.IMREAD_COLOR))[0].to_dict()["detections"]


@pytest.mark.parametrize("path, body, ctype, code, match", [
    (f"/v2/models/{TEXTDET}/detect", b"not an image at all", "image/png", 415, "not an image in an accepted format"),
    (f"/v2/models/{TEXTDET}/detect", b"", "image/png", 400, "the body is empty"),
    (f"/v2/models/{TEXTDET}/detect", png_header(50_000, 50_000), "image/png", 413, "2500000000 pixels"),
    (f"/v2/models/{TEXTDET}/detect", b"PF\n2 2\n-1\n" + bytes(48), "image/x-portable-floatmap", 415, "PFM images are not accepted"),
    # bombs whose size only the header tells (test_server_hardening checks that OpenCV never sees them)
    (f"/v2/models/{TEXTDET}/detect", _jpeg_claiming(20000, 20000), "image/jpeg", 413, "20000x20000 = 400000000 pixels"),
    (f"/v2/models/{TEXTDET}/detect", _tiff_claiming(20000, 20000), "image/tiff", 413, "20000x20000 = 400000000 pixels"),
    (f"/v2/models/{TEXTDET}/detect", _webp_claiming(16000, 16000), "image/webp", 413, "16000x16000 = 256000000 pixels"),
    (f"/v2/models/{TEXTDET}/detect", b"--x\r\n", "multipart/form-data; boundary=x", 415, "send the image file's bytes"),
    ("/v2/models/nope/detect", b"x", "image/png", 404, "unknown model 'nope'"),
    ("/v2/models/..%2Fetc/detect", b"x", "image/png", 404, "unknown model"),
    ("/v2/models/toy/detect", b"x", "image/png", 404, "has no /detect endpoint"),
    (f"/v2/models/{TEXTDET}/versions/7/detect", b"x", "image/png", 404, "no version '7'"),
    (f"/v2/models/{TEXTDET}/generate", b"{}", "application/json", 404, "has no /generate endpoint"),
])
def test_detect_bad_requests_get_4xx_and_server_stays_up(cli_server, path, body, ctype, code, match):
    status, got, _ = post(cli_server, path, body, ctype)
    assert status == code and match in got["error"], (status, got)
    c = http.client.HTTPConnection("127.0.0.1", cli_server, timeout=10)
    c.request("GET", "/v2/health/ready")
    assert c.getresponse().status == 200


def test_detect_decoded_image_over_pixel_limit(cli_server):
    import cv2

    _, tif = cv2.imencode(".tiff", np.zeros((1100, 1000), np.uint8))  # TIFF: no header check, judged after decoding
    status, got, _ = post(cli_server, f"/v2/models/{TEXTDET}/detect", tif.tobytes(), "image/tiff")
    assert status == 413 and "1000x1100 = 1100000 pixels" in got["error"] and "at most 1000000" in got["error"]


# ---- object detection (DETR-shaped graph built with onnx.helper: no torch) -----------------------------
def _toy_detr_onnx(path: Path, queries: int = 6, classes: int = 3) -> Path:
    """pixel_values [N, 3, H, W] -> mean colour -> linear heads: logits [N, Q, C + 1], pred_boxes [N, Q, 4] (sigmoid)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((3, queries * (classes + 1))) * 8).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((3, queries * 4)).astype(np.float32), "w2")
    s1 = numpy_helper.from_array(np.array([0, queries, classes + 1], np.int64), "s1")
    s2 = numpy_helper.from_array(np.array([0, queries, 4], np.int64), "s2")
    nodes = [helper.make_node("GlobalAveragePool", ["pixel_values"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "w1"], ["l"]), helper.make_node("Reshape", ["l", "s1"], ["logits"]),
             helper.make_node("MatMul", ["f", "w2"], ["b"]), helper.make_node("Sigmoid", ["b"], ["bs"]),
             helper.make_node("Reshape", ["bs", "s2"], ["pred_boxes"])]
    graph = helper.make_graph(
        nodes, "toy_detr",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", queries, classes + 1]),
         helper.make_tensor_value_info("pred_boxes", TensorProto.FLOAT, ["batch", queries, 4])],
        [w1, w2, s1, s2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_detect_objects_equals_detector(tmp_path):
    from vkt.export.detr_bundle import make_detr_bundle
    from vkt.runtime.detection import Detector

    onnx_path = _toy_detr_onnx(tmp_path / "detr.onnx")
    bundle = make_detr_bundle(onnx_path, tmp_path / "detr", labels=["cat", "cup", "person"], score_threshold=0.3,
                              shortest_edge=400, longest_edge=666)
    srv = InferenceServer(models_from_bundles([bundle]), ServerConfig(port=0, warmup=False))
    add_task_routes(srv, limits=TaskLimits(max_image_pixels=10**7))
    n_found = 0
    with srv, Detector(bundle) as det:
        for name in ("astronaut.png", "chelsea.png", "coffee.png"):
            status, got, _ = post(srv.port, "/v2/models/detr/detect", (DATA / name).read_bytes())
            assert status == 200, got
            want = det(str(DATA / name))[0].to_dict()
            assert got["task"] == "object-detection" and got["detections"] == want["detections"]
            assert got["image_size"] == want["image_size"] and got["input_size"] == want["input_size"]
            n_found += len(want["detections"])
    assert n_found > 0
