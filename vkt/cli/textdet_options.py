"""The text-detection settings `vkt export onnx --task textdet` records and `vkt run` overrides: option values -> keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vkt.errors import InputError

# option flag of each setting key, for messages
FLAGS = {"thresh": "--thresh", "box_thresh": "--box-thresh", "unclip_ratio": "--unclip-ratio",
         "max_candidates": "--max-candidates", "limit_side_len": "--limit-side-len", "limit_type": "--limit-type",
         "max_side_len": "--max-side", "mean": "--mean", "std": "--std"}


def parse_triple(text: str, flag: str) -> list[float]:
    """'0.485,0.456,0.406' -> [0.485, 0.456, 0.406] (InputError naming the flag otherwise)."""
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise InputError(f"{flag} must be 3 comma-separated numbers (one per channel), e.g. 0.485,0.456,0.406; "
                         f"got {text!r}")
    return vals


def textdet_overrides(**options: Any) -> dict[str, Any]:
    """Setting keys (``vkt.runtime.textdet.textdet_settings``) of the options given (None = not given);
    ``mean`` / ``std`` are parsed from 'a,b,c'. Values are range-checked where the settings are applied."""
    out = {k: v for k, v in options.items() if v is not None}
    for k in ("mean", "std"):
        if isinstance(out.get(k), str):
            out[k] = parse_triple(out[k], FLAGS[k])
    return out


def flags_of(overrides: dict[str, Any]) -> str:
    """'--thresh, --max-side' for the keys of ``overrides`` (for "only with ..." messages)."""
    return ", ".join(FLAGS.get(k, f"--{k.replace('_', '-')}") for k in overrides)


def import_settings(config: Path | None, channel: int | None, options: dict) -> tuple[dict, dict, tuple[str, ...]]:
    """(preprocess, postprocess, notes) of `vkt export onnx --task textdet`: the task's defaults < the --config
    file (PaddleOCR's inference.yml) < the options (setting keys) < --channel. Raises InputError for a bad value."""
    from vkt.runtime.textdet import textdet_settings
    from vkt.tasks import TASKS

    settings: dict = {}
    notes: tuple[str, ...] = ()
    if config is not None:
        from vkt.export.paddle_config import read_inference_yml

        cfg = read_inference_yml(config)
        settings.update(cfg.settings)
        notes = (f"settings from {str(config)!r}" + (f" ({cfg.model_name})" if cfg.model_name else ""), *cfg.notes)
    settings.update(options)
    if channel is not None:
        settings["channel"] = channel
    t = TASKS["textdet"]
    pre, post = textdet_settings(t.preprocess, t.postprocess, settings, "option")
    return pre, post, notes


def print_settings(c: Any, pre: dict, post: dict, notes: tuple[str, ...]) -> None:
    """Print the recorded settings (and how the --config file's entries were mapped) on console ``c``."""
    r = pre.get("resize", {})
    c.print(f"  preprocess: {pre.get('color')}, resize {r.get('limit_type')} side {r.get('limit_side_len')} "
            f"(long side capped at {r.get('max_side_len')}), mean {pre.get('mean')}, std {pre.get('std')}", highlight=False)
    c.print("  postprocess: " + ", ".join(f"{k} {post[k]}" for k in ("thresh", "box_thresh", "unclip_ratio",
            "max_candidates", "use_dilation", "channel") if k in post), highlight=False)
    for n in notes:
        c.print(f"    {n}", highlight=False)


__all__ = ["FLAGS", "flags_of", "import_settings", "parse_triple", "print_settings", "textdet_overrides"]
