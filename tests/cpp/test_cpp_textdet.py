"""vkt_cpp on PP-OCRv5 vs vkt.runtime.TextDetector on OpenVINO: the same boxes (hmean 1.0, corners within 0.5 px,
scores within 1e-4) on real photos, page.png at several sizes, an EXIF-rotated JPEG, grayscale, 16-bit and RGBA
files; the OpenVINO INT8 placement picked by role and meta like make_runner does."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from cpp_tools import run_cpp, run_json

pytest.importorskip("openvino")

PHOTOS = ("page.png", "text.png", "rocket.jpg", "astronaut.png", "logo.png", "coffee.png")


def exif_rotated_jpeg(img: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``img`` carrying an EXIF Orientation tag (APP1 after SOI): a TIFF header and one IFD entry."""
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little")
    tiff += (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")
    tiff += orientation.to_bytes(2, "little") + b"\x00\x00" + (0).to_bytes(4, "little")
    app1 = b"Exif\x00\x00" + tiff
    data = jpg.tobytes()
    return data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]


@pytest.fixture(scope="module")
def images(skimage_data, tmp_path_factory) -> list:
    """Paths: the skimage photos, page.png at 0.5x / 2x / 6x (6x hits the 2048 cap), rotated by EXIF, as 8-bit
    grayscale and as 16-bit."""
    out = tmp_path_factory.mktemp("cpp-images")
    paths = [skimage_data / n for n in PHOTOS]
    from vkt.runtime.image import read_image

    page = read_image(skimage_data / "page.png")[:, :, 0]  # grayscale: the three channels are equal
    for f in (0.5, 2.0, 6.0):
        p = out / f"page_x{f}.png"
        cv2.imwrite(str(p), cv2.resize(page, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC))
        paths.append(p)
    (out / "page_exif6.jpg").write_bytes(exif_rotated_jpeg(cv2.cvtColor(page, cv2.COLOR_GRAY2BGR), 6))
    paths.append(out / "page_exif6.jpg")
    gray = cv2.cvtColor(cv2.imread(str(skimage_data / "rocket.jpg")), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(out / "rocket_gray.png"), gray)
    paths.append(out / "rocket_gray.png")
    rng = np.random.default_rng(0)  # 16-bit: the high byte is the page, the low byte noise (x >> 8 must drop it)
    wide = (page.astype(np.uint16) << 8) | rng.integers(0, 256, page.shape, dtype=np.uint16)
    cv2.imwrite(str(out / "page16.png"), wide)
    paths.append(out / "page16.png")
    return paths


def assert_same_boxes(got: dict, want, where: str) -> None:
    """Each of the Python boxes has a C++ box, one to one, with corners within 0.5 px and scores within 1e-4."""
    from vkt.eval.textdet import hmean_between

    ours = [np.asarray(d["polygon"], np.float32) for d in got["detections"]]
    scores = np.asarray([d["score"] for d in got["detections"]], np.float32)
    assert (got["height"], got["width"]) == want.image_size, where
    assert len(ours) == len(want.polygons), (where, len(ours), len(want.polygons))
    if not ours:
        return
    assert hmean_between([ours], [want.polygons]) == 1.0, where
    used = set()
    for poly, score in zip(want.polygons, want.scores):
        dist = [np.abs(o - poly).max() if o.shape == poly.shape and i not in used else np.inf for i, o in enumerate(ours)]
        i = int(np.argmin(dist))
        assert dist[i] <= 0.5, (where, poly.tolist(), ours[i].tolist())
        assert abs(scores[i] - score) <= 1e-4, (where, scores[i], score)
        used.add(i)


