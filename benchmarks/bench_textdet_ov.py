"""CPU INT8 text detection: vkt's OpenVINO placement vs onnxruntime and OpenVINO FP32, NNCF's PTQ and its accuracy-control anchor.

Run: .venv/bin/python benchmarks/bench_textdet_ov.py [--work DIR] [--sizes 736,960] [--threads 1,2] [--iters 15]
         [--e2e-reps 3] [--no-anchor] [--gate] [--compare-bias] [--noise-floor] [--extra-eval N] [--json rows.jsonl]

PP-OCRv5 mobile det (vkt's zoo bundle, FP32 = the bundle's model.onnx). One calibration: the quickstart's 8
scikit-image photos, pre-processed as the manifest says, through ``recipe.quantize`` (targets ort + openvino; with
``--gate`` gated on its own held-out set, --gate-pages synthetic pages, seeds 2000/2100). Evaluated on 11 other held-out images
(page.png, text.png, 6 synthetic 640x640 pages seed 0, 3 synthetic 736x1024 seed 1000), none calibrated or gated on.

Targets, timed in turns in this one process (vkt.bench.time_turns), at each size and thread count:
  ort-fp32            the bundle's FP32 graph on onnxruntime CPU
  ov-fp32             the same graph on OpenVINO CPU (vkt's OvRunner, f32)
  ov-fp32-hardswish   the same graph with HardSigmoid*x re-fused to HardSwish (place_ov.fuse_hardswish): OpenVINO's best FP32
  ort-int8            vkt's ort placement (what `vkt run --precision int8` runs on onnxruntime)
  ov-int8             vkt's openvino placement (`vkt run --backend ov --precision int8`), bias-corrected as the textdet
                      recipe does by default: the product (with --gate: gated on its own held-out set with --max-drop,
                      default 0.5 point)
  ov-int8-ungated     with --gate: the same placement ungated (every conv INT8), from a bundle of its own
  ov-int8-no-bc       with --compare-bias: ov-int8 (and ov-int8-ungated-no-bc: ov-int8-ungated) calibrated with
                      --no-bias-correction, in bundles of their own
  ov-nncf-ptq         NNCF 3.4 nncf.quantize (MIXED) on the HardSwish graph, fed vkt's calibration feeds
  ov-nncf-qac         NNCF 3.4 quantize_with_accuracy_control on the same graph, feeds and the 11 images' hmean
                      vs FP32 (max drop 0.005; NNCF validates with the float layers in f32, and this row runs them
                      so): the anchor (it validates on the evaluation images: an upper bound; --anchor-validate gate:
                      on vkt's gate set instead, the same held-out data vkt's gate sees)
  ov-int8-f32f        with --bf16: ov-int8 with its float layers in the precision it did not ship with (f32 where the
  / ov-int8-bf16f     gate scored bf16, --float-precision auto on a CPU with native bf16; else bf16), not re-gated;
                      ov-bf16: the FP32 graph run in bf16 (OpenVINO's own default there); ov-nncf-qac-bf16f: the
                      anchor's reverted float layers in bf16 (NNCF validates in f32). None counts as FP32
With --noise-floor, accuracy rows (not timed) for the FP32 graph with its weights rounded to bf16 / fp16 and run
in float on onnxruntime: how many boxes a perturbation far smaller than int8's already moves on these images.
Rows: model-only latency (batch 1, SIZExSIZE random input), end to end (TextDetector over the 11 images, pre + model
+ DB post), hmean vs FP32 boxes on the 11 images; speed-ups against the fastest FP32 row of the same case.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.schema import RowWriter, row  # noqa: E402

MODEL = "PP-OCRv5 mobile det"
FP32 = ("ort-fp32", "ov-fp32", "ov-fp32-hardswish")
BLOCK = 3  # timed calls per target per turn


def data_sets(work: Path) -> tuple[Path, Path, list[Path]]:
    """(calibration folder, gate folder, the 11 evaluation images), written once under ``work``."""
    from bench_int8 import synthetic_text_set

    from vkt.cli.quickstart_plan import CALIB_PHOTOS, HELD_OUT_PHOTOS, SYNTH, skimage_photo
    from vkt.training.synth_text import SynthConfig, write_synth_dataset

    calib, gate, evals = work / "calib", work / "gate", work / "eval"
    if not evals.is_dir():
        calib.mkdir(parents=True, exist_ok=True)
        for n in CALIB_PHOTOS:
            shutil.copyfile(skimage_photo(n), calib / n)
        cfg = SynthConfig(size=(SYNTH["size"], SYNTH["size"]), words=SYNTH["words"], scripts=(SYNTH["langs"],))
        write_synth_dataset(work / "eval.tmp", SYNTH["count"], seed=SYNTH["seed"], overwrite=True, config=cfg)
        write_synth_dataset(gate, 8, seed=2000, overwrite=True, config=cfg)
        for n in HELD_OUT_PHOTOS:
            shutil.copyfile(skimage_photo(n), work / "eval.tmp" / n)
        for p, _ in synthetic_text_set(work / "big.tmp", n=3):
            shutil.copyfile(p, work / "eval.tmp" / f"big_{p.name}")
        shutil.rmtree(work / "big.tmp")
        (work / "eval.tmp").rename(evals)
    return calib, gate, sorted(p for p in evals.iterdir() if p.suffix == ".png")


def gate_set(work: Path, gate: Path, pages: int) -> Path:
    """The gate's held-out folder: the 8 pages of ``gate`` (seed 2000), and for ``pages`` > 8 that many more from seed
    2100 beside them (24 pages hold 200 FP32 regions: one region is 0.25 point, within a 0.5-point budget; the 8
    alone hold 68, so one region is 0.74 point and the gate can only pass steps that change nothing on them)."""
    from vkt.training.synth_text import SynthConfig, write_synth_dataset

    if pages <= 8:
        return gate
    folder = work / f"gate{pages}"
    if not folder.is_dir():
        tmp = work / f"gate{pages}.tmp"
        write_synth_dataset(tmp / "more", pages - 8, seed=2100, overwrite=True,
                            config=SynthConfig(size=(640, 640), words=(4, 10), scripts=("latin",)))
        for p in gate.glob("*.png"):
            shutil.copyfile(p, tmp / p.name)
        for p in (tmp / "more").glob("*.png"):
            p.rename(tmp / f"more_{p.name}")
        shutil.rmtree(tmp / "more")
        tmp.rename(folder)
    return folder


def make_bundle(work: Path, calib: Path, gate: Path, use_gate: bool, method: str, max_drop: float,
                bias_correction: bool = True, float_precision: str = "auto") -> tuple[object, float | None]:
    """The zoo bundle with vkt's ort and openvino placements (one calibration); returns (bundle, seconds of import,
    calibration and gates; None when an earlier run left the bundle)."""
    from vkt.bundle import Bundle
    from vkt.calibration.config import Int8Config
    from vkt.models import recipe_for
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    from vkt.runtime.openvino import resolve_float_precision

    fp = resolve_float_precision(float_precision)
    path = work / (("ppocrv5_gated" if use_gate else "ppocrv5") + ("" if bias_correction else "_nobc")
                   + (f"_{gate.name}" if use_gate and gate.name != "gate" else "") + ("" if fp == "f32" else f"_{fp}") + ".vkt")
    t0 = time.perf_counter()
    if (path / "model.int8.openvino.onnx").is_file():  # complete when its gate (if asked) has run
        b = Bundle.load(path)
        if not use_gate or "openvino_gate" in b.manifest.get("calibration", {}):
            return b, None
    ppocrv5_det_mobile_bundle(path, overwrite=True)
    recipe_for("textdet").quantize(path, Int8Config(calib=calib, holdout=gate if use_gate else None, method=method,
                                                    max_drop=max_drop if use_gate else None,
                                                    targets=("ort", "openvino"), bias_correction=bias_correction,
                                                    float_precision=fp),
                                   show_progress=False)
    return Bundle.load(path), time.perf_counter() - t0


class CompiledRunner:
    """A vkt Runner over an OpenVINO compiled model (NNCF's accuracy control hands its validation one)."""

    def __new__(cls, compiled, spec):
        from vkt.runtime.base import Runner

        class _R(Runner):
            backend = "ov"

            def _activate(self):
                self._req = compiled.create_infer_request()

            def _deactivate(self):
                self._req = None

            def _infer(self, feed):
                res = self._req.infer(dict(feed))
                return {spec.outputs[0].name: res[compiled.outputs[0]]}

        return _R(spec, "nncf")


def nncf_models(bundle, calib: Path, evals: list[Path], fp32_hs: Path, work: Path, anchor: bool, metric,
                validate_on: str = "eval") -> dict[str, Path]:
    """NNCF 3.4 PTQ (and the accuracy-control anchor) of the HardSwish FP32 graph with vkt's calibration feeds.

    The anchor validates on ``evals`` with ``metric``: the 11 evaluation images ("eval", an upper bound: it is scored
    on what it was tuned on) or vkt's gate set (its folder's name, e.g. "gate24": the held-out images vkt's own gate sees, so both are judged on
    the 11 images neither saw); cached as nncf_qac.xml / nncf_qac_<gate folder>.xml."""
    import nncf
    import openvino as ov

    from vkt.calibration.data import calibration_images
    from vkt.calibration.images import image_preprocess

    pre = image_preprocess(bundle)
    feeds = [pre(p) for p in calibration_images(calib)]
    core = ov.Core()
    out = {}
    t0 = time.perf_counter()
    q = nncf.quantize(core.read_model(str(fp32_hs)), nncf.Dataset(feeds), preset=nncf.QuantizationPreset.MIXED,
                      subset_size=len(feeds))
    out["ov-nncf-ptq"] = (work / "nncf_ptq.xml", time.perf_counter() - t0)
    ov.save_model(q, str(out["ov-nncf-ptq"][0]), compress_to_fp16=False)
    stem = "nncf_qac" + (f"_{validate_on}" if validate_on != "eval" else "")
    qac = work / f"{stem}.xml"
    if anchor and qac.is_file():  # built by an earlier run (--anchor-only): minutes of NNCF's ranking saved
        out["ov-nncf-qac"] = (qac, float("nan"))
    elif anchor:
        from vkt.runtime.image import read_image

        spec = bundle.spec()
        images = [read_image(p) for p in evals]

        def validate(compiled, items) -> float:
            return metric(lambda: CompiledRunner(compiled, spec))

        t0 = time.perf_counter()
        q = nncf.quantize_with_accuracy_control(core.read_model(str(fp32_hs)), nncf.Dataset(feeds), nncf.Dataset(images),
                                                validate, max_drop=0.005, drop_type=nncf.DropType.ABSOLUTE,
                                                preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds))
        ov.save_model(q, str(work / f"{stem}.tmp.xml"), compress_to_fp16=False)
        for ext in (".bin", ".xml"):  # the .xml last: its presence marks a complete model
            (work / f"{stem}.tmp{ext}").replace(work / f"{stem}{ext}")
        out["ov-nncf-qac"] = (qac, time.perf_counter() - t0)
    return {k: v[0] for k, v in out.items()} | {"_seconds": {k: v[1] for k, v in out.items()}}


