"""`vkt quantize`: calibrate a bundle once on an image folder and add INT8 Q/DQ graphs per target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from vkt.errors import CalibrationError


def parse_hw(text: str) -> tuple[int, int]:
    """``"736x736"`` -> (736, 736)."""
    h, sep, w = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        return int(h), int(w)
    except ValueError:
        raise CalibrationError(f"--shape must look like HEIGHTxWIDTH (e.g. 736x736), got {text!r}") from None


def quantize(
    bundle: Path = typer.Argument(..., help="Bundle folder holding an fp32 onnx."),
    calib: Path = typer.Option(..., "--calib", help="Folder of calibration images (a few hundred representative ones)."),
    method: str = typer.Option("minmax", "--method", help="Range method: minmax, percentile or entropy."),
    target: list[str] = typer.Option(None, "--target", "-t", help="Placement, repeatable: ort (onnxruntime CPU) and/or trt "
                                     "(TensorRT). Default: both."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Node name to keep in float, repeatable."),
    num_images: int = typer.Option(None, "--num-images", "-n", help="Use at most this many images (default: all)."),
    shape: list[str] = typer.Option(None, "--shape", "-s", help="Calibrate at HEIGHTxWIDTH, repeatable (images cycle "
                                    "through them). Default: the manifest's resize rule, or shapes inside the profile."),
    component: str = typer.Option("model", help="Bundle component to quantize."),
    percentile: float = typer.Option(99.999, help="With --method percentile."),
    holdout: Path = typer.Option(None, "--holdout", help="Folder of held-out images (not in --calib): run the accuracy "
                                 "gate on the task metric (text detection: hmean of INT8 vs FP32 boxes)."),
    max_drop: float = typer.Option(1.0, "--max-drop", help="With --holdout: allowed metric drop in points (1.0 = 0.01 hmean)."),
    steps: str = typer.Option(None, "--steps", help="With --holdout: layers kept in float per gate step, e.g. 0,2,4,8,16,32 "
                              "(default: every 4th layer with --ranking prefix, else 0,4,8,16,24,32,48). A layer is one "
                              "entry of the ranking: with prefix a conv/matmul and the nodes before it, with tensor an "
                              "activation tensor and the nodes reading it; the gate's log, table and manifest count the same."),
    on_fail: str = typer.Option("fp32", "--on-fail", help="With --holdout, when no step fits: fp32 (ship no INT8 graph) | best."),
    qat: bool = typer.Option(False, "--qat", help="Also fine-tune the reference PyTorch module under fake quantization "
                             "(text detector); the gate ships QAT or PTQ. Needs --holdout."),
    qat_steps: int = typer.Option(150, "--qat-steps", help="With --qat: optimizer steps."),
    qat_minutes: float = typer.Option(10.0, "--qat-minutes", help="With --qat: wall-clock cap in minutes."),
    qat_checkpoint: Path = typer.Option(None, "--qat-checkpoint", help="With --qat: checkpoint file (saved atomically, resumed)."),
    weight_rounding: str = typer.Option(None, "--weight-rounding", help="nearest (default) or gptq (activation-aware "
                                        "int8 conv weights)."),
    ranking: str = typer.Option(None, "--ranking", help="With --holdout: what the gate keeps in float first: prefix (the graph "
                                "from its input up to the k-th conv/matmul; default for text detection), tensor (the k "
                                "tensors whose quantization alone costs most at the output; default otherwise), jump, "
                                "sensitivity."),
    holdout_labels: bool = typer.Option(False, "--holdout-labels", help="With --holdout (text detection): also bound "
                                        "the hmean drop vs ICDAR labels (gt_<image>.txt) beside held-out images. Off by "
                                        "default: that hmean flips with boxes near IoU 0.5, so it is noisy."),
    ort_ops: str = typer.Option(None, "--ort-ops", help="What the ort placement quantizes: all (every op onnxruntime "
                                "has an integer kernel for; the default) or compute (Conv/MatMul/Gemm only, the ops between "
                                "them in float; the default for text detection without --holdout: more accurate with every "
                                "conv INT8, slower once the gate keeps a float prefix)."),
    threads: int = typer.Option(None, "--threads", min=1, help="onnxruntime intra-op threads for the gate (default: ORT's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's calibration section as JSON."),
) -> None:
    """Calibrate once, then write an INT8 Q/DQ graph per target into the bundle.

    onnxruntime CPU and TensorRT fuse different Q/DQ patterns, so each target gets its own placement
    from the same ranges (docs/ARCHITECTURE.md, sections "Precision" and "INT8").

    With --holdout the accuracy gate keeps the most sensitive layers in float step by step until the
    metric drop is within --max-drop, prints metric and ORT CPU latency per step and ships the fastest.
    """
    from vkt.bundle import Bundle, edit_bundle
    from vkt.calibration.api import quantize_from_images
    from vkt.calibration.gate import RANKING_METHODS
    from vkt.cli.outputs import edited_folder, output_file

    gate_opts = gate_options(holdout, max_drop, steps, on_fail, qat, qat_steps, qat_minutes, qat_checkpoint)
    check_int8_inputs(calib, method, num_images, holdout, on_fail)
    if ranking is not None:
        if ranking not in RANKING_METHODS:
            raise CalibrationError(f"--ranking must be one of {', '.join(RANKING_METHODS)}, got {ranking!r}")
        if holdout is None:
            raise CalibrationError("--ranking is only used with --holdout (the accuracy gate)")
        gate_opts["ranking_method"] = ranking
    if holdout_labels:
        if holdout is None:
            raise CalibrationError("--holdout-labels is only used with --holdout (the accuracy gate)")
        gate_opts["holdout_labels"] = True
    edited_folder(bundle, "BUNDLE")
    if qat_checkpoint is not None:
        output_file(qat_checkpoint, "--qat-checkpoint", [bundle, calib, holdout])
    with edit_bundle(bundle) as b:  # an interrupted or failed run leaves the bundle as it was
        section = quantize_from_images(b, calib, method=method, targets=target or ("ort", "trt"), exclude=exclude or (),
                                       num_images=num_images, shapes=[parse_hw(s) for s in shape] if shape else None,
                                       component=component, percentile=percentile, threads=threads,
                                       weight_rounding=weight_rounding, ort_ops=ort_ops, **gate_opts)
    b = Bundle.load(bundle, verify=False)
    if as_json:
        print(json.dumps(section, indent=2))
        return
    print_calibration(b, section)


def check_int8_inputs(calib: Path, method: str, num_images: int | None, holdout: Path | None = None,
                      on_fail: str = "fp32") -> None:
    """Cheap checks of the INT8 options, run before any model is loaded or exported: the calibration
    folder holds images, the method and --on-fail are known, --num-images is positive, the holdout
    folder holds images. Raises CalibrationError/InputError naming the value."""
    from vkt.calibration.data import calibration_images
    from vkt.calibration.ranges import METHODS
    from vkt.errors import InputError

    if method not in METHODS:
        raise CalibrationError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    if num_images is not None and num_images < 1:
        raise InputError(f"--num-images must be >= 1, got {num_images}")
    if on_fail not in ("fp32", "best"):
        raise InputError(f"--on-fail must be fp32 or best, got {on_fail!r}")
    calib_paths = calibration_images(calib, num_images)
    if holdout is not None:
        from vkt.calibration.gate import holdout_images

        held = holdout_images(holdout)
        same = {p.resolve() for p in held} & {p.resolve() for p in calib_paths}
        if same:
            raise InputError(f"held-out images must not be calibration images: {sorted(p.name for p in same)[:5]} "
                             f"are in both --calib {str(calib)!r} and --holdout {str(holdout)!r}")


def gate_options(holdout: Path | None, max_drop: float, steps: str | None, on_fail: str, qat: bool, qat_steps: int,
                 qat_minutes: float, qat_checkpoint: Path | None) -> dict[str, Any]:
    """The gate/QAT keyword arguments of quantize_from_images from CLI flags (points -> fraction)."""
    from vkt.errors import InputError

    if holdout is None:
        if qat:
            raise CalibrationError("--qat needs --holdout DIR: the accuracy gate decides whether QAT or PTQ ships")
        if steps is not None:
            raise InputError("--steps is only used with --holdout")
        return {}
    if not 0 <= max_drop < 100:
        raise InputError(f"--max-drop is in points of the metric (1.0 = 0.01 hmean), in [0, 100); got {max_drop!r}")
    parsed = None
    if steps is not None:
        try:
            parsed = [int(v) for v in steps.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--steps must be comma-separated layer counts like 0,2,4,8,16; got {steps!r}") from None
    opts: dict[str, Any] = {"holdout": holdout, "max_drop": max_drop / 100.0, "steps": parsed, "on_fail": on_fail, "qat": qat}
    if qat:
        opts["qat_options"] = {"steps": qat_steps, "minutes": qat_minutes,
                               "checkpoint": str(qat_checkpoint) if qat_checkpoint else None}
    return opts


def print_calibration(b: Any, section: dict) -> None:
    from rich.console import Console

    from vkt.tables import print_table

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
        c.print(f"  {name}{scope}: {p['path']}  fused int8 ops {p['fused_int8_ops']}, float compute ops {p['float_compute_ops']} "
                f"on onnxruntime CPU; output SQNR vs FP32{where}: {sq or 'not measured'}", highlight=False)
    if low:
        c.print("  [yellow]note:[/] an output SQNR near 0 dB means INT8's error there is as large as the output itself "
                "(e.g. a detector's map that INT8 flattens to zero on those images); judge accuracy on held-out images "
                "with --holdout", highlight=False)
    gate = section.get("gate")
    if gate:
        from vkt.calibration.gate import render_gate_table

        print_table(render_gate_table(gate), c)
        ch = gate.get("chosen")
        budget = f"{gate['max_drop'] * 100:g} point(s)"
        if ch is None:
            c.print(f"[yellow]no INT8 model within {budget} of FP32: shipped FP32 only "
                    f"(placement {gate['placement']!r} removed)[/]", highlight=False)
        else:
            layers = ch.get("layers_kept_float", len(ch["float_layers"]))
            c.print(f"shipped {ch['candidate']} with {layers} layer(s) in float: {gate.get('metric_name', 'metric')} "
                    f"{ch['metric']:.4f} (drop {ch.get('drop_points', ch['drop'] * 100):.2f} points, budget {budget}), {ch['speedup']:.2f}x FP32 "
                    "on ORT CPU", highlight=False)


def _db(v: Any) -> str:
    """An SQNR in dB for people: "0.0 dB" rather than "-0.0 dB" for a value within rounding of zero."""
    if not isinstance(v, float):
        return f"{v} dB"
    return f"{0.0 if abs(v) < 0.05 else v:.1f} dB"


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
