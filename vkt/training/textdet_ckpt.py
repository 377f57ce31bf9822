"""Text-detector training checkpoints: one self-describing file, written atomically, read with weights_only=True.

Content (``format`` "vkt.textdet.ckpt", ``version`` 1): ``step``; ``model`` (the transformers
detector's state dict) and ``threshold_head`` (training-only DB branch); ``optimizer``,
``scheduler``; ``rng`` (torch, numpy, python states as tensors / ints); ``train_config`` and
``model_config`` (JSON strings: the run's TextDetTrainConfig and the transformers config, so the
model is rebuilt without the run's code); ``history`` (JSON: per-step losses and validations).
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError, ModelError
from vkt.training.textdet_config import PRETRAINED, val_resize

FORMAT, VERSION = "vkt.textdet.ckpt", 1
CKPT_NAME = "ckpt.pt"


def rng_state() -> dict[str, Any]:
    """torch / numpy (legacy global) / python RNG states as weights_only-loadable values."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: str | os.PathLike, *, step: int, model: Any, threshold_head: Any, optimizer: Any = None,
                    scheduler: Any = None, train_config: dict[str, Any] | None = None,
                    history: list[dict[str, Any]] | None = None) -> Path:
    """Write a checkpoint atomically (temp file + fsync + rename): a kill never leaves a half file."""
    import torch

    from vkt.fsutil import atomic_write_bytes

    state = {
        "format": FORMAT, "version": VERSION, "step": int(step),
        "model": model.state_dict(), "threshold_head": threshold_head.state_dict() if threshold_head is not None else {},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "train_config": json.dumps(train_config or {}),
        "model_config": model.config.to_json_string(use_diff=False),
        "history": json.dumps(history or []),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or ``RUN/ckpt.pt`` for a run folder; InputError when there is none."""
    p = Path(path)
    if p.is_dir():
        f = p / CKPT_NAME
        if not f.is_file():
            raise InputError(f"no checkpoint in run folder {str(p)!r}: expected {str(f)!r} (written every "
                             "--ckpt-every steps); start a new run without --resume")
        return f
    if not p.is_file():
        raise InputError(f"checkpoint not found: {str(p)!r}; expected a {CKPT_NAME} file or a run folder holding one")
    return p


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint (``torch.load(weights_only=True)``; JSON fields decoded).

    Raises ModelError for a corrupt, truncated or foreign file, naming it.
    """
    import torch

    f = find_checkpoint(path)
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of every kind for corrupt bytes
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot read checkpoint {str(f)!r}: corrupt, truncated or not a torch file ({msg})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ModelError(f"{str(f)!r} is not a vkt text-detector checkpoint: expected format {FORMAT!r}, got {got!r}")
    if state.get("version") != VERSION:
        raise ModelError(f"{str(f)!r} has checkpoint version {state.get('version')!r}; this vkt reads version {VERSION}")
    for k in ("train_config", "history"):
        state[k] = json.loads(state[k])
    state["model_config"] = json.loads(state["model_config"])
    state["path"] = f
    return state


def model_from_checkpoint(state: dict[str, Any]) -> Any:
    """The transformers detector of a loaded checkpoint (eval mode; the threshold head is not part of it)."""
    from transformers import PPOCRV5MobileDetConfig, PPOCRV5MobileDetForObjectDetection

    cfg = dict(state["model_config"])
    for k in ("transformers_version", "architectures"):
        cfg.pop(k, None)
    try:
        model = PPOCRV5MobileDetForObjectDetection(PPOCRV5MobileDetConfig(**cfg))
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise ModelError(f"checkpoint {str(state.get('path'))!r}: weights do not fit the recorded model config "
                         f"({str(e).splitlines()[0][:200]})") from None
    return model.eval()


def load_textdet_source(source: str | os.PathLike) -> tuple[Any, dict[str, Any] | None, str]:
    """(detector, resize rule or None, description) for a pretrained name (``"ppocrv5-mobile"``) or a checkpoint /
    run folder: what ``vkt export textdet`` and ``vkt train textdet --export`` export. A checkpoint's resize rule is
    its run's validation rule, so its bundle is scored as the run was."""
    if str(source) in PRETRAINED:
        from vkt.models.textdet.loader import load_ppocrv5_mobile_det

        return load_ppocrv5_mobile_det(), None, f"pretrained {source}"
    state = load_checkpoint(source)
    size = int(state["train_config"].get("size", 0) or 0)
    return model_from_checkpoint(state), (val_resize(size) if size else None), f"{state['path']} (step {state['step']})"


__all__ = ["CKPT_NAME", "find_checkpoint", "load_checkpoint", "load_textdet_source", "model_from_checkpoint", "rng_state",
           "save_checkpoint", "set_rng_state"]