def _precision(target: str) -> str:
    """A row's precision: FP32 baselines, ov-bf16 (the FP32 graph in bf16), the INT8 rest."""
    return "fp32" if target in FP32 else "bf16" if target == "ov-bf16" else "int8"


def runners(bundle, graphs: dict[str, Path], threads: int, bf16: bool = False) -> dict[str, object]:
    from vkt.runtime import make_runner
    from vkt.runtime.openvino import OvRunner

    spec = bundle.spec()
    r = {"ort-fp32": make_runner(bundle, "ort", "fp32", threads=threads),
         "ov-fp32": make_runner(bundle, "ov", "fp32", threads=threads),
         "ov-fp32-hardswish": OvRunner(graphs["ov-fp32-hardswish"], spec=spec, threads=threads),
         "ort-int8": make_runner(bundle, "ort", "int8", threads=threads),
         "ov-int8": make_runner(bundle, "ov", "int8", threads=threads)}
    for k in ("ov-int8-ungated", "ov-int8-no-bc", "ov-int8-ungated-no-bc", "ov-nncf-ptq", "ov-nncf-qac"):
        if k in graphs:
            r[k] = OvRunner(graphs[k], spec=spec, threads=threads, precision="int8")
    if bf16:  # the shipped placement with its float layers in the other precision, and the FP32 graph in bf16
        from vkt.calibration.api import qdq_path

        shipped = bundle.entry("int8 qdq onnx", placement="openvino").meta.get("float_precision", "f32")
        other = "f32" if shipped == "bf16" else "bf16"
        r[f"ov-int8-{other}f"] = OvRunner(qdq_path(bundle, "openvino"), spec=spec, threads=threads, precision="int8",
                                          inference_precision=other)
        r["ov-bf16"] = OvRunner(bundle.path("fp32 onnx"), spec=spec, threads=threads, precision="fp32",
                                inference_precision="bf16")
        if "ov-nncf-qac" in graphs:  # NNCF validates in f32 (its row); the float layers it reverted, run in bf16
            r["ov-nncf-qac-bf16f"] = OvRunner(graphs["ov-nncf-qac"], spec=spec, threads=threads, precision="int8",
                                              inference_precision="bf16")
    return r


