"""`vkt export detr` / `vkt run` / `vkt eval --coco` / `vkt train detr` with tiny DETRs; bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from vkt.cli.main import main
from vkt.errors import InputError, ShapeError

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("transformers")

LABELS = ["box", "disc", "tri"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from vkt.models.detr import tiny_detr

    m = tiny_detr(num_labels=3, num_queries=10)
    m.config.id2label = dict(enumerate(LABELS))
    m.config.label2id = {n: i for i, n in enumerate(LABELS)}
    folder = tmp_path_factory.mktemp("detr") / "ckpt"
    m.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("detr-bundle") / "d.vkt"
    assert main(["export", "detr", str(ckpt), "-o", str(out), "--postprocess", "--top-k", "10",
                 "--shortest-edge", "160", "--longest-edge", "224"]) == 0
    return out


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """A COCO-format folder of synthetic shapes: val.json + val/ (category ids 1..3 named as LABELS)."""
    from vkt.training.detr_data import synthetic_shapes

    root = tmp_path_factory.mktemp("coco")
    (root / "val").mkdir()
    images, anns = [], []
    for s in synthetic_shapes(4, size=(160, 224), seed=5):
        cv2.imwrite(str(root / "val" / f"{s.image_id}.png"), s.image)
        images.append({"id": s.image_id, "file_name": f"{s.image_id}.png", "height": 160, "width": 224})
        for (x0, y0, x1, y1), c in zip(s.boxes.tolist(), s.labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": s.image_id, "category_id": c + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(LABELS)]
    (root / "val.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_export_writes_a_detr_bundle(bundle):
    from vkt.bundle import Bundle

    b = Bundle.load(bundle)
    assert b.task == "object-detection" and b.postprocess["labels"] == LABELS
    assert b.preprocess["resize"] == {"mode": "shortest_edge", "shortest_edge": 160, "longest_edge": 224}
    assert b.spec().profiles[0].axes["height"] == (32, 160, 224)   # profile around the run's resize rule
    assert max(b.manifest["export"]["parity_max_abs"].values()) < 1e-2


def test_run_draws_boxes_and_eval_gives_coco_ap(bundle, coco, tmp_path, capsys):
    inp = coco / "val"
    out = tmp_path / "out"
    assert main(["run", str(bundle), str(inp), "-o", str(out), "--score-threshold", "0.0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "object-detection" and summary["images"] == 4 and summary["detections"] == 40
    one = json.loads((out / "1.json").read_text())
    assert len(one["detections"]) == 10 and one["image_size"] == {"height": 160, "width": 224}
    assert cv2.imread(str(out / "1.jpg")).shape == (160, 224, 3)
    capsys.readouterr()
    assert main(["eval", str(bundle), "--coco", str(coco / "val.json"), "--images", str(inp),
                 "-o", str(tmp_path / "ap.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 4 and 0.0 <= printed["AP50"] <= 1.0 and set(printed) >= {"AP", "AP75", "APs", "AR100"}
    assert json.loads((tmp_path / "ap.json").read_text())["AP"] == printed["AP"]
    results = json.loads((tmp_path / "ap.results.json").read_text())
    assert {r["category_id"] for r in results} <= {1, 2, 3}            # labels matched to category names
    # the wrong flags for the task, and a missing image, are one line and exit 2
    assert main(["eval", str(bundle), "--data", str(inp)]) == 2
    assert "--coco ANN.json --images DIR" in capsys.readouterr().err
    assert main(["eval", str(bundle), "--coco", str(coco / "val.json"), "--images", str(tmp_path)]) == 2
    assert "is missing" in capsys.readouterr().err


def test_bad_images_through_run_and_detector(bundle, tmp_path, capsys):
    from vkt.runtime.detection import Detector

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 256, (120, 90), dtype=np.uint8))
    cv2.imwrite(str(folder / "rgba.png"), rng.integers(0, 256, (100, 140, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "deep.png"), rng.integers(0, 65536, (90, 100, 3), dtype=np.uint16))
    cv2.imwrite(str(folder / "one.png"), np.full((1, 1, 3), 200, np.uint8))
    cv2.imwrite(str(folder / "thin.png"), np.full((20, 2000, 3), 90, np.uint8))      # 2 x 224 after resize: below the profile
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["run", str(bundle), str(folder), "-o", str(out), "--score-threshold", "0.0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(Path(r["image"]).name for r in summary["results"]) == ["deep.png", "gray.png", "one.png", "rgba.png"]
    failed = {Path(f["image"]).name: f["error"] for f in summary["failed"]}
    assert set(failed) == {"corrupt.png", "empty.jpg", "thin.png"}
    assert "cannot decode" in failed["corrupt.png"] and "empty" in failed["empty.jpg"]
    assert "height" in failed["thin.png"] and "32" in failed["thin.png"]          # names the axis and the limit
    assert json.loads((out / "one.json").read_text())["image_size"] == {"height": 1, "width": 1}
    capsys.readouterr()
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["run", str(bundle), str(empty), "-o", str(tmp_path / "o2")]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert main(["run", str(bundle), str(folder / "empty.jpg"), "-o", str(tmp_path / "o3")]) == 2
    assert "could be used" in capsys.readouterr().err
    with Detector(bundle, threads=1, score_threshold=0.0) as det:
        big = det(np.zeros((10000, 10000, 3), np.uint8))[0]       # 10000 x 10000 -> 160 x 160, boxes in source pixels
        assert big.image_size == (10000, 10000) and big.meta["input_size"] == {"height": 160, "width": 160}
        with pytest.raises(ShapeError, match="height"):
            det(np.zeros((20, 2000, 3), np.uint8))
        with pytest.raises(InputError, match="too elongated"):
            det(np.zeros((1, 10000, 3), np.uint8))
        with pytest.raises(InputError, match="expected dtype"):
            det(np.zeros((8, 8, 3), np.int32))


def test_export_errors(ckpt, tmp_path, capsys):
    out = str(tmp_path / "x.vkt")
    assert main(["export", "detr", str(ckpt), "-o", out, "--int8"]) == 2
    assert "--calib" in capsys.readouterr().err
    assert main(["export", "detr", str(ckpt), "-o", out, "--static", "800by1066"]) == 2
    assert "--static must be HxW" in capsys.readouterr().err
    assert main(["export", "detr", str(ckpt), "-o", out, "--holdout", str(tmp_path)]) == 2
    assert "--holdout is only used with --int8" in capsys.readouterr().err
    assert main(["export", "detr", str(ckpt), "-o", out, "--int8", "--calib", str(tmp_path), "--max-drop", "150"]) == 2
    assert "--max-drop is in points of the metric" in capsys.readouterr().err
    assert main(["export", "detr", str(ckpt), "-o", out, "--int8", "--calib", str(tmp_path), "--on-fail", "ship"]) == 2
    assert "--on-fail must be fp32 or best" in capsys.readouterr().err
    assert main(["export", "detr", str(ckpt), "-o", out, "--int8", "--calib", str(tmp_path), "--weight-rounding", "adaround"]) == 2
    assert "--weight-rounding must be gptq or nearest, got 'adaround'" in capsys.readouterr().err
    assert main(["export", "detr", str(ckpt), "-o", out, "--int8", "--calib", str(tmp_path), "--percentile", "0"]) == 2
    assert "--percentile must be in (0, 100]" in capsys.readouterr().err
    assert main(["export", "detr", str(tmp_path / "none"), "-o", out]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    # a checkpoint with a missing and an unexpected key: listed by name
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((ckpt / "config.json").read_text())
    sd = load_file(str(ckpt / "model.safetensors"))
    sd.pop("bbox_predictor.layers.0.weight")
    sd["extra.weight"] = sd["bbox_predictor.layers.0.bias"].clone()
    save_file(sd, str(bad / "model.safetensors"))
    assert main(["export", "detr", str(bad), "-o", out]) == 2
    err = capsys.readouterr().err
    assert "missing keys" in err and "bbox_predictor.layers.0.weight" in err and "extra.weight" in err


def test_train_synthetic_resume_and_export(tmp_path, capsys):
    """Two epochs, then --resume to a third: the run continues from the checkpoint; the model exports."""
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("num_queries: 5\nsynth_size: [64, 96]\nsynth_val: 4\ntrain:\n  epochs: 2\n  batch_size: 4\n  val_every: 1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "detr", "--synth", "8", "-o", str(run), "--config", str(cfg)]) == 0
        first = json.loads((run / "metrics.json").read_text())
        assert [h["epoch"] for h in first["history"]] == [0, 1]
        assert main(["train", "detr", "--synth", "8", "-o", str(run), "--config", str(cfg)]) == 2
        assert "--resume" in capsys.readouterr().err
        assert main(["train", "detr", "--synth", "8", "-o", str(run), "--config", str(cfg), "--resume", "--epochs", "3"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in again["history"]] == [0, 1, 2] and again["resumed"]
    import torch

    state = torch.load(str(run / "checkpoints" / "last.ckpt"), weights_only=True)
    assert state["global_step"] == 6        # 3 epochs x 2 steps: counting went on from the checkpoint
    record = json.loads((run / "model" / "vkt_train.json").read_text())
    assert record["resize"] == {"shortest_edge": 64, "longest_edge": 96} and record["labels"][0] == "shape_0"
    capsys.readouterr()
    assert main(["export", "detr", str(run / "model"), "-o", str(tmp_path / "m.vkt")]) == 0
    from vkt.bundle import Bundle

    assert Bundle.load(tmp_path / "m.vkt").preprocess["resize"]["shortest_edge"] == 64
    # bad runs: both data sources, neither, an unknown config key, resuming nothing
    assert main(["train", "detr", "--synth", "8", "--data", str(tmp_path), "-o", str(tmp_path / "r2")]) == 2
    assert "exactly one of" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("lr: 0.1\n")
    assert main(["train", "detr", "--synth", "8", "-o", str(tmp_path / "r3"), "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown config key(s) ['lr']" in capsys.readouterr().err
    assert main(["train", "detr", "--synth", "8", "-o", str(tmp_path / "r4"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "detr", "--data", str(tmp_path), "-o", str(tmp_path / "r5")]) == 2
    assert "not a COCO-format folder" in capsys.readouterr().err



def test_export_int8_calibrates_past_the_zero_queries(ckpt, coco, tmp_path, capsys):
    """The decoder's first value projection reads constant zeros (no query content yet): calibration must not call
    that degenerate data, and the placement keeps that one MatMul in float."""
    from vkt.bundle import Bundle

    out = tmp_path / "q.vkt"
    assert main(["export", "detr", str(ckpt), "-o", str(out), "--shortest-edge", "160", "--longest-edge", "224",
                 "--int8", "--calib", str(coco / "val")]) == 0
    b = Bundle.load(out)
    assert {e.meta["placement"] for e in b.files("int8 qdq onnx")} == {"ort", "trt"}
    assert "fused int8 ops" in capsys.readouterr().out
    assert "gate" not in b.manifest["calibration"]    # no --holdout: ungated (a warning says so)


def test_fine_tune_on_fewer_classes_reinitialises_the_head(ckpt, coco, tmp_path, capsys):
    """A 3-class checkpoint fine-tuned on a 2-category COCO folder: warned, head re-made, labels from the data."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(coco / "val", data / "train")
    gt = json.loads((coco / "val.json").read_text())
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 3]
    gt["categories"] = [{"id": 1, "name": "box"}, {"id": 2, "name": "disc"}]
    (data / "train.json").write_text(json.dumps(gt))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {ckpt}\nshortest_edge: 64\nlongest_edge: 96\ntrain:\n  epochs: 1\n  batch_size: 4\n")
    with pytest.warns(UserWarning, match="3 classes, 2 were asked for"):
        assert main(["train", "detr", "--data", str(data), "-o", str(tmp_path / "run"), "--config", str(cfg)]) == 0
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "box", "1": "disc"}
