"""Re-time shipped INT8 text-detection bundles (after `bench_int8.py --gate --work DIR`) on a quiet machine.

Run: .venv/bin/python benchmarks/bench_int8_shipped.py DIR/ppocrv5_736.vkt DIR/ppocrv5_960.vkt [--iters 30] [--json rows.jsonl]

For each bundle, on scikit-image's page.png pre-processed as the bundle says:
- latency: FP32 vs the shipped INT8 graph vs the same float prefix with the other ORT scope
  (:func:`bench_int8.shipped_timing`), interleaved in turns (vkt.bench.time_turns), at 1 and 2 intra-op threads;
- latency in blocks (:func:`blocks_rows`): one session alive at a time, so no idle session's spinning worker
  threads compete at 2 threads;
- throughput on the whole machine: 2 concurrent streams (one 1-thread session each), FP32 and INT8 in
  alternating rounds, images/s per precision.
Each row carries the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _shipped(bundle, image: Path) -> tuple[dict, object, dict[str, str | bytes]]:
    """(feed of ``image`` pre-processed as the bundle says, the shipped ORT INT8 entry, {"fp32"|"int8": graph}).

    FP32 is the bundle's graph with the INT8 path's exact float rewrites (:func:`vkt.calibration.qdq.rewrite_fp32`:
    unchanged for bundles written since session 5, which ship it; older ones lack it), so INT8 is timed against
    the FP32 graph vkt ships now."""
    from bench_int8 import shipped_ort_entry

    from vkt.calibration.api import image_preprocess
    from vkt.calibration.qdq import rewrite_fp32
    from vkt.onnxio import load_onnx

    entry = shipped_ort_entry(bundle)
    fp32 = rewrite_fp32(load_onnx(bundle.path("fp32 onnx"))).SerializeToString()
    return image_preprocess(bundle)(image), entry, {"fp32": fp32, "int8": str(bundle.root / entry.path)}


def _session(model: str | bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def blocks_rows(shipped: tuple, threads: int, block: int = 5, rounds: int = 4, pause_s: float = 0.2) -> list[dict]:
    """FP32 vs the shipped INT8 graph (``shipped``: :func:`_shipped`'s tuple) with only one session alive at a
    time: ``block`` timed calls per session, a pause, then the other model, for ``rounds`` rounds. With more than
    one intra-op thread, call-by-call interleaving of two live sessions is biased: the idle session's worker
    threads keep spinning after its call and take the other core (measured: FP32 at 2 threads 150-180 ms
    interleaved vs 122 ms alone)."""
    feed, entry, graphs = shipped
    times: dict[str, list[float]] = {k: [] for k in graphs}
    load = os.getloadavg()[0]
    for _ in range(rounds):
        for k, g in graphs.items():
            sess = _session(g, threads)
            sess.run(None, feed)
            for _ in range(block):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times[k].append(time.perf_counter() - t0)
            del sess
            time.sleep(pause_s)
    fp, q = float(np.median(times["fp32"])), float(np.median(times["int8"]))
    return [{"method": "blocks", "threads": threads, "calls": block * rounds, "fp32_p50_ms": round(fp * 1e3, 3),
             "p50_ms": round(q * 1e3, 3), "speedup": round(fp / q, 3), "placement": f"shipped ({entry.meta.get('ort_ops', 'all')})",
             "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}]


def streams_row(shipped: tuple, calls: int, rounds: int = 3, streams: int = 2) -> dict:
    """Throughput of ``streams`` concurrent one-thread sessions per model (``shipped``: :func:`_shipped`'s tuple)."""
    feed, _, graphs = shipped
    sessions = {}
    for k, g in graphs.items():
        sessions[k] = [_session(g, 1) for _ in range(streams)]
        for s in sessions[k]:
            s.run(None, feed)
    rates: dict[str, list[float]] = {k: [] for k in graphs}
    load = os.getloadavg()[0]
    for _ in range(rounds):
        for k in graphs:
            workers = [threading.Thread(target=lambda s=s: [s.run(None, feed) for _ in range(calls)]) for s in sessions[k]]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            rates[k].append(streams * calls / (time.perf_counter() - t0))
    fp, q = float(np.median(rates["fp32"])), float(np.median(rates["int8"]))
    return {"method": "throughput", "streams": streams, "threads_per_stream": 1, "calls_per_stream": calls, "rounds": rounds,
            "fp32_img_s": round(fp, 3), "int8_img_s": round(q, 3), "speedup": round(q / fp, 3),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--iters", type=int, default=30, help="timed calls per model (latency)")
    ap.add_argument("--calls", type=int, default=8, help="calls per stream per round (throughput)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import skimage
    from bench_int8 import shipped_timing

    from vkt.bundle import Bundle

    image = Path(skimage.__file__).parent / "data" / "page.png"
    rows = []
    for path in args.bundles:
        b = Bundle.load(path)
        side = b.preprocess.get("resize", {}).get("limit_side_len")
        for threads in (1, 2):
            load = os.getloadavg()[0]
            for r in shipped_timing(b, image, f"short side {side}", threads, args.iters):
                rows.append({**r, "bundle": str(path), "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)})
        shipped = _shipped(b, image)
        for threads in (1, 2):
            rows += [{**r, "bundle": str(path), "shape": f"short side {side}"} for r in blocks_rows(shipped, threads)]
        rows.append({**streams_row(shipped, args.calls), "bundle": str(path), "shape": f"short side {side}"})
    for r in rows:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{'bundle':<48} {'what':<28} {'threads':>7} {'speedup':>8}", file=sys.stderr)
    for r in rows:
        what = r.get("placement") or ("fp32" if r.get("method") == "timing" else "2 streams x 1 thread")
        what = f"{what} (blocks)" if r.get("method") == "blocks" else what
        print(f"{Path(r['bundle']).name:<48} {what:<28} {r.get('threads', '-')!s:>7} {r['speedup']:>8.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
