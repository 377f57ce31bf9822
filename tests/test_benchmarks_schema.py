"""benchmarks/: one row schema (schema.py) written by every benchmark's row builders, and the entry point (run.py)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def load():
    """Import a benchmarks/ file by path (as its script runs), restoring sys.path afterwards."""
    saved = list(sys.path)
    cache: dict[str, object] = {}

    def _load(rel: str):
        if rel not in cache:
            name = f"_bench_{Path(rel).stem}"
            spec = importlib.util.spec_from_file_location(name, BENCH / rel)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod  # dataclasses look their module up while the file executes
            spec.loader.exec_module(mod)
            cache[rel] = mod
        return cache[rel]

    yield _load
    sys.path[:] = saved
    for rel in cache:
        sys.modules.pop(f"_bench_{Path(rel).stem}", None)


@pytest.fixture(scope="module")
def schema(load):
    return load("schema.py")


def bench_row(**kw):
    """A vkt.bench.Row as run_bench returns it (figures in ms)."""
    from vkt.bench import Row

    base = dict(target="t", case="1x3x64x64", batch=1, n=5, min_ms=1.0, mean_ms=1.5, p50_ms=1.4, p90_ms=2.0, p99_ms=2.5,
                max_ms=3.0, throughput=666.0, includes="one call")
    return Row(**{**base, **kw})


def test_row_has_every_common_key_and_checks_types(schema):
    r = schema.row("demo", "vkt", includes="one call", threads=2, shape=(1, 3, 736, 736), p50_ms=12.345678, extra=1)
    assert list(r)[:len(schema.COMMON_KEYS)] == list(schema.COMMON_KEYS)
    assert r["shape"] == "1x3x736x736" and r["p50_ms"] == 12.3457 and r["extra"] == 1
    assert r["p90_ms"] is None and r["batch"] is None                      # absent figures are present as null
    assert isinstance(r["date"], str) and r["versions"]["python"] and "cpus" in r["machine"]
    assert schema.problems(r) == []
    with pytest.raises(ValueError, match="threads must be an integer"):
        schema.row("demo", "vkt", includes="x", threads="2")
    with pytest.raises(ValueError, match="p50_ms must be a number"):
        schema.row("demo", "vkt", includes="x", p50_ms="12 ms")
    with pytest.raises(ValueError, match="includes must be a non-empty string"):
        schema.row("demo", "vkt", includes="")
    bad = dict(r)
    del bad["includes"]
    assert schema.problems(bad) == ["missing key 'includes'"]


def test_from_bench_row_keeps_run_bench_figures(schema):
    r = schema.from_bench_row("demo", bench_row(target="ort-fp32", info={"k": 1}), threads=1)
    assert (r["target"], r["shape"], r["p50_ms"], r["p90_ms"], r["n"], r["includes"]) == \
        ("ort-fp32", "1x3x64x64", 1.4, 2.0, 5, "one call")
    assert r["p99_ms"] == 2.5 and r["info"] == {"k": 1} and r["threads"] == 1
    skipped = schema.from_bench_row("demo", bench_row(status="skipped: no GPU", p50_ms=float("nan")))
    assert skipped["p50_ms"] is None and skipped["status"] == "skipped: no GPU"


def test_writer_replaces_only_on_success_and_reader_names_bad_lines(schema, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("old complete result\n")
    with pytest.raises(RuntimeError):
        with schema.RowWriter(path, echo=False) as out:
            out.write(schema.row("demo", "a", includes="x"))
            raise RuntimeError("crash mid-run")
    assert path.read_text() == "old complete result\n"                     # an interrupted run replaces nothing
    assert len((tmp_path / "rows.jsonl.partial").read_text().splitlines()) == 1
    with schema.RowWriter(path, echo=False) as out:
        out.write_all([schema.row("demo", "a", includes="x", p50_ms=1.0), schema.row("demo", "b", includes="x")])
    assert [r["target"] for r in schema.read_rows(path)] == ["a", "b"]
    path.write_text(json.dumps({"bench": "demo"}) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:1: missing key 'target'"):
        schema.read_rows(path)
    with pytest.raises(ValueError, match="must be a number"):
        schema.RowWriter(None, echo=False).write({**schema.row("demo", "a", includes="x"), "p50_ms": "fast"})


def _builders(load):
    """One row from each benchmark's row builder, fed made-up measurements (no model runs)."""
    ns = argparse.Namespace(clients=4, duration=3.0, threads=None, batch=1, detect_image=None)
    spine, textdet, int8, shipped = (load(f) for f in ("bench_spine.py", "bench_textdet.py", "bench_int8.py",
                                                        "bench_int8_shipped.py"))
    detr, sd, sd_int8, serve = (load(f) for f in ("bench_detr.py", "bench_sd.py", "bench_sd_int8.py", "bench_serve.py"))
    diag = {n: load(f"diagnostics/{n}.py") for n in ("diag_textdet_int8_channels", "profile_sd_ort", "bench_sd_attention",
                                                     "bench_sd_calls", "bench_sd_session", "diag_gate_vs_bench")}
    from vkt.calibration.gate_timing import PairTiming
    times = [0.010, 0.012, 0.011]
    return {
        "spine import": spine.import_row(times, [0.2, 0.3, 0.25]),
        "spine overhead": spine.overhead_row(bench_row(target="raw"), bench_row(target="vkt"), 1),
        "textdet": textdet.timing_row("vkt", (1, 3, 736, 1472), times, 2, image="page.png"),
        "textdet summary": textdet.summary_row("vkt vs rapidocr", None, "geomean", geomean_speedup_p50=1.5),
        "int8 placement": int8.placement_row("toy", "ort", bench_row(), 1, 2.8),
        "int8 gate": int8.gate_row("int8 gate step 3", "short side 736", 1, precision="int8", p50_ms=90.0, speedup=1.3),
        "int8_shipped blocks": shipped.blocks_row({"fp32": times, "int8": [0.008, 0.009]}, 2, "short side 736", 5, 4,
                                                  "shipped (all)", [1.0, 1.1]),
        "detr latency": detr.latency_rows([bench_row(target="ort-fp32"), bench_row(target="ort-int8", p50_ms=0.7)], 2,
                                          {"ort-fp32": 74.0})[1],
        "detr agreement": detr.agreement_row("ort-int8", detr.R50, 2, "AP vs FP32", AP=0.98, AP50=0.99),
        "sd": sd.sd_row(bench_row(target="vkt-ort", case="B=1 256x256 4 steps"), "sd15", 2, (1.0, 1.1, 1.2), (1.3, 1.2, 1.1)),
        "sd_int8": sd_int8.sd_int8_row(bench_row(target="unet-int8"), "small", 256, 4, 2),
        "serve": serve.serve_row("vkt serve --max-batch 8", {"ok": 10, "p50_ms": 3.0, "p90_ms": 5.0, "errors": 0}, ns,
                                 "1x3x64x64 FP32 binary", "toy"),
        "diag channels": diag["diag_textdet_int8_channels"].channel_row("Add.7", 736, 2, channels=16, span_ratio=92.0),
        "profile": diag["profile_sd_ort"].profile_row("Conv", {"component": "unet", "graph": "unet.ort.onnx", "size": 512,
                                                               "batch": 2, "threads": 2, "run_s": 5.0, "load_avg": [1, 1]},
                                                      ms=2000.0, share=0.41),
        "attention": diag["bench_sd_attention"].attention_row("ort-mha", "unet64", (2, 4096, 8, 40), 2, times, [1.0, 1.0]),
        "sd calls": diag["bench_sd_calls"].call_row("unet", "vkt-ort-graph", 512, 1, times, times, (1, 1, 1), (1, 1, 1)),
        "gate vs bench": diag["diag_gate_vs_bench"].round_rows(
            PairTiming(120.0, 80.0, (1.4, 1.5, 1.6), 3, 5, (1, 3, 736, 736), None, {}), bench_row(p50_ms=120.0),
            bench_row(p50_ms=96.0), "ov", "toy", "1x3x736x736", [1.0, 1.1])[1],
        "sd session": diag["bench_sd_session"].session_row("unet", "spin", 512, 2, {"graph": "unet.ort.onnx", "threads": 2,
                                                           "calls": 1, "session_config": {}}, times, times, (1, 1, 1), (1, 1, 1)),
    }


