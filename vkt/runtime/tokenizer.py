"""CLIP's byte-level BPE tokenizer on the ``tokenizers`` library, padded/truncated to the text encoder's length.

It reads a diffusers pipeline's ``tokenizer/`` folder (``vocab.json``, ``merges.txt`` and, when
present, ``tokenizer_config.json`` / ``special_tokens_map.json`` for the special tokens and
``model_max_length``) and yields the same ids as transformers' ``CLIPTokenizer`` with
``padding="max_length", truncation=True`` — the call Stable Diffusion pipelines make:

    <|startoftext|> tokens... <|endoftext|> <pad> ... <pad>        (77 ids)

The text is NFC-normalised, whitespace runs collapse to one space and it is lower-cased; words
are split by CLIP's regex (contractions, letter runs, single digits, punctuation runs), mapped to
bytes as GPT-2 does, and BPE-merged with ``</w>`` marking a word's end (Radford et al. 2021, CLIP;
OpenAI's ``simple_tokenizer.py``; OpenAI's version also runs ftfy and html-unescaping, which
transformers' fast tokenizer — the one diffusers users get — does not, so neither do we).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError, ModelError
from vkt.log import get_logger

log = get_logger(__name__)

# CLIP's word splitter: special tokens, contractions, runs of letters, single digits, runs of other symbols.
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class ClipTokenizer:
    """Text -> ``[B, max_length]`` int ids for a CLIP text encoder.

    Args:
        vocab: path to ``vocab.json`` or the token -> id dict.
        merges: path to ``merges.txt`` (first line ``#version: ...`` allowed) or a list of "a b" merges.
        max_length: pad/truncate length (77 for every Stable Diffusion text encoder).
        bos, eos, pad, unk: special tokens (SD 1.x pads with ``<|endoftext|>``, SD 2.x with ``!``).
    """

    def __init__(self, vocab: str | os.PathLike | dict[str, int], merges: str | os.PathLike | Sequence[str],
                 max_length: int = 77, bos: str = "<|startoftext|>", eos: str = "<|endoftext|>",
                 pad: str = "<|endoftext|>", unk: str = "<|endoftext|>"):
        from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise InputError(f"tokenizer max_length must be an integer >= 2 (room for bos and eos), got {max_length!r}")
        vocab_d = _read_vocab(vocab)
        merge_pairs = _read_merges(merges)
        for role, tok in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
            if tok not in vocab_d:
                raise ModelError(f"tokenizer {role} token {tok!r} is not in the vocabulary ({len(vocab_d)} tokens)")
        try:
            model = BPE(vocab=vocab_d, merges=merge_pairs, continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token=unk)
        except Exception as e:  # tokenizers raises a bare Exception for merges naming unknown symbols
            raise ModelError(f"the vocabulary and merges do not form a BPE model: {e}") from None
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),  # keep the matches, drop spaces
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        # "</w>" ends a word: back to a byte-level space ("Ġ") before the byte decoding
        tok.decoder = decoders.Sequence([decoders.Replace("</w>", "Ġ"), decoders.ByteLevel()])
        # Special tokens typed in a prompt stay whole (transformers registers them the same way).
        tok.add_special_tokens(list(dict.fromkeys([bos, eos, pad, unk])))
        self._tok = tok
        self.max_length = max_length
        self.bos, self.eos, self.pad, self.unk = bos, eos, pad, unk
        self.bos_id, self.eos_id, self.pad_id = vocab_d[bos], vocab_d[eos], vocab_d[pad]
        self.vocab_size = len(vocab_d)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, max_length: int | None = None) -> ClipTokenizer:
        """Load a ``tokenizer/`` folder (diffusers layout); ``max_length`` defaults to its ``model_max_length``."""
        root = Path(path)
        vocab: Any = root / "vocab.json"
        merges: Any = root / "merges.txt"
        if not (vocab.is_file() and merges.is_file()):
            if not (root / "tokenizer.json").is_file():
                raise ModelError(f"tokenizer folder {str(root)!r} has no vocab.json + merges.txt (nor tokenizer.json); "
                                 "expected a CLIP tokenizer as in a diffusers pipeline's tokenizer/")
            # transformers 5 saves only tokenizer.json: take its BPE tables, build the pipeline as above
            vocab, merges = _tables_from_tokenizer_json(root / "tokenizer.json")
        cfg: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins where both say
            p = root / name
            if p.is_file():
                try:
                    cfg.update(json.loads(p.read_text(encoding="utf-8")))
                except json.JSONDecodeError as e:
                    raise ModelError(f"{str(p)!r} is not valid JSON ({e})") from None
        kwargs: dict[str, Any] = {}
        for key in ("bos", "eos", "pad", "unk"):
            v = cfg.get(f"{key}_token")
            if isinstance(v, dict):  # AddedToken serialised as {"content": ..., ...}
                v = v.get("content")
            if isinstance(v, str):
                kwargs[key] = v
        if max_length is None:
            m = cfg.get("model_max_length")
            # transformers writes a huge sentinel when the length is unknown; CLIP's is 77
            max_length = int(m) if isinstance(m, (int, float)) and 2 <= m <= 100_000 else 77
        return cls(vocab, merges, max_length=max_length, **kwargs)

    def encode(self, text: str) -> list[int]:
        """``[bos, tokens..., eos]`` without padding or truncation."""
        if not isinstance(text, str):
            raise InputError(f"a prompt must be a string, got {type(text).__name__}: {text!r}")
        return [self.bos_id, *self._tok.encode(text, add_special_tokens=False).ids, self.eos_id]

    def __call__(self, texts: str | Sequence[str], names: Sequence[str] | None = None) -> np.ndarray:
        """``[B, max_length]`` int64 ids; prompts longer than ``max_length - 2`` tokens are cut with a warning
        (naming the prompt as ``names[i]``, default "prompt i")."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch:
            raise InputError("expected at least one prompt, got an empty list")
        out = np.full((len(batch), self.max_length), self.pad_id, dtype=np.int64)
        for i, text in enumerate(batch):
            ids = self.encode(text)
            if len(ids) > self.max_length:
                dropped = self._tok.decode(ids[self.max_length - 1:-1]).strip()
                log.warning("%s is %d tokens; CLIP takes %d, so this part was dropped: %r",
                            names[i] if names else f"prompt {i}", len(ids) - 2, self.max_length - 2, dropped)
                ids = ids[: self.max_length - 1] + [self.eos_id]
            out[i, : len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)


def _tables_from_tokenizer_json(path: Path) -> tuple[dict[str, int], list[str]]:
    try:
        model = json.loads(path.read_text(encoding="utf-8"))["model"]
        vocab, merges = model["vocab"], model["merges"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ModelError(f"{str(path)!r} is not a BPE tokenizer.json ({type(e).__name__}: {e})") from None
    if model.get("type", "BPE") != "BPE" or not isinstance(vocab, dict):
        raise ModelError(f"{str(path)!r} holds a {model.get('type')!r} model; a CLIP BPE tokenizer is expected")
    # merges are "a b" strings (tokenizers < 0.20) or [a, b] pairs (newer)
    return vocab, [m if isinstance(m, str) else " ".join(m) for m in merges]


def _read_vocab(vocab: str | os.PathLike | dict[str, int]) -> dict[str, int]:
    if isinstance(vocab, dict):
        return dict(vocab)
    p = Path(vocab)
    if not p.is_file():
        raise ModelError(f"tokenizer vocabulary not found: {str(p)!r}")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{str(p)!r} is not a JSON vocabulary ({e})") from None
    if not isinstance(d, dict) or not all(isinstance(v, int) for v in d.values()):
        raise ModelError(f"{str(p)!r} must map tokens to integer ids")
    return d


def _read_merges(merges: str | os.PathLike | Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(merges, (str, os.PathLike)):
        p = Path(merges)
        if not p.is_file():
            raise ModelError(f"tokenizer merges file not found: {str(p)!r}")
        lines = p.read_text(encoding="utf-8").splitlines()
    else:
        lines = list(merges)
    pairs = []
    for n, line in enumerate(lines):
        if not line or (n == 0 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ModelError(f"merges line {n + 1} must hold two symbols separated by a space, got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs
