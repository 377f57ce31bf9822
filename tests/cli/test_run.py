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


def _bad_input_folder(root: Path) -> tuple[Path, np.ndarray]:
    inp = root / "in"
    inp.mkdir()
    page = cv2.imread(str(Path(__import__("skimage").__file__).parent / "data" / "page.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(inp / "gray.png"), page)                                         # [H, W] uint8
    cv2.imwrite(str(inp / "rgba.png"), np.dstack([np.dstack([page] * 3), np.full_like(page, 255)]))
    cv2.imwrite(str(inp / "deep.png"), page.astype(np.uint16) * 257)                # 16-bit
    cv2.imwrite(str(inp / "one.png"), np.zeros((1, 1, 3), np.uint8))
    (inp / "empty.jpg").write_bytes(b"")
    (inp / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    (inp / "notes.txt").write_text("not an image")
    return inp, page


def test_run_every_bad_input_of_the_issue(bundle, tmp_path, capsys):
    """Corrupt, empty, grayscale, RGBA, 16-bit and 1x1 images and a non-image file in one folder: the readable
    ones are converted (gray -> 3 channels, alpha over white, 16 -> 8 bit), the broken ones are skipped and
    listed, the text file is skipped with a warning; no traceback, exit 0."""
    inp, _ = _bad_input_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(bundle), str(inp), "-o", str(out), "--no-draw"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "4 image(s)" in captured.out and "(2 skipped)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    failed = {Path(f["image"]).name: f["error"] for f in summary["failed"]}
    assert set(failed) == {"empty.jpg", "corrupt.jpg"}
    assert "empty" in failed["empty.jpg"] and "cannot decode" in failed["corrupt.jpg"]
    res = {Path(r["image"]).name: json.loads((out / r["json"]).read_text()) for r in summary["results"]}
    assert set(res) == {"gray.png", "rgba.png", "deep.png", "one.png"}
    n = len(res["gray.png"]["detections"])
    assert n > 20 and len(res["rgba.png"]["detections"]) == n and abs(len(res["deep.png"]["detections"]) - n) <= 1
    assert res["one.png"]["image_size"] == {"height": 1, "width": 1} and res["one.png"]["detections"] == []


@pytest.mark.slow
def test_run_huge_image_resizes_within_the_profile(bundle, tmp_path, capsys):
    """A 10000x10000 image through `vkt run` is resized to the profile's max (2048) and its boxes come back in
    source pixels on the text. (~20 s on the shared CPU; TextDetector's own 10000x10000 test is in the default run.)"""
    _, page = _bad_input_folder(tmp_path)
    inp = tmp_path / "huge"
    inp.mkdir()
    huge = np.full((10000, 10000), 255, np.uint8)
    huge[4000:5910, 3000:6840] = cv2.resize(page, (3840, 1910))                       # the page, 10x
    cv2.imwrite(str(inp / "huge.png"), huge)
    out = tmp_path / "out"
    assert main(["run", str(bundle), str(inp), "-o", str(out)]) == 0
    res = json.loads((out / "huge.json").read_text())
    assert res["image_size"] == {"height": 10000, "width": 10000}
    assert res["input_size"] == {"height": 2048, "width": 2048}   # capped at the profile's max
    boxes = [np.array(d["polygon"]) for d in res["detections"]]
    assert len(boxes) >= 3 and all((b >= 0).all() and (b <= 9999).all() for b in boxes)
    centres = np.array([b.mean(0) for b in boxes])   # on the pasted page, in source pixels
    assert (centres[:, 0] > 3000).all() and (centres[:, 0] < 6840).all() and (centres[:, 1] > 4000).all() \
        and (centres[:, 1] < 5910).all()
    assert cv2.imread(str(out / "huge.jpg")).shape == (10000, 10000, 3)


def test_run_image_beyond_a_static_profile_is_skipped_alone(tmp_path, capsys):
    """A bundle whose graph takes 256x256 only: an image whose resize cannot be 256x256 is skipped with the
    profile error, the other image of its chunk still runs."""
    from vkt.models.zoo import ppocrv5_det_mobile_onnx

    static = tmp_path / "static.vkt"
    assert main(["export", "onnx", str(ppocrv5_det_mobile_onnx()), "--task", "textdet", "-o", str(static),
                 "--profile", "batch=1:1:2,height=256:256:256,width=256:256:256"]) == 0
    inp = tmp_path / "in"
    inp.mkdir()
    cv2.imwrite(str(inp / "a_square.png"), np.full((300, 300, 3), 200, np.uint8))
    cv2.imwrite(str(inp / "b_wide.png"), np.full((100, 900, 3), 200, np.uint8))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["run", str(static), str(inp), "-o", str(out), "--no-draw"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "1 image(s)" in captured.out and "(1 skipped)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(r["image"]).name for r in summary["results"]] == ["a_square.png"]
    (f,) = summary["failed"]
    assert Path(f["image"]).name == "b_wide.png" and "fit no shape profile" in f["error"] and "[256, 256]" in f["error"]