def timed_rows(named: dict[str, object], calls: dict[str, object], iters: int, *, shape: str, threads: int, includes: str,
               kind: str, extra: dict | None = None) -> list[dict]:
    from vkt.bench import time_turns

    names = list(calls)
    for n in names:  # warm-up
        calls[n]()
        calls[n]()
    before = round(os.getloadavg()[0], 2)
    samples = time_turns([calls[n] for n in names], iters, block=BLOCK, settle=1)
    after = round(os.getloadavg()[0], 2)
    p50 = {n: float(np.median(s)) * 1e3 for n, s in zip(names, samples)}
    best_name = min((n for n in names if n in FP32), key=lambda n: p50[n])
    best = p50[best_name]
    # Paired: each turn's block mean of the fastest FP32 over this target's block in the same turn (the gate's
    # statistic: a slow window of the machine hits both sides of a pair), median over the turns, with the
    # turns' interquartile range as its band.
    turns = {n: [float(np.mean(s[i:i + BLOCK])) for i in range(0, len(s) - BLOCK + 1, BLOCK)] for n, s in zip(names, samples)}
    rows = []
    for n, s in zip(names, samples):
        ratios = [b / x for b, x in zip(turns[best_name], turns[n])]
        paired = {"speedup_paired_vs_best_fp32": round(float(np.median(ratios)), 3),
                  "speedup_paired_iqr": [round(float(np.percentile(ratios, q)), 3) for q in (25, 75)],
                  "paired_turns": len(ratios)} if len(ratios) >= 3 else {}
        rows.append(row("textdet_ov", n, includes=includes, model=MODEL, backend="openvino-cpu" if n.startswith("ov") else "ort-cpu",
                        precision=_precision(n), threads=threads, shape=shape, batch=1, n=len(s),
                        p50_ms=p50[n], p90_ms=float(np.percentile(s, 90)) * 1e3, load_avg=[before, after], kind=kind,
                        speedup_vs_best_fp32=round(best / p50[n], 3), **paired, **(extra or {}),
                        **({"inference_precision": named[n].inference_precision} if hasattr(named[n], "inference_precision")
                           else {})))
    return rows


