"""`vkt triton`: write a bundle's model into a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

import typer


def triton(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    repo: Path = typer.Option(..., "--output", "-o", help="Model repository folder (created if missing)."),
    name: str = typer.Option(None, help="Model name in the repository (default: the bundle's name)."),
    backend: str = typer.Option("onnxruntime", help="onnxruntime (serves the bundle's ONNX), tensorrt (its plan) or "
                                "python (the ONNX run by onnxruntime inside Triton's Python backend: for Triton builds "
                                "without the onnxruntime backend, such as the nvidia-pytriton wheel's tritonserver)."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8: which file of the bundle is served."),
    max_batch: int = typer.Option(None, min=1, help="max_batch_size (default: the profile's max batch)."),
    delay_us: int = typer.Option(2000, help="Dynamic batching max_queue_delay_microseconds."),
    instances: int = typer.Option(1, help="Instances per group."),
    kind: str = typer.Option("KIND_AUTO", help="KIND_AUTO | KIND_CPU | KIND_GPU (onnxruntime only; plans are GPU, "
                             "python models CPU)."),
    threads: int = typer.Option(0, min=0, help="--backend python: onnxruntime's intra-op threads per instance "
                                "(0: onnxruntime's default)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace the model folder if it exists."),
    pipeline: bool = typer.Option(False, "--pipeline", help="Also write NAME_pipeline: a Python-backend model taking image "
                                  "file bytes (TYPE_UINT8 [-1]) and answering detections, with vkt's pre/post-processing "
                                  "around a BLS call to NAME (text- and object-detection bundles)."),
) -> None:
    """Export a bundle to a Triton model repository (config.pbtxt with dynamic batching and profiles)."""
    from rich.console import Console

    from vkt.bundle import Bundle
    from vkt.cli.outputs import output_folder, replaced_folder
    from vkt.export.triton import TritonOptions, model_name, write_triton_repo

    opts = TritonOptions(backend=backend, precision=precision, max_batch_size=max_batch, max_queue_delay_us=delay_us,
                         instances=instances, kind=kind, threads=threads)
    b = Bundle.load(bundle)
    output_folder(repo, "--output", [bundle], container=True)  # the repository may hold the bundle; a model folder may not
    core = name or model_name(b)
    for m in [core, f"{core}_pipeline"] if pipeline else [core]:
        if "/" not in m and m not in ("", ".", ".."):  # a bad name gets its own message from write_triton_repo
            replaced_folder(repo / m, "--output", [bundle], force=force, marker="config.pbtxt", what="Triton model folder")
    out = write_triton_repo(b, repo, name=name, opts=opts, overwrite=force, pipeline=pipeline)
    Console().print(f"[green]wrote[/] {out}/config.pbtxt and {out}/1/", highlight=False)
    if pipeline:
        Console().print(f"[green]wrote[/] {out}_pipeline/ (Python backend)", highlight=False)
    if pipeline or backend == "python":
        Console().print("Triton's Python environment needs 'pip install vkt' and the numpy its Python backend was built "
                        "for (numpy<2 for the Triton 2.51 of nvidia-pytriton 0.7.0): docs/TRITON.md", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("triton")(triton)
