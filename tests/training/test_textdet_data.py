"""ICDAR-style folders and DB targets: label parsing, folder layouts, bad inputs, augmentation, step-indexed data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("pyclipper")

from vkt.errors import InputError  # noqa: E402
from vkt.training.textdet_data import (  # noqa: E402
    IcdarFolder,
    StepDataset,
    TextDetTransform,
    TextSample,
    parse_label_line,
)


def test_label_lines():
    poly, text = parse_label_line("\ufeff10,20,110,20,110,60,10,60,Hello, world")
    assert poly.shape == (4, 2) and poly[2].tolist() == [110, 60] and text == "Hello, world"
    poly, text = parse_label_line("0,0,10,0,20,5,10,10,0,10,5,5,###")          # 6 points
    assert poly.shape == (6, 2) and text == "###"
    poly, text = parse_label_line("1,2,3,4,5,6,7,8,2026")                     # numeric transcription
    assert poly.shape == (4, 2) and text == "2026"
    with pytest.raises(InputError, match="gt_a.txt line 3"):
        parse_label_line("1,2,3,4,word", "gt_a.txt line 3")


def _image(path, h=64, w=96):
    img = np.full((h, w, 3), 200, np.uint8)
    cv2.putText(img, "Hi", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2)
    cv2.imwrite(str(path), img)


def test_folder_layouts_and_bad_inputs(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _image(d / "a.png")
    _image(d / "b.jpg")
    (d / "gt_a.txt").write_text("5,10,60,10,60,45,5,45,Hi\n\n", encoding="utf-8")
    (d / "b.txt").write_text("5,10,60,10,60,45,5,45,###\n", encoding="utf-8")   # <name>.txt works too
    (d / "notes.md").write_text("not an image")
    warnings = []
    ds = IcdarFolder(d, warn=warnings.append)
    assert len(ds) == 2 and ds[0].name == "a" and ds[0].texts == ["Hi"] and ds[1].ignore == [True]
    assert ds[0].image.shape == (64, 96, 3)
    assert len(warnings) == 1 and "notes.md" in warnings[0]                    # skipped, with a warning

    sub = tmp_path / "split"
    (sub / "images").mkdir(parents=True)
    (sub / "gt").mkdir()
    _image(sub / "images" / "c.png")
    (sub / "gt" / "gt_c.txt").write_text("1,1,20,1,20,20,1,20,x\n", encoding="utf-8")
    assert IcdarFolder(sub)[0].texts == ["x"]

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images in"):
        IcdarFolder(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        IcdarFolder(tmp_path / "nowhere")
    (d / "b.txt").unlink()
    with pytest.raises(InputError, match=r"no label file.*b\.jpg"):
        IcdarFolder(d)
    (d / "b.txt").write_text("5,10,60,10,60,45,5,45,ok\n1,2,3,oops\n", encoding="utf-8")
    with pytest.raises(InputError, match="b.txt line 2"):
        IcdarFolder(d)


def _sample(h=120, w=200, box=(30, 40, 170, 70)):
    img = np.full((h, w, 3), 230, np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 20                                                   # a dark "word"
    return TextSample(img, [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)], ["word"], "s")


def test_transform_targets_at_output_size():
    t = TextDetTransform(96, train=False)
    out = t(_sample())
    assert out["image"].shape == (3, 96, 96)
    for k in ("shrink_map", "shrink_mask", "threshold_map", "threshold_mask"):
        assert out[k].shape == (96, 96) and out[k].dtype == np.float32
    kernel = out["shrink_map"] > 0.5
    assert kernel.sum() > 20
    assert (out["image"][0][kernel] < -0.5).all()      # the kernel sits on the dark word (normalised ~ -0.84)
    assert (out["threshold_mask"][kernel] == 1).all()


def test_augmentation_keeps_labels_on_text_and_is_step_indexed():
    t = TextDetTransform(96, train=True)
    words = [_sample(200, 200, (60, 80, 130, 116)), _sample(150, 150, (40, 50, 110, 86))]
    ds = StepDataset(words, t, seed=5)
    on_text = 0
    for g in range(8):
        out = ds[g]
        kernel = out["shrink_map"] > 0.5
        if kernel.any():
            on_text += 1
            assert np.median(out["image"][0][kernel]) < -0.3, g   # flipped / rotated / scaled, still on the word
    assert on_text >= 6
    again = StepDataset(words, t, seed=5)
    for g in (7, 3, 0):                                            # any order: item g depends on (seed, g) only
        assert all(np.array_equal(ds[g][k], again[g][k]) for k in ds[g])
    with pytest.raises(InputError, match="multiple of 32"):
        TextDetTransform(100)
    with pytest.raises(InputError, match="empty"):
        StepDataset([], t)
