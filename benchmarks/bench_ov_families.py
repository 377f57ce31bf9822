"""DETR and Stable Diffusion on OpenVINO beside onnxruntime, on CPU: FP32 per component, and DETR INT8 gated on AP.

    .venv/bin/python benchmarks/bench_ov_families.py detr [--size 480x640] [--threads 1,2] [--iters 6] [--work DIR]
    .venv/bin/python benchmarks/bench_ov_families.py detr-trained --run RUN [--train] [--threads 1,2] [--work DIR]
        [--holdout-synth 96] [--time-size 480x640]
    .venv/bin/python benchmarks/bench_ov_families.py sd [--bundle DIR | --sd-size sd15] [--threads 1,2] [--iters 3]
        [--json benchmarks/results/ov_families.jsonl]

detr: transformers' DetrForObjectDetection with DETR-R50's architecture and random weights (benchmarks/bench_detr.py's
  model, seed 0), exported with raw heads. One calibration (percentile 99.99, round-to-nearest weights) on --calib
  scikit-image photos stretched to --size feeds every placement: onnxruntime's ("ort") and, for OpenVINO, vkt's
  OpenVINO placement when this vkt writes one, else the TensorRT placement ("trt": symmetric int8 Q/DQ on the
  inputs of every Conv/MatMul/Gemm) run on OpenVINO, labelled so. Each INT8 graph is gated like the DETR recipe:
  COCO AP of its detections against FP32's top-10 per photo (8 photos, resized to --size's sides), and if it
  loses more than 2 points, the DETR keep-list (vkt.models.detr.int8.KEEP_GROUPS) keeps node groups in float step
  by step until AP vs FP32 >= 0.98. Then FP32, each backend's full INT8 placement and its gated graph (when the gate
  kept groups in float) are timed, interleaved (vkt.bench.run_bench), on one 1x3xHxW feed, per thread count.
  transformers' random init makes all 100 queries give one box, label and score (AP vs FP32's top-10 is then 0.60
  for anything, OpenVINO FP32 included), so the transformer's Linear weights and the query embeddings are re-drawn
  as vkt.models.detr.tiny_detr does (--transformers-init: not); each gate records FP32 on its backend vs onnxruntime
  FP32 (the floor of the metric). A gate that no step passes says "passes": false and times its last step.
detr-trained: the reduced DETR trained by `vkt train detr --synth 512 -o RUN` (--train runs it when RUN holds no model),
  exported and quantized as `vkt quantize -t ort -t openvino --holdout DIR --max-drop 2` does (calibration: synthetic
  images and pictures; the gate's held-out set: other ones), each placement gated on its own runtime (AP vs FP32 >=
  0.98); AP vs onnxruntime FP32 of OpenVINO FP32 and of each shipped INT8 graph on images neither calibrated nor gated
  on (64 synthetic images of the run's validation draw, 8 photos); FP32 and the shipped INT8 on both runtimes timed
  interleaved at the bundle's opt shape (1x3x128x160, the training size) and at --time-size (rows carry
  speedup_vs_best_fp32). The gate's minimum speed-up is 0 so that a placement that keeps AP ships and is timed here.
sd: an SD bundle made by benchmarks/bench_sd.py (--size sd15: SD 1.5's text encoder, UNet and VAE with random weights;
  without --bundle, bench_sd.py's cache /tmp/vkt-bench-sd/--sd-size, built at 256 px when missing); each component
  on onnxruntime (the graph vkt runs there: the fused "ort" one where the bundle has it)
  and OpenVINO (the plain graph, f32), at the profile's opt shapes (with bench_sd.py --height 256: UNet 2x4x32x32
  = one guided step at 256 px, VAE 1x4x32x32, text encoder 2x77), interleaved, per thread count; rows carry the
  max |OpenVINO - onnxruntime| on that feed.
Rows (benchmarks/schema.py) carry speedup_vs_ort_fp32 and the load average before and after each timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, from_bench_row, row  # noqa: E402

R50 = "DETR-R50 (random weights)"
AP_FLOOR = 0.98  # issue #18: INT8 AP vs FP32 >= 0.98


def loads() -> float:
    return round(os.getloadavg()[0], 2)


def timed_rows(bench: str, model: str, runners: dict, feed: dict, threads: int, iters: int, warmup: int,
               extra: dict | None = None, cpu_iters: int = 0) -> list[dict]:
    """Time ``{target: (runner, includes)}`` interleaved on ``feed``; schema rows with speed-up vs ort-fp32, and with
    ``cpu_iters`` the median CPU seconds per call over that many more interleaved rounds (cpu_s_median)."""
    from benchmarks.bench_textdet_server import cpu_seconds
    from vkt.bench import BenchConfig, Case, Target, print_table, run_bench

    shape = "x".join(str(d) for d in next(iter(feed.values())).shape)
    before = loads()
    rows = run_bench([Target(n, r.infer, what, setup=r.activate) for n, (r, what) in runners.items()],
                     [Case(shape, feed, 1)], BenchConfig(warmup=warmup, iters=iters))
    load = [before, loads()]
    print_table(rows, f"{model}, {threads} thread(s), load {load}")
    base = next(r.p50_ms for r in rows if r.target.startswith("ort-fp32"))
    cpu = cpu_seconds({n: r for n, (r, _) in runners.items()}, feed, cpu_iters) if cpu_iters > 0 else {}
    out = []
    for r in rows:
        runner = runners[r.target][0]
        info = dict((extra or {}).get(r.target, {}))
        if cpu:
            info["cpu_s_median"] = round(cpu[r.target], 5)
        if runner.backend == "ov":
            info["executed"] = runner.executed_precisions()
        out.append(from_bench_row(bench, r, model=model, backend=f"{runner.backend}-cpu",
                                  precision="int8" if "int8" in r.target else "fp32", threads=threads, load_avg=load,
                                  speedup_vs_ort_fp32=round(base / r.p50_ms, 3), **info))
    for runner, _ in runners.values():
        runner.deactivate()
    return out


# ---- DETR ------------------------------------------------------------------------------------------
def distinct_queries(model) -> None:  # noqa: ANN001
    """vkt.models.detr.tiny_detr's re-draw of the transformer's and heads' Linear weights (fan-in scaled, q/k x 2) and
    of the query embeddings (N(0, 1)): with transformers' std-0.02 init all 100 queries of a random DETR-R50 give the
    same box, label and score, so AP against FP32's top-10 is a tie-break lottery (0.60 even OpenVINO FP32 vs
    onnxruntime FP32). Same shapes, same compute."""
    import torch

    torch.manual_seed(1)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and not name.startswith("model.backbone"):
                gain = 2.0 if name.endswith(("q_proj", "k_proj")) else 1.0
                mod.weight.normal_(0.0, gain / mod.weight.shape[1] ** 0.5)
                mod.bias.normal_(0.0, 0.1 * gain)
        model.model.query_position_embeddings.weight.normal_(0.0, 1.0)


def detr_bundle(work: Path, size: tuple[int, int], n_calib: int, distinct: bool = True) -> tuple[Path, str, float]:
    """DETR-R50 (random weights) exported and calibrated once per --work folder; returns (bundle, the OpenVINO
    placement written, calibration seconds)."""
    from benchmarks.bench_detr import detr_r50, fixed_size_feed, photo_paths
    from vkt.bundle import Bundle
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.calibration.config import TARGETS
    from vkt.models.detr.export import export_bundle
    from vkt.models.detr.int8 import PERCENTILE
    from vkt.runtime.image import Preprocessor

    placement = "openvino" if "openvino" in TARGETS else "trt"
    dest = work / "r50.vkt"
    if not (dest / "manifest.json").is_file():
        model = detr_r50()
        if distinct:
            distinct_queries(model)
        export_bundle(model, dest, overwrite=True)
    b = Bundle.load(dest)
    if b.has("int8 qdq onnx") and {e.meta.get("placement") for e in b.files("int8 qdq onnx")} >= {"ort", placement}:
        return dest, placement, float("nan")
    pre = Preprocessor(b.preprocess)
    feeds = [fixed_size_feed(pre, p, size) for p in photo_paths()[1:1 + n_calib]]
    t0 = time.perf_counter()
    quantize_bundle(dest, feeds, Int8Config(method="percentile", percentile=PERCENTILE, targets=("ort", placement)),
                    eval_samples=0, show_progress=False)
    return dest, placement, time.perf_counter() - t0


def detr_gate(bundle: Path, placement: str, backend: str, size: tuple[int, int], threads: int,
              max_steps: int | None = None) -> tuple[bytes, dict]:
    """The ``placement`` graph on ``backend`` with the fewest keep-list groups in float that keeps AP vs FP32 >=
    AP_FLOOR (or all of them): (graph bytes, {steps: [...], chosen: ...})."""
    from benchmarks.bench_detr import photo_paths
    from vkt.bundle import Bundle
    from vkt.calibration.qdq import place_ort, place_trt
    from vkt.calibration.ranges import CalibrationTable
    from vkt.models.detr.int8 import agreement_ap, keep_list
    from vkt.onnxgraph import prepare_model
    from vkt.onnxio import load_onnx
    from vkt.runtime import make_runner
    from vkt.runtime.detection import Detector
    from vkt.runtime.image import read_image

    b = Bundle.load(bundle)
    resize = {"shortest_edge": min(size), "longest_edge": max(size)}
    imgs = [read_image(p) for p in photo_paths()]
    sizes = [im.shape[:2] for im in imgs]
    with Detector(make_runner(b, "ort", threads=threads), score_threshold=0.0, top_k=100, **resize) as det:
        ref = [det(im)[0] for im in imgs]
    with Detector(make_runner(b, backend, threads=threads), score_threshold=0.0, top_k=100, **resize) as det:
        control = agreement_ap(ref, [det(im)[0] for im in imgs], sizes, gt_top=10)["AP"]  # FP32 on `backend`: the floor
    graph = prepare_model(load_onnx(b.path("fp32 onnx")))
    table = CalibrationTable.load(b.root / b.files("calibration table")[-1].path)
    rows, steps = keep_list(graph)
    place = place_ort if placement == "ort" else place_trt
    if placement == "openvino":  # vkt's OpenVINO placement as the bundle holds it (no keep-list steps here)
        steps = [0]
    steps = steps[:max_steps]
    tried = []
    blob = b""
    for k in steps:
        if placement == "openvino":
            blob = (b.root / b.entry("int8 qdq onnx", placement="openvino").path).read_bytes()
        else:
            blob = place(graph, table, [r["node"] for r in rows[:k]]).SerializeToString()
        runner = graph_runner(blob_path(bundle, blob, f"{placement}-{k}"), backend, b.spec(), threads)
        with Detector(runner, score_threshold=0.0, top_k=100, **resize) as det:
            ap = agreement_ap(ref, [det(im)[0] for im in imgs], sizes, gt_top=10)
        tried.append({"layers_kept_float": k, "group": rows[k - 1]["group"] if k else None, "AP": round(ap["AP"], 4)})
        print(f"  {backend} {placement} keep {k}: AP vs FP32 {ap['AP']:.4f}", file=sys.stderr, flush=True)
        if ap["AP"] >= AP_FLOOR:
            break
    return blob, {"steps": tried, "chosen": tried[-1], "passes": tried[-1]["AP"] >= AP_FLOOR, "images": len(imgs),
                  "fp32_on_this_backend_AP": round(control, 4)}


def graph_runner(path: Path, backend: str, spec, threads: int):  # noqa: ANN001
    """A runner of a bare graph file with the bundle's spec (its profile bounds OpenVINO's dynamic axes)."""
    from vkt.runtime.openvino import OvRunner
    from vkt.runtime.ort import OrtRunner

    if backend == "ov":
        return OvRunner(path, spec=spec, threads=threads, name=f"ov-{path.stem}", precision="int8")
    return OrtRunner(path, threads=threads, spec=spec, name=f"ort-{path.stem}")


def blob_path(bundle: Path, blob: bytes, tag: str) -> Path:
    path = bundle.parent / f"int8-{tag}.onnx"
    path.write_bytes(blob)
    return path


def run_detr(args: argparse.Namespace, writer: RowWriter) -> None:
    from benchmarks.bench_detr import fixed_size_feed, photo_paths
    from vkt.bundle import Bundle
    from vkt.runtime import make_runner
    from vkt.runtime.image import Preprocessor

    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2
    except (ValueError, AssertionError):
        raise SystemExit(f"--size must be HxW, e.g. 480x640; got {args.size!r}") from None
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ov-detr-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle, placement, calib_s = detr_bundle(work, size, args.calib, distinct=not args.transformers_init)
    b = Bundle.load(bundle)
    feed = fixed_size_feed(Preprocessor(b.preprocess), photo_paths()[0], size)
    gates = {}
    graphs = {}
    for backend, plc in (("ort", "ort"), ("ov", placement)):
        blob, gates[backend] = detr_gate(bundle, plc, backend, size, max(args.threads), args.gate_steps)
        graphs[backend] = {0: bundle.parent / f"int8-{plc}-0.onnx"}  # the full placement, written by detr_gate
        k = gates[backend]["chosen"]["layers_kept_float"]
        if k:
            graphs[backend][k] = blob_path(bundle, blob, f"{plc}-gated")
    label = {"ort": "onnxruntime placement", "openvino": "vkt OpenVINO placement",
             "trt": "TensorRT placement (vkt has no OpenVINO placement yet)"}
    for t in args.threads:
        runners = {
            "ort-fp32": (make_runner(b, "ort", threads=t), "vkt OrtRunner.infer, FP32"),
            "ov-fp32": (make_runner(b, "ov", threads=t), "vkt OvRunner.infer, FP32 (f32 hint)"),
        }
        extra = {}
        for backend in ("ort", "ov"):
            plc = "ort" if backend == "ort" else placement
            for k, path in graphs[backend].items():
                r = graph_runner(path, backend, b.spec(), t)
                step = next(s for s in gates[backend]["steps"] if s["layers_kept_float"] == k)
                name = f"{backend}-int8-{plc}-placement" + (f"-keep{k}" if k else "")
                runners[name] = (r, f"vkt {type(r).__name__}.infer, INT8 Q/DQ: the {label[plc]}, "
                                    f"{k} keep-list nodes in float (AP vs FP32 {step['AP']})")
                extra[name] = {"AP_vs_fp32": step["AP"], "layers_kept_float": k, "gate": gates[backend]}
        writer.write_all(timed_rows("ov_families", R50, runners, feed, t, args.iters, args.warmup, extra))
    writer.write(row("ov_families", "detr-run", includes="how the DETR INT8 graphs were made", model=R50,
                     shape=f"1x3x{size[0]}x{size[1]}", calibration_s=None if calib_s != calib_s else round(calib_s, 1),
                     calib_images=args.calib, ov_placement=placement, gate_floor=AP_FLOOR))


# ---- DETR trained (the gate on OpenVINO needs a model that detects something) ------------------------
TRAINED = "DETR reduced (trained by vkt train detr --synth 512)"


def trained_run(run: Path, train: bool) -> Path:
    """RUN/model of a `vkt train detr --synth 512 -o RUN` run; trains it (the reduced recipe, ~15-20 min on 2 busy
    cores) when --train is given and the folder holds no model yet."""
    import subprocess

    model_dir = run / "model"
    if (model_dir / "vkt_train.json").is_file():
        return model_dir
    if not train:
        raise SystemExit(f"{model_dir} holds no trained model; run `vkt train detr --synth 512 -o {run}` or add --train")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vkt", "train", "detr", "--synth", "512", "-o", str(run)], check=True)
    print(f"# trained {run} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return model_dir


def trained_bundle(model_dir: Path, work: Path, threads: int, time_size: tuple[int, int],
                   holdout_synth: int = 96) -> tuple[Path, dict, dict]:
    """The trained model exported and quantized for onnxruntime and OpenVINO as `vkt quantize -t ort -t openvino
    --holdout DIR --max-drop 2` does (once per --work folder); returns (bundle, calibration section, run config).

    Calibration: 24 synthetic images (seed 7) and 8 scikit-image pictures (bench_detr.CALIB_PHOTOS); the gate's
    held-out set: ``holdout_synth`` other synthetic images (seed 2) and 6 other pictures (bench_detr.HOLDOUT_PHOTOS).
    The gate's minimum speed-up is 0 here, so each placement that keeps AP ships and this script times it itself
    beside FP32 (the gate's own speed verdict stays in the rows); the profile reaches ``time_size`` to be timed there."""
    import json
    import shutil

    import cv2

    from benchmarks.bench_detr import CALIB_PHOTOS, HOLDOUT_PHOTOS, photo_paths
    from vkt.bundle import Bundle
    from vkt.calibration import Int8Config
    from vkt.models.detr.checkpoints import load_checkpoint
    from vkt.models.detr.export import export_bundle
    from vkt.models.detr.int8 import DetrRecipe
    from vkt.training.detr_data import synthetic_shapes

    cfg = json.loads((model_dir / "vkt_train.json").read_text())
    dest = work / "reduced.vkt"
    if (dest / "manifest.json").is_file():
        b = Bundle.load(dest)
        if b.manifest.get("calibration", {}).get("openvino_gate") is not None:
            return dest, b.manifest["calibration"], cfg
    se, le = cfg["resize"]["shortest_edge"], cfg["resize"]["longest_edge"]
    export_bundle(load_checkpoint(model_dir), dest, overwrite=True, shortest_edge=se, longest_edge=le,
                  profile={"batch": (1, 1, 4), "height": (32, se, max(le, time_size[0])),
                           "width": (32, min(le, se * 4 // 3), max(le, time_size[1]))})
    synth = dict(cfg.get("data", {}).get("synth_options", {}))
    folders = {}
    for name, n, seed, pics in (("calib", 24, 7, CALIB_PHOTOS), ("holdout", holdout_synth, 2, HOLDOUT_PHOTOS)):
        folders[name] = work / name
        folders[name].mkdir(exist_ok=True)
        for i, smp in enumerate(synthetic_shapes(n, size=tuple(cfg["image_size"]), seed=seed, **synth)):
            cv2.imwrite(str(folders[name] / f"{i:03d}.png"), smp.image)
        for p in photo_paths(pics):
            shutil.copy(p, folders[name] / f"photo_{p.name}")
    t0 = time.perf_counter()
    section = DetrRecipe().quantize(dest, Int8Config(calib=folders["calib"], holdout=folders["holdout"],
                                                     targets=("ort", "openvino"), threads=threads, max_drop=100 * (1 - AP_FLOOR),
                                                     min_speedup=0.0))
    print(f"# quantized {dest} (ort + openvino, gated) in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return dest, section, cfg


def run_detr_trained(args: argparse.Namespace, writer: RowWriter) -> None:
    from benchmarks.bench_detr import photo_paths
    from vkt.bundle import Bundle
    from vkt.models.detr.int8 import agreement_ap
    from vkt.runtime import make_runner
    from vkt.runtime.detection import Detector
    from vkt.runtime.image import read_image
    from vkt.training.detr_data import synthetic_shapes

    if args.run is None:
        raise SystemExit("detr-trained needs --run RUN: a `vkt train detr --synth 512 -o RUN` folder (--train makes it)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-ov-detr-trained-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        time_size = tuple(int(v) for v in args.time_size.lower().split("x"))
        assert len(time_size) == 2 and all(v >= 32 for v in time_size)
    except (ValueError, AssertionError):
        raise SystemExit(f"--time-size must be HxW (each >= 32), e.g. 480x640; got {args.time_size!r}") from None
    bundle, section, cfg = trained_bundle(trained_run(args.run, args.train), work, max(args.threads), time_size,
                                          args.holdout_synth)
    b = Bundle.load(bundle)
    shipped = {e.meta.get("placement") for e in b.files("int8 qdq onnx")}
    # AP vs FP32 on images neither calibrated on nor gated on: the training run's validation draw (seed 1) and photos
    synth = dict(cfg.get("data", {}).get("synth_options", {}))
    sets = {"synthetic_val": [s.image for s in synthetic_shapes(64, size=tuple(cfg["image_size"]), seed=1, **synth)],
            "photos": [read_image(p) for p in photo_paths()]}
    resize = {k: v for k, v in b.preprocess["resize"].items() if k in ("shortest_edge", "longest_edge")}

    def detect(runner, imgs):  # noqa: ANN001, ANN202
        with Detector(runner, score_threshold=0.0, top_k=100, **resize) as det:
            return [det(im)[0] for im in imgs]

    t = max(args.threads)
    ref = {k: detect(make_runner(b, "ort", threads=t), v) for k, v in sets.items()}
    ap = {}
    for backend, precision, placement in (("ov", "fp32", None), ("ort", "int8", "ort"), ("ov", "int8", "openvino")):
        if placement is not None and placement not in shipped:
            continue
        ap[f"{backend}-{precision}"] = {k: round(agreement_ap(ref[k], detect(make_runner(b, backend, precision, threads=t), v),
                                                              [im.shape[:2] for im in v], 0.5)["AP"], 4)
                                        for k, v in sets.items()}
        print(f"  {backend}-{precision}: AP vs onnxruntime FP32 {ap[f'{backend}-{precision}']}", file=sys.stderr, flush=True)
    opt = b.spec().opt_feed(rng=np.random.default_rng(0))
    input_name = next(iter(opt))
    feeds = [opt, {input_name: np.random.default_rng(0).standard_normal((1, 3, *time_size)).astype(np.float32)}]
    gates = {"ort": section.get("gate"), "openvino": section.get("openvino_gate")}
    for t, feed in ((t, f) for f in feeds for t in args.threads):
        runners = {"ort-fp32": (make_runner(b, "ort", threads=t), "vkt OrtRunner.infer, FP32"),
                   "ov-fp32": (make_runner(b, "ov", threads=t), "vkt OvRunner.infer, FP32 (f32 hint)")}
        extra = {"ov-fp32": {"AP_vs_ort_fp32": ap["ov-fp32"]}}
        for backend, placement in (("ort", "ort"), ("ov", "openvino")):
            if placement in shipped:
                name = f"{backend}-int8-{placement}-placement-gated"
                gate = gates[placement] or {}
                runners[name] = (make_runner(b, backend, "int8", threads=t),
                                 f"vkt {backend} runner, the INT8 graph `vkt quantize -t {placement}` shipped (gated)")
                extra[name] = {"AP_vs_ort_fp32": ap[f"{backend}-int8"], "gate": {
                    "baseline": gate.get("baseline"), "shipped": gate.get("shipped"), "reason": gate.get("reason"),
                    "chosen": {k: v for k, v in (gate.get("chosen") or {}).items() if k != "float_layers"},
                    "steps": [{k: s.get(k) for k in ("layers_kept_float", "metric", "speedup")} for s in gate.get("steps", [])]}}
        rows = timed_rows("ov_families", TRAINED, runners, feed, t, args.iters, args.warmup, extra, args.cpu_iters)
        best = min(r["p50_ms"] for r in rows if r["precision"] == "fp32")
        best_min = min(r["min_ms"] for r in rows if r["precision"] == "fp32")
        best_cpu = min(r.get("cpu_s_median", float("nan")) for r in rows if r["precision"] == "fp32")
        for r in rows:
            r["speedup_vs_best_fp32"] = round(best / r["p50_ms"], 3)
            r["speedup_min_vs_best_fp32"] = round(best_min / r["min_ms"], 3)
            if "cpu_s_median" in r:
                r["speedup_cpu_vs_best_fp32"] = round(best_cpu / r["cpu_s_median"], 3)
        writer.write_all(rows)
    writer.write(row("ov_families", "detr-trained-run", includes="how the trained DETR's INT8 graphs were made",
                     model=TRAINED, shapes=["x".join(str(d) for d in f[input_name].shape) for f in feeds],
                     shipped=sorted(p for p in shipped if p), gate_floor=AP_FLOOR, ap_images={k: len(v) for k, v in sets.items()},
                     gate_holdout_images=(gates["openvino"] or gates["ort"] or {}).get("holdout", {}).get("images"),
                     not_shipped={p: (gates[p] or {}).get("reason") for p in ("ort", "openvino") if p not in shipped}))


# ---- SD -------------------------------------------------------------------------------------------
def run_sd(args: argparse.Namespace, writer: RowWriter) -> None:
    from vkt.bundle import Bundle
    from vkt.runtime import make_runner

    bundle = args.bundle
    if bundle is None:  # bench_sd.py's cached bundle, built (random weights, a few minutes) when missing
        from benchmarks.bench_sd import prepare

        bundle = prepare(args.sd_size, args.work or Path("/tmp/vkt-bench-sd") / args.sd_size, 256, 4)["bundle"]
    if not (bundle / "manifest.json").is_file():
        raise SystemExit(f"--bundle must be an SD bundle folder (benchmarks/bench_sd.py --size sd15 makes one), got {bundle}")
    b = Bundle.load(bundle)
    model = args.model
    for comp in ("text_encoder", "unet", "vae_decoder"):
        feed = b.spec(comp).opt_feed(rng=np.random.default_rng(0))
        for t in args.threads:
            ort_r = make_runner(b, "ort", component=comp, threads=t)
            ov_r = make_runner(b, "ov", component=comp, threads=t)
            t0 = time.perf_counter()
            ort_r.activate(), ov_r.activate()
            load_s = time.perf_counter() - t0
            a, o = ort_r.infer(feed), ov_r.infer(feed)
            diff = {k: float(np.abs(o[k] - a[k]).max()) for k in a}
            runners = {"ort-fp32": (ort_r, f"vkt OrtRunner.infer on {Path(ort_r.model).name}, FP32"),
                       "ov-fp32": (ov_r, f"vkt OvRunner.infer on {Path(ov_r.model).name}, FP32 (f32 hint)")}
            extra = {"ov-fp32": {"component": comp, "max_abs_vs_ort": diff, "open_s_both": round(load_s, 1)},
                     "ort-fp32": {"component": comp}}
            writer.write_all(timed_rows("ov_families", f"{model} {comp}", runners, feed, t, args.iters, args.warmup, extra))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=("detr", "detr-trained", "sd"))
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", default="480x640", help="detr: HxW of the timed feed, calibration and AP resize")
    ap.add_argument("--calib", type=int, default=4, help="detr: calibration photos")
    ap.add_argument("--work", type=Path, default=None, help="detr: cache folder (bundle, INT8 graphs)")
    ap.add_argument("--gate-steps", type=int, default=None,
                    help="detr: try at most this many keep-list steps per backend (1: the full placement only)")
    ap.add_argument("--transformers-init", action="store_true",
                    help="detr: keep transformers' random init (all queries alike: AP vs FP32 is meaningless)")
    ap.add_argument("--run", type=Path, default=None, help="detr-trained: a `vkt train detr --synth 512 -o RUN` folder")
    ap.add_argument("--train", action="store_true", help="detr-trained: train RUN first when it holds no model")
    ap.add_argument("--holdout-synth", type=int, default=96,
                    help="detr-trained: synthetic images in the gate's held-out set (beside 6 pictures; a new --work). "
                         "With 32 the openvino gate passed at AP 0.981 on them and 0.978 on unseen images: too few")
    ap.add_argument("--cpu-iters", type=int, default=0,
                    help="detr-trained: also this many interleaved rounds of CPU seconds per call (robust to load)")
    ap.add_argument("--time-size", default="480x640",
                    help="detr-trained: HxW of the second timed feed (the first: the profile's opt shape, 128x160)")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="sd: the SD bundle (default: bench_sd.py's cached --sd-size bundle, built when missing)")
    ap.add_argument("--sd-size", choices=("sd15", "small"), default="sd15",
                    help="sd without --bundle: bench_sd.py's model size (sd15: SD 1.5's shapes; opt shapes at 256 px)")
    ap.add_argument("--model", default="SD 1.5 shapes (random weights)", help="sd: the rows' model name")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args()
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
        assert args.threads and all(t >= 1 for t in args.threads)
    except (ValueError, AssertionError):
        ap.error(f"--threads must be positive integers separated by commas, got {args.threads!r}")
    writer = RowWriter(args.json)
    {"detr": run_detr, "detr-trained": run_detr_trained, "sd": run_sd}[args.family](args, writer)
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
