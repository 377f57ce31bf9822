"""`vkt train dreambooth`: personalise a Stable Diffusion pipeline from a YAML config (vkt.training.dreambooth)."""

from __future__ import annotations

from pathlib import Path

import typer

from vkt.cli.train_common import add_train_command, config_option, resume_option


def dreambooth(
    config: Path = config_option("YAML run config (see vkt.training.dreambooth_config.DreamboothConfig: pretrained, "
                                 "instance_dir, identifier, class_noun, output_dir, ...).", required=True),
    resume: bool = resume_option("Continue from the run's last checkpoint (weights, optimizer, LR scheduler, step, "
                                 "RNG states)."),
) -> None:
    """Dreambooth fine-tuning with class-prior preservation; writes <output_dir>/model, a diffusers folder for
    `vkt export sd`."""
    from vkt.cli.outputs import output_folder
    from vkt.training.dreambooth import train_dreambooth
    from vkt.training.dreambooth_config import load_config

    cfg = load_config(config)
    output_folder(cfg.output_dir, "output_dir", [cfg.pretrained, cfg.instance_dir, config])
    result = train_dreambooth(cfg, resume=resume)
    last = result.losses[-1] if result.losses else None
    typer.echo(f"wrote {result.model_dir}")
    if last:
        typer.echo(f"step {last['step']}: loss {last['loss']:.4f} (instance {last['instance_loss']:.4f}, "
                   f"prior {last['prior_loss']:.4f})")
    typer.echo(f"instance loss on fixed draws {result.eval_before['instance_loss']:.4f} -> "
               f"{result.eval_after['instance_loss']:.4f}; export with: vkt export sd {result.model_dir} -o BUNDLE")


def register(app: typer.Typer) -> None:
    add_train_command(app, "dreambooth", dreambooth)
