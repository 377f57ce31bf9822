"""Spine goals: `import vkt.runtime` time in a fresh process, and OrtRunner overhead vs raw InferenceSession.run.

Run: .venv/bin/python benchmarks/bench_spine.py [--iters 3000] [--threads 1] [--json rows.jsonl]
Prints JSON rows (benchmarks/schema.py) and a table. Targets are interleaved call by call (vkt.bench.run_bench) so the
ratio holds on a noisy machine; the goal is OrtRunner p50 <= 1.05x raw at batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402


def import_time(repeats: int) -> dict:
    code = "import time; t=time.perf_counter(); import vkt.runtime; print(time.perf_counter()-t)"
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
             for _ in range(repeats)]
    wall = []
    for _ in range(repeats):
        import time

        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import vkt.runtime"], check=True)
        wall.append(time.perf_counter() - t)
    return import_row(times, wall)


def import_row(times: list[float], wall: list[float]) -> dict:
    """Row of the import-time figure from the in-process import times and whole-process wall times (s)."""
    ms = sorted(t * 1e3 for t in times)
    return row("spine", "import vkt.runtime", includes="`import vkt.runtime` in a fresh process, timed inside it",
               backend=None, shape=None, n=len(times), p50_ms=statistics.median(ms), p90_ms=_p90(ms),
               median_s=statistics.median(times), max_s=max(times), process_wall_median_s=statistics.median(wall),
               goal_s=0.5)


def _p90(sorted_ms: list[float]) -> float:
    return float(np.percentile(sorted_ms, 90))


def overhead_row(raw, vkt, threads: int) -> dict:
    """Row of OrtRunner.infer vs raw InferenceSession.run on one case (``raw``/``vkt``: vkt.bench.Row)."""
    return row("spine", "vkt OrtRunner.infer", includes="validation + ORT + dict; raw_*: InferenceSession.run alone",
               model="toy_convnet(w8,d1)", backend="ort-cpu", precision="fp32", threads=threads, shape=raw.case,
               batch=1, n=vkt.n, p50_ms=vkt.p50_ms, p90_ms=vkt.p90_ms, raw_p50_ms=raw.p50_ms, vkt_p50_ms=vkt.p50_ms,
               raw_mean_ms=raw.mean_ms, vkt_mean_ms=vkt.mean_ms, ratio_p50=vkt.p50_ms / raw.p50_ms,
               ratio_mean=vkt.mean_ms / raw.mean_ms, goal_ratio=1.05)


def runner_overhead(iters: int, threads: int) -> list[dict]:
    import onnxruntime as ort

    from vkt.bench import BenchConfig, Case, Target, run_bench
    from vkt.export.toy import toy_convnet
    from vkt.runtime import OrtRunner

    model, spec = toy_convnet(width=8, depth=1)
    data = model.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    runner = OrtRunner(data, spec=spec, threads=threads).activate()
    rows = []
    for hw in (16, 32, 64):
        feed = {"image": np.random.default_rng(0).standard_normal((1, 3, hw, hw)).astype(np.float32)}
        np.testing.assert_array_equal(runner.infer(feed)["features"], sess.run(None, feed)[0])
        res = run_bench([Target("raw InferenceSession.run", lambda f: sess.run(None, f), "ORT only"),
                         Target("vkt OrtRunner.infer", runner.infer, "validation + ORT + dict")],
                        [Case(f"1x3x{hw}x{hw}", feed, 1)], BenchConfig(warmup=50, iters=iters), show_progress=False)
        raw, vkt = res
        rows.append(overhead_row(raw, vkt, threads))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--import-repeats", type=int, default=10)
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()
    with RowWriter(args.json) as out:
        out.write(import_time(args.import_repeats))
        out.write_all(runner_overhead(args.iters, args.threads))
    rows = out.rows
    from rich.console import Console
    from rich.table import Table

    t = Table("bench", "case", "figure", "goal", title="vkt spine")
    t.add_row(rows[0]["target"], "fresh process", f"{rows[0]['median_s'] * 1e3:.0f} ms median (max {rows[0]['max_s'] * 1e3:.0f})",
              "< 500 ms")
    for r in rows[1:]:
        t.add_row("OrtRunner overhead", r["shape"], f"p50 {r['vkt_p50_ms'] * 1e3:.0f} vs {r['raw_p50_ms'] * 1e3:.0f} us = "
                  f"{r['ratio_p50']:.3f}x (mean {r['ratio_mean']:.3f}x)", "<= 1.05x")
    Console(stderr=True).print(t)


if __name__ == "__main__":
    main()
