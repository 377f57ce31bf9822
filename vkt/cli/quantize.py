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
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's calibration section as JSON."),
) -> None:
    """Calibrate once, then write an INT8 Q/DQ graph per target into the bundle (see DESIGN: precision policy)."""
    from vkt.bundle import Bundle
    from vkt.calibration.api import quantize_from_images

    b = Bundle.load(bundle)
    section = quantize_from_images(b, calib, method=method, targets=target or ("ort", "trt"), exclude=exclude or (),
                                   num_images=num_images, shapes=[parse_hw(s) for s in shape] if shape else None,
                                   component=component, percentile=percentile)
    if as_json:
        print(json.dumps(section, indent=2))
        return
    print_calibration(b, section)


def print_calibration(b: Any, section: dict) -> None:
    from rich.console import Console

    c = Console()
    c.print(f"[bold]{b.name}[/]: {section['method']} ranges from {section['samples']} image(s), table "
            f"{section['table']['sha256'][:12]}", highlight=False)
    for name, p in section["placements"].items():
        sq = ", ".join(f"{k} {v:.1f} dB" if isinstance(v, float) else f"{k} {v}" for k, v in p.get("output_sqnr_db", {}).items())
        c.print(f"  {name}: {p['path']}  fused int8 ops {p['fused_int8_ops']}, float compute ops {p['float_compute_ops']} "
                f"on onnxruntime CPU; output SQNR vs FP32: {sq or 'not measured'}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
