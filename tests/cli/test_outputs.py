"""Output paths: never an input, the right kind, writable; refused with one `error:` line (exit 2) before any work."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from vkt.bundle import Bundle
from vkt.cli.main import main

PROFILE = {"batch": (1, 1, 2), "height": (32, 64, 256), "width": (32, 64, 256)}


@pytest.fixture(scope="module")
def textdet_bundle(tmp_path_factory) -> Path:
    """A tiny text-detection bundle (a toy conv net with one sigmoid map) that `vkt run` runs end to end."""
    from vkt.export.onnx_import import import_onnx
    from vkt.export.toy import toy_convnet

    d = tmp_path_factory.mktemp("td")
    import onnx

    onnx.save(toy_convnet(classes=1)[0], str(d / "toy1.onnx"))
    return import_onnx(d / "toy1.onnx", d / "td.vkt", task="textdet", profile=PROFILE).root


def _images(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        ok, buf = cv2.imencode(Path(name).suffix, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        (folder / name).write_bytes(buf.tobytes())
    return _snapshot(folder)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error(capsys, code: int, match: str, label: str = "") -> str:
    err = capsys.readouterr().err
    assert code == 2, f"{label}: exit {code}, stderr {err!r}"
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, f"{label}: {err!r}"
    assert match in errors[0], f"{label}: {match!r} not in {errors[0]!r}"
    return errors[0]


@pytest.fixture()
def no_work(monkeypatch):
    """Every heavy step a command could start raises: a check that comes after the work shows as exit 1."""
    import vkt.cli.int8_options
    import vkt.engines
    import vkt.export.onnx_import
    import vkt.export.triton
    import vkt.runtime.detection
    import vkt.runtime.textdet
    import vkt.runtime.txt2img
    import vkt.training.synth_text

    more = [(vkt.training.synth_text, "write_synth_dataset")]
    try:  # the training commands import torch
        import vkt.training.detr_run
        import vkt.training.textdet

        more += [(vkt.training.textdet, "fit"), (vkt.training.detr_run, "train_detr_run")]
    except ImportError:
        pass

    def work(*a, **k):
        raise AssertionError("the command started its work before checking its output path")

    for mod, name in [(vkt.export.onnx_import, "import_onnx"), (vkt.cli.int8_options, "quantize_with"),
                      (vkt.runtime.textdet, "TextDetector"), (vkt.runtime.detection, "Detector"),
                      (vkt.runtime.txt2img, "Txt2Img"), (vkt.export.triton, "write_triton_repo"),
                      (vkt.engines, "build"), (vkt.engines, "build_bundle_plan"), *more]:
        monkeypatch.setattr(mod, name, work)


def test_run_into_the_input_folder_is_refused_and_inputs_stay(textdet_bundle, tmp_path, capsys):
    imgs = tmp_path / "photos"
    before = _images(imgs)
    line = _one_error(capsys, main(["run", str(textdet_bundle), str(imgs), "-o", str(imgs)]), "is an input")
    assert str(imgs) in line
    code = main(["run", str(textdet_bundle), str(imgs / "b.png"), str(imgs / "a.jpg"), "-o", str(imgs)])
    line = _one_error(capsys, code, "would write 'a.jpg' over the input image")
    assert str(imgs / "a.jpg") in line
    code = main(["run", str(textdet_bundle), str(imgs), "--no-draw", "-o", str(imgs)])  # JSON only: still its folder
    _one_error(capsys, code, "is an input")
    code = main(["run", str(textdet_bundle), str(imgs), "-o", str(textdet_bundle / "annotated")])
    _one_error(capsys, code, "is inside the input bundle")
    assert _snapshot(imgs) == before
    # the same images into a folder of their own (even one inside theirs): annotated copies, originals untouched
    out = imgs / "annotated"
    assert main(["run", str(textdet_bundle), str(imgs), "-o", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["a.jpg", "a.json", "b.jpg", "b.json", "summary.json"]
    assert _snapshot(imgs) == {**before, **{f"annotated/{k}": v for k, v in _snapshot(out).items()}}
    assert (out / "a.jpg").read_bytes() != before["a.jpg"]
    # an output folder may hold the inputs when nothing lands on them: "-o ." beside photos/
    assert main(["run", str(textdet_bundle), str(imgs), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "a.jpg").is_file() and (tmp_path / "summary.json").is_file()
    assert _snapshot(imgs) == {**before, **{f"annotated/{k}": v for k, v in _snapshot(out).items()}}


@pytest.fixture()
def paths(tmp_path, toy_bundle, toy_onnx):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    foreign = tmp_path / "photos"
    _images(foreign)
    calib = tmp_path / "calib"
    _images(calib)
    synth_like = tmp_path / "mine"
    synth_like.mkdir()
    (synth_like / "thesis.tex").write_text("keep me")
    return {"file": a_file, "foreign": foreign, "calib": calib, "mine": synth_like, "bundle": toy_bundle,
            "onnx": toy_onnx, "tmp": tmp_path}


def _cases(p: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    b, o, f = str(p["bundle"]), str(p["onnx"]), str(p["file"])
    prof = "batch=1:1:2,height=16:64:128,width=16:64:128"
    return {
        "run -o a file": (["run", b, str(p["foreign"]), "-o", f], "is an existing file"),
        "run -o under a file": (["run", b, str(p["foreign"]), "-o", f + "/sub"], "is a file, not a folder"),
        "run -o the bundle": (["run", b, str(p["foreign"]), "-o", b], "is an input"),
        "export -o a file": (["export", "onnx", o, "-o", f], "is an existing file"),
        "export -o a file --force": (["export", "onnx", o, "-o", f, "--force"], "is an existing file"),
        "export -o the model --force": (["export", "onnx", o, "-o", o, "--force"], "is an input"),
        "export -o a bundle": (["export", "onnx", o, "-o", b], "already exists; pass --force"),
        "export -o a photo folder --force": (["export", "onnx", o, "-o", str(p["foreign"]), "--force"],
                                             "is not a bundle"),
        "export --int8 -o holds --calib": (["export", "onnx", o, "--profile", prof, "--int8", "--calib",
                                            str(p["calib"]), "-o", str(p["tmp"]), "--force"], "holds the input"),
        "export detr -o a file": (["export", "detr", str(p["tmp"] / "ckpt"), "-o", f], "is an existing file"),
        "export textdet -o a file": (["export", "textdet", "--pretrained", "ppocrv5-mobile", "-o", f],
                                     "is an existing file"),
        "export sd -o a bundle": (["export", "sd", str(p["foreign"]), "-o", b], "already exists"),
        "eval --out a folder": (["eval", b, "--data", str(p["foreign"]), "--out", str(p["tmp"])], "is a folder"),
        "eval --out in the bundle": (["eval", b, "--data", str(p["foreign"]), "--out", str(p["bundle"] / "r.json")],
                                     "inside the input bundle"),
        "eval --out the annotations": (["eval", b, "--coco", f, "--images", str(p["foreign"]), "--out", f],
                                       "is an input"),
        "bench --json a folder": (["bench", o, "--json", str(p["tmp"])], "is a folder"),
        "bench --plot the model": (["bench", o, "--plot", o], "is an input"),
        "triton -o a file": (["triton", b, "-o", f], "is an existing file"),
        "triton over the bundle": (["triton", b, "-o", str(p["bundle"].parent), "--name", p["bundle"].name, "--force"],
                                   "is an input"),
        "triton over a foreign folder": (["triton", b, "-o", str(p["tmp"]), "--name", "photos", "--force"],
                                         "is not a Triton model folder"),
        "triton -o inside the bundle": (["triton", b, "-o", str(p["bundle"] / "repo")], "inside the input bundle"),
        "build -o the onnx": (["build", o, "-o", o], "is an input"),
        "build -o a folder": (["build", b, "-o", str(p["tmp"])], "is a folder"),
        "quantize --qat-checkpoint in the bundle": (["quantize", b, "--calib", str(p["calib"]), "--holdout",
                                                     str(p["foreign"]), "--qat", "--qat-checkpoint",
                                                     str(p["bundle"] / "qat.pt")], "inside the input bundle"),
        "txt2img -o a folder": (["txt2img", b, "a cat", "-o", str(p["tmp"] / "pics.png")], "is a folder"),
        "synth --overwrite a foreign folder": (["synth", "textdet", str(p["mine"]), "--count", "1", "--overwrite"],
                                               "is not a synthetic data set"),
        "quickstart -o a file": (["quickstart", "-o", f], "is an existing file"),
        "train textdet -o a file": (["train", "textdet", "--synth", "4", "--steps", "1", "-o", f], "is an existing file"),
        "train detr -o holds --data": (["train", "detr", "--data", str(p["foreign"]), "-o", str(p["tmp"])],
                                       "holds the input"),
    }


def test_each_bad_output_is_one_line_before_any_work(paths, no_work, capsys):
    (paths["tmp"] / "pics.png").mkdir()
    before = {k: _snapshot(v) for k, v in paths.items() if v.is_dir() and k != "tmp"}
    keep = paths["file"].read_bytes()
    cases = _cases(paths)
    for label, (args, match) in cases.items():
        _one_error(capsys, main(args), match, label)
    assert {k: _snapshot(v) for k, v in paths.items() if v.is_dir() and k != "tmp"} == before
    assert paths["file"].read_bytes() == keep
    Bundle.load(paths["bundle"])


def test_train_textdet_refuses_to_restart_over_a_run(tmp_path, no_work, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(b"earlier run")
    _one_error(capsys, main(["train", "textdet", "--synth", "4", "--steps", "1", "-o", str(run)]), "already holds a run")
    assert (run / "ckpt.pt").read_bytes() == b"earlier run"


def _cannot_create_in(folder: Path) -> bool:
    try:
        fd, p = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(p)
    return False


def test_unwritable_output_is_refused_before_any_work(tmp_path, toy_onnx, no_work, capsys):
    """Two ways a folder refuses new files: permission bits (not for root, who ignores them) and a
    filesystem that takes none whoever asks (sysfs)."""
    tried = 0
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if _cannot_create_in(locked):
            tried += 1
            code = main(["export", "onnx", str(toy_onnx), "-o", str(locked / "sub" / "b.vkt")])
            _one_error(capsys, code, f"cannot write in {str(locked)!r}")
            _one_error(capsys, main(["bench", str(toy_onnx), "--json", str(locked / "rows.json")]), "cannot write in")
    finally:
        locked.chmod(0o755)
    if Path("/sys").is_dir() and _cannot_create_in(Path("/sys")):
        tried += 1
        _one_error(capsys, main(["export", "onnx", str(toy_onnx), "-o", "/sys/vkt-test/b.vkt"]), "cannot write in '/sys'")
    if not tried:
        pytest.skip("no folder here refuses new files: running as root without a read-only sysfs")


def test_triton_force_replaces_only_its_own_model_folder(toy_bundle, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["triton", str(toy_bundle), "-o", str(repo), "--name", "toy"]) == 0
    first = _snapshot(repo)
    _one_error(capsys, main(["triton", str(toy_bundle), "-o", str(repo), "--name", "toy"]), "already exists")
    assert main(["triton", str(toy_bundle), "-o", str(repo), "--name", "toy", "--force", "--max-batch", "1"]) == 0
    after = _snapshot(repo)
    assert sorted(after) == sorted(first) and after["toy/config.pbtxt"] != first["toy/config.pbtxt"]
    assert sorted(os.listdir(repo)) == ["toy"]  # no staging folder left behind
    shutil.rmtree(repo)


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_every_output_follows_the_umask(textdet_bundle, toy_onnx, tmp_path, capsys, mask):
    """Bundles, run outputs, JSON rows, plots, Triton repositories and data sets get the modes open() and mkdir
    give under the umask (0644/0755 under 022), like any Unix tool: a server running as another user reads them."""
    imgs = tmp_path / "imgs"
    _images(imgs)
    for stem in ("a", "b"):  # ICDAR labels for `vkt eval --data`
        (imgs / f"gt_{stem}.txt").write_text("2,2,30,2,30,20,2,20,text\n")
    out = tmp_path / "out"
    old = os.umask(mask)
    try:
        assert main(["export", "onnx", str(toy_onnx), "-o", str(out / "b.vkt"), "--profile",
                     "batch=1:1:2,height=16:64:128,width=16:64:128"]) == 0
        assert main(["run", str(textdet_bundle), str(imgs), "-o", str(out / "run")]) == 0
        assert main(["eval", str(textdet_bundle), "--data", str(imgs), "--out", str(out / "eval.json")]) == 0
        assert main(["bench", str(out / "b.vkt"), "--iters", "1", "--warmup", "0", "--quiet", "--json",
                     str(out / "rows.json"), "--plot", str(out / "bench.png")]) == 0
        assert main(["triton", str(out / "b.vkt"), "-o", str(out / "repo"), "--name", "toy"]) == 0
        assert main(["synth", "textdet", str(out / "synth"), "--count", "1", "--size", "64", "--langs", "latin"]) == 0
        assert main(["quantize", str(out / "b.vkt"), "--calib", str(imgs), "--shape", "64x64"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    want = {"file": 0o666 & ~mask, "dir": 0o777 & ~mask}
    seen = {"file": 0, "dir": 0}
    for p in [out, *out.rglob("*")]:
        kind = "dir" if p.is_dir() else "file"
        seen[kind] += 1
        assert stat.S_IMODE(p.stat().st_mode) == want[kind], f"{p}: {oct(stat.S_IMODE(p.stat().st_mode))}"
    for must in ("b.vkt/manifest.json", "b.vkt/model.int8.ort.onnx", "run/summary.json", "eval.json", "run/a.jpg", "rows.json",
                 "bench.png", "repo/toy/config.pbtxt", "repo/toy/1/model.onnx", "synth/synth.json"):
        assert (out / must).is_file(), must
    assert seen["file"] > 15 and seen["dir"] >= 6
