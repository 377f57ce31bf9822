"""ImageFolderReader and shape helpers: clear errors for unusable folders, corrupt files skipped, shapes cycled."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vkt.calibration import ImageFolderReader, array_feeds, calibration_shapes, simple_image_preprocess
from vkt.calibration.data import resize_feed
from vkt.errors import CalibrationError


def _images(folder, n, size=(20, 28), seed=0):
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i:02d}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return folder


def test_reader_yields_preprocessed_feeds_at_cycled_shapes(tmp_path, caplog):
    folder = _images(tmp_path / "calib", 3)
    pre = simple_image_preprocess("image")
    with caplog.at_level(logging.WARNING, logger="vkt"):
        reader = ImageFolderReader(folder, pre, shapes=[(16, 16), (32, 24)], show_progress=False, min_images=32)
    assert "3 image(s)" in caplog.text and "at least 32" in caplog.text
    feeds = list(reader)
    assert [f["image"].shape for f in feeds] == [(1, 3, 16, 16), (1, 3, 32, 24), (1, 3, 16, 16)]
    assert all(f["image"].dtype == np.float32 and 0 <= f["image"].min() <= f["image"].max() <= 1 for f in feeds)
    assert len(reader) == 3 and reader.describe()["images"] == 3
    # without shapes: whatever preprocess returns ([1, 3, 20, 28] here)
    raw = next(iter(ImageFolderReader(folder, pre, show_progress=False, limit=1)))
    assert raw["image"].shape == (1, 3, 20, 28)


def test_corrupt_files_are_skipped_with_a_warning(tmp_path, caplog):
    folder = _images(tmp_path / "calib", 2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    reader = ImageFolderReader(folder, simple_image_preprocess("image"), show_progress=False, min_images=1)
    with caplog.at_level(logging.WARNING, logger="vkt"):
        feeds = list(reader)
    assert len(feeds) == 2
    assert "skipping calibration image broken.jpg" in caplog.text
    assert [name for name, _ in reader.skipped] == ["broken.jpg"]


def _txt_only(p):
    (p / "txt").mkdir()
    (p / "txt" / "a.txt").write_text("x")
    return p / "txt"


def _a_file(p):
    (p / "f.png").write_bytes(b"x")
    return p / "f.png"


def _empty(p):
    (p / "empty").mkdir()
    return p / "empty"


@pytest.mark.parametrize("setup, match", [
    (lambda p: p / "missing", "calibration folder not found"),
    (_empty, "is empty"),
    (_txt_only, "holds 1 file.* but no images"),
    (_a_file, "got a file"),
])
def test_unusable_folders_raise(tmp_path, setup, match):
    with pytest.raises(CalibrationError, match=match):
        ImageFolderReader(setup(tmp_path), simple_image_preprocess("image"), show_progress=False)


def test_all_corrupt_raises_on_iteration(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(b"garbage")
    reader = ImageFolderReader(folder, simple_image_preprocess("image"), show_progress=False, min_images=1)
    with pytest.raises(CalibrationError, match=r"none of the 2 image\(s\).*could be used"):
        list(reader)


def test_feeds_outside_the_spec_are_skipped(tmp_path, toy_model):
    _, spec = toy_model
    folder = _images(tmp_path / "calib", 2)
    # 300 > the profile's max height 256
    reader = ImageFolderReader(folder, simple_image_preprocess("image"), shapes=[(300, 32), (32, 32)], spec=spec,
                               show_progress=False, min_images=1)
    assert [f["image"].shape for f in reader] == [(1, 3, 32, 32)]


def test_calibration_shapes_lie_inside_the_profile(toy_model):
    _, spec = toy_model  # height/width (16, 64, 256)
    assert calibration_shapes(spec) == [(64, 64), (32, 32), (160, 160)]
    assert calibration_shapes(spec, round_to=1) == [(64, 64), (40, 40), (160, 160)]


def test_resize_feed_and_array_feeds():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    r = resize_feed({"x": x, "ids": np.zeros((2, 5), np.int64)}, (8, 6))
    assert r["x"].shape == (2, 3, 8, 6) and r["ids"].shape == (2, 5)
    assert np.allclose(r["x"][1, 2].mean(), x[1, 2].mean(), rtol=0.05)  # channels stay in place
    feeds = array_feeds({"x": x})
    assert len(feeds) == 2 and feeds[1]["x"].shape == (1, 3, 4, 4)
    with pytest.raises(CalibrationError, match="common first dimension"):
        array_feeds({"x": x, "y": x[:1]})
