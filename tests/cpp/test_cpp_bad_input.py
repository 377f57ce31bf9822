"""vkt_cpp on bad input: a missing or tampered bundle file, an unknown schema version, an undecodable image, a
manifest key of the wrong type -> "error: ..." naming the value, exit 2, never a crash (a signal) or an abort."""

from __future__ import annotations

import json
import shutil

import pytest
from cpp_tools import run_cpp


@pytest.fixture()
def bundle(ppocr_bundle, tmp_path):
    """A private copy of the PP-OCRv5 bundle to break."""
    return shutil.copytree(ppocr_bundle, tmp_path / "b.vkt")


def edit_manifest(bundle, change):
    m = json.loads((bundle / "manifest.json").read_text())
    change(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def assert_error(p, *needles):
    """Exit 2 with one "error:" line holding every needle (a crash would be a negative code or 134)."""
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def tamper(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped: only the sha256 can tell
    path.write_bytes(bytes(data))


CASES = {
    "missing graph": (lambda b: (b / "model.onnx").unlink(), ["'model.onnx'", "is missing"]),
    "truncated graph": (lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:1000]),
                        ["'model.onnx' has 1000 bytes"]),
    "tampered graph": (lambda b: tamper(b / "model.onnx"), ["'model.onnx'", "sha256"]),
    "no manifest": (lambda b: (b / "manifest.json").unlink(), ["has no manifest.json"]),
    "manifest not JSON": (lambda b: (b / "manifest.json").write_text("{not json"), ["not valid JSON"]),
    "newer schema": (lambda b: edit_manifest(b, lambda m: m.update(schema_version=99)), ["schema_version 99"]),
    "other schema": (lambda b: edit_manifest(b, lambda m: m.update(schema="other")), ['"other"']),
    "thresh a string": (lambda b: edit_manifest(b, lambda m: m["postprocess"].update(thresh="0.3")),
                        ["postprocess.thresh", '"0.3"']),
    "unclip_ratio negative": (lambda b: edit_manifest(b, lambda m: m["postprocess"].update(unclip_ratio=-1)),
                              ["postprocess.unclip_ratio", "-1"]),
    "use_dilation a number": (lambda b: edit_manifest(b, lambda m: m["postprocess"].update(use_dilation=1)),
                              ["postprocess.use_dilation", "got 1"]),
    "mean two numbers": (lambda b: edit_manifest(b, lambda m: m["preprocess"].update(mean=[0.5, 0.5])),
                         ["preprocess.mean", "[0.5,0.5]"]),
    "limit_side_len a float": (lambda b: edit_manifest(b, lambda m: m["preprocess"]["resize"].update(limit_side_len=736.5)),
                               ["limit_side_len", "736.5"]),
    "resize a list": (lambda b: edit_manifest(b, lambda m: m["preprocess"].update(resize=[736])),
                      ["preprocess.resize", "[736]"]),
    "color unknown": (lambda b: edit_manifest(b, lambda m: m["preprocess"].update(color="BRG")), ['"BRG"']),
    "bytes a string": (lambda b: edit_manifest(b, lambda m: m["files"][0].update(bytes="12")), ["files[].bytes", '"12"']),
    "path escapes": (lambda b: edit_manifest(b, lambda m: m["files"][0].update(path="../model.onnx")), ["'../model.onnx'"]),
    "profile malformed": (lambda b: edit_manifest(b, lambda m: m["components"]["model"]["spec"]["profiles"][0].update(
        height=[32, 736])), ["profiles.height", "[32,736]"]),
    "unknown post key": (lambda b: edit_manifest(b, lambda m: m["postprocess"].update(thresold=0.2)), ["'thresold'"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_bundle_is_an_error_naming_the_value(vkt_cpp, bundle, skimage_data, case):
    breaking, needles = CASES[case]
    breaking(bundle)
    assert_error(run_cpp(vkt_cpp, "--bundle", bundle, skimage_data / "page.png"), *needles)


def test_bad_images_and_options(vkt_cpp, ppocr_bundle, skimage_data, tmp_path):
    page = skimage_data / "page.png"
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(page.read_bytes()[:300])
    (tmp_path / "folder.png").mkdir()  # a folder is no image file (it was read as an empty one)
    for name, needle in (("notes.png", "cannot decode image"), ("empty.jpg", "is empty"), ("cut.png", "cannot decode image"),
                         ("absent.png", "not found"), ("folder.png", "not found or unreadable")):
        assert_error(run_cpp(vkt_cpp, "--bundle", ppocr_bundle, page, tmp_path / name), needle, name)
    assert_error(run_cpp(vkt_cpp, "--bundle", ppocr_bundle, "--precision", "int4", page), "'int4'")
    assert_error(run_cpp(vkt_cpp, "--bundle", ppocr_bundle, "--threads", "two", page), "--threads", "'two'")
    assert_error(run_cpp(vkt_cpp, "--bundle", tmp_path / "nowhere", page), "nowhere")
    assert_error(run_cpp(vkt_cpp, "--bundle", ppocr_bundle, "--backend", "tensorrt", page), "plan")
