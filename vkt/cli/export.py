"""`vkt export`: make bundles — from an existing ONNX file now, from torch models per family."""

from __future__ import annotations

from pathlib import Path

import typer

export_app = typer.Typer(help="Export a model to a bundle (ONNX + manifest; INT8/FP16 variants and engines on request).",
                         no_args_is_help=True)


@export_app.command("onnx")
def export_onnx(
    model: Path = typer.Argument(..., help="The .onnx file to import (weights as initializers or Constant nodes)."),
    output: Path = typer.Option(None, "--output", "-o", help="Bundle folder to write (default: ./<model stem>.vkt)."),
    task: str = typer.Option("generic", help="generic | textdet | detr: sets the family, default profile and the "
                             "pre/post-processing recorded in the manifest."),
    profile: str = typer.Option(None, help="Axis ranges 'axis=min:opt:max,...', e.g. 'batch=1:1:8,height=32:736:1536,"
                                "width=32:736:1536' (default: the task's)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write an FP16 graph (sensitive ops and I/O kept in FP32) for "
                              "TensorRT's strongly typed build."),
    int8: bool = typer.Option(False, "--int8", help="Calibrate on --calib images once and add INT8 Q/DQ graphs: one placed "
                              "for onnxruntime CPU (fused integer kernels), one for TensorRT (Q/DQ on Conv/MatMul/Gemm inputs)."),
    calib: Path = typer.Option(None, "--calib", help="With --int8: folder of calibration images (a few hundred "
                               "representative ones; pre-processed as the manifest says)."),
    calib_method: str = typer.Option("percentile", "--calib-method", help="With --int8: minmax | entropy | percentile."),
    num_images: int = typer.Option(None, "--num-images", help="With --int8: use at most this many images."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing bundle at --output."),
) -> None:
    """Import an ONNX file as a bundle: names its image axes, checks it, runs it once, records checksums."""
    from rich.console import Console

    from vkt.errors import InputError
    from vkt.export.onnx_import import import_onnx
    from vkt.specs import parse_profile

    if int8 and calib is None:
        raise InputError("--int8 needs calibration images: pass --calib DIR (a folder of representative images)")
    if calib is not None and not int8:
        raise InputError("--calib is only used with --int8")
    out = output or Path(f"{model.stem}.vkt")
    bundle = import_onnx(model, out, task=task, profile=parse_profile(profile) if profile else None, overwrite=force, fp16=fp16)
    spec = bundle.spec()
    c = Console()
    c.print(f"[green]wrote[/] bundle {str(bundle.root)!r} ({bundle.family}/{bundle.task})", highlight=False)
    for t in spec.inputs:
        c.print(f"  input  {t.name}: {t.dtype} {list(t.shape)}", highlight=False)
    for t in spec.outputs:
        c.print(f"  output {t.name}: {t.dtype} {list(t.shape)}", highlight=False)
    for i, p in enumerate(spec.profiles):
        c.print(f"  profile {i}: " + ", ".join(f"{a}={lo}:{opt}:{hi}" for a, (lo, opt, hi) in p.axes.items()), highlight=False)
    if int8:
        from vkt.calibration.api import quantize_from_images
        from vkt.cli.quantize import print_calibration

        section = quantize_from_images(bundle, calib, method=calib_method, num_images=num_images)
        print_calibration(bundle, section)


@export_app.command("sd")
def export_sd_cmd(
    path: Path = typer.Argument(..., help="Local diffusers StableDiffusionPipeline folder (text_encoder/ unet/ vae/ "
                                "tokenizer/ scheduler/), e.g. the output of `vkt train dreambooth`."),
    output: Path = typer.Option(None, "--output", "-o", help="Bundle folder to write (default: ./<folder name>.vkt)."),
    max_batch: int = typer.Option(4, "--max-batch", help="Images per call, B (the UNet's profile covers 2B for guidance)."),
    min_size: int = typer.Option(256, "--min-size", help="Smallest image side in pixels (multiple of 64 for SD)."),
    opt_size: int = typer.Option(512, "--opt-size", help="Image side TensorRT tunes for."),
    max_size: int = typer.Option(1024, "--max-size", help="Largest image side in pixels."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write FP16 graphs (I/O and sensitive ops kept in FP32)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing bundle at --output."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare each graph on onnxruntime with torch."),
) -> None:
    """Export a Stable Diffusion pipeline (text encoder, UNet, VAE decoder) to an SD bundle."""
    from rich.console import Console

    from vkt.models.sd import SDProfile, export_sd

    out = output or Path(f"{path.resolve().name}.vkt")
    report = export_sd(path, out, profile=SDProfile(max_batch=max_batch, min_size=min_size, opt_size=opt_size,
                                                    max_size=max_size), check=check, overwrite=force, fp16=fp16)
    c = Console()
    c.print(f"[green]wrote[/] SD bundle {str(report.bundle)!r}", highlight=False)
    for comp, spec in report.specs.items():
        axes = ", ".join(f"{a}={lo}:{opt}:{hi}" for a, (lo, opt, hi) in spec.profiles[0].axes.items())
        par = report.parity.get(comp)
        c.print(f"  {comp}: {axes}" + (f" (onnxruntime vs torch: {par:.1e} relative)" if par is not None else ""),
                highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
