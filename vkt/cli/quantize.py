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


def _preprocess(bundle: Any, component: str) -> Any:
    """``preprocess(path)`` from the manifest (vkt.runtime.image) or, without a preprocess section, pixels / 255."""
    spec = bundle.spec(component)
    images = [t for t in spec.inputs if len(t.shape) == 4 and t.dtype == "float32"]
    if len(spec.inputs) != 1 or not images:
        raise CalibrationError(f"`vkt quantize --calib DIR` feeds one [N, 3, H, W] float32 image input; component {component!r} "
                               f"takes {[(t.name, t.dtype, list(t.shape)) for t in spec.inputs]}; call "
                               "vkt.calibration.quantize_bundle() with your own feeds instead")
    name = images[0].name
    cfg = bundle.preprocess
    if cfg.get("resize"):
        from vkt.runtime.image import Preprocessor, read_image

        max_side = None
        if spec.profiles:
            hw = [spec.profiles[0].axes[d][2] for d in images[0].shape[2:] if isinstance(d, str) and d in spec.profiles[0].axes]
            max_side = min(hw) if hw else None
        pre = Preprocessor(cfg, max_side=max_side)
        return lambda path: {name: pre([read_image(path)])[0]}
    from vkt.calibration.data import simple_image_preprocess

    return simple_image_preprocess(name, scale=float(cfg.get("scale", 1 / 255)), mean=cfg.get("mean", (0.0, 0.0, 0.0)),
                                   std=cfg.get("std", (1.0, 1.0, 1.0)), color=cfg.get("color", "BGR"))


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
    from rich.console import Console

    from vkt.bundle import Bundle
    from vkt.calibration.api import quantize_bundle
    from vkt.calibration.data import ImageFolderReader, calibration_shapes

    b = Bundle.load(bundle)
    spec = b.spec(component)
    shapes = [parse_hw(s) for s in shape] if shape else None
    if shapes is None and not b.preprocess.get("resize"):
        shapes = calibration_shapes(spec)
    reader = ImageFolderReader(calib, _preprocess(b, component), shapes=shapes, limit=num_images, spec=spec)
    section = quantize_bundle(b, reader, method=method, targets=target or ("ort", "trt"), exclude=exclude or (),
                              component=component, percentile=percentile)
    if as_json:
        print(json.dumps(section, indent=2))
        return
    c = Console()
    c.print(f"[bold]{b.name}[/]: {section['method']} ranges from {section['samples']} image(s), table "
            f"{section['table']['sha256'][:12]}", highlight=False)
    for name, p in section["placements"].items():
        sq = ", ".join(f"{k} {v:.1f} dB" if isinstance(v, float) else f"{k} {v}" for k, v in p.get("output_sqnr_db", {}).items())
        c.print(f"  {name}: {p['path']}  fused int8 ops {p['fused_int8_ops']}, float compute ops {p['float_compute_ops']} "
                f"on onnxruntime CPU; output SQNR vs FP32: {sq or 'not measured'}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
