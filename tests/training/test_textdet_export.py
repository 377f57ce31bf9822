"""`vkt train textdet` -> checkpoint -> `vkt export textdet` -> bundle that TextDetector, eval and TensorRT-RTX take."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lightning")
pytest.importorskip("PIL")

from vkt.training import synth_text as _st  # noqa: E402

if not any(_st.fonts_for(s) for s in _st.SCRIPTS):
    pytest.skip("no font for synthetic text: apt-get install fonts-dejavu-core", allow_module_level=True)

from vkt.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_textdet_train.one_thread
    out = tmp_path_factory.mktemp("textdet") / "run"
    # fine-tuned: a from-scratch model after 2 steps is far from any trained function (Kaiming init, BatchNorm
    # statistics of 2 batches) and its probability map on the parity check's noise input is too steep for 1e-4
    rc = main(["train", "textdet", "--synth", "8", "--out", str(out), "--steps", "2", "--batch", "2", "--size", "64",
               "--ckpt-every", "1", "--val-every", "2", "--pretrained", "ppocrv5-mobile"])
    torch.set_num_threads(n)
    assert rc == 0
    return out


def test_train_cli_writes_checkpoint_history_and_bundle(run):
    from vkt.bundle import Bundle
    from vkt.runtime.textdet import Detections, TextDetector
    from vkt.training.synth_text import SynthConfig, render_synth

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["val"]["step"] == 2 and "val_hmean" in summary["val"]
    assert all(v <= 1e-4 for v in summary["parity"].values())
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    b = Bundle.load(run / "bundle")
    assert b.task == "text-detection" and b.preprocess["resize"]["limit_type"] == "max"
    assert b.preprocess["resize"]["limit_side_len"] == 64
    img = render_synth(0, seed=9, config=SynthConfig(size=(64, 96))).image
    with TextDetector(run / "bundle") as det:
        out = det([img, img[:, :64]])
    assert len(out) == 2 and all(isinstance(d, Detections) for d in out)


def test_export_cli_from_checkpoint_with_fp16(run, tmp_path, capsys):
    from vkt.bundle import Bundle

    rc = main(["export", "textdet", str(run / "ckpt.pt"), "-o", str(tmp_path / "b"), "--fp16",
               "--profile", "batch=1:1:2,height=32:64:256,width=32:64:256"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "parity fp32 1x3x64x96: max abs diff ORT vs torch" in text and "parity fp16" in text
    b = Bundle.load(tmp_path / "b")
    assert set(b.manifest["precision"]) == {"fp32", "fp16"}
    assert b.spec().profiles[0].axes["height"] == (32, 64, 256)


def test_export_cli_int8_with_the_text_recipe(run, tmp_path, capsys):
    """`vkt export textdet --int8`: the text recipe's defaults without a holdout (percentile ranges, the ort placement
    on the convs only), both placements, and no gate."""
    import cv2

    from vkt.bundle import Bundle
    from vkt.training.synth_text import SynthConfig, render_synth

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        cv2.imwrite(str(calib / f"{i}.png"), render_synth(i, seed=4, config=SynthConfig(size=(64, 96))).image)
    rc = main(["export", "textdet", str(run / "ckpt.pt"), "-o", str(tmp_path / "b"), "--int8", "--calib", str(calib),
               "--profile", "batch=1:1:2,height=32:64:256,width=32:64:256"])
    assert rc == 0
    assert "fused int8 ops" in capsys.readouterr().out
    b = Bundle.load(tmp_path / "b")
    cal = b.manifest["calibration"]
    assert cal["method"] == "percentile" and cal["samples"] == 3 and "gate" not in cal
    meta = {e.meta["placement"]: e.meta for e in b.files("int8 qdq onnx")}
    assert set(meta) == {"ort", "trt", "openvino"} and meta["ort"]["ort_ops"] == "compute"


def test_tensorrt_rtx_builds_the_exported_graph(run):
    pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx (pip install tensorrt-rtx): it builds plans without a GPU")
    from vkt.bundle import Bundle
    from vkt.engines.builder import build_engine
    from vkt.engines.config import BuildConfig
    from vkt.specs import ExportSpec, Profile

    b = Bundle.load(run / "bundle")
    spec = b.spec()
    small = ExportSpec(spec.inputs, spec.outputs, (Profile({"batch": (1, 1, 2), "height": (32, 64, 128),
                                                            "width": (32, 64, 128)}),), spec.opset)
    plan = build_engine(b.root / "model.onnx", small, BuildConfig(module="tensorrt_rtx", compute_capabilities=("SM89",)))
    assert isinstance(plan, bytes) and len(plan) > 10_000


def test_cli_bad_inputs(run, tmp_path, capsys):
    assert main(["export", "textdet", "-o", str(tmp_path / "x")]) == 2
    assert "either a checkpoint" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    assert main(["export", "textdet", str(tmp_path / "junk.pt"), "-o", str(tmp_path / "y")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["train", "textdet", "--out", str(tmp_path / "r")]) == 2
    assert "exactly one of --data" in capsys.readouterr().err
    (tmp_path / "norun").mkdir()
    assert main(["train", "textdet", "--synth", "4", "--out", str(tmp_path / "norun"), "--resume"]) == 2
    assert "no checkpoint in run folder" in capsys.readouterr().err
    (tmp_path / "cfg.yaml").write_text("steps: 2\nbogus: 1\n")
    assert main(["train", "textdet", "--synth", "4", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "unknown training option(s) ['bogus']" in capsys.readouterr().err


def test_cli_resume_extends_the_run(run):
    # last in this file: it moves the shared run on by one step
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "textdet", "--synth", "8", "--out", str(run), "--resume", "--steps", "3",
                     "--size", "320", "--no-export"]) == 0          # --size is ignored: the run's own (64) is kept
    finally:
        torch.set_num_threads(n)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == 3 and summary["config"]["size"] == 64
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
