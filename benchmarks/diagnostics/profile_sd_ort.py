"""Where an SD graph's time goes on onnxruntime CPU: time, FLOPs and GFLOP/s per op type and per node, against
the peak the same process reaches on a lone 3x3 conv and a lone GEMM (so a loaded machine scales both alike).

One profiled run (SessionOptions.enable_profiling) after one warm-up run; FLOPs from the shapes the profiler
records: Conv 2 * out * (C/g * kh * kw), MatMul / Gemm 2 * out * K, Attention / MultiHeadAttention
projections (packed QKV) + 4 * B * Sq * Skv * E. Elementwise, norm and layout ops count 0 FLOPs (they are
memory-bound: their share of time is what matters).

    .venv/bin/python benchmarks/diagnostics/profile_sd_ort.py --bundle /tmp/vkt-bench-sd/sd15/bundle --component unet --size 512 --batch 2
    .venv/bin/python benchmarks/diagnostics/profile_sd_ort.py --bundle /tmp/vkt-bench-sd/sd15/bundle --component vae_decoder --size 512 --batch 1

Prints JSON rows (benchmarks/schema.py; target = the op type, then "(all)" and "(peak)"; no p50: "ms" is the op
type's total kernel time in the one profiled run), then tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.schema import RowWriter, row  # noqa: E402


def _shapes(lst: list[dict[str, list[int]]]) -> list[list[int]]:
    return [v for d in lst for v in d.values()]


def node_flops(ev: dict[str, Any]) -> int:
    a = ev["args"]
    op, ins, outs = a["op_name"], _shapes(a.get("input_type_shape", [])), _shapes(a.get("output_type_shape", []))
    if not outs or not ins or not ins[0]:
        return 0
    out = int(np.prod(outs[0]))
    if op in ("Conv", "FusedConv") and len(ins) > 1 and len(ins[1]) >= 3:
        return 2 * out * int(np.prod(ins[1][1:]))
    if op in ("MatMul", "FusedMatMul", "Gemm"):
        return 2 * out * ins[0][-1]  # prepacked weights drop out of the record: K from the first input
    if op == "Attention":  # x [B, S, E], packed QKV [E, 3E]
        b, s, e = ins[0]
        return 2 * b * s * e * 3 * e + 4 * b * s * s * e
    if op == "MultiHeadAttention" and len(ins) > 1:  # q [B, Sq, E], k [B, Skv, E]
        return 4 * ins[0][0] * ins[0][1] * ins[1][1] * ins[0][2]
    return 0


def peaks(threads: int, reps: int = 3) -> dict[str, float]:
    """GFLOP/s of a lone 3x3 conv (512 -> 512 channels, 64x64) and a GEMM (8192 x 1280 x 1280) on this process."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    cases = {
        "conv3x3": ([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], [1, 512, 64, 64], [512, 512, 3, 3],
                    2 * 512 * 64 * 64 * 512 * 9),
        "gemm": ([helper.make_node("MatMul", ["x", "w"], ["y"])], [8192, 1280], [1280, 1280], 2 * 8192 * 1280 * 1280),
    }
    out = {}
    for name, (nodes, xs, ws, flops) in cases.items():
        w = numpy_helper.from_array((rng.standard_normal(ws) * 0.01).astype(np.float32), "w")
        g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        x = rng.standard_normal(xs).astype(np.float32)
        s.run(None, {"x": x})
        best = min(_timed(lambda: s.run(None, {"x": x})) for _ in range(reps))  # noqa: B023
        out[name] = flops / best / 1e9
    return out


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    import onnxruntime as ort

    from vkt.bundle import Bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--component", default="unet", choices=("text_encoder", "unet", "vae_decoder"))
    ap.add_argument("--graph", default="ort", choices=("ort", "plain"), help="the .ort.onnx graph or the plain one")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=2, help="graph batch (the UNet's is 2B with guidance)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()

    b = Bundle.load(args.bundle)
    path = b.root / b.entry("fp32 onnx", args.component, placement="ort").path if args.graph == "ort" \
        else b.path("fp32 onnx", args.component)
    spec = b.spec(args.component)
    lat = args.size // 8
    dims = {"batch": args.batch, "height": lat, "width": lat}
    rng = np.random.default_rng(0)
    feed = {t.name: (np.full(t.resolve(dims), 500.0, np.float32) if t.name == "timestep" else
                     rng.integers(0, 49408, t.resolve(dims)).astype(t.dtype) if t.dtype.startswith("int") else
                     rng.standard_normal(t.resolve(dims)).astype(np.float32)) for t in spec.inputs}
    peak_before = peaks(args.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.enable_profiling = True
    so.profile_file_prefix = str(Path("/tmp") / f"vkt-profile-{os.getpid()}")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    sess.run(None, feed)
    load0 = os.getloadavg()[0]
    wall = _timed(lambda: sess.run(None, feed))
    load1 = os.getloadavg()[0]
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink()
    del sess
    peak_after = peaks(args.threads)
    peak = {k: max(peak_before[k], peak_after[k]) for k in peak_before}

    run = [e for e in events if e.get("name") == "model_run"][-1]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
             and run["ts"] <= e["ts"] <= run["ts"] + run["dur"]]
    total = sum(e["dur"] for e in nodes)
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])
    for e in nodes:
        r = by_op[e["args"]["op_name"]]
        r[0] += e["dur"]
        r[1] += 1
        r[2] += node_flops(e)
    flops = sum(r[2] for r in by_op.values())
    common = {"component": args.component, "graph": path.name, "size": args.size, "batch": args.batch,
              "threads": args.threads, "run_s": round(wall, 3), "load_avg": [round(load0, 2), round(load1, 2)]}
    rows = []
    for op, (dur, n, f) in sorted(by_op.items(), key=lambda kv: -kv[1][0]):
        gfs = f / dur / 1e3 if f else None
        rows.append(profile_row(op, common, ms=round(dur / 1e3, 1), share=round(dur / total, 4), nodes=n,
                                gflop=round(f / 1e9, 1), gflops=round(gfs, 1) if gfs else None,
                                of_conv_peak=round(gfs / peak["conv3x3"], 3) if gfs else None))
    rows.append(profile_row("(all)", common, ms=round(total / 1e3, 1), share=1.0, nodes=len(nodes),
                            gflop=round(flops / 1e9, 1), gflops=round(flops / total / 1e3, 1),
                            of_conv_peak=round(flops / total / 1e3 / peak["conv3x3"], 3)))
    rows.append(profile_row("(peak)", common, peak_gflops={k: round(v, 1) for k, v in peak.items()},
                            peak_before_after=[peak_before, peak_after]))
    with RowWriter(args.json) as out:
        out.write_all(rows)
    print(f"\n{path.name} batch {args.batch} at {args.size}x{args.size}: run {wall:.2f} s (profiled), load {load0:.2f}/{load1:.2f}; "
          f"lone 3x3 conv {peak['conv3x3']:.0f} GFLOP/s, lone GEMM {peak['gemm']:.0f} GFLOP/s")
    print(f"{'op':26}{'ms':>10}{'share':>8}{'n':>5}{'GFLOP':>9}{'GFLOP/s':>9}{'of conv':>9}")
    for r in rows[:-1]:
        g = f"{r['gflops']:9.1f}{r['of_conv_peak']:9.2f}" if r["gflops"] else f"{'':9}{'':9}"
        print(f"{r['op']:26}{r['ms']:10.1f}{r['share']:8.3f}{r['nodes']:5d}{r['gflop']:9.1f}{g}")
    print("\ntop nodes:")
    for e in sorted(nodes, key=lambda e: -e["dur"])[: args.top]:
        f = node_flops(e)
        ins = _shapes(e["args"].get("input_type_shape", []))[:2]
        print(f"{e['dur'] / 1e3:8.1f} ms {e['args']['op_name']:20} {e['name'].replace('_kernel_time', '')[-58:]:58} "
              f"{ins} {f / e['dur'] / 1e3 if f else 0:6.1f} GF/s")


def profile_row(op: str, common: dict, **figures) -> dict:
    """Schema row of one op type (or "(all)", "(peak)") of the profiled run; ``common``: component, size, batch, ..."""
    includes = ("lone 3x3 conv and GEMM GFLOP/s in this process, best of 3" if op == "(peak)" else
                "onnxruntime profiler kernel time summed over this op type's nodes in one run (after one warm-up run)")
    c = dict(common)
    shape = f"batch {c['batch']}, {c['size']}x{c['size']} px"
    return row("profile_sd_ort", op, includes=includes, model=f"SD 1.5 {c['component']} ({c['graph']})", backend="ort-cpu",
               precision="fp32", shape=shape, op=op, **c, **figures)


if __name__ == "__main__":
    main()
