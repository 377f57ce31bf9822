"""`vkt quantize`: calibrate a bundle once on an image folder and add INT8 Q/DQ graphs per target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from vkt.cli.int8_options import int8_options

if TYPE_CHECKING:
    from vkt.calibration.config import Int8Config


def quantize(
    bundle: Path = typer.Argument(..., help="Bundle folder holding an fp32 onnx."),
    component: str = typer.Option(None, help="Bundle component to quantize (default: the family's, model; sd: unet)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's calibration section as JSON."),
    *,
    int8: Int8Config,
) -> None:
    """Calibrate once, then write an INT8 Q/DQ graph per target into the bundle: the `--int8` path of `vkt export` on
    an existing bundle, with the recipe of the bundle's family (textdet, detr, sd, generic) and its defaults.

    onnxruntime CPU, TensorRT and OpenVINO CPU fuse different Q/DQ patterns, so each target gets its own
    placement from the same ranges (docs/ARCHITECTURE.md, sections "Precision" and "INT8").

    With --holdout the accuracy gate keeps the most sensitive layers in float step by step until the
    metric drop is within --max-drop, prints the metric and the speed-up over FP32 per step (on onnxruntime
    CPU; the openvino placement on OpenVINO CPU, gated on its own) and ships the fastest, never one below
    --min-speedup.
    """
    from vkt.bundle import Bundle, edit_bundle
    from vkt.cli.int8_options import check_int8, quantize_with
    from vkt.cli.outputs import edited_folder, output_file
    from vkt.models import recipe_for

    edited_folder(bundle, "BUNDLE")
    if int8.qat_checkpoint is not None:
        output_file(int8.qat_checkpoint, "--qat-checkpoint", [bundle, *int8.inputs()])
    family = Bundle.load(bundle, verify=False).family
    recipe = recipe_for(family)
    check_int8(recipe, int8, family)
    with edit_bundle(bundle) as b:  # an interrupted or failed run leaves the bundle as it was
        section = quantize_with(recipe, b, int8, component)
    b = Bundle.load(bundle, verify=False)
    if as_json:
        print(json.dumps(section, indent=2))
        return
    print_calibration(b, section)


def print_calibration(b: Any, section: dict) -> None:
    from rich.console import Console

    c = Console()
    c.print(f"[bold]{b.name}[/]: {section['method']} ranges from {section['samples']} image(s), table "
            f"{section['table']['sha256'][:12]}", highlight=False)
    low = False
    for name, p in section["placements"].items():
        sqnr = p.get("output_sqnr_db", {})
        low = low or any(isinstance(v, float) and v < 3.0 for v in sqnr.values())
        sq = ", ".join(f"{k} {_db(v)}" for k, v in sqnr.items())
        where = f" on the first {section['eval_samples']} calibration image(s)" if section.get("eval_samples") else ""
        scope = f" (quantizes: {p['ort_ops']} ops)" if p.get("ort_ops") else ""
        ov = p.get("openvino_compute")
        runs = (("OpenVINO CPU runs " + ", ".join(f"{k} {'/'.join(f'{n} {pr}' for pr, n in v.items())}" for k, v in ov.items()))
                if isinstance(ov, dict) else f"fused int8 ops {p['fused_int8_ops']}, float compute ops "
                f"{p['float_compute_ops']} on onnxruntime CPU")
        c.print(f"  {name}{scope}: {p['path']}  {runs}; output SQNR vs FP32{where}: {sq or 'not measured'}", highlight=False)
    if low:
        c.print("  [yellow]note:[/] an output SQNR near 0 dB means INT8's error there is as large as the output itself "
                "(e.g. a detector's map that INT8 flattens to zero on those images); judge accuracy on held-out images "
                "with --holdout", highlight=False)
    print_gates(b, section, c)


def print_gates(b: Any, section: dict, c: Any) -> None:
    """Each accuracy gate in a calibration section: the ort/trt gate, and the openvino placement's own."""
    for key in ("gate", "openvino_gate"):
        if section.get(key):
            _print_gate(b, section[key], c)


