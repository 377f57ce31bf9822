"""The accuracy gate's printed speed-up vs a re-timing by `vkt bench`, per gate of a gated bundle (issue 18, point 8).

Run: .venv/bin/python benchmarks/bench_gate_honesty.py BUNDLE [BUNDLE ...] [--iters 20] [--json rows.jsonl]

BUNDLE: a bundle after `vkt quantize BUNDLE --calib DIR --holdout DIR` (or `vkt quickstart`'s). For each gate in its
manifest (``calibration.gate``: onnxruntime, ``calibration.openvino_gate``: OpenVINO) that shipped INT8, the FP32 and
INT8 targets of that runtime are re-timed as `vkt bench -t ort:fp32 -t ort:int8` (`-t ov:fp32 -t ov:int8`) times them
(vkt.cli.bench.build_targets + vkt.bench.run_bench, random input at the shape and threads the gate timed), and two
rows are written: the gate's figure and bench's p50 ratio, with ``agrees`` = |printed / re-timed - 1| <= 10%. A gate
that shipped FP32 gets one row with its reason. Each row carries the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402

TOLERANCE = 0.10  # the bound on |printed / re-timed - 1|
GATES = {"gate": "ort", "openvino_gate": "ov"}


def gate_rows(bundle_dir: Path, iters: int) -> list[dict]:
    from vkt.bench import BenchConfig, run_bench
    from vkt.bundle import Bundle
    from vkt.cli.bench import build_targets, make_cases

    b = Bundle.load(bundle_dir)
    section = b.manifest.get("calibration") or {}
    rows = []
    for key, backend in GATES.items():
        gate = section.get(key)
        if not gate:
            continue
        common = dict(model=b.name, backend=f"{backend}-cpu", batch=1)
        ch = gate.get("chosen")
        if gate["shipped"] != "int8" or ch is None:
            rows.append(row("gate_honesty", "gate", precision="fp32", includes="the gate shipped FP32", reason=gate.get("reason"),
                            placement=gate["placement"], load_avg=round(os.getloadavg()[0], 2), **common))
            continue
        t = gate["steps"][ch["step"]]["timing"]
        shape = t["shape"]
        sizes = {n: v for n, v in zip(b.spec().inputs[0].shape[1:], shape[1:]) if isinstance(n, str)}
        load0 = os.getloadavg()[0]
        targets, spec = build_targets(bundle_dir, [(backend, "fp32"), (backend, "int8")], t.get("threads"), None, False)
        got = run_bench(targets, make_cases(spec, [1], [sizes]), BenchConfig(warmup=5, iters=iters), show_progress=False)
        load = [round(load0, 2), round(os.getloadavg()[0], 2)]
        retimed = got[0].p50_ms / got[1].p50_ms
        label = "x".join(map(str, shape))
        rows.append(row("gate_honesty", "gate", precision="int8", threads=t.get("threads"), shape=label, n=t["turns"] * t["block"],
                        includes="the speed-up the gate printed and recorded (vkt.calibration.gate_timing.time_pair): "
                        + t.get("statistic", "median of paired turns' ratios"), speedup=t["speedup"], noise_band=t["noise_band"], ci95=t.get("ci95"),
                        fp32_ms=t["fp32_ms"], int8_ms=t["int8_ms"], placement=gate["placement"],
                        layers_kept_float=ch["layers_kept_float"], load_avg=load, **common))
        rows.append(row("gate_honesty", "vkt bench", precision="int8", threads=t.get("threads"), shape=label, n=got[1].n,
                        p50_ms=round(got[1].p50_ms, 3), p90_ms=round(got[1].p90_ms, 3),
                        includes=f"vkt bench -t {backend}:fp32 -t {backend}:int8 --shape "
                        f"{','.join(f'{k}={v}' for k, v in sizes.items())} --warmup 5 --iters {iters}: p50 ratio",
                        speedup=round(retimed, 3), fp32_p50_ms=round(got[0].p50_ms, 3), printed=t["speedup"],
                        printed_over_retimed=round(t["speedup"] / retimed, 3),
                        agrees=abs(t["speedup"] / retimed - 1) <= TOLERANCE, load_avg=load, **common))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--iters", type=int, default=20, help="timed calls per target (vkt bench --iters)")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()
    with RowWriter(args.json) as out:
        for bundle in args.bundles:
            for r in gate_rows(bundle, args.iters):
                out.write(r)
                extra = (f"printed {r['printed']}x vs re-timed {r['speedup']}x: agrees {r['agrees']}" if "agrees" in r
                         else f"speedup {r.get('speedup')}" if r["precision"] == "int8" else f"FP32 shipped: {r['reason']}")
                print(f"{bundle.name} {r['backend']} {r['target']}: {extra} (load {r['load_avg']})", flush=True)


if __name__ == "__main__":
    main()
