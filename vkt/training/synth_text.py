"""Synthetic scene text for DB training: multilingual words rendered onto photos and procedural backgrounds.

Each image is a pure function of ``(seed, index)``: ``render_synth(i, seed)`` gives the same pixels and
labels whatever else is generated, so a folder and an on-the-fly stream from one seed agree.

Per word: a script (among those with an installed font), a font, a pixel size, a colour contrasting
with the background under it; the word is rendered by PIL (libraqm shapes Arabic and Devanagari),
then warped by a homography = rotation + random corner jitter (perspective) into a free spot of the
image. The label is the warped *ink* box (4 corners, clockwise from top-left), so a label lies on
the pixels that changed. Photos come from scikit-image's bundled ``skimage/data`` (those with real
text, ``page.png`` and ``text.png``, are left out: unlabelled text would teach false negatives).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.fsutil import replace_dir, temp_dir_beside
from vkt.log import get_logger, progress

log = get_logger(__name__)


@dataclass(frozen=True)
class Script:
    """A writing system: sample words, font files that cover it, the Debian package that installs one."""

    name: str
    words: tuple[str, ...]
    fonts: tuple[str, ...]     # font file names, first found wins the preference order
    package: str               # Debian package naming a font for the error message
    joiner: str = " "          # between words ("" for CJK)


SCRIPTS: dict[str, Script] = {s.name: s for s in (
    Script("latin", ("Hello", "world", "STOP", "Exit", "Open", "coffee", "Station", "42", "2026", "Sale", "menu",
                     "Straße", "café", "Route", "Nord", "PARKING", "taxi", "A12", "Hotel", "Bäckerei"),
           ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "NotoSans-Regular.ttf",
            "LiberationSans-Regular.ttf"), "fonts-dejavu-core"),
    Script("cyrillic", ("Привет", "мир", "ВЫХОД", "улица", "Москва", "кафе", "аптека", "Стоп", "метро", "ХЛЕБ"),
           ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf", "NotoSans-Regular.ttf"), "fonts-dejavu-core"),
    Script("greek", ("Αθήνα", "ΕΞΟΔΟΣ", "καφές", "οδός", "Σταθμός", "ΦΑΡΜΑΚΕΙΟ"),
           ("DejaVuSans.ttf", "DejaVuSerif.ttf", "NotoSans-Regular.ttf"), "fonts-dejavu-core"),
    Script("arabic", ("مرحبا", "شارع", "مخرج", "القاهرة", "مقهى", "صيدلية", "السلام"),
           ("NotoSansArabic-Regular.ttf", "NotoNaskhArabic-Regular.ttf", "DejaVuSans.ttf"), "fonts-noto-core"),
    Script("cjk", ("出口", "北京", "欢迎光临", "地铁站", "東京", "営業中", "서울", "안녕하세요", "中文", "注意安全"),
           ("NotoSansCJK-Regular.ttc", "wqy-microhei.ttc", "wqy-zenhei.ttc", "NotoSansCJKsc-Regular.otf"),
           "fonts-noto-cjk", joiner=""),
    Script("devanagari", ("नमस्ते", "भारत", "दिल्ली", "निकास", "स्टेशन", "बाज़ार"),
           ("NotoSansDevanagari-Regular.ttf", "Lohit-Devanagari.ttf", "gargi.ttf"), "fonts-noto-core"),
)}

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
# skimage/data photos without text (page.png, text.png hold unlabelled text)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "brick.png", "grass.png",
          "gravel.png", "camera.png", "moon.png", "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png",
          "color.png", "horse.png", "coins.png")


# ---- fonts ---------------------------------------------------------------------------------------
def font_dirs() -> list[Path]:
    """Folders searched for fonts: ``$VKT_FONT_DIRS`` (os.pathsep-separated) first, then the system ones."""
    extra = [p for p in os.environ.get("VKT_FONT_DIRS", "").split(os.pathsep) if p]
    return [Path(p).expanduser() for p in (*extra, *FONT_DIRS)]


@functools.lru_cache(maxsize=8)
def _font_index(dirs: tuple[str, ...]) -> dict[str, Path]:
    """File name -> path of every .ttf/.otf/.ttc under ``dirs`` (first occurrence wins)."""
    out: dict[str, Path] = {}
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            continue
        for f in sorted(root.rglob("*")):
            if f.suffix.lower() in (".ttf", ".otf", ".ttc") and f.is_file():
                out.setdefault(f.name, f)
    return out


def _covers(font_path: Path, text: str) -> bool:
    """True when every character of ``text`` has a glyph in the font (not the .notdef box)."""
    from PIL import ImageFont

    font = ImageFont.truetype(str(font_path), 24)
    missing = font.getmask(chr(0x10FFFD), mode="L")  # a private-use code point: always .notdef
    missing_bytes = bytes(missing), missing.size
    for ch in set(text) - {" "}:
        m = font.getmask(ch, mode="L")
        if m.size == (0, 0) or (bytes(m), m.size) == missing_bytes:
            return False
    return True


def fonts_for(script: str) -> tuple[Path, ...]:
    """Installed font files (in :func:`font_dirs`) covering every sample word of ``script`` (possibly none)."""
    if script not in SCRIPTS:
        raise InputError(f"unknown script {script!r}; expected one of {sorted(SCRIPTS)}")
    return _fonts_for(script, tuple(str(d) for d in font_dirs()))


@functools.lru_cache(maxsize=64)
def _fonts_for(script: str, dirs: tuple[str, ...]) -> tuple[Path, ...]:
    s = SCRIPTS[script]
    index = _font_index(dirs)
    return tuple(index[n] for n in s.fonts if n in index and _covers(index[n], "".join(s.words)))


def resolve_scripts(scripts: str | Sequence[str] = "auto") -> dict[str, tuple[Path, ...]]:
    """Script name -> its font files.

    ``"auto"``: every script with an installed font (the others are logged with the package to install).
    A list or comma-separated string: exactly those; a script without a font raises InputError naming
    the Debian package that provides one.
    """
    if isinstance(scripts, str):
        names = list(SCRIPTS) if scripts == "auto" else [s.strip() for s in scripts.split(",") if s.strip()]
        auto = scripts == "auto"
    else:
        names, auto = list(scripts), False
    if not names:
        raise InputError(f"no scripts given; expected 'auto' or some of {sorted(SCRIPTS)}")
    out, missing = {}, []
    for n in names:
        fonts = fonts_for(n)
        if fonts:
            out[n] = fonts
        else:
            missing.append(n)
    if missing and not auto:
        n = missing[0]
        raise InputError(f"no font for script {n!r} found in {[str(d) for d in font_dirs()]}: expected one of "
                         f"{list(SCRIPTS[n].fonts)}; install it with 'apt-get install {SCRIPTS[n].package}' "
                         "or point VKT_FONT_DIRS at a folder holding one")
    if missing:
        log.info("synthetic text: no font for %s (install %s); rendering %s", ", ".join(missing),
                 " ".join(sorted({SCRIPTS[n].package for n in missing})), ", ".join(out) or "nothing")
    if not out:
        raise InputError(f"no font found for any script in {[str(d) for d in font_dirs()]}; install "
                         "'apt-get install fonts-dejavu-core' (Latin, Cyrillic, Greek, Arabic) or set VKT_FONT_DIRS")
    return out


# ---- backgrounds ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's text-free photos as BGR uint8 (empty when scikit-image is not installed)."""
    import importlib.util

    from vkt.runtime.image import read_image

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        log.warning("scikit-image is not installed: synthetic text uses procedural backgrounds only "
                    "(pip install 'vkt[models]' for real photos)")
        return ()
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    return tuple(read_image(root / n) for n in PHOTOS if (root / n).is_file())


