"""Tables print every figure in full at 80 columns and when piped (CI logs), not "38…"."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _vkt(*args: str, columns: int = 80) -> str:
    env = {**os.environ, "COLUMNS": str(columns)}
    r = subprocess.run([sys.executable, "-m", "vkt", *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("columns", [80, 40])
def test_bench_prints_every_figure_of_its_json_rows(toy_bundle, tmp_path, columns):
    rows_file = tmp_path / "rows.jsonl"
    out = _vkt("bench", str(toy_bundle), "-B", "1", "-B", "2", "--iters", "3", "--warmup", "1", "--threads", "1",
               "--json", str(rows_file), columns=columns)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert len(rows) == 2 and "…" not in out
    words = set(out.split())
    for r in rows:  # the printed figures are the JSON's, formatted as the table formats them
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms"):
            assert f"{r[key]:.3f}" in words, (key, r[key], out)
        assert f"{r['throughput']:.1f}" in words and r["case"] in words and r["target"] in words


def test_inspect_prints_file_names_whole(toy_bundle):
    from vkt.bundle import Bundle

    names = [e.path for e in Bundle.load(toy_bundle).entries]
    for columns in (80, 40):
        out = _vkt("inspect", str(toy_bundle), columns=columns)
        words = set(out.split())
        assert all(n in words for n in names), out


def test_narrow_console_gets_records_wide_one_the_table():
    from rich.console import Console
    from rich.table import Table

    from vkt.tables import print_table

    t = Table("target", "case", "p50 ms", "p90 ms", title="t")
    figures = ["123456.789", "98765.4321"]
    t.add_row("ort-fp32-with-a-long-name", "1x3x736x1472", *figures)
    for width, boxed in ((200, True), (30, False)):
        c = Console(width=width, record=True)
        print_table(t, c)
        text = c.export_text()
        assert all(f in text.split() for f in figures) and "…" not in text
        assert ("┃" in text) is boxed
