"""`vkt train`: the training group; `vkt train textdet` trains / fine-tunes the DB text detector.

Other families add their command to the same group (vkt.cli.train_common finds or makes it).
"""

from __future__ import annotations

from pathlib import Path

import typer

from vkt.cli.train_common import (
    add_train_command,
    config_option,
    out_option,
    read_yaml_mapping,
    resume_option,
    train_group,
)

__all__ = ["register", "textdet", "train_group"]


def textdet(
    out: Path = out_option("Run folder: ckpt.pt, history.jsonl, logs/, bundle/."),
    data: Path = typer.Option(None, "--data", help="ICDAR-style folder: images + gt_<name>.txt / <name>.txt labels."),
    synth: int = typer.Option(None, "--synth", help="Train on N synthetic images rendered on the fly instead of --data."),
    val: Path = typer.Option(None, "--val", help="ICDAR-style validation folder (default: a synthetic set with --synth, "
                             "else up to 16 training images)."),
    pretrained: str = typer.Option(None, "--pretrained", help="Start from imported weights: ppocrv5-mobile "
                                   "(BatchNorm frozen). Default: from scratch."),
    steps: int = typer.Option(None, "--steps", help="Optimiser steps in all (default 1000)."),
    batch: int = typer.Option(None, "--batch", min=1, help="Images per step (default 8)."),
    lr: float = typer.Option(None, "--lr", help="Peak AdamW learning rate after warm-up (default 1e-3 from scratch, 3e-5 with --pretrained)."),
    size: int = typer.Option(None, "--size", help="Square training crop, a multiple of 32 (default 320)."),
    ckpt_every: int = typer.Option(None, "--ckpt-every", help="Checkpoint every N steps (default 100)."),
    val_every: int = typer.Option(None, "--val-every", help="Validation hmean every N steps (default 100)."),
    seed: int = typer.Option(None, "--seed", help="Seed of data order, augmentation, synthetic text and init (default 0)."),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes (default 0)."),
    resume: bool = resume_option("Continue the run in --out from its ckpt.pt."),
    config: Path = config_option("YAML file of TextDetTrainConfig fields; command-line options win."),
    export: bool = typer.Option(True, "--export/--no-export", help="Export OUT/bundle at the end."),
) -> None:
    """Train or fine-tune the PP-OCRv5 mobile DB detector; ends with an exported bundle in OUT/bundle."""
    import json
    import time
    from dataclasses import asdict

    from vkt.cli.outputs import output_folder
    from vkt.errors import InputError
    from vkt.log import get_logger
    from vkt.training.textdet import fit
    from vkt.training.textdet_config import TextDetTrainConfig

    log = get_logger("cli.train")
    if (data is None) == (synth is None):
        raise InputError("give exactly one of --data DIR (ICDAR-style folder) and --synth N (synthetic images), "
                         f"got {'both' if data is not None else 'neither'}")
    given = {"steps": steps, "batch": batch, "lr": lr, "size": size, "ckpt_every": ckpt_every, "val_every": val_every,
             "seed": seed, "workers": workers, "pretrained": pretrained}
    opts = read_yaml_mapping(config) if config is not None else {}
    opts.update({k: v for k, v in given.items() if v is not None})
    cfg = TextDetTrainConfig.from_dict(opts, str(config) if config else "options")
    output_folder(out, "--out", [data, val, config])
    if not resume and (out / "ckpt.pt").is_file():
        raise InputError(f"--out {str(out)!r} already holds a run (ckpt.pt); pass --resume to continue it or choose "
                         "another --out")
    if resume:
        if not out.is_dir():
            raise InputError(f"--resume: run folder {str(out)!r} not found; expected a folder holding ckpt.pt")
        from vkt.training.textdet_ckpt import load_checkpoint

        # the run's own size and seed rebuild the same data stream; only --steps may change
        saved = TextDetTrainConfig.from_dict(load_checkpoint(out)["train_config"], f"{str(out)!r}/ckpt.pt")
        cfg = TextDetTrainConfig.from_dict({**asdict(saved), **({"steps": steps} if steps is not None else {})})

    # 1. data
    train_set, val_set = _datasets(data, synth, val, cfg)
    # 2. train
    t0 = time.perf_counter()
    result = fit(train_set, cfg, val_set, out_dir=out, resume=resume, progress=True)
    seconds = time.perf_counter() - t0
    losses = [h for h in result.history if "loss" in h]
    vals = [h for h in result.history if "val_hmean" in h]
    summary = {"steps": result.config.steps, "resumed_from": result.start_step, "seconds": round(seconds, 1),
               "first_loss": losses[0]["loss"] if losses else None, "last_loss": losses[-1]["loss"] if losses else None,
               "val": vals[-1] if vals else None, "config": asdict(result.config), "checkpoint": str(result.checkpoint)}
    # 3. export
    if export and result.checkpoint is not None:
        from vkt.models.textdet.bundle import export_textdet_bundle
        from vkt.training.textdet_ckpt import load_textdet_source

        model, resize, desc = load_textdet_source(result.checkpoint)
        rep = export_textdet_bundle(model, out / "bundle", resize=resize, overwrite=True, source=desc)
        summary["bundle"] = str(rep.path)
        summary["parity"] = rep.parity
    from vkt.fsutil import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    log.info("trained %d steps in %.1f s", result.config.steps - result.start_step, seconds)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1))


def _datasets(data: Path | None, synth: int | None, val: Path | None, cfg):  # type: ignore[no-untyped-def]
    from vkt.training.synth_text import SynthConfig, SynthStream
    from vkt.training.textdet_data import IcdarFolder

    val_set = None
    if val is not None:
        vf = IcdarFolder(val)
        val_set = [vf[i] for i in range(len(vf))]
    if synth is not None:
        sc = SynthConfig(size=(cfg.size, cfg.size))
        train_set = SynthStream(synth, cfg.seed, sc)
        if val_set is None:  # a different seed: images the run never trains on
            vs = SynthStream(max(8, min(64, synth // 10)), cfg.seed + 1_000_003, sc)
            val_set = [vs[i] for i in range(len(vs))]
    else:
        train_set = IcdarFolder(data)
        if val_set is None:
            val_set = [train_set[i] for i in range(min(16, len(train_set)))]
    return train_set, val_set


def register(app: typer.Typer) -> None:
    add_train_command(app, "textdet", textdet)
