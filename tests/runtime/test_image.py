"""Image reading and manifest-driven pre-processing, checked against rapidocr's DetPreProcess."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vkt.errors import InputError
from vkt.runtime.image import Preprocessor, list_images, read_image, resized_size, to_bgr_uint8
from vkt.tasks import TASKS

TEXTDET = TASKS["textdet"].preprocess


def _write(path, img) -> str:
    assert cv2.imwrite(str(path), img)
    return str(path)


# ---- reading -------------------------------------------------------------------------------------
def test_read_color_gray_rgba_16bit(tmp_path):
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(_write(tmp_path / "c.png", bgr)), bgr)

    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    g = read_image(_write(tmp_path / "g.png", gray))
    assert g.shape == (7, 9, 3) and all((g[:, :, c] == gray).all() for c in range(3))

    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[0, 0] = (10, 20, 30, 255)      # opaque: kept
    bgra[0, 1] = (10, 20, 30, 0)        # transparent: white
    bgra[1, 0] = (0, 0, 0, 128)         # half: mid grey
    r = read_image(_write(tmp_path / "a.png", bgra))
    assert r.shape == (2, 2, 3)
    assert tuple(r[0, 0]) == (10, 20, 30) and tuple(r[0, 1]) == (255, 255, 255)
    assert np.all(np.abs(r[1, 0].astype(int) - round(255 * 127 / 255)) <= 1)

    deep = np.array([[0, 256, 65535], [32768, 1000, 255]], np.uint16)
    d = read_image(_write(tmp_path / "d.png", deep))
    np.testing.assert_array_equal(d[:, :, 0], deep >> 8)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :5] = 255                     # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6                     # "rotate 90 degrees clockwise to display"
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
    r = read_image(tmp_path / "r.jpg")
    assert r.shape == (20, 10, 3)
    assert r[:5].mean() > 200 and r[-5:].mean() < 50   # the strip is now on top


def test_read_bad_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(empty)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    with pytest.raises(InputError, match="cannot decode"):
        read_image(corrupt)
    truncated = tmp_path / "trunc.png"
    ok, buf = cv2.imencode(".png", np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    truncated.write_bytes(buf.tobytes()[:200])
    with pytest.raises(InputError, match="trunc.png"):
        read_image(truncated)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(InputError, match="cannot decode"):
        read_image(text)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)


def test_in_memory_conversions():
    f = np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(to_bgr_uint8(f)[0, :, 0], [0, 128, 255, 255])
    assert to_bgr_uint8(np.zeros((3, 3, 1), np.uint8)).shape == (3, 3, 3)
    with pytest.raises(InputError, match="NaN"):
        to_bgr_uint8(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(InputError, match="dtype"):
        to_bgr_uint8(np.zeros((2, 2), np.int64))
    with pytest.raises(InputError, match="zero size"):
        to_bgr_uint8(np.zeros((0, 4), np.uint8))
    with pytest.raises(InputError, match=r"\[H, W\]"):
        to_bgr_uint8(np.zeros((2, 2, 2, 2), np.uint8))


def test_list_images(tmp_path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _write(folder / "b.png", np.zeros((4, 4), np.uint8))
    _write(folder / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    (folder / "readme.txt").write_text("x")
    warnings = []
    files = list_images([folder], warn=warnings.append)
    assert [f.name for f in files] == ["a.jpg", "b.png"]
    assert len(warnings) == 1 and "readme.txt" in warnings[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no images"):
        list_images([empty])
    with pytest.raises(InputError, match="not found"):
        list_images([tmp_path / "missing"])
    with pytest.raises(InputError, match="no input images"):
        list_images([])


# ---- resize rules --------------------------------------------------------------------------------
def test_limit_side_matches_rapidocr():
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    rng = np.random.default_rng(0)
    sizes = [(191, 384), (172, 448), (400, 600), (512, 512), (1, 1), (736, 736), (1000, 1300), (37, 50)]
    sizes += [tuple(int(v) for v in rng.integers(8, 1400, 2)) for _ in range(60)]
    for limit_type, limit in (("min", 736), ("max", 960)):
        peer = DetPreProcess(limit, limit_type)
        rule = {**TEXTDET["resize"], "limit_type": limit_type, "limit_side_len": limit, "max_side_len": 10**6}
        for h, w in sizes:
            want = peer.resize(np.zeros((h, w, 3), np.uint8))
            got = resized_size(h, w, rule)
            if want is None:  # rapidocr gives up when a side rounds to 0; vkt keeps one round_to step
                assert min(got) == 32
            else:
                assert got == want.shape[:2], (limit_type, h, w)


def test_limit_side_caps_and_profile():
    rule = TEXTDET["resize"]
    assert resized_size(10000, 10000, rule) == (2048, 2048)
    h, w = resized_size(100, 5000, rule)             # 736 x 36800 before the cap
    assert w == 2048 and h % 32 == 0 and h >= 32
    assert resized_size(191, 384, rule, max_side=1024) == (512, 1024)
    assert max(resized_size(172, 448, rule, max_side=1000)) <= 992  # cap floors to a multiple of 32
    with pytest.raises(InputError, match="limit_type"):
        resized_size(10, 10, {**rule, "limit_type": "avg"})
    with pytest.raises(InputError, match="limit_side_len"):
        resized_size(10, 10, {**rule, "limit_side_len": 0})
    with pytest.raises(InputError, match="unknown resize mode"):
        resized_size(10, 10, {"mode": "stretch"})


def test_shortest_edge_rule():
    rule = {"mode": "shortest_edge", "shortest_edge": 800, "longest_edge": 1333}
    assert resized_size(480, 640, rule) == (800, 1066)
    assert resized_size(640, 480, rule) == (1066, 800)
    # long side would pass 1333: raw = 1333 * 100 / 1000, short = round(raw) = 133, long = int(raw * 1000 / 100)
    assert resized_size(100, 1000, rule) == (133, 1333)
    assert resized_size(640, 1280, rule) == (666, 1333)
    assert resized_size(800, 800, rule) == (800, 800)


def test_shortest_edge_rule_matches_transformers():
    """DetrImageProcessor is the peer: the same output size for every shape, both orientations."""
    pytest.importorskip("torch")
    from transformers.image_transforms import get_size_with_aspect_ratio

    rule = {"mode": "shortest_edge", "shortest_edge": 800, "longest_edge": 1333}
    sizes = [(640, 1280), (480, 640), (100, 1000), (800, 800), (1, 1), (1, 10000), (10000, 10000), (512, 512),
             (400, 600), (300, 451), (601, 1001), (799, 1333), (333, 999), (7, 1333)]
    rng = np.random.default_rng(0)
    sizes += [tuple(int(v) for v in rng.integers(1, 4000, 2)) for _ in range(300)]
    for h, w in sizes:
        for hh, ww in ((h, w), (w, h)):
            want = get_size_with_aspect_ratio((hh, ww), 800, 1333)
            if min(want) < 1:   # transformers would make an empty image; vkt says so
                with pytest.raises(InputError, match="too elongated"):
                    resized_size(hh, ww, rule)
            else:
                assert resized_size(hh, ww, rule) == want, (hh, ww)
    assert resized_size(1, 1, rule) == (800, 800)


# ---- normalisation -------------------------------------------------------------------------------
def test_preprocess_matches_rapidocr_tensor():
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    img = np.random.default_rng(3).integers(0, 256, (191, 384, 3), dtype=np.uint8)
    want = DetPreProcess(736, "min", [0.5] * 3, [0.5] * 3)(img)
    got, plans = Preprocessor(TEXTDET)([img])
    assert got.dtype == np.float32 and got.shape == want.shape == (1, 3, 736, 1472)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert plans[0].src_size == (191, 384) and plans[0].ratio_w == pytest.approx(1472 / 384)


def test_rgb_order_and_per_channel_stats():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 100, 200   # B, G, R
    cfg = {"color": "RGB", "resize": {"mode": "none"}, "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225]}
    x, _ = Preprocessor(cfg)([img])
    want = (np.array([200, 100, 10]) / 255 - np.array(cfg["mean"])) / np.array(cfg["std"])
    np.testing.assert_allclose(x[0, :, 0, 0], want, rtol=1e-5)
    with pytest.raises(InputError, match="color"):
        Preprocessor({**cfg, "color": "HSV"})
    with pytest.raises(InputError, match="std"):
        Preprocessor({**cfg, "std": [1, 0, 1]})
    with pytest.raises(InputError, match="different shapes"):
        Preprocessor(TEXTDET)([np.zeros((100, 100, 3), np.uint8), np.zeros((100, 300, 3), np.uint8)])


def _png_with_bad_iccp(path: Path, img: np.ndarray) -> None:
    """A PNG of ``img`` with an ICC profile libpng rejects (rendering intent 0x1000000, as skimage's page.png has)."""
    import struct
    import zlib

    raw = cv2.imencode(".png", img)[1].tobytes()
    profile = bytearray(132)
    profile[0:4] = struct.pack(">I", 132)
    profile[36:40] = b"acsp"
    profile[64:68] = struct.pack(">I", 0x1000000)
    body = b"ICC Profile\0\0" + zlib.compress(bytes(profile))
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    end_ihdr = 8 + 12 + 13  # signature, then IHDR (13 data bytes)
    path.write_bytes(raw[:end_ihdr] + chunk + raw[end_ihdr:])


def test_bad_colour_profile_reads_without_libpng_noise(tmp_path):
    import subprocess
    import sys

    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    path = tmp_path / "iccp.png"
    _png_with_bad_iccp(path, img)
    probe = ("import sys, cv2, numpy as np; from vkt.runtime.image import read_image; p = sys.argv[1]; "
             "img = read_image(p) if sys.argv[2] == 'vkt' else cv2.imdecode(np.fromfile(p, np.uint8), -1); "
             "sys.stdout.write(img.tobytes().hex())")
    runs = {how: subprocess.run([sys.executable, "-c", probe, str(path), how], capture_output=True, text=True)
            for how in ("cv2", "vkt")}
    assert "iCCP" in runs["cv2"].stderr  # the file does trigger libpng's warning
    assert runs["vkt"].returncode == 0 and runs["vkt"].stderr == ""
    assert runs["vkt"].stdout == runs["cv2"].stdout == img.tobytes().hex()  # same pixels, profile or not
