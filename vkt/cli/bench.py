"""`vkt bench`: time backends side by side on an ONNX file or a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from vkt.errors import InputError

INCLUDES_RUNNER = ("Runner.infer(): feed validation against the spec + backend run + outputs as host numpy "
                   "arrays; no image pre/post-processing")
INCLUDES_RAW = "onnxruntime InferenceSession.run alone (same session options), no vkt code"
INCLUDES_TRT = ("TrtRunner.infer(): validation + H2D copy + enqueue + GPU compute + D2H copy + stream sync; "
                "no image pre/post-processing")
INCLUDES_OV = ("OvRunner.infer(): feed validation + OpenVINO InferRequest.infer (inputs shared, outputs copied to numpy); "
               "no image pre/post-processing")
INCLUDES_TORCH = "module(*inputs) under torch.inference_mode(), numpy<->torch conversion included"


def parse_targets(values: list[str]) -> list[tuple[str, str]]:
    """``["ort", "ort:int8", "trt:fp16"]`` -> [(backend, precision)]."""
    from vkt.runtime import BACKENDS

    out = []
    for v in values:
        backend, _, precision = v.partition(":")
        precision = precision or "fp32"
        if backend not in BACKENDS and backend != "ort-raw":
            raise InputError(f"unknown backend {backend!r} in --target {v!r}; expected one of {sorted([*BACKENDS, 'ort-raw'])}")
        if precision not in ("fp32", "fp16", "int8"):
            raise InputError(f"unknown precision {precision!r} in --target {v!r}; expected fp32, fp16 or int8")
        out.append((backend, precision))
    return out


def parse_shape(text: str) -> dict[str, int]:
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, _, v = part.partition("=")
        try:
            sizes[k.strip()] = int(v)
        except ValueError:
            raise InputError(f"--shape entries must look like 'axis=size', got {part!r}") from None
        if sizes[k.strip()] < 1:
            raise InputError(f"--shape {part!r}: size must be >= 1")
    if not sizes:
        raise InputError(f"empty --shape {text!r}; expected e.g. 'height=736,width=736'")
    return sizes


def image_multiples(bundle: Any) -> dict[str, int]:
    """``{"height": 32, "width": 32}`` when the bundle's pre-processing rounds image sides to a multiple (a
    stride-32 text detector fails inside onnxruntime on other sizes); empty otherwise."""
    step = (bundle.preprocess.get("resize") or {}).get("round_to") if bundle is not None else None
    return {"height": int(step), "width": int(step)} if isinstance(step, int) and step > 1 else {}


def make_cases(spec: Any, batches: list[int], shapes: list[dict[str, int]], seed: int = 0,
               multiple_of: dict[str, int] | None = None) -> list:
    """Feeds for every (batch, shape) pair; unset axes take the first profile's opt size.

    ``multiple_of``: axis -> the multiple its size must be (:func:`image_multiples`), checked before any run."""
    import numpy as np

    from vkt.bench import Case

    batch_axes = {t.shape[0] for t in spec.inputs if t.shape and isinstance(t.shape[0], str)}
    base: dict[str, int] = {}
    if spec.profiles:
        base = {a: r[1] for a, r in spec.profiles[0].axes.items()}
    cases = []
    rng = np.random.default_rng(seed)
    for shape in shapes or [{}]:
        unknown = set(shape) - spec.input_axes
        if unknown:
            raise InputError(f"--shape names axes {sorted(unknown)} that the model does not have (dynamic axes: {sorted(spec.input_axes)})")
        for axis, size in shape.items():
            m = (multiple_of or {}).get(axis)
            if m and size % m:
                lo = size // m * m
                raise InputError(f"--shape {axis}={size}: {axis} must be a multiple of {m} for this model (its "
                                 f"pre-processing rounds images to {m}), e.g. {lo or m} or {lo + m}")
        for b in batches:
            if b < 1:
                raise InputError(f"--batch must be >= 1, got {b}")
            sizes = {**base, **shape}
            if batch_axes:
                sizes.update({a: b for a in batch_axes})
            elif b != 1:
                raise InputError(f"--batch {b}: the model has a static batch dimension; only --batch 1 is possible")
            missing = sorted(spec.input_axes - set(sizes))
            if missing:
                raise InputError(f"no size for dynamic axes {missing}: pass --shape {','.join(f'{m}=N' for m in missing)}")
            # a size outside every profile fails here (on zero-copy views), before feeds are drawn or runners built
            spec.check_feed({t.name: np.broadcast_to(np.zeros((), t.dtype), t.resolve(sizes)) for t in spec.inputs})
            feed = {}
            for t in spec.inputs:
                shp = t.resolve(sizes)
                dt = np.dtype(t.dtype)
                feed[t.name] = (rng.standard_normal(shp).astype(dt) if dt.kind == "f" else np.zeros(shp, dt))
            label = "x".join(str(d) for d in next(iter(feed.values())).shape)
            cases.append(Case(label=label, feed=feed, batch=b))
    return cases


def build_targets(source: Path, targets: list[tuple[str, str]], threads: int | None, torch_factory: str | None,
                  channels_last: bool, strict: bool = True) -> tuple[list, Any]:
    """Runners for each (backend, precision); with ``strict`` a target that cannot run is an error,
    otherwise it is reported as skipped with the reason."""
    from vkt.bench import Target
    from vkt.bundle import Bundle
    from vkt.errors import VktError
    from vkt.runtime import make_runner

    bundle = Bundle.load(source) if source.is_dir() else None
    spec = None
    out: list[Target] = []
    for backend, precision in targets:
        label = f"{backend}-{precision}"
        if backend == "ort-raw":
            out.append(_raw_ort_target(bundle, source, precision, threads))
            continue
        includes = {"trt": INCLUDES_TRT, "ov": INCLUDES_OV}.get(backend, INCLUDES_RUNNER)
        try:
            runner = make_runner(bundle or source, backend=backend, precision=precision, threads=threads)
            runner.activate()
        except VktError as e:
            if strict:  # the user asked for this target by name: say why it cannot run
                raise
            out.append(Target(label, None, includes, skip_reason=str(e)))
            continue
        spec = spec or runner.spec
        out.append(Target(label, runner.infer, includes, teardown=runner.deactivate, info=runner.describe()))
    if spec is None:
        from vkt.specs import ExportSpec

        spec = bundle.spec() if bundle else ExportSpec.from_onnx(source)
    if torch_factory:
        from vkt.export.torch_runner import TorchRunner

        tr = TorchRunner(torch_factory, spec=spec, channels_last=channels_last, threads=threads)
        tr.activate()
        out.insert(0, Target(tr.name, tr.infer, INCLUDES_TORCH, teardown=tr.deactivate))
    return out, spec


def _raw_ort_target(bundle: Any, source: Path, precision: str, threads: int | None) -> Any:
    import onnxruntime as ort

    from vkt.bench import Target
    from vkt.bundle import PRECISION_ROLES

    path = source
    if bundle is not None:
        role = PRECISION_ROLES[precision]
        path = bundle.root / bundle.entry(role, placement="ort").path
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 4  # its run errors are raised anyway; at 3 they are printed twice, the first in raw colour
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    return Target(f"ort-raw-{precision}", lambda feed: sess.run(None, feed), INCLUDES_RAW)


INCLUDES_TXT2IMG = ("Txt2Img(prompt): tokenize, text encoder, UNet per step (classifier-free guidance as the runtime "
                    "chooses), numpy scheduler, VAE decoder, uint8 images")


def _txt2img_targets(b: Any, targets: list[tuple[str, str]], threads: int | None, steps: int, guidance: float) -> list:
    """One Target per backend/precision: a whole text-to-image generation of an SD bundle (fixed prompt and seed)."""
    from vkt.bench import Target
    from vkt.runtime.txt2img import Txt2Img

    out = []
    for backend, precision in targets:
        if backend == "ort-raw":
            raise InputError("--target ort-raw times one ONNX graph; an SD bundle is timed end to end (use ort)")
        pipe = Txt2Img(b, backend=backend, precision=precision, threads=threads, progress_bar=False)

        def call(feed: dict, pipe: Any = pipe) -> Any:
            return pipe([str(feed["prompt"])] * int(feed["batch"]), height=int(feed["height"]), width=int(feed["width"]),
                        steps=steps, guidance_scale=guidance, seed=0)

        out.append(Target(f"txt2img-{backend}-{precision}", call, INCLUDES_TXT2IMG, teardown=pipe.close,
                          info={"steps": steps, "guidance": guidance, "scheduler": pipe.scheduler_config.get("_class_name")}))
    return out


def _txt2img_cases(batches: list[int], shapes: list[dict[str, int]]) -> list:
    from vkt.bench import Case

    cases = []
    for shape in shapes or [{}]:
        unknown = set(shape) - {"height", "width"}
        if unknown:
            raise InputError(f"--shape for an SD bundle takes height=PIXELS,width=PIXELS; got axes {sorted(unknown)}")
        h, w = shape.get("height", 512), shape.get("width", shape.get("height", 512))
        for n in batches:
            if n < 1:
                raise InputError(f"--batch must be >= 1, got {n}")
            cases.append(Case(f"B={n} {h}x{w}", {"prompt": "a photo of an astronaut riding a horse", "batch": n,
                                                  "height": h, "width": w}, n))
    return cases


def bench(
    source: Path = typer.Argument(..., help="An .onnx file or a bundle folder (an SD bundle is timed end to end: "
                                  "text-to-image generations, --shape height=H,width=W in pixels, --steps)."),
    target: list[str] = typer.Option(None, "--target", "-t", help="backend[:precision], repeatable. Backends: ort, ort-cuda, "
                                     "ort-trt, trt, ov (OpenVINO CPU), ort-raw (plain InferenceSession, to see vkt's overhead). "
                                     "Precisions: fp32, fp16, int8 (ov:int8 takes the INT8 graph placed for OpenVINO). Default: "
                                     "ort:fp32, plus ort:int8, ov:int8 and trt when the bundle has them (a default target that "
                                     "cannot run here is reported as skipped; a named one is an error)."),
    batch: list[int] = typer.Option([1], "--batch", "-B", help="Batch size, repeatable."),
    shape: list[str] = typer.Option(None, "--shape", "-s", help="Axis sizes, e.g. 'height=736,width=736'; repeatable. "
                                    "Unset axes take the profile's opt size."),
    iters: int = typer.Option(50, help="Timed calls per target and case (upper bound when --seconds is given)."),
    warmup: int = typer.Option(5, help="Untimed calls per target and case first."),
    seconds: float = typer.Option(None, help="Time budget per case, shared by its targets (round-robin)."),
    block: int = typer.Option(5, help="Timed calls per target per turn; targets take turns."),
    settle: int = typer.Option(1, help="Untimed calls at the start of each turn: with >1 thread, the previous target's "
                               "onnxruntime workers keep spinning for a while and would slow the first call. "
                               "--block 1 --settle 0: strict call-by-call alternation."),
    threads: int = typer.Option(None, min=1, help="Intra-op threads for onnxruntime / OpenVINO / torch (default: the library's)."),
    torch_model: str = typer.Option(None, "--torch", help="Also time a torch module in eager mode: 'package.module:factory' "
                                    "returning an nn.Module that takes the graph's inputs in order."),
    channels_last: bool = typer.Option(False, help="With --torch: channels_last memory format."),
    json_out: str = typer.Option(None, "--json", help="Write JSON rows (one per line) to this file, or '-' for stdout."),
    plot: Path = typer.Option(None, help="Write a PNG bar chart of p50/p90 latency."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table, no progress bar (JSON only)."),
    steps: int = typer.Option(4, "--steps", help="SD bundles: denoising steps per generation."),
    guidance: float = typer.Option(7.5, "--guidance", help="SD bundles: classifier-free guidance scale."),
) -> None:
    """Time one or more backends side by side, interleaved in one process (turns of --block calls).

    Every figure is the wall time of one call, measured with perf_counter around it; the report says
    what each target's call includes. Latency p50/p90/p99/mean/min in ms, throughput in items/s.
    """
    from vkt.bench import BenchConfig, run_bench
    from vkt.bundle import Bundle
    from vkt.specs import ExportSpec

    if not source.exists():
        raise InputError(f"no such file or bundle: {str(source)!r}")
    _check_outputs(source, json_out, plot)
    shapes = [parse_shape(s) for s in (shape or [])]
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1 (leave it out for onnxruntime's default), got {threads}")
    if block < 1 or settle < 0:
        raise InputError(f"expected --block >= 1 and --settle >= 0, got --block {block} --settle {settle}")
    cfg = BenchConfig(warmup=warmup, iters=iters, seconds=seconds, block=block, settle=settle)
    b = None
    if source.is_dir():
        b = Bundle.load(source)
        if b.family == "sd":
            if torch_model:
                raise InputError("--torch is for one ONNX graph; compare SD pipelines with benchmarks/bench_sd.py")
            if steps < 1:
                raise InputError(f"--steps must be >= 1, got {steps}")
            if guidance < 0:
                raise InputError(f"--guidance must be >= 0, got {guidance}")
            cases = _txt2img_cases(list(batch), shapes)
            built = _txt2img_targets(b, parse_targets(target or ["ort"]), threads, steps, guidance)
            _report(run_bench(built, cases, cfg, show_progress=not quiet), source, threads, json_out, quiet, plot)
            return
        if target:
            targets = parse_targets(target)
        else:
            targets = [("ort", "fp32")] if b.has("fp32 onnx") else []
            if b.has("int8 qdq onnx"):
                targets.append(("ort", "int8"))
            if any(e.meta.get("placement") == "openvino" for e in b.files("int8 qdq onnx")):
                targets.append(("ov", "int8"))
            for prec in dict.fromkeys(e.meta.get("precision", "fp32") for e in b.files("plan")):
                targets.append(("trt", prec))
            if not targets:
                raise InputError(f"bundle {b.name!r} has no ONNX or plan to benchmark")
    else:
        targets = parse_targets(target or (["trt"] if source.suffix in (".plan", ".engine") else ["ort"]))
    # Cases first when the spec is on disk, so a shape outside the profile fails before runners load.
    early_spec = b.spec() if source.is_dir() else (ExportSpec.from_onnx(source) if source.suffix == ".onnx" else None)
    cases = make_cases(early_spec, list(batch), shapes, multiple_of=image_multiples(b)) if early_spec is not None else None
    built, spec = build_targets(source, targets, threads, torch_model, channels_last, strict=bool(target))
    if cases is None:
        cases = make_cases(spec, list(batch), shapes, multiple_of=image_multiples(b))
    rows = run_bench(built, cases, cfg, show_progress=not quiet)
    _report(rows, source, threads, json_out, quiet, plot)


def _check_outputs(source: Path, json_out: str | None, plot: Path | None) -> None:
    """--json FILE and --plot FILE: not an input, writable; checked before anything is timed."""
    from vkt.cli.outputs import output_file

    if json_out not in (None, "-"):
        output_file(json_out, "--json", [source])
    if plot is not None:
        output_file(plot, "--plot", [source])


def _report(rows: list, source: Path, threads: int | None, json_out: str | None, quiet: bool, plot: Path | None) -> None:
    from vkt.bench import plot_rows, print_table, rows_to_json

    text = rows_to_json(rows, {"source": str(source), "threads": threads})
    if json_out == "-":
        print(text)
    elif json_out:
        from vkt.fsutil import atomic_write_text

        atomic_write_text(json_out, text + "\n")
    if not quiet:
        print_table(rows, title=f"vkt bench {source.name}")
    if plot:
        plot_rows(rows, str(plot))


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
