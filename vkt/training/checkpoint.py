"""Full-state training checkpoints, written atomically: weights (safetensors), optimizer, LR scheduler, step, RNG states.

Layout under ``<run>/checkpoints/``::

    step-000100/weights.safetensors   trainable tensors only (frozen ones come from the base model)
    step-000100/state.pt              optimizer + scheduler state dicts, step, RNG states (plain types
                                      and tensors: loadable with torch.load(weights_only=True))
    last.json                         {"step": 100, "dir": "step-000100"}: written last, atomically

A checkpoint folder is built under a hidden temp name and renamed into place, then ``last.json`` is
replaced; a process killed at any point leaves either the previous checkpoint or the new one as
"last", never a half-written one. Hidden ``.step-*`` temp folders are removed on the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkt.errors import ModelError
from vkt.fsutil import _fsync_dir, atomic_write_text

LAST = "last.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``weights`` {name: tensor}, ``state`` (optimizer, scheduler, step, rng, extra)."""

    step: int
    path: Path
    weights: dict[str, Any]
    state: dict[str, Any]


def rng_states() -> dict[str, Any]:
    """Python, numpy (global) and torch (CPU, and CUDA when present) RNG states, as plain types/tensors."""
    import numpy as np
    import torch

    np_state = np.random.get_state(legacy=False)
    out: dict[str, Any] = {
        "python": _listify(random.getstate()),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].astype("int64")),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(s: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    import numpy as np
    import torch

    v, state, gauss = s["python"]
    random.setstate((v, tuple(state), gauss))
    n = s["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "state": {"key": n["key"].numpy().astype(np.uint32),
                                                                       "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(run_dir: str | os.PathLike, step: int, weights: dict[str, Any], state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``<run_dir>/checkpoints``; keep the newest ``keep``. Returns its folder."""
    import torch
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:06d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
    torch.save({**state, "step": int(step)}, tmp / "state.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = root / name
    if final.exists():  # the same step saved again (a resumed run reaching it): replace
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / LAST, json.dumps({"step": int(step), "dir": name}) + "\n")
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder ``last.json`` points to, or None when the run has no checkpoint yet."""
    root = Path(run_dir) / "checkpoints"
    p = root / LAST
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        folder = root / d["dir"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelError(f"{str(p)!r} is corrupt ({e}); remove it to start over") from None
    if not folder.is_dir():
        raise ModelError(f"{str(p)!r} names {d['dir']!r}, which is missing")
    return folder


def load_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint folder (safetensors weights; state through torch.load(weights_only=True))."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    for f in ("weights.safetensors", "state.pt"):
        if not (folder / f).is_file():
            raise ModelError(f"checkpoint {str(folder)!r} lacks {f}")
    try:
        weights = load_file(str(folder / "weights.safetensors"))
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / unpickler errors on damaged files
        raise ModelError(f"checkpoint {str(folder)!r} cannot be read ({type(e).__name__}: {e})") from None
    return Checkpoint(int(state["step"]), folder, weights, state)


def atomic_checkpoint_io() -> Any:
    """A Lightning ``CheckpointIO`` (``Trainer(plugins=[...])``) that writes each ``.ckpt`` beside its final
    path and renames it (:func:`vkt.fsutil.atomic_write_bytes`), so it follows the umask. Lightning's own
    stages the file with mkstemp in the system temp folder: mode 0600, and a plain copy, not a rename,
    when that folder is on another filesystem."""
    import io

    import torch
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from vkt.fsutil import atomic_write_bytes

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            if storage_options is not None:
                raise TypeError("storage_options is not supported by vkt's checkpoint writer")
            buf = io.BytesIO()
            torch.save(checkpoint, buf)
            atomic_write_bytes(path, buf.getvalue())

    return AtomicCheckpointIO()


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, tuple) else x


__all__ = ["Checkpoint", "atomic_checkpoint_io", "last_checkpoint", "load_checkpoint", "rng_states", "save_checkpoint", "set_rng_states"]
