"""Bad input through the CLI: one clear line, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from vkt.cli.main import main


@pytest.fixture()
def cases(tmp_path, toy_bundle, toy_onnx):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    tampered = tmp_path / "tampered.vkt"
    import shutil

    shutil.copytree(toy_bundle, tampered)
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes()[:-5] + b"xxxxx")
    newer = tmp_path / "newer.vkt"
    shutil.copytree(toy_bundle, newer)
    m = json.loads((newer / "manifest.json").read_text())
    m["schema_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(m))
    b, o = str(toy_bundle), str(toy_onnx)
    return {
        "missing onnx": (["export", "onnx", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "x")], "not found"),
        "corrupt onnx": (["export", "onnx", str(corrupt), "-o", str(tmp_path / "x")], "not a readable ONNX"),
        "empty onnx": (["export", "onnx", str(empty), "-o", str(tmp_path / "x")], "is empty"),
        "unknown task": (["export", "onnx", o, "--task", "segmentation", "-o", str(tmp_path / "x")], "unknown task"),
        "bad profile syntax": (["export", "onnx", o, "--profile", "batch=1:2", "-o", str(tmp_path / "x")], "axis=min:opt:max"),
        "unordered profile": (["export", "onnx", o, "--profile", "batch=4:2:8,height=16:64:256,width=16:64:256",
                               "-o", str(tmp_path / "x")], "min <= opt <= max"),
        "profile misses an axis": (["export", "onnx", o, "--profile", "batch=1:1:8", "-o", str(tmp_path / "x")], "width"),
        "bundle exists": (["export", "onnx", o, "-o", b], "already exists"),
        "tampered bundle": (["bench", str(tampered)], "sha256"),
        "newer schema": (["inspect", str(newer)], "newer than this vkt"),
        "not a bundle": (["inspect", str(tmp_path)], "no manifest.json"),
        "bench missing source": (["bench", str(tmp_path / "ghost")], "no such file"),
        "unknown backend": (["bench", b, "-t", "tpu"], "unknown backend 'tpu'"),
        "unknown precision": (["bench", b, "-t", "ort:int4"], "unknown precision 'int4'"),
        "shape outside profile": (["bench", b, "--shape", "height=1000,width=64", "--iters", "1"], "fit no shape profile"),
        "unknown axis in shape": (["bench", b, "--shape", "depth=3", "--iters", "1"], "does not have"),
        "bad shape syntax": (["bench", b, "--shape", "height:64"], "axis=size"),
        "batch over profile": (["bench", b, "--batch", "64", "--iters", "1"], "fit no shape profile"),
        "zero batch": (["bench", b, "--batch", "0"], "--batch must be >= 1"),
        "cuda not here": (["bench", o, "-t", "ort-cuda", "--shape", "height=64,width=64", "--iters", "1"], "CUDAExecutionProvider"),
        "int8 absent alone": (["bench", b, "-t", "ort:int8"], "has no 'int8 qdq onnx' file"),
        "zero iters": (["bench", b, "--iters", "0"], "iters >= 1"),
        "bad torch factory": (["bench", b, "--torch", "nomodule"], "package.module:callable"),
    }


def test_each_bad_input_gives_one_clear_line(cases, capsys):
    assert len(cases) >= 20
    for label, (args, match) in cases.items():
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2, f"{label}: exit code {code}, stderr {err!r}"
        assert "Traceback" not in err, label
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], f"{label}: {err!r}"
        assert match in errors[0], f"{label}: {match!r} not in {errors[0]!r}"


def test_real_process_prints_no_traceback_and_verbose_does(tmp_path):
    args = [sys.executable, "-m", "vkt", "inspect", str(tmp_path / "nothing")]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bundle not found" in r.stderr
    r = subprocess.run(args[:3] + ["--verbose"] + args[3:], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "BundleError" in r.stderr


def test_help_explains_every_command():
    r = subprocess.run([sys.executable, "-m", "vkt", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("quickstart", "doctor", "export", "build", "bench", "inspect", "run", "eval", "quantize", "serve",
                "triton", "txt2img"):
        assert f" {cmd} " in r.stdout, cmd
        sub = subprocess.run([sys.executable, "-m", "vkt", cmd, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "Usage" in sub.stdout, cmd


def test_usage_errors_are_usage_errors_not_internal_errors(capsys):
    assert main(["bench", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "No such option" in err and "internal error" not in err and "Traceback" not in err
    assert main(["inspect"]) == 2  # missing argument
    assert "Missing argument" in capsys.readouterr().err
