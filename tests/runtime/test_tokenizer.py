"""ClipTokenizer vs transformers' CLIPTokenizer: the same ids, on a tiny vocabulary and on CLIP's real one."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from vkt.errors import InputError, ModelError
from vkt.runtime.tokenizer import ClipTokenizer

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "A  PHOTO\tof\n\nTwo Cats,   sleeping!!  (4k, 8K)   it's they'll we've",
    "",
    "  leading and trailing spaces  ",
    "Ünïcödé café — naïve résumé 東京 🙂 <|endoftext|> mid-prompt",
    "numbers 1234567 and 3.14, emoji🙂🙂 ###!!!",
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode table, printable bytes first (CLIP's vocabulary order)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out = {b: chr(b) for b in keep}
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + len(out) - len(keep))
    return out


def write_clip_vocab(dest: Path, merges: list[str]) -> Path:
    """Write vocab.json + merges.txt the way OpenAI CLIP defines them: bytes, bytes + </w>, merges, specials."""
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return dest


# A tiny merge table: enough to make multi-symbol tokens ("ph", "pho", "photo</w>", "th", "the</w>", "cats</w>").
TINY_MERGES = ["p h", "ph o", "t o</w>", "pho to</w>", "t h", "th e</w>", "o f</w>", "c a", "ca t", "cat s</w>",
               "i n", "in g</w>", "4 k</w>"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_clip_vocab(tmp_path_factory.mktemp("tok") / "tokenizer", TINY_MERGES)


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    """CLIP's own BPE table, as open-clip-torch ships it (49,408 tokens: the SD 1.x / 2.x vocabulary)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open-clip-torch (ships CLIP's bpe_simple_vocab_16e6.txt.gz) is not installed")
    gz = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(gz).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # CLIP's simple_tokenizer.py takes exactly these
    return write_clip_vocab(tmp_path_factory.mktemp("tok") / "tokenizer", merges)


def _transformers(path: Path, **kw):
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(path), **kw)


def _want(hf, prompts, max_length=77):
    return np.array(hf(prompts, padding="max_length", max_length=max_length, truncation=True).input_ids, dtype=np.int64)


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_ids_equal_transformers(which, request):
    path = request.getfixturevalue(f"{which}_dir")
    ours = ClipTokenizer.from_dir(path)
    got = ours(PROMPTS)
    assert got.shape == (len(PROMPTS), 77) and got.dtype == np.int64
    np.testing.assert_array_equal(got, _want(_transformers(path), PROMPTS))
    assert got[2, 0] == ours.bos_id and got[2, 1] == ours.eos_id and (got[2, 2:] == ours.pad_id).all()


def test_real_vocab_known_ids(real_dir):
    ours = ClipTokenizer.from_dir(real_dir)
    # ids every SD user has seen: bos 49406, "a" 320, "photo" 1125, eos 49407
    assert ours.encode("a photo") == [49406, 320, 1125, 49407]
    assert ours.vocab_size == 49408


def test_sd2_pad_token_and_truncation(real_dir, caplog):
    """SD 2.x pads with '!' (id 0); prompts over 75 tokens lose their tail with a warning naming it."""
    long = " ".join(["astronaut"] * 80) + " tail-words"
    ours = ClipTokenizer(real_dir / "vocab.json", real_dir / "merges.txt", pad="!")
    hf = _transformers(real_dir, pad_token="!")
    with caplog.at_level(logging.WARNING, logger="vkt"):
        got = ours([long, "a cat!"])
    np.testing.assert_array_equal(got, _want(hf, [long, "a cat!"]))
    assert got[0, -1] == ours.eos_id and ours.pad_id == 0 and got[1, -1] == 0
    assert any("was dropped" in r.message and "tail" in r.message for r in caplog.records)


def test_max_length_from_config(tiny_dir, tmp_path):
    import shutil

    d = tmp_path / "tok"
    shutil.copytree(tiny_dir, d)
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    # older pipelines store AddedToken dicts in special_tokens_map.json
    (d / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!", "lstrip": False}}))
    ours = ClipTokenizer.from_dir(d)
    assert ours.max_length == 16 and ours.pad == "!"
    got = ours(["a photo of the cats"] * 2)
    np.testing.assert_array_equal(got, _want(_transformers(d), ["a photo of the cats"] * 2, max_length=16))


def test_errors(tiny_dir, tmp_path):
    ours = ClipTokenizer.from_dir(tiny_dir)
    with pytest.raises(InputError, match="at least one prompt"):
        ours([])
    with pytest.raises(InputError, match="must be a string"):
        ours(["ok", 3])
    with pytest.raises(ModelError, match="has no vocab.json"):
        ClipTokenizer.from_dir(tmp_path)
    with pytest.raises(ModelError, match="not in the vocabulary"):
        ClipTokenizer(tiny_dir / "vocab.json", tiny_dir / "merges.txt", pad="<pad>")
    with pytest.raises(InputError, match="max_length must be an integer >= 2"):
        ClipTokenizer(tiny_dir / "vocab.json", tiny_dir / "merges.txt", max_length=1)
    bad = tmp_path / "merges.txt"
    bad.write_text("#version: 0.2\na b c\n")
    with pytest.raises(ModelError, match="two symbols"):
        ClipTokenizer(tiny_dir / "vocab.json", bad)
