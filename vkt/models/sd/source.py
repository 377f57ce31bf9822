"""Where an SD export starts: a diffusers pipeline folder (checked file by file) or an in-memory pipeline, as parts."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vkt.errors import InputError, ModelError
from vkt.log import get_logger, timed

log = get_logger(__name__)


@dataclass
class SDParts:
    """An SD pipeline's torch components, its tokenizer folder and scheduler config; ``cleanup``: temp folders."""

    text_encoder: Any
    unet: Any
    vae: Any
    tokenizer_dir: Path
    scheduler_config: dict[str, Any]
    cleanup: list[Path] = field(default_factory=list)


def load_parts(source: Any) -> SDParts:
    """Components from a local diffusers folder or an in-memory pipeline (anything with the five attributes)."""
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise ModelError(f"{str(root)!r} is not a folder; expected a diffusers Stable Diffusion pipeline folder "
                             "(text_encoder/ unet/ vae/ tokenizer/ scheduler/)")
        need = ["text_encoder", "unet", "vae", "tokenizer", "scheduler/scheduler_config.json"]
        missing = [n for n in need if not (root / n).exists()]
        if missing:
            raise ModelError(f"{str(root)!r} is not a diffusers Stable Diffusion folder: it lacks {missing}")
        missing = missing_files(root)
        if missing:
            raise ModelError(f"diffusers folder {str(root)!r} is incomplete: missing {', '.join(missing)}")
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        with timed(f"loading {root.name}", log):
            te = CLIPTextModel.from_pretrained(str(root / "text_encoder"))
            unet = UNet2DConditionModel.from_pretrained(str(root / "unet"))
            vae = AutoencoderKL.from_pretrained(str(root / "vae"))
        cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        return SDParts(te, unet, vae, root / "tokenizer", cfg)
    missing = [a for a in ("text_encoder", "unet", "vae", "tokenizer", "scheduler") if getattr(source, a, None) is None]
    if missing:
        raise InputError(f"expected a diffusers folder path or a StableDiffusionPipeline, got a {type(source).__name__} "
                         f"without {missing}")
    tmp = Path(tempfile.mkdtemp(prefix="vkt-sd-tok-"))
    source.tokenizer.save_pretrained(str(tmp))  # writes vocab.json + merges.txt + configs
    cfg = {"_class_name": type(source.scheduler).__name__, **dict(source.scheduler.config)}
    return SDParts(source.text_encoder, source.unet, source.vae, tmp, cfg, cleanup=[tmp])


WEIGHTS = {"text_encoder": ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),
            "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                     "diffusion_pytorch_model.safetensors.index.json"),
            "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")}


def missing_files(root: Path) -> list[str]:
    """Files a pipeline folder needs but lacks, named relative to it (weights: the safetensors name)."""
    missing = []
    for comp, weights in WEIGHTS.items():
        if not (root / comp / "config.json").is_file():
            missing.append(f"{comp}/config.json")
        if not any((root / comp / w).is_file() for w in weights):
            missing.append(f"{comp}/{weights[0]} (or {', '.join(weights[1:])})")
    tok = root / "tokenizer"
    if not ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()) and not (tok / "tokenizer.json").is_file():
        missing.append("tokenizer/vocab.json + tokenizer/merges.txt (or tokenizer/tokenizer.json)")
    return missing


def tokenizer_files(d: Path) -> dict[str, Any]:
    """The tokenizer files to copy into the bundle, and the length the tokenizer pads to."""
    from vkt.runtime.tokenizer import ClipTokenizer

    tok = ClipTokenizer.from_dir(d)  # raises ModelError when the folder holds no CLIP BPE tokenizer
    names = [n for n in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
             if (d / n).is_file()]
    return {"files": names, "max_length": tok.max_length}


__all__ = ["SDParts", "WEIGHTS", "load_parts", "missing_files", "tokenizer_files"]
