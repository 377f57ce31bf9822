"""Tiny random Stable Diffusion pipelines (a few MB) for tests, examples and quick benches: no download."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out = {b: chr(b) for b in keep}
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + len(out) - len(keep))
    return out


def write_tiny_clip_vocab(dest: str | os.PathLike) -> Path:
    """A CLIP BPE vocabulary of 512 byte symbols + a few merges (``vocab.json``, ``merges.txt``) in ``dest``."""
    merges = ["p h", "ph o", "t o</w>", "pho to</w>", "t h", "th e</w>", "o f</w>", "c a", "ca t", "cat s</w>", "ca t</w>",
              "d o", "do g</w>", "s k", "sk s</w>"]
    return write_clip_vocab(dest, merges)


def write_real_clip_vocab(dest: str | os.PathLike) -> Path:
    """CLIP's own BPE table (49,408 tokens, SD 1.x/2.x) from open-clip-torch's ``bpe_simple_vocab_16e6.txt.gz``."""
    import gzip
    import importlib.util

    from vkt.errors import InputError

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the real CLIP vocabulary comes from open-clip-torch: pip install open-clip-torch")
    gz = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    return write_clip_vocab(dest, lines[1: 49152 - 256 - 2 + 1])  # the merges CLIP's simple_tokenizer.py takes


def write_clip_vocab(dest: str | os.PathLike, merges: list[str]) -> Path:
    """``vocab.json`` + ``merges.txt`` as OpenAI CLIP defines them: bytes, bytes + </w>, merges, specials."""
    dest = Path(dest)
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(vocab))}, ensure_ascii=False),
                                     encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return dest


def tiny_pipeline(tokenizer_dir: str | os.PathLike, size: int = 32, seed: int = 0) -> Any:
    """A random ``StableDiffusionPipeline``: CLIP text encoder (2 layers, width 16), UNet (8, 16 channels;
    pixel multiple 16), VAE (4 blocks of 8 channels: scale 8 as SD), SD 1.x's DDIM schedule.

    ``tokenizer_dir``: where the tiny vocabulary is written (the tokenizer is loaded from it).
    ``size``: the UNet's native image size in pixels.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = write_tiny_clip_vocab(tokenizer_dir)
    torch.manual_seed(seed)
    tok = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=size // 8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4, layers_per_block=1, sample_size=size)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                                      vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = ["tiny_pipeline", "write_clip_vocab", "write_real_clip_vocab", "write_tiny_clip_vocab"]
