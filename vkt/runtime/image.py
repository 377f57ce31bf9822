"""Image I/O and manifest-driven pre-processing: read -> BGR uint8 -> resize -> normalise -> NCHW float32.

Everything a model's ``preprocess`` manifest section says (see vkt.tasks) is applied here, so a
C++ service that follows this file and the manifest reproduces vkt's input tensors exactly.

Conversions done on read (documented, never silent crashes):
    grayscale [H, W] or [H, W, 1]   -> replicated to 3 channels
    BGRA [H, W, 4]                  -> alpha-composited over white (transparent text stays readable)
    uint16 (16-bit PNG/TIFF)        -> ``x >> 8`` (the high byte), i.e. x * 255 / 65535 truncated
    float images                    -> assumed in [0, 1], clipped, * 255, rounded
    JPEG with an EXIF orientation   -> rotated/flipped upright (as OpenCV's imread does)
Anything else (empty or corrupt files, unreadable formats, 0-sized images) raises InputError.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vkt.errors import InputError

# What `vkt run` and the folder loaders accept; cv2.imdecode reads all of them.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pbm", ".pgm", ".ppm", ".pnm"})


# ---- reading ---------------------------------------------------------------------------------
def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as BGR uint8 ``[H, W, 3]`` (see the module docstring for conversions).

    Reads the bytes with Python and decodes with ``cv2.imdecode`` so that non-ASCII paths work and
    the error names the file. Raises InputError for a missing, empty, corrupt or unsupported file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: {str(p)!r}")
    if not p.is_file():
        raise InputError(f"expected an image file, got a {'folder' if p.is_dir() else 'special file'}: {str(p)!r}")
    data = np.fromfile(p, dtype=np.uint8)
    if data.size == 0:
        raise InputError(f"image file {str(p)!r} is empty (0 bytes)")
    # JPEG has no alpha and may carry an EXIF orientation: decode it as colour so OpenCV applies the
    # rotation (IMREAD_UNCHANGED ignores EXIF). Everything else keeps alpha and bit depth for to_bgr_uint8.
    flags = cv2.IMREAD_COLOR if data[:2].tobytes() == b"\xff\xd8" else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(without_iccp(data), flags)
    except cv2.error as e:  # e.g. beyond OpenCV's CV_IO_MAX_IMAGE_PIXELS limit
        raise InputError(f"cannot decode image {str(p)!r}: {str(e).strip().splitlines()[-1][:200]}") from None
    if img is None:
        raise InputError(f"cannot decode image {str(p)!r} ({data.size} bytes): corrupt, truncated or not an image "
                         f"(expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
    return to_bgr_uint8(img, where=str(p))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def without_iccp(data: np.ndarray) -> np.ndarray:
    """``data`` (encoded image bytes, uint8) with a PNG's iCCP chunks (ICC colour profile) removed; else unchanged.

    OpenCV decodes without applying colour profiles, so the pixels are the same; but its libpng prints
    "libpng warning: iCCP: ..." on stderr for profiles it dislikes (scikit-image's page.png has one), which
    nothing else silences. Chunks are ``length (4 bytes, big-endian) | type (4) | data | crc (4)``; iCCP comes
    before the first IDAT, so the walk stops there and the rest is kept as is (a truncated file stays truncated).
    """
    raw = data.tobytes()
    head = raw.find(b"IDAT")
    if not raw.startswith(PNG_SIGNATURE) or raw.find(b"iCCP", 0, head if head > 0 else len(raw)) < 0:
        return data
    parts, i = [raw[:8]], 8
    while i + 8 <= len(raw) and raw[i + 4:i + 8] != b"IDAT":
        end = i + 12 + int.from_bytes(raw[i:i + 4], "big")
        if raw[i + 4:i + 8] != b"iCCP":
            parts.append(raw[i:end])
        i = end
    parts.append(raw[i:])
    return np.frombuffer(b"".join(parts), np.uint8)


def to_bgr_uint8(img: Any, where: str = "image") -> np.ndarray:
    """Validate an in-memory image and convert it to contiguous BGR uint8 ``[H, W, 3]``.

    Accepts ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` (taken as BGR, cv2's order) and ``[H, W, 4]`` (BGRA),
    with dtype uint8, uint16 or float (values in [0, 1]). ``where`` names the image in errors.
    """
    if not isinstance(img, np.ndarray):
        raise InputError(f"{where}: expected a numpy array (or an image path), got {type(img).__name__}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise InputError(f"{where}: expected an image of shape [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise InputError(f"{where}: image has zero size {img.shape}; expected at least 1x1 pixels")
    if img.dtype == np.uint8:
        pass
    elif img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)  # 16-bit: keep the high byte (exact 65535 -> 255)
    elif img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise InputError(f"{where}: float image holds NaN or infinite values")
        img = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    else:
        raise InputError(f"{where}: expected dtype uint8, uint16 or float in [0, 1], got {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        # Composite over white: documents with transparent backgrounds hold dark text.
        alpha = img[:, :, 3:4].astype(np.float32) * (1.0 / 255.0)
        bgr = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.rint(bgr).astype(np.uint8)
    return np.ascontiguousarray(img)


def load_image(item: Any, index: int = 0) -> np.ndarray:
    """A path (str/PathLike) is read with :func:`read_image`; an array is checked with :func:`to_bgr_uint8`."""
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)
    return to_bgr_uint8(item, where=f"image {index}")


def list_images(paths: Sequence[str | os.PathLike], warn: Any = None) -> list[Path]:
    """Expand files and folders (not recursive) into image files, sorted within each folder.

    Files in a folder whose suffix is not in ``IMAGE_SUFFIXES`` are skipped, each reported through
    ``warn(message)`` if given. A folder holding no image, a missing path, or no paths at all raise
    InputError. Files named explicitly are kept whatever their suffix (decoding decides).
    """
    if not paths:
        raise InputError("no input images given; expected image files or folders")
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found, skipped = [], []
            for f in sorted(p.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(f)
                elif f.is_file() and not f.name.startswith("."):
                    skipped.append(f.name)
            if skipped and warn is not None:
                warn(f"skipping {len(skipped)} non-image file(s) in {str(p)!r}: {', '.join(skipped[:5])}"
                     + (" ..." if len(skipped) > 5 else ""))
            if not found:
                raise InputError(f"folder {str(p)!r} holds no images; expected files ending in "
                                 f"{', '.join(sorted(IMAGE_SUFFIXES))}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"input not found: {str(p)!r}; expected an image file or a folder of images")
    return out


# ---- resize rules --------------------------------------------------------------------------
def _round_half_even(x: float) -> int:
    # Python's round() is round-half-to-even; PP-OCR (and rapidocr) size images with it, and so
    # must a C++ port (std::nearbyint under the default rounding mode) to get the same sizes.
    return int(round(x))


def resized_size(height: int, width: int, resize: Mapping[str, Any], max_side: int | None = None) -> tuple[int, int]:
    """Target ``(height, width)`` of the resize rule ``resize`` (a manifest ``preprocess.resize`` dict).

    mode "limit_side" (PP-OCR; defaults from vkt.tasks):
        1. ratio = limit_side_len / min(h, w) if limit_type == "min" and min(h, w) < limit_side_len,
           limit_side_len / max(h, w) if limit_type == "max" and max(h, w) > limit_side_len, else 1;
        2. h' = int(h * ratio), w' = int(w * ratio) (truncation, as PP-OCR);
        3. cap: if max(h', w') > cap, with cap = min(max_side_len, max_side), scale both by
           cap / max(h', w') (truncating again) — this is the documented resize for huge or very
           elongated images, and for images beyond the model's shape profile;
        4. each side -> round_half_even(side / round_to) * round_to, at least round_to and, if the
           cap applies, at most floor(cap / round_to) * round_to.
        (rapidocr's TextDetector, given limit_type "max", swaps limit_side_len for 960/1500/2000 by
        image size and applies no cap; vkt uses limit_side_len as given.)
    mode "shortest_edge" (DETR): the short side becomes ``shortest_edge`` unless the long side would
        exceed ``longest_edge``, then the long side becomes ``longest_edge`` (sizes truncated) — exactly
        transformers' DetrImageProcessor rule (the peer), including its rounding.
    mode "none": keep the size. Raises InputError for an unknown mode or bad values.
    """
    mode = resize.get("mode", "none")
    if mode == "none":
        return height, width
    if mode == "limit_side":
        limit = _positive_int(resize, "limit_side_len")
        round_to = _positive_int(resize, "round_to", 32)
        limit_type = resize.get("limit_type", "min")
        if limit_type == "min":
            ratio = limit / min(height, width) if min(height, width) < limit else 1.0
        elif limit_type == "max":
            ratio = limit / max(height, width) if max(height, width) > limit else 1.0
        else:
            raise InputError(f"resize.limit_type must be 'min' or 'max', got {limit_type!r}")
        h, w = int(height * ratio), int(width * ratio)
        cap = limit_side_cap(resize, max_side)
        if cap is not None:
            if cap < round_to:
                raise InputError(f"max side {cap} is smaller than round_to {round_to}")
            if max(h, w) > cap:
                s = cap / max(h, w)
                h, w = int(h * s), int(w * s)
        h = max(_round_half_even(h / round_to) * round_to, round_to)
        w = max(_round_half_even(w / round_to) * round_to, round_to)
        if cap is not None:
            top = cap // round_to * round_to
            h, w = min(h, top), min(w, top)
        return h, w
    if mode == "shortest_edge":
        # transformers' get_size_with_aspect_ratio (DetrImageProcessor), step for step: when the
        # long side limits, the short side is round(raw) but the long side is int(raw * long / short)
        # from the unrounded raw, so 640 x 1280 -> 666 x 1333 (not 1332).
        short = want = _positive_int(resize, "shortest_edge")
        long_ = _positive_int(resize, "longest_edge", 10**9)
        lo, hi = float(min(height, width)), float(max(height, width))
        raw = None
        if hi / lo * short > long_:
            raw = long_ * lo / hi
            short = int(round(raw))
        if (height <= width and height == short) or (width <= height and width == short):
            return height, width
        scale = raw if raw is not None else short
        out = (int(scale * height / width), short) if width < height else (short, int(scale * width / height))
        if min(out) < 1:
            raise InputError(f"image of {height}x{width} pixels is too elongated for resize shortest_edge {want} / "
                             f"longest_edge {long_}: it would become {out[0]}x{out[1]}; expected an aspect ratio "
                             f"below {2 * long_}:1")
        return out
    raise InputError(f"unknown resize mode {mode!r}; expected 'limit_side', 'shortest_edge' or 'none'")


def limit_side_cap(resize: Mapping[str, Any], max_side: int | None = None) -> int | None:
    """The long-side cap of a "limit_side" rule: min(resize ``max_side_len``, ``max_side``), or None if neither is set."""
    caps = [_positive_int(resize, "max_side_len")] if resize.get("max_side_len") is not None else []
    if max_side is not None:
        caps.append(int(max_side))
    return min(caps) if caps else None


def _positive_int(d: Mapping[str, Any], key: str, default: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"resize.{key} must be a positive integer, got {v!r}")
    return int(v)


def _three_numbers(v: Any, key: str) -> np.ndarray:
    """[3] float64 of a mean/std setting, or InputError naming it."""
    ok = isinstance(v, (list, tuple, np.ndarray)) and len(v) == 3 and all(
        isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and np.isfinite(x) for x in v)
    if not ok:
        raise InputError(f"preprocess.{key} must be 3 numbers (one per channel), got {v!r}")
    return np.asarray(v, dtype=np.float64)


# ---- normalisation -------------------------------------------------------------------------
@dataclass(frozen=True)
class Resized:
    """How one source image maps to its network input.

    ``src_size`` and ``size`` are ``(height, width)``; a point ``(x, y)`` on the network input (or on
    an output map of the same size) is ``(x * src_w / w, y * src_h / h)`` on the source image.
    """

    src_size: tuple[int, int]
    size: tuple[int, int]
    # Set when the long-side cap made ``size`` smaller than the resize rule alone would: the cap in pixels
    # and the size without it (``Preprocessor.cap_source`` says where the cap comes from).
    capped_at: int | None = None
    uncapped_size: tuple[int, int] | None = None

    @property
    def ratio_h(self) -> float:
        """resized / source height."""
        return self.size[0] / self.src_size[0]

    @property
    def ratio_w(self) -> float:
        return self.size[1] / self.src_size[1]


class Preprocessor:
    """A manifest ``preprocess`` dict made callable: BGR uint8 images -> NCHW float32 batches.

    Args:
        cfg: ``{"color": "BGR"|"RGB", "layout": "NCHW", "resize": {...}, "scale": float,
            "mean": [3 floats], "std": [3 floats]}`` (vkt.tasks documents the keys). The output is
            ``(x * scale - mean) / std`` per channel, computed as ``x * a + b`` in float32 with
            ``a = scale / std``, ``b = -mean / std`` (one pass per channel, no float64 temporaries).
        max_side: extra cap on the resized sides (the model's shape profile maximum), or None.
    """

    def __init__(self, cfg: Mapping[str, Any], max_side: int | None = None):
        self.cfg = dict(cfg)
        self.resize = dict(self.cfg.get("resize", {"mode": "none"}))
        self.max_side = max_side
        color = self.cfg.get("color", "BGR")
        if color not in ("BGR", "RGB"):
            raise InputError(f"preprocess.color must be 'BGR' or 'RGB', got {color!r}")
        layout = self.cfg.get("layout", "NCHW")
        if layout != "NCHW":
            raise InputError(f"preprocess.layout must be 'NCHW', got {layout!r}")
        scale = self.cfg.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
            raise InputError(f"preprocess.scale must be a positive number (1/255 for uint8 pixels), got {scale!r}")
        mean = _three_numbers(self.cfg.get("mean", [0.0, 0.0, 0.0]), "mean")
        std = _three_numbers(self.cfg.get("std", [1.0, 1.0, 1.0]), "std")
        if np.any(std <= 0):
            raise InputError(f"preprocess.std must be 3 positive numbers, got {std.tolist()}")
        self.a = (scale / std).astype(np.float32)       # [3], in model channel order
        self.b = (-mean / std).astype(np.float32)       # [3]
        # Source channel for each model channel: images are BGR in memory.
        self.src_channel = (0, 1, 2) if color == "BGR" else (2, 1, 0)
        resized_size(64, 64, self.resize, self.max_side)  # validate the rule now, not on the first image
        self.cap = limit_side_cap(self.resize, max_side) if self.resize.get("mode") == "limit_side" else None
        # Which setting the cap comes from, for the "resized" note of a capped image.
        own = self.resize.get("max_side_len")
        sources = [s for s, c in (("max_side_len", own), ("the model profile's max height/width", max_side))
                   if c is not None and c == self.cap]
        self.cap_source = " and ".join(sources)

    def plan(self, img: np.ndarray) -> Resized:
        h, w = img.shape[:2]
        size = resized_size(h, w, self.resize, self.max_side)
        if self.cap is not None:
            free = resized_size(h, w, {k: v for k, v in self.resize.items() if k != "max_side_len"})
            if free != size:
                return Resized((h, w), size, self.cap, free)
        return Resized((h, w), size)

    def write(self, img: np.ndarray, plan: Resized, out: np.ndarray) -> None:
        """Resize ``img`` (BGR uint8 [H, W, 3]) and write it normalised into ``out`` ([3, h', w'] float32,
        the top-left of a possibly larger slot; the caller fills any padding)."""
        h, w = plan.size
        if (h, w) != plan.src_size:
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        for c, src in enumerate(self.src_channel):
            dst = out[c, :h, :w]
            np.multiply(img[:, :, src], self.a[c], out=dst, dtype=np.float32)
            dst += self.b[c]

    def pad_value(self) -> np.ndarray:
        """Per-channel value of a zero pixel after normalisation ([3] float32) — what padding holds."""
        return self.b.copy()

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Resized]]:
        """Pre-process images that resize to one shape into one ``[N, 3, h, w]`` float32 batch.

        Raises InputError if they resize to different shapes (bucket them first, or pad).
        """
        plans = [self.plan(im) for im in images]
        sizes = {p.size for p in plans}
        if len(sizes) != 1:
            raise InputError(f"images resize to different shapes {sorted(sizes)}; expected one shape per batch")
        h, w = plans[0].size
        batch = np.empty((len(images), 3, h, w), dtype=np.float32)
        for i, (im, p) in enumerate(zip(images, plans)):
            self.write(im, p, batch[i])
        return batch, plans
