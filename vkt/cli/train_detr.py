"""`vkt train detr`: train or fine-tune DETR (vkt.training.detr_run) on a COCO folder or synthetic shapes."""

from __future__ import annotations

from pathlib import Path

import typer

from vkt.cli.train_common import (
    add_train_command,
    config_option,
    out_option,
    resume_option,
)


def detr(
    out: Path = out_option("Run folder: checkpoints/last.ckpt, model/ (for `vkt export detr`), metrics.json."),
    data: Path = typer.Option(None, "--data", help="COCO-format folder: train.json + train/ (+ val.json + val/), or "
                              "annotations/instances_{train,val}2017.json + {train,val}2017/."),
    synth: int = typer.Option(None, "--synth", help="Train on N synthetic shape images instead (validation: 64 more); "
                              "the reduced recipe uses 512."),
    config: Path = config_option("YAML run config (vkt.training.detr_run.DetrRunConfig: model, num_queries, "
                                 "shortest_edge, longest_edge, synth_size, train: {lr, epochs, ...})."),
    resume: bool = resume_option("Continue from RUN/checkpoints/last.ckpt (weights, optimizer, LR schedule, epoch); "
                                 "the config's epochs is the total."),
    epochs: int = typer.Option(None, "--epochs", help="Override train.epochs."),
    max_steps: int = typer.Option(None, "--max-steps", help="Override train.max_steps."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override train.batch_size."),
    model: str = typer.Option(None, "--model", help="'reduced' (default) or a checkpoint to fine-tune (HF folder or .pth)."),
) -> None:
    """Train DETR with transformers' model and Hungarian loss under PyTorch Lightning; prints COCO AP per validation."""
    import json

    from vkt.cli.outputs import output_folder
    from vkt.training.detr_run import load_run_config, train_detr_run

    from vkt.errors import InputError

    if (data is None) == (synth is None):  # the options' own error first, then the paths
        raise InputError("give exactly one of --data COCO_DIR or --synth N")
    output_folder(out, "--out", [data, config, model if model not in (None, "reduced") else None])
    cfg = load_run_config(config, model=model, train={"epochs": epochs, "max_steps": max_steps, "batch_size": batch_size})
    result = train_detr_run(cfg, out, data=data, synth=synth, resume=resume)
    for h in result.history:
        typer.echo(f"epoch {h['epoch']}: AP {h['AP']:.3f}  AP50 {h['AP50']:.3f}  AP75 {h['AP75']:.3f}")
    typer.echo(json.dumps({"model": str(result.model_dir), "seconds": round(result.seconds, 1),
                           "last": result.history[-1] if result.history else None}))
    typer.echo(f"export with: vkt export detr {result.model_dir} -o BUNDLE")


def register(app: typer.Typer) -> None:
    add_train_command(app, "detr", detr)