def test_every_benchmarks_row_builder_writes_the_schema(load, schema):
    rows = _builders(load)
    for name, r in rows.items():
        assert schema.problems(r) == [], name
        json.loads(json.dumps(r))                                         # plain JSON
    # the figures land in the common keys, in ms, whatever unit the benchmark measured in
    assert rows["textdet"]["p50_ms"] == 11.0 and rows["textdet"]["shape"] == "1x3x736x1472"
    assert rows["sd calls"]["p50_ms"] == 11.0 and rows["attention"]["p90_ms"] == pytest.approx(11.8)
    assert rows["int8_shipped blocks"]["p50_ms"] == 8.5 and rows["int8_shipped blocks"]["speedup"] == round(0.011 / 0.0085, 3)
    assert rows["detr latency"]["speedup_vs_ort_fp32"] == pytest.approx(2.0)
    assert rows["gate vs bench"]["speedup"] == 1.25 and rows["gate vs bench"]["gate_over_bench"] == 1.2  # 1.5 / 1.25
    assert {r["bench"] for r in rows.values()} >= {"spine", "textdet", "int8", "int8_shipped", "detr", "sd", "sd_int8", "serve"}


def test_every_benchmark_script_has_json_and_uses_the_schema():
    scripts = sorted(p for p in [*BENCH.glob("*.py"), *BENCH.glob("diagnostics/*.py")]
                     if p.name not in ("__init__.py", "__main__.py", "schema.py", "run.py", "tritonserver.py"))
    assert len(scripts) == 20
    for p in scripts:
        tree = ast.parse(p.read_text())
        options = {a.value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"
                   for a in n.args if isinstance(a, ast.Constant)}
        imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "--json" in options, f"{p.name} has no --json option"
        assert "benchmarks.schema" in imports, f"{p.name} does not write rows with benchmarks.schema"


