"""SIGINT / SIGTERM: exit 130 / 143 with one line naming the command; what was being made is either
complete or absent (an export asked for INT8 never leaves a bundle without it), an edited bundle stays as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer

from vkt.bundle import Bundle
from vkt.cli import main as cli_main
from vkt.errors import BundleError

PROFILE = "batch=1:1:2,height=16:64:128,width=16:64:128"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def toy_app(monkeypatch):
    """A two-command app in place of vkt's: `slow` waits for a signal, `quits` exits with its own code."""
    app = typer.Typer()

    @app.command()
    def slow(kill: str = typer.Option("")) -> None:
        if kill:
            os.kill(os.getpid(), getattr(signal, kill))
        time.sleep(30)
        raise AssertionError("the signal did not stop the command")

    @app.command()
    def quits(code: int) -> None:
        raise typer.Exit(code)

    monkeypatch.setattr(cli_main, "app", app)
    return app


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_exits_128_plus_n_with_one_line(toy_app, capsys, sig, code):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert cli_main.main(["slow", "--kill", sig]) == code
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: interrupted ({sig}) during `vkt slow`"]
    assert {s: signal.getsignal(s) for s in before} == before  # handlers are main()'s only while it runs


def test_exit_codes_of_commands_are_returned(toy_app, capsys):
    assert cli_main.main(["quits", "3"]) == 3
    assert cli_main.main(["quits", "0"]) == 0
    assert capsys.readouterr().err == ""


def _calib(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return folder


def _interrupt(tmp_path: Path, patch: str, args: list[str], sig: signal.Signals) -> subprocess.CompletedProcess:
    """Run ``vkt ARGS`` in a child where ``patch`` ("module:function" or "module:Class.method") is replaced by a wait that first drops a
    marker file: the signal is sent exactly while that step runs (no guessing at timings)."""
    mod, fn = patch.split(":")
    owner, _, name = fn.rpartition(".")  # a method: set on its class
    marker = tmp_path / "reached"
    code = textwrap.dedent(f"""
        import pathlib, sys, time
        import {mod} as m
        def wait(*a, **k):
            pathlib.Path({str(marker)!r}).write_text("x")
            time.sleep(120)
        setattr({"m." + owner if owner else "m"}, {name!r}, wait)
        from vkt.cli.main import main
        sys.exit(main({args!r}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert proc.poll() is None, f"vkt ended before the step: {proc.communicate()}"
            assert time.monotonic() < deadline, "the step was never reached"
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _check_line(r: subprocess.CompletedProcess, sig: signal.Signals, command: str) -> None:
    assert r.returncode == 128 + sig, (r.returncode, r.stderr)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: interrupted ({sig.name}) during `{command}`"], r.stderr
    assert "Traceback" not in r.stderr


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_int8_export_leaves_no_bundle(tmp_path, toy_onnx, sig):
    """Stopped while calibrating, after the FP32 graph was written: nothing a load accepts at --output."""
    calib = _calib(tmp_path / "calib")
    out = tmp_path / "b.vkt"
    r = _interrupt(tmp_path, "vkt.calibration.ranges:compute_ranges",
                   ["export", "onnx", str(toy_onnx), "--profile", PROFILE, "--int8", "--calib", str(calib), "-o", str(out)],
                   sig)
    _check_line(r, sig, "vkt export onnx")
    with pytest.raises(BundleError):
        Bundle.load(out)
    assert sorted(os.listdir(tmp_path)) == ["calib", "reached"]  # no staging folder left either


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_int8_export_keeps_the_bundle_it_was_to_replace(tmp_path, toy_onnx, toy_bundle, sig):
    calib = _calib(tmp_path / "calib")
    before = _snapshot(toy_bundle)
    r = _interrupt(tmp_path, "vkt.calibration.placements:placement",
                   ["export", "onnx", str(toy_onnx), "--profile", PROFILE, "--int8", "--calib", str(calib),
                    "-o", str(toy_bundle), "--force"], sig)
    _check_line(r, sig, "vkt export onnx")
    assert _snapshot(toy_bundle) == before
    Bundle.load(toy_bundle)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_quantize_leaves_the_bundle_as_it_was(tmp_path, toy_bundle, sig):
    """Stopped while writing the Q/DQ graphs, after the calibration table was added: the bundle is unchanged."""
    calib = _calib(tmp_path / "calib")
    # the toy bundle's profile reaches 256 px: calibrate at one shape inside it
    before = _snapshot(toy_bundle)
    r = _interrupt(tmp_path, "vkt.calibration.placements:placement",
                   ["quantize", str(toy_bundle), "--calib", str(calib), "--shape", "64x64"], sig)
    _check_line(r, sig, "vkt quantize")
    assert _snapshot(toy_bundle) == before
    assert not Bundle.load(toy_bundle).has("int8 qdq onnx")
    assert sorted(os.listdir(toy_bundle.parent)) == sorted(["calib", "reached", toy_bundle.name])


@pytest.mark.torch
def test_interrupted_training_keeps_its_last_checkpoint(tmp_path):
    """SIGTERM during `vkt train textdet` (Lightning catches the interrupt and calls sys.exit(1) itself): exit 143,
    the checkpoint written before the signal still loads, and no bundle is exported from a half run."""
    from vkt.training.textdet_ckpt import load_checkpoint

    run = tmp_path / "run"
    r = _interrupt(tmp_path, "vkt.training.textdet:validate",
                   ["train", "textdet", "--synth", "4", "--steps", "4", "--batch", "1", "--size", "64",
                    "--ckpt-every", "1", "--val-every", "2", "-o", str(run)], signal.SIGTERM)
    _check_line(r, signal.SIGTERM, "vkt train textdet")
    state = load_checkpoint(run)
    assert 1 <= state["step"] < 4
    assert not (run / "bundle").exists()


def test_interrupted_build_leaves_the_bundle_as_it_was(tmp_path, toy_bundle):
    """Stopped after the plan file was copied in, before the manifest names it: the bundle is unchanged."""
    pytest.importorskip("tensorrt_rtx", reason="needs tensorrt-rtx (pip install tensorrt-rtx) to build on a CPU")
    before = _snapshot(toy_bundle)
    r = _interrupt(tmp_path, "vkt.bundle:Bundle.save",
                   ["build", str(toy_bundle), "--module", "tensorrt_rtx", "--sm", "SM89",
                    "--profile", "batch=1:1:1,height=16:32:64,width=16:32:64"], signal.SIGTERM)
    _check_line(r, signal.SIGTERM, "vkt build")
    assert _snapshot(toy_bundle) == before
    assert sorted(os.listdir(toy_bundle.parent)) == sorted(["reached", toy_bundle.name])
