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
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing bundle at --output."),
) -> None:
    """Import an ONNX file as a bundle: names its image axes, checks it, runs it once, records checksums."""
    from rich.console import Console

    from vkt.export.onnx_import import import_onnx
    from vkt.specs import parse_profile

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


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
