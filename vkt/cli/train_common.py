"""What the `vkt train ...` commands share: the `train` group, the --config / --resume / --out options, YAML reading.

Each family's module adds its command with ``add_train_command(app, "name", fn)``; the group is
found or made on first use, so the modules may register in any order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer


def train_group(app: typer.Typer) -> typer.Typer:
    """The app's ``train`` sub-app, made on first use, so each family's module can add a command to it."""
    group = next((g.typer_instance for g in app.registered_groups if g.name == "train" and g.typer_instance), None)
    if group is None:
        group = typer.Typer(help="Train or fine-tune models (PyTorch Lightning).", no_args_is_help=True)
        app.add_typer(group, name="train")
    return group


def add_train_command(app: typer.Typer, name: str, command: Callable[..., Any]) -> None:
    """Register ``command`` as ``vkt train <name>``."""
    train_group(app).command(name)(command)


def config_option(help: str, required: bool = False) -> Any:
    """The ``--config`` / ``-c`` YAML option (``required``: the command has no other way to be configured)."""
    return typer.Option(... if required else None, "--config", "-c", help=help)


def resume_option(help: str) -> Any:
    """The ``--resume`` flag: continue a run from its last checkpoint."""
    return typer.Option(False, "--resume", help=help)


def out_option(help: str) -> Any:
    """The required ``--out`` / ``-o`` run folder."""
    return typer.Option(..., "--out", "-o", help=help)


def read_yaml_mapping(path: Path, what: str = "training options") -> dict:
    """A YAML file holding a mapping; InputError naming the file when it is missing, not YAML or not a mapping."""
    from vkt.errors import InputError

    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with the train extras
        raise InputError("--config needs PyYAML: pip install pyyaml") from None
    if not path.is_file():
        raise InputError(f"config file not found: {str(path)!r}")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise InputError(f"{str(path)!r}: expected a mapping of {what}, got {type(d).__name__}")
    return d
