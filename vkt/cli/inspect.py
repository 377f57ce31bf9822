"""`vkt inspect`: what a bundle holds (verified), as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def inspect(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the sha256 check of every file."),
) -> None:
    """Verify a bundle (checksums, schema) and show its files, I/O spec and profiles."""
    from rich.console import Console
    from rich.table import Table

    from vkt.bundle import Bundle
    from vkt.tables import print_table

    b = Bundle.load(bundle, verify=not no_verify)
    check_processing(b)
    if as_json:
        print(json.dumps(b.manifest, indent=2))
        return
    c = Console()
    c.print(f"[bold]{b.name}[/]  {b.family}/{b.task}  schema v{b.manifest['schema_version']}  "
            f"created {b.manifest.get('created_utc', '?')}" + ("" if no_verify else "  [green]verified[/]"), highlight=False)
    t = Table("file", "role", "component", "bytes", "sha256", "meta", title="files", title_justify="left")
    for e in b.entries:
        meta = json.dumps(e.meta)
        t.add_row(e.path, e.role, e.component, f"{e.bytes:,}", e.sha256[:12], meta if len(meta) <= 60 else meta[:59] + "…")
    print_table(t, c)  # records instead of a table cut to "model.int8.t…" at 80 columns or piped
    if any(len(json.dumps(e.meta)) > 60 for e in b.entries):
        c.print("[dim](meta cut at 60 characters: --json prints the whole manifest)[/]")
    for comp in b.components:
        spec = b.spec(comp)
        c.print(f"[bold]{comp}[/] opset {spec.opset}")
        for x in spec.inputs:
            c.print(f"  in  {x.name}: {x.dtype} {list(x.shape)}", highlight=False)
        for x in spec.outputs:
            c.print(f"  out {x.name}: {x.dtype} {list(x.shape)}", highlight=False)
        for i, p in enumerate(spec.profiles):
            c.print(f"  profile {i}: " + ", ".join(f"{a}={lo}:{o}:{hi}" for a, (lo, o, hi) in p.axes.items()), highlight=False)


def check_processing(b: Any) -> None:
    """Build the task's pre/post-processing from the manifest as the runtime will (no model is loaded), so a
    bundle that `vkt run` would refuse (e.g. ``mean: "imagenet"``, a box_thresh of 2) fails inspect too."""
    from vkt.runtime.image import Preprocessor

    if b.task == "text-detection":
        from vkt.runtime.textdet import DBParams

        DBParams.from_dict(b.postprocess)
    elif b.task == "object-detection":
        from vkt.runtime.detection import DetrParams

        DetrParams.from_dict(b.postprocess)
    else:
        return
    Preprocessor(b.preprocess)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
