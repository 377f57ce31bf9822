"""`vkt run` text-detection options: override the bundle's settings, report a capped image, exit 2 on bad values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from vkt.cli.main import main
from vkt.export.toy import toy_text_detector


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A 2-channel toy detector (channel 1: dark pixels are text) exported through the CLI with --channel 1."""
    root = tmp_path_factory.mktemp("runopts")
    onnx.save(toy_text_detector(2, text_channel=1), str(root / "m.onnx"))
    assert main(["export", "onnx", str(root / "m.onnx"), "--task", "textdet", "--channel", "1", "-o",
                 str(root / "b.vkt")]) == 0
    return root / "b.vkt"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    inp = tmp_path_factory.mktemp("runimgs")
    wide = np.full((100, 3000, 3), 255, np.uint8)
    wide[40:60, 300:2700] = 0
    cv2.imwrite(str(inp / "wide.png"), wide)
    small = np.full((300, 300, 3), 255, np.uint8)   # resizes to 736 x 736: under the 1024 cap
    small[120:180, 30:270] = 0
    cv2.imwrite(str(inp / "small.png"), small)
    return inp


def test_run_reports_a_capped_image_and_takes_overrides(bundle, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(bundle), str(images), "-o", str(out), "--no-draw", "--max-side", "1024",
                 "--thresh", "0.4", "--unclip-ratio", "1.2"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    wide_text = (out / "wide.json").read_text()
    wide, small = json.loads(wide_text), json.loads((out / "small.json").read_text())
    assert wide["resized"] == {"from": [100, 3000], "to": [32, 1024], "without_cap": [736, 22080],
                               "reason": "long side capped at 1024 (max_side_len)"}
    assert "100x3000 image runs at 32x1024" in err
    assert "resized" not in small
    # boxes in source pixels around the bar (x 300..2699, y 40..59); the unclip override shrinks the growth
    (det,) = wide["detections"]
    pts = np.array(det["polygon"])
    assert pts[:, 0].min() < 300 and pts[:, 0].max() > 2699
    # every coordinate printed with at most 2 decimals (no float32 noise such as 12.340000152587891)
    coords = re.findall(r"-?\d+\.\d+", wide_text[wide_text.index('"polygon"'):wide_text.index('"score"')])
    assert coords and all(len(c.split(".")[1]) <= 2 for c in coords)
    # a larger unclip ratio grows the small image's box: the override reaches the post-processing
    out2 = tmp_path / "out2"
    assert main(["run", str(bundle), str(images / "small.png"), "-o", str(out2), "--no-draw", "--unclip-ratio", "3"]) == 0
    grown = np.array(json.loads((out2 / "small.json").read_text())["detections"][0]["polygon"])
    tight = np.array(small["detections"][0]["polygon"])
    assert np.ptp(grown[:, 1]) > np.ptp(tight[:, 1]) + 10


def test_run_bad_options_exit_2(bundle, images, toy_onnx, tmp_path, capsys):
    cases = {("--thresh", "1.5"): "thresh must be a number in (0, 1)",
             ("--mean", "a,b,c"): "--mean must be 3 comma-separated numbers",
             ("--limit-type", "widest"): "limit_type must be 'min' or 'max'",
             ("--max-candidates", "0"): "max_candidates must be a positive integer"}
    for args, msg in cases.items():
        capsys.readouterr()
        assert main(["run", str(bundle), str(images), "-o", str(tmp_path / "o"), *args]) == 2, args
        err = " ".join(capsys.readouterr().err.split())
        assert msg in err and "internal error" not in err, (args, err)
    # text-detection options on an object-detection bundle are refused, not ignored
    from vkt.export.onnx_import import import_onnx

    detr = import_onnx(toy_onnx, tmp_path / "detr.vkt", task="detr").root
    assert main(["run", str(detr), str(images), "-o", str(tmp_path / "o"), "--thresh", "0.2"]) == 2
    assert "only apply to text-detection bundles" in capsys.readouterr().err
