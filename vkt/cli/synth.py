"""`vkt synth textdet`: write a synthetic, labelled ICDAR-2015-style text-detection folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

synth_app = typer.Typer(help="Write synthetic labelled data sets.", no_args_is_help=True)


def parse_size(value: str) -> tuple[int, int]:
    """``"640"`` -> (640, 640); ``"480x640"`` -> (480, 640) as (height, width). InputError otherwise."""
    from vkt.errors import InputError

    parts = value.lower().replace("×", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or min(nums, default=0) < 32:
        raise InputError(f"--size must be N or HxW with each side >= 32 pixels, got {value!r}")
    return (nums[0], nums[-1])


def parse_langs(value: str) -> str | tuple[str, ...]:
    """``"auto"`` or comma-separated script names (vkt.training.synth_text.SCRIPTS); InputError naming the bad one."""
    from vkt.errors import InputError
    from vkt.training.synth_text import SCRIPTS

    if value.strip() == "auto":
        return "auto"
    names = [s.strip().lower() for s in value.split(",") if s.strip()]
    if not names:
        raise InputError(f"--langs: expected 'auto' or a comma-separated list of {sorted(SCRIPTS)}, got {value!r}")
    bad = [n for n in names if n not in SCRIPTS]
    if bad:
        raise InputError(f"--langs: unknown script {bad[0]!r}; expected 'auto' or a comma-separated list of "
                         f"{sorted(SCRIPTS)}")
    return tuple(dict.fromkeys(names))


def textdet(
    out: Path = typer.Argument(..., help="Folder to create: synth_NNNNNN.png + gt_synth_NNNNNN.txt + synth.json."),
    count: int = typer.Option(100, "--count", "-n", help="Number of images."),
    langs: str = typer.Option("auto", "--langs", help="Scripts to render: 'auto' (every one with an installed font) "
                              "or a comma-separated list of latin, cyrillic, greek, arabic, cjk, devanagari."),
    seed: int = typer.Option(0, "--seed", help="Image i is a pure function of (seed, i)."),
    size: str = typer.Option("640", "--size", help="Image size: N (square) or HxW."),
    words: str = typer.Option("2,6", "--words", help="MIN,MAX words per image."),
    text_height: str = typer.Option("14,48", "--text-height", help="MIN,MAX font size in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Render multilingual synthetic text onto photos and procedural backgrounds (rotation + perspective) and write
    it ICDAR-2015 style (quads + transcriptions), ready for `vkt train textdet --data` and `vkt eval --data`."""
    from vkt.errors import InputError
    from vkt.training.synth_text import SynthConfig, write_synth_dataset

    if count < 1:
        raise InputError(f"--count must be a positive number of images, got {count}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    cfg = SynthConfig(size=parse_size(size), words=_pair(words, "--words"), text_height=_pair(text_height, "--text-height"),
                      scripts=parse_langs(langs))
    if out.exists() and not overwrite:
        raise InputError(f"{str(out)!r} already exists; choose a new folder or pass --overwrite")
    from vkt.cli.outputs import replaced_folder

    replaced_folder(out, "OUT", force=overwrite, marker="synth.json", what="synthetic data set", force_flag="--overwrite")
    dest = write_synth_dataset(out, count, seed=seed, config=cfg, overwrite=overwrite)
    meta = json.loads((dest / "synth.json").read_text(encoding="utf-8"))
    typer.echo(f"{count} image(s) with labels -> {dest} (scripts: {', '.join(sorted(meta['fonts']))})")


def _pair(value: str, flag: str) -> tuple[int, int]:
    from vkt.errors import InputError

    try:
        lo, hi = (int(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"{flag} must be MIN,MAX (two integers), got {value!r}") from None
    return lo, hi


def register(app: typer.Typer) -> None:
    synth_app.command("textdet")(textdet)
    app.add_typer(synth_app, name="synth")
