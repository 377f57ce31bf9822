"""`vkt build` end to end through vkt.cli.main.main (TensorRT-RTX builds on CPU)."""

from __future__ import annotations

import pytest

from vkt.bundle import Bundle

pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx (pip install tensorrt-rtx)")


def _main(args):
    from vkt.cli.main import main

    return main(args)


def test_build_bundle(toy_bundle_dir, capsys):
    rc = _main(["build", str(toy_bundle_dir), "--sm", "SM89", "--sm", "SM86", "--module", "tensorrt_rtx",
                "--profile", "batch=1:1:2,height=16:32:64,width=16:32:64",
                "--profile", "batch=1:1:1,height=64:256:512,width=64:256:512"])
    assert rc == 0, capsys.readouterr().err
    bundle = Bundle.load(toy_bundle_dir)
    entry = bundle.entry("plan")
    assert entry.path == "model.fp32.plan" and entry.bytes > 10_000
    assert entry.meta["compute_capabilities"] == ["SM89", "SM86"]
    assert [p["axes"]["height"] for p in entry.meta["profiles"]] == [[16, 32, 64], [64, 256, 512]]
    out = capsys.readouterr().out
    assert "model.fp32.plan" in out and "profile 1: batch=1:1:1 height=64:256:512" in out


def test_build_onnx_file_to_plan(toy, tmp_path, capsys):
    path, _ = toy
    out = tmp_path / "toy.plan"
    rc = _main(["build", str(path), "-o", str(out), "--profile", "batch=1:1:4,height=16:64:128,width=16:64:128"])
    assert rc == 0, capsys.readouterr().err
    assert out.stat().st_size > 10_000


def test_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    rc = _main(["build", str(tmp_path / "missing.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "missing.onnx" in err and "no such file" in err and "\n" not in err


def test_unbuildable_graph_is_one_line_and_exit_2(nonzero_onnx, capsys):
    rc = _main(["build", str(nonzero_onnx), "--profile", "n=1:4:8", "-o", str(nonzero_onnx.with_suffix(".plan"))])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert "NonZero" in err[-1] and "find_nz" in err[-1]