def background(rng: np.random.Generator, size: tuple[int, int], photo_p: float = 0.6) -> np.ndarray:
    """BGR uint8 ``[H, W, 3]``: a random crop of a photo (probability ``photo_p``) or a procedural
    background (two-colour gradient at a random angle, smooth blotches, or flat paper) with noise."""
    import cv2

    h, w = size
    photos = _photos()
    if photos and rng.random() < photo_p:
        src = photos[int(rng.integers(len(photos)))]
        sh, sw = src.shape[:2]
        scale = max(h / sh, w / sw) * rng.uniform(1.0, 2.0)
        ch, cw = min(sh, int(np.ceil(h / scale))), min(sw, int(np.ceil(w / scale)))
        y, x = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
        return cv2.resize(src[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_AREA)
    kind = int(rng.integers(3))
    c0, c1 = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    if kind == 0:    # linear gradient
        a = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.cos(a) * xx + np.sin(a) * yy)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        img = c0 + (c1 - c0) * t[..., None]
    elif kind == 1:  # smooth blotches: low-resolution noise, upsampled
        low = rng.uniform(0, 1, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 1)).astype(np.float32)
        t = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)[..., None]
        img = c0 + (c1 - c0) * t
    else:            # paper
        img = np.broadcast_to(c0, (h, w, 3)).copy()
    img = img + rng.normal(0, rng.uniform(0, 12), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---- rendering -----------------------------------------------------------------------------------
@dataclass
class SynthSample:
    """One synthetic image: ``image`` and its text-free ``background`` (BGR uint8 ``[H, W, 3]``),
    ``polygons`` (each float32 ``[4, 2]``, clockwise from top-left), ``texts`` and ``scripts`` per word."""

    image: np.ndarray
    background: np.ndarray
    polygons: list[np.ndarray]
    texts: list[str]
    scripts: list[str]
    name: str = ""


@dataclass(frozen=True)
class SynthConfig:
    """Generator knobs.

    size: image (height, width). words: (min, max) words per image. text_height: (min, max) font
    size in pixels. max_rotate: degrees either way. perspective: corner jitter as a fraction of
    the word's height. photo_p: share of photo backgrounds. scripts: "auto" or names (see SCRIPTS).
    """

    size: tuple[int, int] = (320, 320)
    words: tuple[int, int] = (2, 6)
    text_height: tuple[int, int] = (14, 48)
    max_rotate: float = 20.0
    perspective: float = 0.25
    photo_p: float = 0.6
    scripts: str | tuple[str, ...] = "auto"

    def __post_init__(self) -> None:
        h, w = self.size
        if min(h, w) < 32:
            raise InputError(f"synthetic image size must be at least 32 x 32, got {self.size}")
        if not 1 <= self.words[0] <= self.words[1]:
            raise InputError(f"words must be (min, max) with 1 <= min <= max, got {self.words}")
        if not 6 <= self.text_height[0] <= self.text_height[1]:
            raise InputError(f"text_height must be (min, max) pixels with 6 <= min <= max, got {self.text_height}")


def _render_word(text: str, font_path: Path, px: int) -> np.ndarray:
    """Alpha mask uint8 ``[h, w]`` of ``text`` rendered at ``px`` pixels, cropped to its ink."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), px)
    x0, y0, x1, y1 = font.getbbox(text)
    pad = px // 2
    canvas = Image.new("L", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - x0, pad - y0), text, font=font, fill=255)
    a = np.asarray(canvas)
    ys, xs = np.nonzero(a > 0)
    if ys.size == 0:
        return np.zeros((0, 0), np.uint8)
    return a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _word_text(rng: np.random.Generator, script: Script) -> str:
    n = int(rng.integers(1, 3))
    return script.joiner.join(script.words[int(rng.integers(len(script.words)))] for _ in range(n))


def render_synth(index: int, seed: int = 0, config: SynthConfig | None = None,
                 fonts: dict[str, tuple[Path, ...]] | None = None) -> SynthSample:
    """Render synthetic image ``index`` of the stream ``seed`` (deterministic in both).

    fonts: ``resolve_scripts(config.scripts)`` (computed when not given; pass it in loops).
    """
    import cv2

    cfg = config or SynthConfig()
    fonts = fonts or resolve_scripts(cfg.scripts)
    rng = np.random.default_rng([int(seed), int(index)])
    h, w = cfg.size
    bg = background(rng, (h, w), cfg.photo_p)
    img = bg.astype(np.float32)
    taken = np.zeros((h, w), np.uint8)       # where words (plus a margin) already are
    names = sorted(fonts)
    polys, texts, used = [], [], []
    for _ in range(int(rng.integers(cfg.words[0], cfg.words[1] + 1))):
        script = names[int(rng.integers(len(names)))]
        font = fonts[script][int(rng.integers(len(fonts[script])))]
        text = _word_text(rng, SCRIPTS[script])
        px = int(rng.integers(cfg.text_height[0], cfg.text_height[1] + 1))
        mask = _render_word(text, font, px)
        mh, mw = mask.shape
        if mh < 2 or mw < 2:
            continue
        if mw > 0.9 * w:  # shrink long words to fit
            f = 0.9 * w / mw
            mask = cv2.resize(mask, (max(2, int(mw * f)), max(2, int(mh * f))), interpolation=cv2.INTER_AREA)
            mh, mw = mask.shape
        src = np.array([[0, 0], [mw, 0], [mw, mh], [0, mh]], np.float32)  # ink box, clockwise from top-left
        for _try in range(8):
            a = np.deg2rad(rng.uniform(-cfg.max_rotate, cfg.max_rotate))
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
            centred = (src - [mw / 2, mh / 2]) @ rot.T
            jitter = rng.uniform(-cfg.perspective, cfg.perspective, (4, 2)).astype(np.float32) * mh
            quad = centred + jitter
            lo, hi = quad.min(0), quad.max(0)
            if hi[0] - lo[0] >= w - 2 or hi[1] - lo[1] >= h - 2:
                break
            cx = rng.uniform(1 - lo[0], w - 1 - hi[0])
            cy = rng.uniform(1 - lo[1], h - 1 - hi[1])
            dst = (quad + [cx, cy]).astype(np.float32)
            region = np.zeros((h, w), np.uint8)
            cv2.fillPoly(region, [np.round(dst).astype(np.int32)], 1)
            if (region & taken).any():
                continue
            H = cv2.getPerspectiveTransform(src, dst)
            alpha = cv2.warpPerspective(mask, H, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255.0
            under = bg[region > 0].reshape(-1, 3).mean(0)
            lum = float(under @ [0.114, 0.587, 0.299])
            # contrast: dark text on light ground and vice versa, random hue
            base = rng.uniform(0, 70, 3) if lum > 128 else rng.uniform(185, 255, 3)
            img = img * (1 - alpha) + base.astype(np.float32) * alpha
            grown = cv2.dilate(region, np.ones((5, 5), np.uint8))
            taken |= grown
            polys.append(dst)
            texts.append(text)
            used.append(script)
            break
    return SynthSample(np.clip(np.rint(img), 0, 255).astype(np.uint8), bg, polys, texts, used, f"synth_{index:06d}")


def format_label(polygons: Sequence[np.ndarray], texts: Sequence[str]) -> str:
    """ICDAR-2015 lines ``x1,y1,...,x4,y4,transcription`` (coordinates rounded to 0.1 px)."""
    lines = []
    for p, t in zip(polygons, texts):
        coords = ",".join(f"{v:.1f}".rstrip("0").rstrip(".") for v in np.asarray(p, np.float64).reshape(-1))
        lines.append(f"{coords},{t}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_synth_dataset(out: str | os.PathLike, n: int, seed: int = 0, config: SynthConfig | None = None,
                        overwrite: bool = False, show_progress: bool = True) -> Path:
    """Write ``n`` synthetic images as an ICDAR-style folder: ``synth_000000.png`` + ``gt_synth_000000.txt``
    per image and ``synth.json`` (seed, config, fonts). Built in a hidden temp folder, renamed into
    place when complete: a killed run leaves no half data set at ``out``. Returns ``out``."""
    import cv2

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer number of images, got {n!r}")
    cfg = config or SynthConfig()
    dest = Path(out)
    if dest.exists() and not overwrite:
        raise InputError(f"{str(dest)!r} already exists; choose a new folder or replace it (--overwrite)")
    fonts = resolve_scripts(cfg.scripts)
    tmp = temp_dir_beside(dest)  # mode as mkdir would give, not mkdtemp's 0700
    try:
        for i in progress(range(n), "rendering synthetic text", enabled=show_progress):
            s = render_synth(i, seed, cfg, fonts)
            ok, buf = cv2.imencode(".png", s.image)
            if not ok:  # pragma: no cover - PNG encoding of a uint8 image does not fail
                raise InputError(f"could not encode synthetic image {i}")
            (tmp / f"{s.name}.png").write_bytes(buf.tobytes())
            (tmp / f"gt_{s.name}.txt").write_text(format_label(s.polygons, s.texts), encoding="utf-8")
        meta = {"generator": "vkt.training.synth_text", "n": n, "seed": seed,
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()},
                "fonts": {k: [str(p) for p in v] for k, v in fonts.items()}}
        (tmp / "synth.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        for f in tmp.iterdir():  # flush the files before the folder appears
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


class SynthStream:
    """A sequence of ``n`` synthetic samples rendered on access (``stream[i] == render_synth(i, seed)``)."""

    def __init__(self, n: int, seed: int = 0, config: SynthConfig | None = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"--synth must be a positive number of images, got {n!r}")
        self.n, self.seed, self.config = n, seed, config or SynthConfig()
        self.fonts = resolve_scripts(self.config.scripts)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        from vkt.training.textdet_data import TextSample

        if not 0 <= i < self.n:
            raise IndexError(i)
        s = render_synth(i, self.seed, self.config, self.fonts)
        return TextSample(s.image, s.polygons, s.texts, s.name)


__all__ = ["SCRIPTS", "Script", "SynthConfig", "SynthSample", "SynthStream", "background", "font_dirs", "fonts_for",
           "format_label", "render_synth", "resolve_scripts", "write_synth_dataset"]
