"""DETR-R50 at 800x1066 on CPU: torch eager (and channels_last) vs onnxruntime FP32 vs onnxruntime INT8, interleaved.

Run: .venv/bin/python benchmarks/bench_detr.py [--threads 2] [--iters 8] [--calib 6] [--trained RUN/model]
     [--keep] [--skip-torch] [--keep-work] [--json rows.jsonl]
     quick look: --skip-torch --size 320x427 --photos 3 --calib 1 --iters 2 --warmup 1

1. transformers' DetrForObjectDetection with DETR-R50's architecture (ResNet-50 from transformers, no
   timm, random weights, seed 0) is exported with vkt.models.detr.export.export_bundle (raw heads).
2. INT8: one calibration (percentile 99.99, DETR's default) on scikit-image photos resized to 800x1066, written as
   the onnxruntime placement (vkt.calibration.quantize_bundle; round-to-nearest weights: GPTQ, the
   default of `vkt export detr --int8`, changes weight values, not the graph that is timed): Q/DQ on Conv/MatMul/Gemm and the
   element-wise ops between them, Softmax and LayerNormalization kept in float (quantizing Softmax
   collapses attention: ORT's uint8 Softmax output scale is fixed at 1/255).
3. Speed: vkt.bench.run_bench interleaves the targets call by call on one 1x3x800x1066 feed; with --keep
   also the INT8 placement with each cumulative step of the DETR gate's keep-list in float
   (vkt.models.detr.int8.KEEP_GROUPS: heads, decoder, encoder, stem).
4. % of peak: FLOPs of every Conv/MatMul/Gemm from the graph's inferred shapes (2 x MACs) / p50,
   against peak = cores x GHz x FLOPs/cycle (--flops-per-cycle, default 64: two 512-bit FMA units
   x 16 float32 lanes x 2, what AVX-512 FMA gives on Zen 5 / Intel server cores; --ghz default:
   the nominal clock /proc/cpuinfo reports).
5. INT8 agreement: COCO AP (pycocotools, vkt.eval.coco) of the INT8 detections against the FP32
   detections taken as ground truth — on real photos (DETR-R50, random weights: FP32's top-10 per
   image are the ground truth, as its scores are near-uniform), and, with --trained, on the
   reduced model trained by `vkt train detr` (ground truth: FP32 detections scoring > 0.5) on
   synthetic validation images and on the photos (also mirrored, and centre crops of both: more real
   boxes, less noise), for the INT8 graph `vkt export detr --int8` ships (calibration + accuracy gate on
   other synthetic images and pictures; --no-gate: calibration only; --weight-rounding / --percentile).
Rows (benchmarks/schema.py): one per timed target (percent_of_peak, speedup_vs_ort_fp32), one per agreement figure
(p50_ms null), and a "run" row with export/calibration seconds, FLOPs, the peak estimate and the parity check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, from_bench_row, row  # noqa: E402
from vkt.runtime.detection import Detector  # noqa: E402

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "horse.png",
          "camera.png", "coins.png")
# Other scikit-image pictures, for calibrating the reduced model on both domains it is measured on (never scored).
CALIB_PHOTOS = ("motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "brick.png", "color.png",
                "page.png", "cell.png")
# More, for the accuracy gate's holdout beside synthetic images (neither calibrated on nor scored).
HOLDOUT_PHOTOS = ("text.png", "logo.png", "grass.png", "gravel.png", "clock_motion.png", "moon.png")
SIZE = (800, 1066)


def photo_paths(names: tuple[str, ...] = PHOTOS) -> list[Path]:
    import skimage

    root = Path(skimage.__file__).parent / "data"
    return [root / p for p in names if (root / p).is_file()]


def detr_r50(seed: int = 0):
    import torch
    from transformers import DetrConfig, DetrForObjectDetection

    from vkt.models.detr.checkpoints import resnet_backbone_config

    torch.manual_seed(seed)
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=resnet_backbone_config("resnet50"), num_labels=91)
    return DetrForObjectDetection(cfg).eval()


def fixed_size_feed(pre, path: Path, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The photo stretched to exactly ``size`` and normalised as the manifest says (speed and ranges only)."""
    import cv2

    from vkt.runtime.image import Resized, read_image

    img = cv2.resize(read_image(path), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    x = np.zeros((1, 3, *size), np.float32)
    pre.write(img, Resized(size, size), x[0])  # already at size: normalise only (the manifest's resize may differ)
    return {"pixel_values": x}


def conv_matmul_flops(onnx_path: Path, feed_shape: tuple[int, ...]) -> dict[str, float]:
    """2 x MACs of Conv / MatMul / Gemm nodes with the graph input fixed to ``feed_shape``."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    m = onnx.load(str(onnx_path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, feed_shape):
        d.ClearField("dim_param")
        d.dim_value = v
    m = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = {"Conv": 0.0, "MatMul": 0.0, "Gemm": 0.0}
    for n in m.graph.node:
        if n.op_type == "Conv":
            w, y = shapes[n.input[1]], shapes[n.output[0]]
            total["Conv"] += 2.0 * np.prod(y) * np.prod(w[1:])            # per output: Cin/g x kh x kw MACs
        elif n.op_type == "MatMul":
            a, y = shapes[n.input[0]], shapes[n.output[0]]
            total["MatMul"] += 2.0 * np.prod(y) * a[-1]
        elif n.op_type == "Gemm":
            y = shapes[n.output[0]]
            trans_a = any(a.name == "transA" and a.i for a in n.attribute)
            a = shapes[n.input[0]]
            total["Gemm"] += 2.0 * np.prod(y) * (a[0] if trans_a else a[-1])
    total["total"] = sum(total.values())
    return total


def cpu_ghz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) / 1000.0
    except OSError:
        pass
    return 2.5


def agreement(fp32: list, int8: list, image_sizes: list[tuple[int, int]], gt_top: int | None = None,
              gt_threshold: float = 0.5) -> dict[str, float]:
    """COCO AP of INT8 detections with FP32's as ground truth (vkt.models.detr.int8.agreement_ap)."""
    from vkt.models.detr.int8 import agreement_ap

    return agreement_ap(fp32, int8, image_sizes, gt_threshold, gt_top)


def quantize(bundle: Path, feeds: list[dict[str, np.ndarray]], method: str) -> dict:
    from vkt.calibration import Int8Config, quantize_bundle
    from vkt.models.detr.int8 import PERCENTILE

    return quantize_bundle(bundle, feeds, Int8Config(method=method, targets=("ort",), percentile=PERCENTILE),
                           eval_samples=0, show_progress=True)


def centre_crop(img: np.ndarray, frac: float = 0.8) -> np.ndarray:
    h, w = img.shape[:2]
    dh, dw = int(h * (1 - frac) / 2), int(w * (1 - frac) / 2)
    return np.ascontiguousarray(img[dh:h - dh, dw:w - dw])


def detections(bundle: Path, precision: str, images: list, threads: int) -> list:
    with Detector(bundle, precision=precision, threads=threads, score_threshold=0.0, top_k=100) as det:
        return [det(im)[0] for im in images]


def trained_agreement(model_dir: Path, work: Path, threads: int, n_val: int, method: str, gate: bool = True,
                      max_drop: float = 0.02, **options) -> dict:
    """INT8 vs FP32 on the reduced model trained by `vkt train detr` (synthetic val images and photos).

    The INT8 graph is what `vkt export detr --int8` ships: calibration on 24 synthetic images (seed 7) and
    8 scikit-image pictures not among the scored photos (CALIB_PHOTOS), the accuracy gate (AP vs FP32, budget
    0.02) on 32 other synthetic images (seed 2) and 6 other pictures (HOLDOUT_PHOTOS); agreement is then measured on ``n_val`` further synthetic
    images (seed 1, the training run's validation draw) and the photos (as they are, mirrored, and
    centre crops of both). ``options``: further Int8Config fields (weight_rounding, percentile).
    """
    import shutil

    import cv2

    from vkt.models.detr.checkpoints import load_checkpoint
    from vkt.models.detr.export import export_bundle
    from vkt.calibration import Int8Config
    from vkt.models.detr.int8 import DetrRecipe
    from vkt.runtime.image import read_image
    from vkt.training.detr_data import synthetic_shapes

    model = load_checkpoint(model_dir)
    run_cfg = json.loads((model_dir / "vkt_train.json").read_text()) if (model_dir / "vkt_train.json").is_file() else {}
    resize = run_cfg.get("resize", {"shortest_edge": 160, "longest_edge": 224})
    size = tuple(run_cfg.get("image_size", (160, 224)))
    synth = dict(run_cfg.get("data", {}).get("synth_options", {}))
    se, le = resize["shortest_edge"], resize["longest_edge"]
    dest = export_bundle(model, work / "reduced.vkt", overwrite=True, shortest_edge=se, longest_edge=le,
                         profile={"batch": (1, 1, 4), "height": (32, se, le), "width": (32, min(le, se * 4 // 3), le)})
    folders = {}
    for name, n, seed in (("calib", 24, 7), ("holdout", 32, 2)):
        folders[name] = work / name
        folders[name].mkdir(exist_ok=True)
        for i, smp in enumerate(synthetic_shapes(n, size=size, seed=seed, **synth)):
            cv2.imwrite(str(folders[name] / f"{i:03d}.png"), smp.image)
    for p in photo_paths(CALIB_PHOTOS):
        shutil.copy(p, folders["calib"] / f"photo_{p.name}")
    for p in photo_paths(HOLDOUT_PHOTOS):
        shutil.copy(p, folders["holdout"] / f"photo_{p.name}")
    cfg = Int8Config(calib=folders["calib"], holdout=folders["holdout"] if gate else None, method=method, targets=("ort",),
                     on_fail="best", threads=threads, max_drop=100 * max_drop if gate else None, **options)
    section = DetrRecipe().quantize(dest, cfg)
    val = [s.image for s in synthetic_shapes(n_val, size=size, seed=1, **synth)]
    photos = [read_image(p) for p in photo_paths()]
    mirrored = [np.ascontiguousarray(im[:, ::-1]) for im in photos]
    gate = section.get("gate")
    out: dict = {"weights": section.get("weights"), "options": section.get("options"),
                 "gate": None if gate is None else {
        "baseline": gate["baseline"], "chosen_step": (gate["chosen"] or {}).get("step"),
        "steps": [{k: st[k] for k in ("layers_kept_float", "metric", "speedup")} for st in gate["steps"]]}}
    sets = {"synthetic_val": val, "photos": photos, "photos_mirrored": mirrored,
            "photo_crops": [centre_crop(im) for im in photos + mirrored]}
    ref = {}
    for name, imgs in sets.items():
        ref[name] = detections(dest, "fp32", imgs, threads)
        q = detections(dest, "int8", imgs, threads)
        out[name] = agreement(ref[name], q, [im.shape[:2] for im in imgs], gt_threshold=0.5)
        out[name]["images"] = len(imgs)
    # every keep-list step (not only the gate's choice), from the same table and weights
    out["keep_steps"] = keep_step_agreement(dest, section, folders["calib"], sets, ref, threads)
    return out


def keep_step_agreement(bundle: Path, section: dict, calib: Path, sets: dict, ref: dict, threads: int) -> list[dict]:
    """AP vs FP32 of the onnxruntime placement with each cumulative keep-list step in float, per image set."""
    from vkt.bundle import Bundle
    from vkt.calibration.data import calibration_images
    from vkt.calibration.images import image_preprocess
    from vkt.calibration.qdq import place_ort
    from vkt.calibration.ranges import CalibrationTable, model_sha256
    from vkt.onnxgraph import prepare_model
    from vkt.calibration.weights import round_conv_weights
    from vkt.models.detr.int8 import keep_list
    from vkt.onnxio import load_onnx
    from vkt.runtime.ort import OrtRunner

    b = Bundle.load(bundle)
    graph = prepare_model(load_onnx(b.path("fp32 onnx")))
    if section["weights"]["rounding"] == "gptq":   # deterministic: the same images in the same order as the recipe
        pre = image_preprocess(b)
        graph = round_conv_weights(graph, [pre(p) for p in calibration_images(calib)], show_progress=False)[0]
    if model_sha256(graph) != section["model_sha256"]:
        raise RuntimeError("could not rebuild the graph the DETR recipe calibrated")
    table = CalibrationTable.load(b.root / section["table"]["path"])
    rows, steps = keep_list(graph)
    resize = {k: v for k, v in b.preprocess["resize"].items() if k in ("shortest_edge", "longest_edge")}
    out = []
    for k in steps:
        blob = place_ort(graph, table, [r["node"] for r in rows[:k]]).SerializeToString()
        row = {"layers_kept_float": k, "group": rows[k - 1]["group"] if k else None}
        with Detector(OrtRunner(blob, threads=threads, spec=b.spec()), score_threshold=0.0, top_k=100, **resize) as det:
            for name, imgs in sets.items():
                row[name] = round(agreement(ref[name], [det(im)[0] for im in imgs], [im.shape[:2] for im in imgs])["AP"], 4)
        print("  keep step", json.dumps(row), flush=True)
        out.append(row)
    return out


def keep_variants(bundle: Path) -> dict[str, bytes]:
    """The onnxruntime INT8 placement with each cumulative keep-list step of vkt.models.detr.int8 in float."""
    from vkt.bundle import Bundle
    from vkt.calibration.qdq import place_ort
    from vkt.calibration.ranges import CalibrationTable
    from vkt.onnxgraph import prepare_model
    from vkt.models.detr.int8 import keep_list
    from vkt.onnxio import load_onnx

    b = Bundle.load(bundle)
    fp32 = prepare_model(load_onnx(b.path("fp32 onnx")))
    table = CalibrationTable.load(b.root / b.files("calibration table")[-1].path)
    rows, steps = keep_list(fp32)
    out = {}
    for k in steps[1:]:
        out[f"ort-int8-keep-{rows[k - 1]['group']}"] = place_ort(fp32, table, [r["node"] for r in rows[:k]]).SerializeToString()
    return out


R50 = "DETR-R50 (random weights)"
REDUCED = "DETR reduced (trained by vkt train detr)"


def latency_rows(rows: list, threads: int, percent_of_peak: dict[str, float]) -> list[dict]:
    """Schema rows of run_bench's Rows, with % of peak and the speed-up over onnxruntime FP32."""
    p50 = {r.target: r.p50_ms for r in rows}
    out = []
    for r in rows:
        torch_target = r.target.startswith("torch")
        out.append(from_bench_row("detr", r, model=R50, backend="torch-cpu" if torch_target else "ort-cpu",
                                  precision="int8" if "int8" in r.target else "fp32", threads=threads,
                                  percent_of_peak=percent_of_peak.get(r.target),
                                  speedup_vs_ort_fp32=p50["ort-fp32"] / r.p50_ms if "ort-fp32" in p50 else None))
    return out


def agreement_row(target: str, model: str, threads: int, includes: str, **figures) -> dict:
    """Schema row of an INT8-vs-FP32 agreement figure (no latency)."""
    return row("detr", target, includes=includes, model=model, backend="ort-cpu", precision="int8", threads=threads,
               **figures)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--calib", type=int, default=6, help="calibration photos (at --size)")
    ap.add_argument("--size", default="800x1066", help="HxW of the timed feed and the calibration images")
    ap.add_argument("--photos", type=int, default=len(PHOTOS), help="scikit-image photos used (first: timed and held out)")
    ap.add_argument("--method", default="percentile")
    ap.add_argument("--flops-per-cycle", type=float, default=64.0)
    ap.add_argument("--ghz", type=float, default=None)
    ap.add_argument("--trained", type=Path, default=None, help="a `vkt train detr` model folder (RUN/model)")
    ap.add_argument("--n-val", type=int, default=64)
    ap.add_argument("--skip-r50", action="store_true")
    ap.add_argument("--bundle", type=Path, default=None, help="reuse this exported + calibrated DETR-R50 bundle")
    ap.add_argument("--keep", action="store_true", help="also time INT8 with each keep-list step of the DETR gate in float")
    ap.add_argument("--skip-torch", action="store_true", help="time ORT only (FP32 and INT8 graphs)")
    ap.add_argument("--no-gate", action="store_true", help="--trained: INT8 without the accuracy gate")
    ap.add_argument("--max-drop", type=float, default=0.02, help="--trained: the gate's AP budget (0.02 = 2 points)")
    ap.add_argument("--weight-rounding", default=None, help="--trained: gptq | nearest (default: the DETR recipe's)")
    ap.add_argument("--percentile", type=float, default=None, help="--trained: calibration percentile (default: the DETR recipe's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here (JSON lines)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary folder (exported bundles, for --bundle)")
    args = ap.parse_args()
    global SIZE
    try:
        SIZE = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(SIZE) == 2
    except (ValueError, AssertionError):
        ap.error(f"--size must be HxW, e.g. 800x1066; got {args.size!r}")
    if args.photos < 1 + args.calib:
        ap.error(f"--photos must be at least 1 + --calib ({1 + args.calib}): the first photo is held out")

    import torch

    from vkt.bench import BenchConfig, Case, Target, print_table, run_bench
    from vkt.bundle import Bundle
    from vkt.runtime import make_runner
    from vkt.runtime.image import Preprocessor, read_image

    torch.set_num_threads(args.threads)
    result: dict = {"size": list(SIZE), "argv": sys.argv[1:]}
    out = RowWriter(args.json)
    work = Path(tempfile.mkdtemp(prefix="bench-detr-"))
    if args.trained is not None:
        t0 = time.perf_counter()
        result["trained_int8_agreement"] = trained_agreement(args.trained, work, args.threads, args.n_val, args.method,
                                                             gate=not args.no_gate, max_drop=args.max_drop,
                                                             **{k: v for k, v in (("weight_rounding", args.weight_rounding),
                                                                                  ("percentile", args.percentile)) if v is not None})
        print("trained reduced model, INT8 vs FP32:", json.dumps(result["trained_int8_agreement"]), f"({time.perf_counter() - t0:.0f} s)",
              flush=True, file=sys.stderr)
        out.write(agreement_row("ort-int8 (shipped)", REDUCED, args.threads,
                                "COCO AP of INT8 detections vs FP32's (FP32 score > 0.5 = ground truth) per image set, "
                                "for the graph `vkt export detr --int8` ships, and per keep-list step",
                                **result.pop("trained_int8_agreement")))
    if not args.skip_r50:
        from vkt.models.detr.export import export_bundle

        model = detr_r50()
        photos = photo_paths()[:args.photos]
        if args.bundle is not None:       # an earlier run's exported + calibrated bundle (same seed, same weights)
            dest = args.bundle
        else:
            t0 = time.perf_counter()
            dest = export_bundle(model, work / "r50.vkt", overwrite=True)
            result["export_s"] = round(time.perf_counter() - t0, 1)
            pre = Preprocessor(Bundle.load(dest).preprocess)
            calib = [fixed_size_feed(pre, p, SIZE) for p in photos[1:1 + args.calib]]
            t0 = time.perf_counter()
            section = quantize(dest, calib, args.method)
            result["calibration_s"] = round(time.perf_counter() - t0, 1)
            print(f"bundle {dest}: export {result['export_s']} s, calibration {result['calibration_s']} s", flush=True)
        b = Bundle.load(dest)               # after quantize: the manifest now lists the INT8 graph
        pre = Preprocessor(b.preprocess)
        result["calibration"] = b.manifest.get("calibration")
        feed = fixed_size_feed(pre, photos[0], SIZE)
        x = torch.from_numpy(feed["pixel_values"])
        x_cl = x.contiguous(memory_format=torch.channels_last)
        model_cl = None if args.skip_torch else detr_r50().to(memory_format=torch.channels_last)

        def eager(m, t):
            def run(_):
                with torch.inference_mode():
                    return m(pixel_values=t)
            return run

        fp32 = make_runner(b, "ort", "fp32", threads=args.threads)
        int8 = make_runner(b, "ort", "int8", threads=args.threads)
        # Parity of the timed ORT graph with the timed torch model at 800x1066 (same weights, same feed).
        fp32.activate()
        with torch.inference_mode():
            ref = model(pixel_values=x)
        got = fp32.infer(feed)
        result["fp32_vs_torch_max_abs"] = {"logits": float(np.abs(got["logits"] - ref.logits.numpy()).max()),
                                           "pred_boxes": float(np.abs(got["pred_boxes"] - ref.pred_boxes.numpy()).max())}
        targets = [] if args.skip_torch else [
            Target("torch-eager", eager(model, x), "transformers forward (SDPA attention), fp32, NCHW"),
            Target("torch-eager-channels_last", eager(model_cl, x_cl), "same, model and input channels_last"),
        ]
        targets += [
            Target("ort-fp32", fp32.infer, "vkt OrtRunner.infer (feed checks + onnxruntime CPU), fp32",
                   setup=fp32.activate, teardown=fp32.deactivate),
            Target("ort-int8", int8.infer, "vkt OrtRunner.infer, INT8 Q/DQ (ORT placement)",
                   setup=int8.activate, teardown=int8.deactivate),
        ]
        variants = keep_variants(dest) if args.keep else {}
        for name, blob in variants.items():
            from vkt.runtime.ort import OrtRunner

            r = OrtRunner(blob, threads=args.threads, spec=b.spec(), name=name)
            targets.append(Target(name, r.infer, f"INT8 ORT placement, DETR keep-list up to {name.rsplit('-', 1)[1]} in float",
                                  setup=r.activate, teardown=r.deactivate))
        case = f"1x3x{SIZE[0]}x{SIZE[1]}"
        rows = run_bench(targets, [Case(case, feed, 1)], BenchConfig(warmup=args.warmup, iters=args.iters))
        print_table(rows, f"DETR-R50 {SIZE[0]}x{SIZE[1]}")
        p50 = {r.target: r.p50_ms for r in rows}
        flops = conv_matmul_flops(b.root / b.entry("fp32 onnx", "model").path, (1, 3, *SIZE))
        ghz = args.ghz or cpu_ghz()
        peak = args.threads * ghz * 1e9 * args.flops_per_cycle
        result["flops"] = flops
        result["peak_gflops"] = {"value": peak / 1e9, "cores": args.threads, "ghz": ghz, "flops_per_cycle": args.flops_per_cycle}
        result["percent_of_peak"] = {t: 100.0 * flops["total"] / (ms / 1e3) / peak for t, ms in p50.items()}
        result["ratios"] = {f"{t}_over_fp32": p50["ort-fp32"] / ms for t, ms in p50.items() if t.startswith("ort-int8")}
        if not args.skip_torch:
            result["ratios"].update({"ort_fp32_over_eager": p50["torch-eager"] / p50["ort-fp32"],
                                     "ort_fp32_over_channels_last": p50["torch-eager-channels_last"] / p50["ort-fp32"]})
        print(json.dumps({k: result[k] for k in ("flops", "peak_gflops", "percent_of_peak", "ratios")}, indent=1), flush=True,
              file=sys.stderr)
        out.write_all(latency_rows(rows, args.threads, result.pop("percent_of_peak")))
        # INT8 vs FP32 on the photos (the held-out first one included), at the manifest's resize.
        imgs = [read_image(p) for p in photos]
        f = detections(dest, "fp32", imgs, args.threads)
        q = detections(dest, "int8", imgs, args.threads)
        top10 = f"COCO AP of INT8 detections vs FP32's top-10 per image on {len(imgs)} photos at the manifest's resize"
        out.write(agreement_row("ort-int8", R50, args.threads, top10, images=len(imgs),
                                **agreement(f, q, [im.shape[:2] for im in imgs], gt_top=10)))
        for name, blob in variants.items():
            from vkt.runtime.ort import OrtRunner

            with Detector(OrtRunner(blob, threads=args.threads, spec=b.spec()), score_threshold=0.0, top_k=100) as det:
                qv = [det(im)[0] for im in imgs]
            out.write(agreement_row(name, R50, args.threads, top10, images=len(imgs),
                                    **agreement(f, qv, [im.shape[:2] for im in imgs], gt_top=10)))
    out.write(row("detr", "run", includes="what the run measured besides latency: export and calibration seconds, "
                  "Conv/MatMul/Gemm FLOPs, the peak estimate, FP32 ONNX vs torch parity, INT8 vs FP32 ratios",
                  model=None if args.skip_r50 else R50, threads=args.threads, shape=f"1x3x{SIZE[0]}x{SIZE[1]}", **result))
    out.close()
    if args.keep_work:
        print(f"kept {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
