"""Text-detection training data: ICDAR-2015-style folders, augmentation, DB targets at the model's output size.

Label files: ``gt_<image stem>.txt`` or ``<image stem>.txt`` beside the image, in the folder root,
``root/gt`` or ``root/labels``; one region per line ``x1,y1,x2,y2,...,xK,yK,transcription`` (K >= 3
points; ICDAR 2015 has K = 4; a transcription ``###`` marks a "don't care" region). The leading
numeric fields are the coordinates; with an odd count the last one is the transcription (``...,y4,42``).

DB's head upsamples back to the input size, so the targets are made at the (square) training size.
Augmentation (after DB / PaddleOCR's det recipe, kept simple): horizontal flip, random scale,
rotation, one affine warp, then a text-aware random crop to ``size x size``; regions cut by the
crop become "don't care" rather than half-labelled.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.log import get_logger

log = get_logger(__name__)

DONT_CARE = "###"
LABEL_DIRS = ("", "gt", "labels")  # looked in beside the image first, then under the data root


@dataclass
class TextSample:
    """One image and its text regions: image BGR uint8 ``[H, W, 3]``, polygons float32 ``[K, 2]`` (x, y)
    pixels, one transcription per polygon (``###`` = don't care)."""

    image: np.ndarray
    polygons: list[np.ndarray]
    texts: list[str]
    name: str = ""

    @property
    def ignore(self) -> list[bool]:
        return [t == DONT_CARE for t in self.texts]


# ---- labels --------------------------------------------------------------------------------------
def parse_label_line(line: str, where: str = "label") -> tuple[np.ndarray, str]:
    """``x1,y1,...,xK,yK,transcription`` -> (polygon float32 [K, 2], transcription). ``where`` prefixes errors."""
    parts = line.strip().lstrip("\ufeff").split(",")
    nums: list[float] = []
    for p in parts:
        try:
            nums.append(float(p))
        except ValueError:
            break
    if len(nums) % 2:      # an odd numeric tail: the transcription is a number
        nums.pop()
    if len(nums) < 6:
        raise InputError(f"{where}: expected 'x1,y1,x2,y2,x3,y3,x4,y4,transcription' (at least 3 points), "
                         f"got {line.strip()[:120]!r}")
    poly = np.asarray(nums, np.float64).reshape(-1, 2)
    if not np.isfinite(poly).all():
        raise InputError(f"{where}: coordinates must be finite numbers, got {nums}")
    return poly.astype(np.float32), ",".join(parts[len(nums):])


def read_label_file(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str]]:
    """All regions of one label file (UTF-8, BOM allowed, blank lines skipped); errors give the line number."""
    from vkt.fsutil import read_utf8_lines

    polys, texts = [], []
    for i, line in read_utf8_lines(path, "label file"):
        poly, t = parse_label_line(line, f"{Path(path).name} line {i}")
        polys.append(poly)
        texts.append(t)
    return polys, texts


def label_path_for(image: Path, root: Path) -> Path | None:
    """``gt_<stem>.txt`` or ``<stem>.txt`` beside ``image``, then in ``root``, ``root/gt``, ``root/labels``."""
    folders = [image.parent] + [root / d if d else root for d in LABEL_DIRS]
    for folder in dict.fromkeys(folders):
        for name in (f"gt_{image.stem}.txt", f"{image.stem}.txt"):
            if (folder / name).is_file():
                return folder / name
    return None


