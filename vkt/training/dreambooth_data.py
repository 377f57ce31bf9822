"""Dreambooth data: instance photos, class-prior images generated once by the base model (cached, resumable),
and the identifier check."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.log import get_logger, progress

log = get_logger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLASS_META = "class_images.json"

# Identifiers should be rare tokens (the paper's "sks"): a common word carries a prior the model must unlearn.
COMMON_WORDS = frozenset("""
a about after all also an and any are as at back be because been before best big black blue boy but by can car cat
child city come could day did do dog down each even face family find first for from get girl give go good great green
hand have he her here him his home house how i if in into is it its just know last life like little look make man
many me more most my new no not now of old on one only or other our out over people person photo picture red right
say see she so some take than that the their them then there these they thing think this time to two up us use very
want was way we well what when which white who will with woman work world would year you young your art style
""".split())


def check_identifier(identifier: str, vocab: dict[str, int] | None = None) -> str | None:
    """A warning text when ``identifier`` looks like a common word (its prior fights the subject), else None.

    ``vocab``: the CLIP tokenizer's token -> id map; CLIP ids follow BPE merge order (frequency), so
    a whole-word token with a low id in a full-size vocabulary (>= 40k) is a frequent word.
    """
    word = identifier.lower()
    why = None
    if word in COMMON_WORDS:
        why = "is a common English word"
    elif vocab is not None and len(vocab) >= 40_000 and vocab.get(word + "</w>", 1 << 30) < 10_000:
        why = f"is a frequent token in the tokenizer's vocabulary (id {vocab[word + '</w>']})"
    if why is None:
        return None
    return (f"identifier {identifier!r} {why}: the model already knows it, so the subject competes with that "
            "meaning; prefer a rare token such as 'sks'")


def list_images(folder: str | os.PathLike, what: str, allow: Sequence[str] = ()) -> list[Path]:
    """Image files in ``folder`` (sorted). Any other visible file raises InputError naming it;
    hidden files (``.name``) and names in ``allow`` are skipped."""
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"{what} folder {str(d)!r} does not exist (or is not a folder)")
    out = []
    for p in sorted(d.iterdir()):
        if p.name.startswith(".") or p.name in allow:
            continue
        if p.is_dir() or p.suffix.lower() not in IMAGE_EXTS:
            raise InputError(f"{what} folder {str(d)!r} holds {p.name!r}, which is not an image; expected only "
                             f"{'/'.join(IMAGE_EXTS)} files")
        out.append(p)
    return out


def read_image(path: Path, what: str) -> np.ndarray:
    """HxWx3 uint8 RGB; InputError naming the file when it cannot be decoded."""
    from vkt.runtime.image import read_image as _read

    try:
        img = _read(path)  # BGR, 3 channels (grayscale / RGBA handled)
    except InputError as e:
        raise InputError(f"{what} {str(path)!r} cannot be read as an image ({e})") from None
    return np.ascontiguousarray(img[:, :, ::-1])


def load_instance_images(folder: str | os.PathLike) -> list[np.ndarray]:
    """The subject's photos as RGB uint8 arrays; InputError when the folder is missing, empty or holds
    something that is not a readable image."""
    paths = list_images(folder, "instance image")
    if not paths:
        raise InputError(f"instance image folder {str(folder)!r} holds no images; expected 3-5 photos of the subject")
    return [read_image(p, "instance image") for p in paths]


def to_training_array(img: np.ndarray, resolution: int, center_crop: bool = True) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 [3, R, R] in [-1, 1]: shorter side resized to R (area), then a center crop
    (or a plain resize to RxR when ``center_crop`` is False)."""
    import cv2

    h, w = img.shape[:2]
    if center_crop:
        s = resolution / min(h, w)
        nh, nw = max(resolution, round(h * s)), max(resolution, round(w * s))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        y, x = (nh - resolution) // 2, (nw - resolution) // 2
        img = img[y:y + resolution, x:x + resolution]
    else:
        img = cv2.resize(img, (resolution, resolution), interpolation=cv2.INTER_AREA)
    return (img.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)  # [3, R, R]


def class_image_name(i: int) -> str:
    return f"class-{i:05d}.png"


def ensure_class_images(folder: str | os.PathLike, prompt: str, count: int, seed: int,
                        generate: Callable[[str, int], np.ndarray], settings: dict[str, Any] | None = None,
                        progress_bar: bool = True) -> list[Path]:
    """Make sure ``folder`` holds ``count`` class images for ``prompt``; generate only the missing ones.

    Image i is ``class-{i:05d}.png`` made by ``generate(prompt, seed + i)`` (HxWx3 uint8 RGB), written
    atomically, so a killed run resumes where it stopped and a finished one regenerates nothing.
    ``class_images.json`` records the prompt and settings; a folder made for another prompt or with
    other settings is refused rather than silently mixed. Images the user put there (any other image
    names) count towards ``count``; files that are not images are refused, naming them.
    Returns the image paths (sorted).
    """
    import cv2

    from vkt.fsutil import atomic_write_bytes, atomic_write_text

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    for tmp in d.glob(".class-*.png.tmp-*"):  # left by a killed atomic write
        tmp.unlink(missing_ok=True)
    meta = {"prompt": prompt, "seed": seed, **(settings or {})}
    meta_path = d / CLASS_META
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = None
        if old is not None and {k: old.get(k) for k in meta} != meta:
            diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
            raise InputError(f"class image folder {str(d)!r} was made with other settings {diff} (was, now); "
                             "point class_dir elsewhere or empty it")
    existing = list_images(d, "class image", allow=(CLASS_META,))
    for p in existing:
        read_image(p, "class image")  # refuse unreadable ones now, not mid-training
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    names = {p.name for p in existing}
    todo = [i for i in range(count) if class_image_name(i) not in names][: max(0, count - len(existing))]
    if todo:
        log.info("generating %d class images for %r (%d already in %s)", len(todo), prompt, len(existing), d)
    for i in progress(todo, "class images", enabled=progress_bar):
        img = generate(prompt, seed + i)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
        if not ok:
            raise InputError(f"could not encode class image {i}")
        atomic_write_bytes(d / class_image_name(i), buf.tobytes())
    return sorted(list_images(d, "class image", allow=(CLASS_META,)))[:count] if count else []


__all__ = ["check_identifier", "class_image_name", "ensure_class_images", "list_images", "load_instance_images",
           "read_image", "to_training_array"]
