"""One INT8 option set: `vkt export onnx|textdet|detr|sd` and `vkt quantize` take the same options, with the same
meanings and defaults, and bad values fail with one line before any work."""

from __future__ import annotations

import pytest
import typer

from vkt.cli.main import app, main

EXPORTS = ("onnx", "textdet", "detr", "sd")
# The options every INT8 command must take (the list), with their defaults.
REQUIRED = {"--calib": None, "--holdout": None, "--max-drop": None, "--on-fail": "fp32", "--target": None,
            "--calib-method": None, "--threads": None}


def _command(*path: str):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.get_command(cmd.context_class(cmd), name)
    return cmd


def _int8_params(*path: str) -> dict[str, tuple]:
    """Flag -> (all its names, default, help) of the command's options in the INT8 panel."""
    return {p.opts[0]: (tuple(p.opts), p.default, p.help) for p in _command(*path).params
            if getattr(p, "rich_help_panel", None) == "INT8 options"}


def test_every_int8_command_takes_the_same_options_and_defaults():
    exports = {name: _int8_params("export", name) for name in EXPORTS}
    quantize = _int8_params("quantize")
    first = exports["onnx"]
    assert set(REQUIRED) | {"--int8"} <= set(first)
    for name, opts in exports.items():
        assert opts == first, name  # names, defaults and help texts: one definition
    assert quantize == {k: v for k, v in first.items() if k != "--int8"}  # quantize is always INT8
    for flag, default in REQUIRED.items():
        assert first[flag][1] == default, flag


@pytest.mark.parametrize("cmd", [["export", e] for e in EXPORTS] + [["quantize"]])
def test_help_lists_the_int8_options(cmd, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*cmd, "--help"]) == 0
    out = capsys.readouterr().out
    for flag in (*REQUIRED, "--holdout-labels", "--qat", "--steps", "--ranking"):
        assert flag in out, (cmd, flag)


@pytest.mark.parametrize("args, match", [
    (["--calib", "{d}"], "--calib is only used with --int8"),
    (["--holdout", "auto", "--max-drop", "1"], "--holdout, --max-drop are only used with --int8"),
    (["--int8", "--calib", "{d}", "--max-drop", "1"], "--max-drop is only used with --holdout"),
    (["--int8", "--calib", "{d}", "--on-fail", "ship"], "--on-fail must be fp32 or best, got 'ship'"),
    (["--int8", "--calib", "{d}", "--target", "gpu"], "targets must be a non-empty subset"),
    (["--int8", "--calib", "{d}", "--holdout", "auto", "--max-drop", "150"], "--max-drop is in points"),
    (["--int8", "--calib", "{d}", "--calib-method", "mse"], "calibration method must be one of"),
])
def test_bad_int8_options_fail_the_same_way_on_every_export(args, match, tmp_path, capsys):
    """The checks come from the one option set, before the command looks at its own arguments (none exist here)."""
    for name in EXPORTS:
        argv = ["export", name, str(tmp_path / "missing-source"), "-o", str(tmp_path / "out.vkt"),
                *(a.format(d=tmp_path) for a in args)]
        assert main(argv) == 2, name
        err = " ".join(capsys.readouterr().err.split())
        assert err.startswith("error:") and match in err, (name, err)
    assert not (tmp_path / "out.vkt").exists()


def test_family_checks_run_before_any_export(tmp_path, capsys):
    """sd has no gate, generic no metric, only textdet reads labels: each refused before the export starts."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n a dog \n", encoding="utf-8")
    for argv, match in (
        (["export", "sd", str(tmp_path / "none"), "--int8", "--calib", str(prompts), "--holdout", "auto"],
         "SD has no accuracy gate yet"),
        (["export", "sd", str(tmp_path / "none"), "--int8", "--calib", str(tmp_path)], "must be a text file"),
        (["export", "onnx", str(tmp_path / "none.onnx"), "--int8", "--calib", str(prompts)], "must be a folder"),
    ):
        assert main([*argv, "-o", str(tmp_path / "x.vkt")]) == 2
        assert match in " ".join(capsys.readouterr().err.split()), argv