def _print_gate(b: Any, gate: dict[str, Any], c: Any) -> None:
    """One gate's table, what it shipped, and the `vkt bench` command that re-times it."""
    from rich.markup import escape

    from vkt.calibration.gate_report import render_gate_table
    from vkt.tables import print_table

    where = _RUNTIME.get(gate["placement"], _RUNTIME["ort"])[0]
    print_table(render_gate_table(gate, title=f"accuracy gate, {gate['placement']} placement (metric vs FP32, budget: "
                                              f"drop <= {100 * gate['max_drop']:g} point(s); {where} latency)"), c)
    ch = gate.get("chosen")
    budget = f"{gate['max_drop'] * 100:g} point(s)"
    if ch is None and gate.get("reason"):
        c.print(f"[yellow]shipped FP32 only: {escape(gate['reason'])} (placement {gate['placement']!r} removed)[/]",
                highlight=False)
    elif ch is None:
        c.print(f"[yellow]no INT8 model within {budget} of FP32: shipped FP32 only "
                f"(placement {gate['placement']!r} removed)[/]", highlight=False)
    else:
        layers = ch.get("layers_kept_float", len(ch["float_layers"]))
        step = gate["steps"][ch["step"]]
        c.print(f"shipped {ch['candidate']} with {layers} layer(s) in float ({gate['placement']} placement): "
                f"{gate.get('metric_name', 'metric')} {ch['metric']:.4f} (drop {ch.get('drop_points', ch['drop'] * 100):.2f} "
                f"points, budget {budget}){_speed(step.get('timing'), where)}", highlight=False)
        other = gate.get("vs_other_fp32")
        if other:
            c.print(f"  vs onnxruntime FP32: {other['speedup']:.2f}x ({other['int8_ms']:.1f} vs {other['fp32_ms']:.1f} ms)",
                    highlight=False)
        if gate.get("other_fp32_note"):
            c.print(f"[yellow]  note: {escape(gate['other_fp32_note'])}[/]", highlight=False)
        if step.get("timing"):
            c.print(f"  re-time it: {escape(_bench_command(b, step['timing'], gate['placement']))}", highlight=False)


# placement -> (the runtime its gate times on, the `vkt bench` targets that re-time it)
_RUNTIME = {"ort": ("ORT CPU", "-t ort:fp32 -t ort:int8"), "trt": ("ORT CPU", "-t ort:fp32 -t ort:int8"),
            "openvino": ("OpenVINO CPU", "-t ort:fp32 -t ov:fp32 -t ov:int8")}


def _speed(t: dict[str, Any] | None, where: str = "ORT CPU") -> str:
    """", 1.31x FP32 (noise band 1.22-1.38x) on ORT CPU at 1x3x736x736, 2 thread(s)" for a timed step."""
    if not t:
        return " (not timed)"
    threads = "the runtime's default threads" if t.get("threads") is None else f"{t['threads']} thread(s)"
    lo, hi = t["noise_band"]
    return (f", {t['speedup']:.2f}x FP32 (noise band {lo:.2f}-{hi:.2f}x) on {where} at "
            f"{'x'.join(map(str, t['shape']))}, {threads}")


def _bench_command(b: Any, t: dict[str, Any], placement: str = "ort") -> str:
    """The `vkt bench` command that times what the gate timed: same graphs, input shape and threads."""
    import shlex

    # Batch: bench's default (1), as the gate timed; the other named axes at the sizes timed.
    dims = [f"{n}={v}" for n, v in zip(b.spec().inputs[0].shape[1:], t["shape"][1:]) if isinstance(n, str)]
    threads = [] if t.get("threads") is None else ["--threads", str(t["threads"])]
    return " ".join(["vkt bench", shlex.quote(str(b.root)), _RUNTIME.get(placement, _RUNTIME["ort"])[1], *(["--shape", ",".join(dims)] if dims else []),
                     *threads])


def _db(v: Any) -> str:
    """An SQNR in dB for people: "0.0 dB" rather than "-0.0 dB" for a value within rounding of zero."""
    if not isinstance(v, float):
        return f"{v} dB"
    return f"{0.0 if abs(v) < 0.05 else v:.1f} dB"


def register(app: typer.Typer) -> None:
    app.command("quantize")(int8_options(with_flag=False)(quantize))