@dataclass
class IcdarFolder:
    """An ICDAR-style folder as a sequence of TextSamples (labels parsed up front, images read on access).

    ``IcdarFolder(root)`` scans ``root`` (or ``root/images``): non-image files other than label files
    are skipped with a warning; a missing folder, a folder without images, an image without a label
    file or a malformed label line raise InputError.
    """

    root: Path
    items: list[tuple[Path, list[np.ndarray], list[str]]] = field(default_factory=list)
    warn: Callable[[str], Any] | None = None

    def __post_init__(self) -> None:
        from vkt.runtime.image import IMAGE_SUFFIXES

        r = Path(self.root)
        self.root = r
        if not r.is_dir():
            raise InputError(f"data folder not found: {str(r)!r}; expected a folder of images with ICDAR "
                             "gt_<image>.txt (or <image>.txt) label files")
        img_dir = r / "images" if (r / "images").is_dir() else r
        images, skipped = [], []
        for f in sorted(img_dir.iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(f)
            elif f.suffix.lower() != ".txt" and f.name != "synth.json":
                skipped.append(f.name)
        if skipped:
            (self.warn or log.warning)(f"skipping {len(skipped)} non-image file(s) in {str(img_dir)!r}: "
                                       f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
        if not images:
            raise InputError(f"no images in {str(img_dir)!r}; expected ICDAR-style images with gt_<image>.txt labels")
        missing = []
        for im in images:
            lp = label_path_for(im, r)
            if lp is None:
                missing.append(im.name)
                continue
            polys, texts = read_label_file(lp)
            self.items.append((im, polys, texts))
        if missing:
            raise InputError(f"{len(missing)} image(s) in {str(img_dir)!r} have no label file "
                             f"(gt_<name>.txt or <name>.txt): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> TextSample:
        from vkt.runtime.image import read_image

        path, polys, texts = self.items[i]
        return TextSample(read_image(path), [p.copy() for p in polys], list(texts), path.stem)


# ---- augmentation + targets ----------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    """flip: probability of a horizontal flip. scale: (min, max) factor on top of fitting the longer
    side to ``size`` (log-uniform). rotate: max degrees either way. crop_tries: text-aware crop attempts."""

    flip: float = 0.5
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: float = 10.0
    crop_tries: int = 10


class TextDetTransform:
    """TextSample -> training arrays at ``size x size`` (the DB head's output size equals its input).

    Returns ``{"image": float32 [3, S, S] (the manifest's normalisation), "shrink_map", "shrink_mask",
    "threshold_map", "threshold_mask": float32 [S, S]}``. ``train=False``: no augmentation, the image
    is fitted into the square (longer side = S) and padded.

    ``__call__(sample, rng)`` takes the RNG, so a caller can make sample ``g`` of a run depend only
    on ``(seed, g)`` (resumable, worker-count independent).
    """

    def __init__(self, size: int = 320, train: bool = True, augment: AugmentConfig | None = None,
                 preprocess: dict[str, Any] | None = None, min_text_size: float = 8.0):
        from vkt.runtime.image import Preprocessor
        from vkt.tasks import TASKS

        if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
            raise InputError(f"training size must be a multiple of 32 and >= 32, got {size!r}")
        self.size, self.train = size, train
        self.aug = augment or AugmentConfig()
        self.pre = Preprocessor(preprocess or TASKS["textdet"].preprocess)
        self.min_text_size = min_text_size

    def geometry(self, h: int, w: int, rng: np.random.Generator | None) -> tuple[np.ndarray, tuple[int, int]]:
        """Affine ``[2, 3]`` (flip, scale, rotation) mapping source pixels onto a canvas, and the canvas (h, w)."""
        s = self.size / max(h, w)
        flip, angle = False, 0.0
        if self.train and rng is not None:
            lo, hi = self.aug.scale
            s *= float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            flip = bool(rng.random() < self.aug.flip)
            angle = float(rng.uniform(-self.aug.rotate, self.aug.rotate))
        a = np.deg2rad(angle)
        lin = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        if flip:
            lin = lin @ np.array([[-1.0, 0.0], [0.0, 1.0]])
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64) @ lin.T
        lo_xy = corners.min(0)
        hi_xy = corners.max(0)
        m = np.concatenate([lin, -lo_xy[:, None]], axis=1)
        size = (max(1, int(np.ceil(hi_xy[1] - lo_xy[1]))), max(1, int(np.ceil(hi_xy[0] - lo_xy[0]))))
        return m, size

    def crop(self, canvas: tuple[int, int], polys: Sequence[np.ndarray], ignore: Sequence[bool],
             rng: np.random.Generator | None) -> tuple[int, int]:
        """Top-left ``(y, x)`` of the ``size x size`` window: the try that cuts fewest cared-for regions
        (and holds most of them), among random offsets; (0, 0) when the canvas fits."""
        ch, cw = canvas
        S = self.size
        if ch <= S and cw <= S:
            return 0, 0
        if rng is None or not self.train:
            return max(0, (ch - S) // 2), max(0, (cw - S) // 2)
        boxes = [(p.min(0), p.max(0)) for p, ig in zip(polys, ignore) if not ig]
        best, best_key = (0, 0), None
        for _ in range(max(1, self.aug.crop_tries)):
            y, x = int(rng.integers(0, max(ch - S, 0) + 1)), int(rng.integers(0, max(cw - S, 0) + 1))
            cut = inside = 0
            for lo, hi in boxes:
                fully = lo[0] >= x and lo[1] >= y and hi[0] <= x + S and hi[1] <= y + S
                outside = hi[0] <= x or hi[1] <= y or lo[0] >= x + S or lo[1] >= y + S
                inside += fully
                cut += not (fully or outside)
            key = (cut, -inside)
            if best_key is None or key < best_key:
                best, best_key = (y, x), key
            if cut == 0 and inside > 0:
                break
        return best

    def __call__(self, sample: TextSample, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        import cv2

        from vkt.models.textdet.labels import make_db_labels
        from vkt.runtime.image import Resized

        img = sample.image
        h, w = img.shape[:2]
        S = self.size
        m, canvas = self.geometry(h, w, rng)
        polys = [np.asarray(p, np.float64) @ m[:, :2].T + m[:, 2] for p in sample.polygons]
        ignore = list(sample.ignore)
        y0, x0 = self.crop(canvas, polys, ignore, rng)
        m = m.copy()
        m[:, 2] -= (x0, y0)
        # One warp straight into the S x S window; outside the source is the mean grey (0 after normalising).
        warped = cv2.warpAffine(img, m, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(128, 128, 128))
        kept, flags = [], []
        for p, ig in zip(polys, ignore):
            p = p - (x0, y0)
            lo, hi = p.min(0), p.max(0)
            if hi[0] <= 0 or hi[1] <= 0 or lo[0] >= S or lo[1] >= S:
                continue                                    # outside the window
            cut = lo[0] < 0 or lo[1] < 0 or hi[0] > S or hi[1] > S
            kept.append(np.clip(p, -1, S))
            flags.append(ig or cut)                         # a cut region is "don't care"
        labels = make_db_labels(kept, (S, S), ignore=flags, min_text_size=self.min_text_size)
        x = np.empty((3, S, S), np.float32)
        self.pre.write(warped, Resized((S, S), (S, S)), x)  # already at the model's size: no resize
        return {"image": x, "shrink_map": labels.shrink_map, "shrink_mask": labels.shrink_mask,
                "threshold_map": labels.threshold_map, "threshold_mask": labels.threshold_mask}


class StepDataset:
    """Map-style dataset over *global sample numbers*: item ``g`` is ``source[perm_e[g % n]]`` augmented
    with ``default_rng([seed, g])``, where ``perm_e`` shuffles epoch ``e = g // n`` with ``(seed, e)``.

    So the batch of step ``t`` (samples ``t*B .. t*B+B-1``) is fixed by the seed alone: a resumed run
    sees exactly the samples the uninterrupted run would have.
    """

    def __init__(self, source: Sequence[TextSample], transform: TextDetTransform, seed: int = 0):
        if not len(source):
            raise InputError("the training set is empty")
        self.source, self.transform, self.seed = source, transform, int(seed)
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:  # only a hint: any non-negative global index is valid
        return len(self.source)

    def index(self, g: int) -> int:
        n = len(self.source)
        e = g // n
        if self._perm is None or self._perm[0] != e:
            self._perm = (e, np.random.default_rng([self.seed, 1 << 20, e]).permutation(n))
        return int(self._perm[1][g % n])

    def __getitem__(self, g: int) -> dict[str, np.ndarray]:
        return self.transform(self.source[self.index(int(g))], np.random.default_rng([self.seed, int(g)]))


class StepSampler:
    """Yields global sample numbers ``start .. stop - 1`` in order (see StepDataset)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = int(start), int(stop)

    def __iter__(self) -> Any:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


__all__ = ["AugmentConfig", "IcdarFolder", "StepDataset", "StepSampler", "TextDetTransform", "TextSample",
           "label_path_for", "parse_label_line", "read_label_file"]
