"""`vkt run` and `vkt eval` on real photos with the PP-OCRv5 bundle; bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from vkt.cli.main import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    return ppocrv5_det_mobile_bundle(tmp_path_factory.mktemp("cli") / "det.vkt")


@pytest.fixture(scope="module")
def skdata() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def test_run_on_a_folder(bundle, skdata, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(skdata / "page.png", inp / "page.png")
    shutil.copy(skdata / "astronaut.png", inp / "astro.png")
    (inp / "notes.txt").write_text("not an image")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    assert main(["run", str(bundle), str(inp), "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 2 and [f["image"] for f in summary["failed"]] == [str(inp / "broken.png")]
    page = json.loads((out / "page.json").read_text())
    assert page["image_size"] == {"height": 191, "width": 384}
    assert len(page["detections"]) > 20
    for d in page["detections"]:
        pts = np.array(d["polygon"])
        assert pts.shape == (4, 2) and 0.5 <= d["score"] <= 1
        assert (pts >= 0).all() and (pts[:, 0] <= 383).all() and (pts[:, 1] <= 190).all()
    vis = cv2.imread(str(out / "page.jpg"))
    assert vis.shape == (191, 384, 3)
    # the annotation is drawn: the picture differs from the grey input in green-dominant pixels
    assert ((vis[:, :, 1].astype(int) - vis[:, :, 2]) > 60).sum() > 100
    assert "2 image(s)" in capsys.readouterr().out


def test_run_bad_inputs_exit_2(bundle, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", str(bundle), str(empty), "-o", str(tmp_path / "o1")]) == 2
    assert "holds no images" in capsys.readouterr().err
    corrupt = tmp_path / "c.jpg"
    corrupt.write_bytes(b"")
    assert main(["run", str(bundle), str(corrupt), "-o", str(tmp_path / "o2")]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["run", str(tmp_path), str(corrupt), "-o", str(tmp_path / "o3")]) == 2
    assert "not a vkt bundle" in capsys.readouterr().err


def test_eval_against_rapidocr_labels(bundle, skdata, tmp_path, capsys):
    """Labels written from rapidocr-onnxruntime's detections (an independent peer) in ICDAR format."""
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector as RapidTextDetector

    from vkt.models.zoo import ppocrv5_det_mobile_onnx

    peer = RapidTextDetector({"model_path": str(ppocrv5_det_mobile_onnx()), "limit_side_len": 736, "limit_type": "min",
                              "mean": [0.5] * 3, "std": [0.5] * 3, "thresh": 0.3, "box_thresh": 0.5,
                              "max_candidates": 1000, "unclip_ratio": 1.6, "use_dilation": True, "score_mode": "fast",
                              "intra_op_num_threads": -1, "inter_op_num_threads": -1, "use_cuda": False, "use_dml": False})
    data = tmp_path / "data"
    data.mkdir()
    img = cv2.cvtColor(cv2.imread(str(skdata / "text.png"), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(data / "img_1.png"), img)
    boxes, _ = peer(img)
    lines = [",".join(str(int(v)) for v in b.reshape(-1)) + ",text" for b in boxes]
    lines.append("0,0,5,0,5,5,0,5,###")
    (data / "gt_img_1.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval.json"
    assert main(["eval", str(bundle), "--data", str(data), "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ground_truth"] == len(boxes) > 0
    assert printed["hmean"] >= 0.99
    assert json.loads(out.read_text())["images"]["img_1.png"]["matches"] == len(boxes)
    assert main(["eval", str(bundle), "--data", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