def main() -> None:
    from vkt.runtime.openvino import FLOAT_PRECISIONS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/vkt-bench-textdet-ov"))
    ap.add_argument("--sizes", default="736,960")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=15, help="timed model calls per target and case")
    ap.add_argument("--e2e-reps", type=int, default=3, help="timed passes over the 11 images per target")
    ap.add_argument("--method", default="percentile", help="vkt's calibration method (the textdet recipe's default)")
    ap.add_argument("--gate", action="store_true", help="gate vkt's placements on their own held-out set (--gate-pages synthetic pages)")
    ap.add_argument("--gate-pages", type=int, default=24, help="with --gate: synthetic pages in the gate's held-out set "
                    "(8 from seed 2000, the rest from seed 2100; default 24, 200 FP32 regions: enough to resolve 0.5 point)")
    ap.add_argument("--float-precision", choices=FLOAT_PRECISIONS, default="auto",
                    help="the openvino placement's float layers (vkt's textdet default: auto, bf16 where the CPU has it)")
    ap.add_argument("--max-drop", type=float, default=0.5, help="with --gate: the budget in points of hmean (the issue's 0.5)")
    ap.add_argument("--no-anchor", action="store_true", help="skip NNCF's quantize_with_accuracy_control (minutes)")
    ap.add_argument("--anchor-only", action="store_true", help="build NNCF's accuracy-control model into --work and stop "
                    "(a later run times it; its ranking takes tens of minutes on 2 busy cores)")
    ap.add_argument("--anchor-validate", choices=("eval", "gate"), default="eval",
                    help="what NNCF's accuracy control validates on: the 11 evaluation images (an upper bound) or vkt's "
                    "gate set (--gate-pages: the same held-out data as vkt's gate, judged on the 11 images)")
    ap.add_argument("--compare-bias", action="store_true", help="add ov-int8-no-bc (and with --gate ov-int8-ungated-no-bc): "
                    "the same calibration with --no-bias-correction")
    ap.add_argument("--bf16", action="store_true", help="add ov-int8-f32f / ov-int8-bf16f (the shipped openvino placement "
                    "with its float layers in the other precision) and ov-bf16 (the FP32 graph in bf16); none counts as FP32")
    ap.add_argument("--noise-floor", action="store_true", help="add accuracy rows for FP32 with bf16- and fp16-rounded weights")
    ap.add_argument("--extra-eval", type=int, default=0, metavar="N", help="also score hmean on N more synthetic pages (3/4 "
                    "640x640, 1/4 736x1024 with more words; seeds 5000/6000): one box moves hmean less than on the 11")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import importlib.util

    if importlib.util.find_spec("nncf") is None:  # its PTQ and accuracy-control rows; checked before minutes of work
        sys.exit("error: bench_textdet_ov needs nncf for its NNCF rows: pip install -e '.[bench]'")
    import onnx

    from vkt.calibration.place_ov import fuse_hardswish
    from vkt.models.textdet.int8 import textdet_agreement
    from vkt.runtime.textdet import TextDetector

    args.work.mkdir(parents=True, exist_ok=True)
    calib, gate, evals = data_sets(args.work)
    gate = gate_set(args.work, gate, args.gate_pages)
    bundle, export_s = make_bundle(args.work, calib, gate, args.gate, args.method, args.max_drop,
                                   float_precision=args.float_precision)
    from vkt.calibration.api import qdq_path

    side = {}  # further bundles, one calibration each: (row name, gated, bias-corrected)
    for name, gated, bc, wanted in (("ov-int8-ungated", False, True, args.gate),
                                    ("ov-int8-no-bc", args.gate, False, args.compare_bias),
                                    ("ov-int8-ungated-no-bc", False, False, args.compare_bias and args.gate)):
        if wanted:
            b, s = make_bundle(args.work, calib, gate, gated, args.method, args.max_drop, bias_correction=bc,
                               float_precision=args.float_precision)
            side[name] = qdq_path(b, "openvino")
            print(f"{name}: {b.root.name}" + (f" made in {s:.1f} s" if s else " (cached)"), flush=True)
    hs = args.work / "fp32_hardswish.onnx"
    onnx.save(fuse_hardswish(onnx.load(str(bundle.path("fp32 onnx"))))[0], str(hs))
    metric = textdet_agreement(bundle, evals, threads=1, show_progress=False)
    # What NNCF's accuracy control validates on: the gate's held-out pages or the 11 images (its metric only when it runs)
    anchor_images = sorted(p for p in gate.iterdir() if p.suffix == ".png") if args.anchor_validate == "gate" else evals
    anchor_metric = (textdet_agreement(bundle, anchor_images, threads=1, show_progress=False)
                     if args.anchor_validate == "gate" and not args.no_anchor else metric)
    nn = nncf_models(bundle, calib, anchor_images, hs, args.work, not args.no_anchor, anchor_metric,
                     validate_on=gate.name if args.anchor_validate == "gate" else "eval")
    nncf_s = nn.pop("_seconds")
    if args.anchor_only:
        print(f"NNCF accuracy control: {nncf_s.get('ov-nncf-qac', float('nan')):.0f} s -> {nn.get('ov-nncf-qac')}")
        return
    graphs = {"ov-fp32-hardswish": hs, **nn, **side}
    rows: list[dict] = []

    # 1. Accuracy: hmean of each target's boxes vs ORT FP32's on the 11 evaluation images (and the extra pages)
    acc = {}
    sets = [("11 evaluation images", evals, metric)]
    if args.extra_eval:
        pages = extra_pages(args.work, args.extra_eval)
        sets.append((f"{len(pages)} extra synthetic pages", pages, textdet_agreement(bundle, pages, threads=1, show_progress=False)))
    floor = noise_floor(bundle, args.work) if args.noise_floor else {}
    for label, images, m in sets:
        from vkt.runtime.ort import OrtRunner

        factories = {n: (lambda r=r: r) for n, r in runners(bundle, graphs, 1, args.bf16).items()}
        factories.update({n: (lambda p=p: OrtRunner(p, spec=bundle.spec(), threads=1)) for n, p in floor.items()})
        for name, factory in factories.items():
            h = round(m(factory), 4)
            acc.setdefault(name, h)
            rows.append(row("textdet_ov", name, includes=f"hmean of the boxes vs ORT FP32's (IoU 0.5), TextDetector on the {label}"
                            + ("; FP32 graph, weights rounded, run in float on onnxruntime" if name in floor else ""),
                            model=MODEL, precision="fp32" if name in floor else _precision(name), threads=1,
                            n=len(images), kind="accuracy", hmean_vs_fp32=h, regions_fp32=m.regions,
                            quantize_s=_round(nncf_s[name] if name in nncf_s else export_s if name == "ov-int8" else None)))
            print(f"{label:28s} {name:20s} hmean vs FP32 {h:.4f} ({m.regions} FP32 regions)", flush=True)

    # 2. Model only and end to end, each thread count, targets in turns
    for threads in (int(t) for t in args.threads.split(",")):
        rs = runners(bundle, graphs, threads, args.bf16)
        for r in rs.values():
            r.activate()
        rng = np.random.default_rng(0)
        for size in (int(s) for s in args.sizes.split(",")):
            feed = {bundle.spec().inputs[0].name: (rng.random((1, 3, size, size), np.float32) - 0.5) / 0.5}
            calls = {n: (lambda r=r: r.infer(feed, check=False)) for n, r in rs.items()}
            rows += timed_rows(rs, calls, args.iters, shape=f"1x3x{size}x{size}", threads=threads, kind="model",
                               includes="one InferRequest / InferenceSession call on a random input, outputs to numpy")
        dets = {n: TextDetector(r, **_overrides(bundle)).activate() for n, r in rs.items()}
        calls = {n: (lambda d=d: [d([p]) for p in evals]) for n, d in dets.items()}
        rows += timed_rows(rs, calls, args.e2e_reps, shape="11 images, short side 736", threads=threads, kind="end-to-end",
                           includes="TextDetector over the 11 evaluation images one by one: read + resize + normalise, "
                           "model, DB post-processing")
        for r in rs.values():
            r.deactivate()
    for r in rows:
        if r.get("kind") != "accuracy":
            r["hmean_vs_fp32"] = acc.get(r["target"])
    with RowWriter(args.json, echo=False) as out:
        for r in rows:
            out.write(r)
    print_table(rows)


