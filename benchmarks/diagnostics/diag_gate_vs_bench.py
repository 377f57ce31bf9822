"""The gate's timing of a bundle's FP32/INT8 pair vs `vkt bench`'s, in one process, interleaved (issue 18, point 8).

Run: .venv/bin/python benchmarks/diagnostics/diag_gate_vs_bench.py BUNDLE [-t ov] [--rounds 3] [--json rows.jsonl]

Per round: :func:`vkt.calibration.gate_timing.time_pair` (what the accuracy gate prints) on the bundle's FP32 and INT8
files for that backend, then :func:`vkt.bench.run_bench` on the targets `vkt bench -t B:fp32 -t B:int8` builds, both
on bench's random feed at the profile's opt shape. Rows: the gate's speed-up (with its turns, noise band and ci95) and
bench's p50 ratio, with ``gate_over_bench``. Rounds alternate in time, so a drift of the machine's load shows as a
spread across rounds rather than as a bias of one method; the load average is on every row.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.schema import RowWriter, row  # noqa: E402


def round_rows(gate, bench_fp32, bench_int8, backend: str, model: str, shape: str, load: list[float]) -> list[dict]:
    """Two rows for one round: the gate's figure (a PairTiming) and bench's (two vkt.bench Rows)."""
    common = dict(model=model, backend=f"{backend}-cpu", precision="int8", shape=shape, batch=1, threads=gate.threads,
                  load_avg=load)
    retimed = bench_fp32.p50_ms / bench_int8.p50_ms
    return [row("gate_vs_bench", "gate", n=gate.turns * gate.block, p50_ms=round(gate.int8_ms, 3),
                includes="vkt.calibration.gate_timing.time_pair: p50 FP32 / p50 INT8 over interleaved turns",
                speedup=round(gate.speedup, 3), fp32_p50_ms=round(gate.fp32_ms, 3), turns=gate.turns,
                noise_band=[round(x, 3) for x in gate.band], ci95=round(gate.ci95, 3), **common),
            row("gate_vs_bench", "vkt bench", n=bench_int8.n, p50_ms=round(bench_int8.p50_ms, 3),
                p90_ms=round(bench_int8.p90_ms, 3), includes="vkt.bench.run_bench, warm-up 5, 20 calls: p50 ratio",
                speedup=round(retimed, 3), fp32_p50_ms=round(bench_fp32.p50_ms, 3),
                gate_over_bench=round(gate.speedup / retimed, 3), **common)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("-t", "--backend", default="ov", choices=("ort", "ov"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()

    from vkt.bench import BenchConfig, run_bench
    from vkt.bundle import Bundle
    from vkt.calibration.gate_timing import time_pair
    from vkt.cli.bench import build_targets, make_cases
    from vkt.runtime import make_runner

    b = Bundle.load(args.bundle)
    (case,) = make_cases(b.spec(), [1], [])
    with RowWriter(args.json) as out:
        for i in range(args.rounds):
            load0 = os.getloadavg()[0]
            gate = time_pair(lambda: make_runner(b, args.backend, "fp32", threads=args.threads),
                             lambda: make_runner(b, args.backend, "int8", threads=args.threads), case.feed,
                             threads=args.threads)
            targets, _ = build_targets(args.bundle, [(args.backend, "fp32"), (args.backend, "int8")], args.threads,
                                       None, False)
            fp32, int8 = run_bench(targets, [case], BenchConfig(warmup=5, iters=20), show_progress=False)
            load = [round(load0, 2), round(os.getloadavg()[0], 2)]
            for r in round_rows(gate, fp32, int8, args.backend, b.name, case.label, load):
                out.write({**r, "round": i})
            print(f"round {i}: gate {gate.speedup:.3f}x (ci95 {gate.ci95:.3f}, {gate.turns} turns) vs bench "
                  f"{fp32.p50_ms / int8.p50_ms:.3f}x, load {load}", flush=True)


if __name__ == "__main__":
    main()