def test_text_boxes_match_python_on_real_photos(vkt_cpp, ppocr_bundle, images):
    from vkt.runtime.image import read_image
    from vkt.runtime.textdet import TextDetector

    got = run_json(vkt_cpp, "--bundle", ppocr_bundle, "--threads", "2", *images)
    with TextDetector(ppocr_bundle, backend="ov", threads=2) as det:
        want = det(images)  # one call: same-size images batched as the C++ batches them
    assert [g["image"] for g in got] == [str(p) for p in images]
    for g, w, p in zip(got, want, images):
        assert_same_boxes(g, w, p.name)
    by_name = {p.name: (g, w) for p, g, w in zip(images, got, want)}
    # The inputs were not trivial: text found on the text photos, none on coffee; EXIF turned the page upright.
    assert len(by_name["page.png"][1]) > 20 and len(by_name["coffee.png"][1]) == 0
    assert by_name["page_x6.0.png"][0]["input_width"] == 2048   # the profile/max_side_len cap applied
    exif = images[len(PHOTOS) + 3]
    raw = cv2.imread(str(exif), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    assert read_image(exif).shape[:2] == raw.shape[1::-1]
    assert (by_name["page_exif6.jpg"][0]["height"], by_name["page_exif6.jpg"][0]["width"]) == raw.shape[1::-1]


def test_one_call_per_image_gives_the_same_boxes(vkt_cpp, ppocr_bundle, skimage_data):
    """--each (batch of one) and the batched run agree with each other (same-size images share a call)."""
    page = skimage_data / "page.png"
    batched = run_json(vkt_cpp, "--bundle", ppocr_bundle, "--threads", "2", page, page)
    each = run_json(vkt_cpp, "--bundle", ppocr_bundle, "--threads", "2", "--each", page)
    assert batched[0]["detections"] == batched[1]["detections"]
    a = np.array([d["polygon"] for d in batched[0]["detections"]])
    b = np.array([d["polygon"] for d in each[0]["detections"]])
    assert a.shape == b.shape and np.abs(a - b).max() <= 0.5


def add_graph(bundle, src_path, name: str, placement: str | None):
    from vkt.bundle import Bundle

    b = Bundle.load(bundle, verify=False)
    b.add_file(src_path, name, role="int8 qdq onnx", meta={"placement": placement} if placement else {})


def test_int8_takes_the_graph_placed_for_openvino(vkt_cpp, ppocr_bundle, skimage_data, tmp_path):
    """--precision int8 picks the Q/DQ graph whose meta says placement "openvino" (as make_runner(backend="ov")),
    never the one placed for onnxruntime: here that one is tampered with, and would be refused."""
    from vkt.runtime.textdet import TextDetector

    bundle = tmp_path / "b.vkt"
    shutil.copytree(ppocr_bundle, bundle)
    page = skimage_data / "page.png"
    only_ort = run_cpp(vkt_cpp, "--bundle", bundle, "--precision", "int8", page)
    assert only_ort.returncode == 2 and "'int8 qdq onnx'" in only_ort.stderr  # no int8 graph at all yet
    add_graph(bundle, bundle / "model.onnx", "model.int8.ort.onnx", "ort")
    refused = run_cpp(vkt_cpp, "--bundle", bundle, "--precision", "int8", page)
    assert refused.returncode == 2 and "placed for ort" in refused.stderr, refused.stderr
    # A stand-in Q/DQ graph (the FP32 graph under the int8 role): what matters is which file is chosen.
    add_graph(bundle, bundle / "model.onnx", "model.int8.openvino.onnx", "openvino")
    ort = bundle / "model.int8.ort.onnx"
    original = ort.read_bytes()
    ort.write_bytes(original[:100] + b"\x00\x01\x02" + original[103:])  # tampered: choosing it would fail
    got = run_json(vkt_cpp, "--bundle", bundle, "--precision", "int8", "--threads", "2", page)[0]
    ort.write_bytes(original)  # vkt's Bundle.load verifies every file of the bundle, used or not
    with TextDetector(bundle, backend="ov", precision="int8", threads=2) as det:
        assert det.runner.model.name == "model.int8.openvino.onnx"
        assert_same_boxes(got, det([page])[0], "int8")
    m = json.loads((bundle / "manifest.json").read_text())
    assert sorted(e["meta"].get("placement", "-") for e in m["files"]) == ["-", "openvino", "ort"]


def test_int8_openvino_placement_matches_python(vkt_cpp, ppocr_bundle, skimage_data, tmp_path):
    """A real openvino placement, written by `vkt quantize --target openvino` (2 calibration photos, ungated): the
    C++ runtime runs the same Q/DQ graph as TextDetector(backend="ov", precision="int8") and finds the same boxes."""
    import subprocess
    import sys

    from vkt.runtime.textdet import TextDetector

    bundle, calib = tmp_path / "b.vkt", tmp_path / "calib"
    shutil.copytree(ppocr_bundle, bundle)
    calib.mkdir()
    for n in ("coffee.png", "chelsea.png"):
        shutil.copy(skimage_data / n, calib / n)
    q = subprocess.run([sys.executable, "-m", "vkt", "quantize", str(bundle), "--calib", str(calib), "--target",
                        "openvino", "--calib-method", "minmax"], capture_output=True, text=True, timeout=600)
    assert q.returncode == 0, q.stderr[-2000:]
    m = json.loads((bundle / "manifest.json").read_text())
    assert [e["meta"]["placement"] for e in m["files"] if e["role"] == "int8 qdq onnx"] == ["openvino"]
    pages = [skimage_data / "page.png", skimage_data / "text.png"]
    got = run_json(vkt_cpp, "--bundle", bundle, "--precision", "int8", "--threads", "2", *pages)
    with TextDetector(bundle, backend="ov", precision="int8", threads=2) as det:
        convs = det.runner.executed_precisions()["Convolution"]
        assert convs.get("u8", 0) + convs.get("i8", 0) > convs.get("f32", 0), convs  # integer kernels really run
        for g, page in zip(got, pages):
            assert_same_boxes(g, det([page])[0], f"int8 {page.name}")