def extra_pages(work: Path, n: int) -> list[Path]:
    """``n`` synthetic pages written once under ``work`` (none calibrated or gated on)."""
    from vkt.training.synth_text import SynthConfig, write_synth_dataset

    folder = work / f"extra{n}"
    if not folder.is_dir():
        big = n // 4
        write_synth_dataset(work / "extra.tmp" / "a", n - big, seed=5000, overwrite=True,
                            config=SynthConfig(size=(640, 640), words=(4, 10), scripts=("latin",)))
        write_synth_dataset(work / "extra.tmp" / "b", big, seed=6000, overwrite=True,
                            config=SynthConfig(size=(736, 1024), words=(8, 20), scripts=("latin",)))
        for sub in ("a", "b"):
            for p in (work / "extra.tmp" / sub).glob("*.png"):
                p.rename(work / "extra.tmp" / f"{sub}_{p.name}")
            shutil.rmtree(work / "extra.tmp" / sub)
        (work / "extra.tmp").rename(folder)
    return sorted(folder.glob("*.png"))


def noise_floor(bundle, work: Path) -> dict[str, Path]:
    """The FP32 graph with every float initializer rounded to bf16 (round to nearest even) and to fp16, kept float32."""
    import onnx
    from onnx import TensorProto, numpy_helper

    out = {}
    for name, rnd in (("fp32-bf16-weights", _bf16), ("fp32-fp16-weights", lambda a: a.astype(np.float16).astype(np.float32))):
        m = onnx.load(str(bundle.path("fp32 onnx")))
        for i in m.graph.initializer:
            if i.data_type == TensorProto.FLOAT:
                i.CopyFrom(numpy_helper.from_array(rnd(numpy_helper.to_array(i).astype(np.float32)), i.name))
        out[name] = work / f"{name}.onnx"
        onnx.save(m, str(out[name]))
    return out


def _bf16(a: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000  # round to nearest even on the 16 bits dropped
    return u.astype(np.uint32).view(np.float32).reshape(a.shape)


def _round(s: float | None) -> float | None:
    return None if s is None or s != s else round(s, 1)


def _overrides(bundle) -> dict:
    o = {k: v for k, v in bundle.postprocess.items() if k != "type"}
    o.update({k: v for k, v in bundle.preprocess.get("resize", {}).items()
              if k in ("limit_side_len", "limit_type", "round_to", "max_side_len")})
    o.update({k: v for k, v in bundle.preprocess.items() if k in ("mean", "std", "scale", "color")})
    return o


def print_table(rows: list[dict]) -> None:
    for r in rows:
        if r["kind"] == "accuracy":
            continue
        print(f"{r['kind']:11s} {r['shape']:26s} t={r['threads']} {r['target']:18s} {r['p50_ms']:9.1f} ms  "
              f"{r['speedup_vs_best_fp32']:.2f}x  paired {r.get('speedup_paired_vs_best_fp32', float('nan')):.2f}x "
              f"{r.get('speedup_paired_iqr', '')}  hmean {r['hmean_vs_fp32']}  load {r['load_avg']}")


if __name__ == "__main__":
    main()
