"""Re-time shipped INT8 text-detection bundles (after `bench_int8.py --gate --work DIR`) on a quiet machine.

Run: .venv/bin/python benchmarks/bench_int8_shipped.py DIR/ppocrv5_736.vkt DIR/ppocrv5_960.vkt [--iters 30] [--json rows.jsonl]
     .venv/bin/python benchmarks/bench_int8_shipped.py --zoo 736 [--iters 5]   (quick: a fresh bundle, INT8 without a gate)

For each bundle, on scikit-image's page.png pre-processed as the bundle says:
- latency: FP32 vs the shipped INT8 graph vs the same float prefix with the other ORT scope
  (:func:`bench_int8.shipped_timing`), interleaved in turns (vkt.bench.time_turns), at 1 and 2 intra-op threads;
- latency in blocks (:func:`blocks_rows`): one session alive at a time, so no idle session's spinning worker
  threads compete at 2 threads;
- throughput on the whole machine: 2 concurrent streams (one 1-thread session each), FP32 and INT8 in
  alternating rounds, images/s per precision.
Each row (benchmarks/schema.py) carries the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402

MODEL = "PP-OCRv5 mobile det"


def _shipped(bundle, image: Path) -> tuple[dict, object, dict[str, str | bytes]]:
    """(feed of ``image`` pre-processed as the bundle says, the shipped ORT INT8 entry, {"fp32"|"int8": graph}).

    FP32 is the bundle's graph with the INT8 path's exact float rewrites (:func:`vkt.calibration.qdq.rewrite_fp32`:
    unchanged for bundles written since session 5, which ship it; older ones lack it), so INT8 is timed against
    the FP32 graph vkt ships now."""
    from bench_int8 import shipped_ort_entry

    from vkt.calibration.images import image_preprocess
    from vkt.onnxgraph import rewrite_fp32
    from vkt.onnxio import load_onnx

    entry = shipped_ort_entry(bundle)
    fp32 = rewrite_fp32(load_onnx(bundle.path("fp32 onnx"))).SerializeToString()
    return image_preprocess(bundle)(image), entry, {"fp32": fp32, "int8": str(bundle.root / entry.path)}


def _session(model: str | bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def blocks_rows(shipped: tuple, threads: int, shape: str, block: int = 5, rounds: int = 4, pause_s: float = 0.2) -> list[dict]:
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
    return [blocks_row(times, threads, shape, block, rounds, f"shipped ({entry.meta.get('ort_ops', 'all')})",
                       [round(load, 2), round(os.getloadavg()[0], 2)])]


def blocks_row(times: dict[str, list[float]], threads: int, shape: str, block: int, rounds: int, placement: str,
               load: list[float]) -> dict:
    """Schema row of :func:`blocks_rows`' call times (s) per "fp32" / "int8"."""
    fp, q = float(np.median(times["fp32"])), float(np.median(times["int8"]))
    return row("int8_shipped", f"{placement} (blocks)", model=MODEL, backend="ort-cpu", precision="int8", threads=threads,
               shape=shape, batch=1, n=len(times["int8"]), p50_ms=round(q * 1e3, 3),
               p90_ms=round(float(np.percentile(times["int8"], 90)) * 1e3, 3), load_avg=load,
               includes=f"one InferenceSession.run, {block} calls per session alive alone, {rounds} rounds with FP32",
               method="blocks", calls=block * rounds, fp32_p50_ms=round(fp * 1e3, 3), speedup=round(fp / q, 3),
               placement=placement)


def streams_row(shipped: tuple, calls: int, shape: str, rounds: int = 3, streams: int = 2) -> dict:
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
    return row("int8_shipped", f"{streams} streams x 1 thread", model=MODEL, backend="ort-cpu", precision="int8",
               threads=1, shape=shape, batch=1, load_avg=[round(load, 2), round(os.getloadavg()[0], 2)],
               includes=f"throughput: {streams} concurrent 1-thread sessions x {calls} calls, FP32 and INT8 in alternating rounds",
               method="throughput", streams=streams, threads_per_stream=1, calls_per_stream=calls, rounds=rounds,
               fp32_img_s=round(fp, 3), int8_img_s=round(q, 3), speedup=round(q / fp, 3))


def zoo_bundle(side: int, work: Path) -> Path:
    """Quick path: the real PP-OCRv5 mobile bundle at short side ``side``, INT8 as `vkt quantize` writes it without a
    gate (every conv INT8, the 'compute' scope), calibrated on bench_int8's 7 gate photos."""
    import shutil

    import skimage
    from bench_int8 import GATE_CALIB

    from vkt.calibration import Int8Config
    from vkt.models.textdet.int8 import TextdetRecipe
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    calib = work / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    for p in GATE_CALIB:
        shutil.copy(Path(skimage.__file__).parent / "data" / p, calib / p)
    dest = ppocrv5_det_mobile_bundle(work / f"ppocrv5_{side}.vkt", overwrite=True, limit_side_len=side)
    TextdetRecipe().quantize(dest, Int8Config(calib=calib, method="percentile", targets=("ort",)), show_progress=False)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*", type=Path)
    ap.add_argument("--zoo", type=int, default=None, metavar="SIDE",
                    help="quick: build the PP-OCRv5 mobile bundle at this short side, INT8 without a gate, and time it")
    ap.add_argument("--iters", type=int, default=30, help="timed calls per model (latency)")
    ap.add_argument("--calls", type=int, default=8, help="calls per stream per round (throughput)")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()
    if not args.bundles and args.zoo is None:
        ap.error("give INT8 bundles (from bench_int8.py --gate --work DIR) or --zoo SIDE")

    import skimage
    from bench_int8 import shipped_timing

    from vkt.bundle import Bundle

    image = Path(skimage.__file__).parent / "data" / "page.png"
    bundles = list(args.bundles)
    if args.zoo is not None:
        import tempfile

        bundles.append(zoo_bundle(args.zoo, Path(tempfile.mkdtemp(prefix="vkt-bench-int8-shipped-"))))
    with RowWriter(args.json) as out:
        for path in bundles:
            b = Bundle.load(path)
            shape = f"short side {b.preprocess.get('resize', {}).get('limit_side_len')}"
            for threads in (1, 2):
                load = os.getloadavg()[0]
                for r in shipped_timing(b, image, shape, threads, args.iters, bench="int8_shipped"):
                    out.write({**r, "bundle": str(path), "load_avg": [round(load, 2), round(os.getloadavg()[0], 2)]})
            shipped = _shipped(b, image)
            for threads in (1, 2):
                out.write_all({**r, "bundle": str(path)} for r in blocks_rows(shipped, threads, shape))
            out.write({**streams_row(shipped, args.calls, shape), "bundle": str(path)})
    rows = out.rows
    print(f"{'bundle':<48} {'what':<28} {'threads':>7} {'speedup':>8}", file=sys.stderr)
    for r in rows:
        print(f"{Path(r['bundle']).name:<48} {r['target']:<28} {r['threads']!s:>7} {r['speedup']:>8.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
