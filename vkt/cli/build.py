"""`vkt build`: ONNX (or a bundle's ONNX) -> strongly typed TensorRT / TensorRT-RTX plan."""

from __future__ import annotations

from pathlib import Path

import typer

from vkt.bundle import PRECISION_ROLES
from vkt.errors import InputError


def build(
    source: Path = typer.Argument(..., help="A bundle folder (the plan is added to it) or an .onnx file.", show_default=False),
    output: Path = typer.Option(None, "--output", "-o", help="Write the plan here. For an .onnx source the default is "
                                "<source>.plan beside it; for a bundle the plan always goes into the bundle and -o "
                                "writes an extra copy."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32 | fp16 | int8: which ONNX of the bundle to "
                                  "build (fp32 onnx, fp16 onnx, int8 qdq onnx). Networks are strongly typed: the "
                                  "graph carries the precision. For an .onnx source it only labels the plan."),
    profile: list[str] = typer.Option(None, "--profile", help="Shape profile 'axis=min:opt:max,...', e.g. "
                                      "'batch=1:1:8,height=32:736:1536'. Repeat for several profiles. Default: the "
                                      "bundle's profiles (required for a dynamic .onnx source)."),
    component: str = typer.Option("model", "--component", help="Bundle component to build (SD bundles: unet, ...)."),
    workspace_mb: int = typer.Option(None, "--workspace-mb", help="Cap on the builder's workspace memory, in MiB "
                                     "(default: TensorRT's)."),
    timing_cache: Path = typer.Option(None, "--timing-cache", help="Load/save tactic timings here (full TensorRT; "
                                      "a logged no-op under TensorRT-RTX)."),
    version_compatible: bool = typer.Option(False, "--version-compatible", help="Plan runs on later TensorRT "
                                            "versions of the same major."),
    exclude_lean_runtime: bool = typer.Option(False, "--exclude-lean-runtime", help="Leave the lean runtime out "
                                              "of a version-compatible plan (needs --version-compatible)."),
    sm: list[str] = typer.Option(None, "--sm", help="TensorRT-RTX target GPU, e.g. SM89 (repeatable; default: "
                                 "TensorRT-RTX's set, Ampere and later; Turing needs SM75)."),
    opt_level: int = typer.Option(None, "--opt-level", help="Builder optimization level 0..5 (default 3)."),
    module: str = typer.Option("auto", "--module", help="auto | tensorrt | tensorrt_rtx. auto: tensorrt on a GPU "
                               "machine, else tensorrt_rtx."),
) -> None:
    """Build a TensorRT plan from a bundle's ONNX (recorded in its manifest) or from an .onnx file.

    Examples: [bold]vkt build toy.vkt --sm SM89[/] (RTX 40xx plan, added to the bundle);
    [bold]vkt build toy.vkt --precision int8 --module tensorrt[/] (on a GPU machine);
    [bold]vkt build model.onnx --profile "batch=1:1:8,height=32:736:1536,width=32:736:1536" -o model.plan[/].
    """
    from rich.console import Console

    from vkt.cli.outputs import edited_folder, output_file
    from vkt.engines import BuildConfig, build as build_plan, build_bundle_plan, profiles_summary, save_plan
    from vkt.specs import ExportSpec, parse_profile

    if precision not in PRECISION_ROLES:
        raise InputError(f"--precision must be one of {list(PRECISION_ROLES)}, got {precision!r}")
    if not source.exists():
        raise InputError(f"no such file or folder: {str(source)!r}; expected a bundle folder or an .onnx file")
    if workspace_mb is not None and workspace_mb <= 0:
        raise InputError(f"--workspace-mb must be a positive number of MiB, got {workspace_mb}")
    profiles = [parse_profile(p) for p in (profile or [])]
    config = BuildConfig(
        workspace_bytes=None if workspace_mb is None else workspace_mb * (1 << 20),
        timing_cache=timing_cache, version_compatible=version_compatible, exclude_lean_runtime=exclude_lean_runtime,
        compute_capabilities=tuple(sm or ()), builder_optimization_level=opt_level, precision=precision, module=module,
    )
    if source.is_dir():
        from vkt.bundle import edit_bundle

        edited_folder(source, "SOURCE")
        if output is not None:
            output_file(output, "--output", [source, timing_cache])
        with edit_bundle(source) as bundle:  # an interrupted build leaves the bundle as it was
            spec = bundle.spec(component).with_profiles(*profiles) if profiles else None
            entry = build_bundle_plan(bundle, config, component=component, source_role=PRECISION_ROLES[precision],
                                      spec=spec)
        plan_path, meta = source / entry.path, entry.meta
        if output is not None:
            save_plan(plan_path.read_bytes(), output)
    else:
        if source.suffix.lower() != ".onnx":
            raise InputError(f"{str(source)!r} is neither a bundle folder nor an .onnx file")
        output_file(output or source.with_suffix(".plan"), "--output", [source, timing_cache])
        spec = ExportSpec.from_onnx(source, profiles=profiles)
        result = build_plan(source, spec, config)
        plan_path, meta = save_plan(result.plan, output or source.with_suffix(".plan")), result.meta

    c = Console()
    b = meta["builder"]
    c.print(f"[green]built[/] {str(plan_path)!r}: {meta['plan_bytes'] / 2**20:.2f} MiB in {meta['build_seconds']:.2f} s "
            f"with {b['module']} {b['version']} ({meta['precision']})", highlight=False)
    for i, text in enumerate(profiles_summary(meta["profiles"])):
        c.print(f"  profile {i}: {text}", highlight=False)
    targets = ", ".join(meta["compute_capabilities"]) or ("TensorRT-RTX default (SM80+)" if b["module"] == "tensorrt_rtx" else "build GPU")
    c.print(f"  targets: {targets}; version compatible: {meta['flags']['version_compatible']}", highlight=False)
    if meta.get("timing_cache"):
        c.print(f"  timing cache: {meta['timing_cache']['status']}", highlight=False)
    if output is not None and source.is_dir():
        c.print(f"  copy written to {str(output)!r}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("build")(build)