def test_run_checks_the_rows_each_benchmark_wrote(load, tmp_path, monkeypatch, capsys):
    run = load("run.py")
    assert all((BENCH / b.script).is_file() for b in run.HEADLINE)
    quick = {b.name for b in run.selected(False, None)}
    full = {b.name for b in run.selected(True, None)}
    assert "sd_small" in quick - full and "sd_sd15_512" in full - quick and {"textdet", "int8_gate", "detr"} <= quick & full
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    write = ("import sys; sys.path.insert(0, {root!r}); from benchmarks.schema import RowWriter, row\n"
             "with RowWriter(sys.argv[sys.argv.index('--json') + 1], echo=False) as out: out.write(row('good', 'a', includes='x'))\n")
    good.write_text(write.format(root=str(BENCH.parent)))
    bad.write_text("import sys; open(sys.argv[sys.argv.index('--json') + 1], 'w').write('{\"bench\": \"bad\"}\\n')\n")
    monkeypatch.setattr(run, "HEADLINE", (run.Bench("good", str(good), "?", (), ()), run.Bench("bad", str(bad), "?", (), ()),
                                          run.Bench("lacking", str(good), "?", (), (), needs=("no_such_module_xyz",))))
    assert run.main(["--out-dir", str(tmp_path / "out"), "--work", str(tmp_path)]) == 1
    report = capsys.readouterr().out
    assert "ok (" in report and "missing key 'target'" in report and "skipped: needs no_such_module_xyz" in report
    assert run.main(["--out-dir", str(tmp_path / "out"), "--work", str(tmp_path), "--only", "good"]) == 0
