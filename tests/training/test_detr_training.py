"""DETR training: synthetic data, padded batches with targets, a short Lightning run that lowers the Hungarian loss."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lightning")

from vkt.errors import InputError  # noqa: E402
from vkt.tasks import TASKS  # noqa: E402
from vkt.training.detr_data import CocoDetectionDataset, DetrTransform, collate, synthetic_shapes  # noqa: E402

PRE = {**TASKS["detr"].preprocess, "resize": {"mode": "shortest_edge", "shortest_edge": 128, "longest_edge": 192}}
AP50_FLOOR = 0.6


def test_synthetic_samples_and_targets():
    data = synthetic_shapes(4, size=(96, 128), num_classes=3, seed=1)
    s = data[0]
    assert s.image.shape == (96, 128, 3) and s.image.dtype == np.uint8 and s.boxes.shape == (len(s.labels), 4)
    x, t, m = DetrTransform(PRE)(s)
    assert x.shape == (3, 128, 170) and m["orig_size"] == (96, 128) and m["size"] == (128, 170)
    # cxcywh normalised: back to pixels gives the source boxes
    cx, cy, w, h = t["boxes"].T
    back = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) * [128, 96, 128, 96]
    np.testing.assert_allclose(back, s.boxes, atol=1e-3)
    # a flip moves boxes to the mirrored place
    flipped = DetrTransform(PRE, train=True, seed=3)
    for _ in range(4):
        _, tf, _ = flipped(s)
        assert np.allclose(tf["boxes"][:, 0], t["boxes"][:, 0]) or np.allclose(tf["boxes"][:, 0], 1 - t["boxes"][:, 0])
    batch = collate([DetrTransform(PRE)(d) for d in synthetic_shapes(2, size=(96, 128), seed=2)] +
                    [DetrTransform(PRE)(synthetic_shapes(1, size=(128, 96), seed=3)[0])])
    assert batch["pixel_values"].shape == (3, 3, 170, 170) and batch["pixel_mask"][2, :, 128:].sum() == 0
    assert batch["pixel_mask"][0].sum() == 128 * 170


def test_separated_synthetic_shapes_keep_apart():
    data = synthetic_shapes(32, size=(128, 160), max_objects=4, seed=3, separated=True, min_frac=0.2, max_frac=0.4)
    assert sum(len(s.boxes) for s in data) > 48        # most draws find room
    for s in data:
        w, h = s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]
        assert (w >= 32).all() and (w < 64).all() and (h >= 25).all() and (h < 51).all(), s.boxes
        for i in range(len(s.boxes)):
            for j in range(i):
                a, b = s.boxes[i], s.boxes[j]
                apart = a[2] + 4 <= b[0] or b[2] + 4 <= a[0] or a[3] + 4 <= b[1] or b[3] + 4 <= a[1]
                assert apart, (a, b)
        # each box holds its shape's colour (class 0 red, 1 green, 2 blue in BGR), not the grey noise
        for (x0, y0, x1, y1), c in zip(s.boxes.astype(int), s.labels):
            cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
            assert int(s.image[cy, cx].argmax()) == (2, 1, 0)[c], (c, s.image[cy, cx])
    with pytest.raises(InputError, match="min_frac"):
        synthetic_shapes(1, min_frac=0.5, max_frac=0.4)


def test_coco_folder_dataset(tmp_path):
    import cv2

    s = synthetic_shapes(1, size=(64, 80), seed=4)[0]
    cv2.imwrite(str(tmp_path / "a.png"), s.image)
    x0, y0, x1, y1 = s.boxes[0].tolist()
    gt = {"images": [{"id": 5, "file_name": "a.png", "height": 64, "width": 80}],
          "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0},
                          {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}],
          "categories": [{"id": 3, "name": "thing"}, {"id": 7, "name": "other"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ds = CocoDetectionDataset(tmp_path / "gt.json", tmp_path, contiguous=True)
    item = ds[0]
    assert len(ds) == 1 and item.image_id == 5 and item.labels.tolist() == [0]   # crowd dropped, id 3 -> 0
    np.testing.assert_allclose(item.boxes[0], s.boxes[0])
    assert CocoDetectionDataset(tmp_path / "gt.json", tmp_path)[0].labels.tolist() == [3]
    gt["annotations"][0]["category_id"] = 9
    (tmp_path / "bad.json").write_text(json.dumps(gt))
    with pytest.raises(InputError, match="category_id 9"):
        CocoDetectionDataset(tmp_path / "bad.json", tmp_path)
    with pytest.raises(InputError, match="not found"):
        CocoDetectionDataset(tmp_path / "none.json", tmp_path)


def test_short_training_run_lowers_the_loss(tmp_path):
    from vkt.models.detr import tiny_detr
    from vkt.training.detr import DetrTrainConfig, fit, training_losses

    data = synthetic_shapes(8, size=(96, 128), num_classes=3, seed=0)
    model = tiny_detr(num_labels=3, num_queries=10)
    before = training_losses(model, data, PRE)
    cfg = DetrTrainConfig(lr=1e-3, lr_backbone=1e-4, epochs=6, batch_size=4, val_every=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Lightning's hints about workers and loggers
        result = fit(model, data, data[:4], cfg, out_dir=tmp_path, preprocess=PRE)
    after = training_losses(result.model, data, PRE)
    assert after["loss"] < 0.9 * before["loss"], (before, after)
    assert result.checkpoint is not None and result.checkpoint.is_file()
    assert len(result.history) == 1 and 0.0 <= result.history[0]["AP50"] <= 1.0
    with pytest.raises(InputError, match="class ids"):
        fit(tiny_detr(num_labels=2), data, config=cfg)
    with pytest.raises(InputError, match="lr must be a number > 0"):
        DetrTrainConfig(lr=0)


def test_reduced_config_defaults(tmp_path):
    from vkt.models.detr import reduced_detr
    from vkt.training.detr_run import load_run_config

    cfg = load_run_config(None)
    assert cfg.stride == 16 and cfg.synth_size == (128, 160) and cfg.train_config().lr == 3e-4
    opts = cfg.synth_options()
    assert opts["separated"] and (opts["min_frac"], opts["max_frac"]) == (0.2, 0.45)
    # stride 16: a 128 x 160 image gives the transformer an 8 x 10 feature map
    model = reduced_detr(stride=16)
    with torch.no_grad():
        maps = model.model.backbone.model(torch.zeros(1, 3, 128, 160)).feature_maps
    assert maps[-1].shape[-2:] == (8, 10)
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth_object_frac: [0.2]\n")
    with pytest.raises(InputError, match="synth_object_frac"):
        load_run_config(bad)
    with pytest.raises(InputError, match="stride must be 16 or 32"):
        reduced_detr(stride=8)


@pytest.mark.slow
def test_reduced_config_learns_the_synthetic_set(tmp_path):
    """`vkt train detr --synth 512` (the reduced config's defaults) learns the held-out shapes.

    Measured (seed 0, 2560 steps, OMP_NUM_THREADS=1 on the shared 2-core CPU at load 8-15): `vkt train detr
    --synth 512` reached AP50 0.894, AP 0.596 on the 64 held-out images in 26 min (the same recipe through
    vkt.training.detr.fit in a script: AP50 0.954, AP 0.636); the floor is well below that and far above an
    untrained model's ~0.002.
    """
    pytest.importorskip("pycocotools")
    from vkt.training.detr_run import load_run_config, train_detr_run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_detr_run(load_run_config(None), tmp_path / "run", synth=512, progress=False)
    assert result.history and result.history[-1]["AP50"] >= AP50_FLOOR, result.history
