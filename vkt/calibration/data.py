"""Calibration data: any iterable of ``{input name: ndarray}``; a reader over an image folder; profile shapes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import CalibrationError, VktError
from vkt.log import get_logger, progress
from vkt.specs import ExportSpec

log = get_logger(__name__)

Feed = dict[str, np.ndarray]
Preprocess = Callable[[Path], Mapping[str, np.ndarray]]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
# Below this many images the ranges follow the few images seen rather than the deployment data;
# TensorRT's and onnxruntime's guides use a few hundred, 32 is the floor before we warn.
MIN_IMAGES = 32


def folder_files(root: Path) -> list[Path]:
    """The files of a folder, sorted, not recursive, hidden ones (``.name``) skipped."""
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def is_image_file(path: Path) -> bool:
    """Whether ``path``'s suffix is one the calibration and held-out readers take (``IMAGE_EXTENSIONS``)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def calibration_images(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """The image files of a calibration folder (sorted, not recursive, hidden files skipped), at most ``limit``.

    Cheap (no image is decoded), so commands call it before any long work. Raises CalibrationError when
    the folder is missing, is a file, holds no files or no images, or ``limit`` is not a positive integer.
    """
    root = Path(folder)
    if not root.exists():
        raise CalibrationError(f"calibration folder not found: {str(root)!r}")
    if not root.is_dir():
        raise CalibrationError(f"calibration data must be a folder of images, got a file: {str(root)!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise CalibrationError(f"the number of calibration images must be a positive integer, got {limit!r}")
    entries = folder_files(root)
    if not entries:
        raise CalibrationError(f"calibration folder {str(root)!r} is empty; expected images "
                               f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
    paths = [p for p in entries if is_image_file(p)]
    if not paths:
        raise CalibrationError(f"calibration folder {str(root)!r} holds {len(entries)} file(s) but no images; "
                               f"expected extensions {', '.join(sorted(IMAGE_EXTENSIONS))} (e.g. {entries[0].name!r} is not one)")
    return paths[:limit] if limit is not None else paths


class ImageFolderReader:
    """Feeds made from the images in one folder (not recursive), in sorted order, one image per feed.

    Args:
        folder: directory of images (extensions in ``IMAGE_EXTENSIONS``; other files are ignored).
        preprocess: ``preprocess(path) -> {input name: ndarray}``, e.g. manifest-driven resizing and
            normalisation to ``[1, 3, H, W]`` float32. Any exception it raises marks the file corrupt:
            it is skipped with a warning.
        shapes: optional ``[(H, W), ...]``; the i-th image (sorted) is resized to ``shapes[i % len(shapes)]`` (every
            4-D float input, bilinear, aspect not kept), so calibration sees several shapes of the
            profile. None: keep whatever ``preprocess`` returns.
        limit: use at most this many images (default: all).
        paths: the images to read, in this order (default: the folder's images, sorted), e.g. the folder's
            images less those held out for the accuracy gate; ``limit`` applies to them too.
        spec: when given, feeds that do not fit it (names, dtypes, profile) are skipped with a warning.
        min_images: warn when fewer images are available (default ``MIN_IMAGES``).
        show_progress: rich progress bar while iterating.

    Raises CalibrationError when the folder is missing, empty or holds no images, and (while
    iterating) when every image failed to load.
    """

    def __init__(self, folder: str | os.PathLike, preprocess: Preprocess, *, shapes: Sequence[tuple[int, int]] | None = None,
                 limit: int | None = None, paths: Sequence[str | os.PathLike] | None = None, spec: ExportSpec | None = None,
                 min_images: int = MIN_IMAGES, show_progress: bool = True):
        self.folder = Path(folder)
        if not callable(preprocess):
            raise CalibrationError(f"preprocess must be a callable path -> {{input: ndarray}}, got {type(preprocess).__name__}")
        self.shapes = [_check_shape(s) for s in shapes] if shapes else None
        self.paths = calibration_images(self.folder, limit)  # checks the folder and the limit
        if paths is not None:
            self.paths = [Path(p) for p in paths][:limit]
            if not self.paths:
                raise CalibrationError(f"no calibration images left to read in {str(self.folder)!r}")
        if len(self.paths) < min_images:
            log.warning("calibrating on %d image(s) from %s; at least %d are recommended for stable ranges",
                        len(self.paths), self.folder, min_images)
        self.preprocess = preprocess
        self.spec = spec
        self.show_progress = show_progress
        self.skipped: list[tuple[str, str]] = []  # (file name, reason) of the last iteration

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this data."""
        return {"source": "image folder", "path": str(self.folder), "images": len(self.paths),
                "shapes": [list(s) for s in self.shapes] if self.shapes else "as preprocessed",
                "skipped": [name for name, _ in self.skipped]}

    def __iter__(self) -> Iterator[Feed]:
        self.skipped = []
        good = 0
        for i, path in enumerate(progress(self.paths, f"reading {self.folder.name}", enabled=self.show_progress)):
            try:
                feed = {k: np.asarray(v) for k, v in dict(self.preprocess(path)).items()}
            except Exception as e:  # the callable is the caller's: any failure means "cannot use this file"
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                log.warning("skipping calibration image %s: %s", path.name, reason)
                self.skipped.append((path.name, reason))
                continue
            if self.shapes:
                feed = resize_feed(feed, self.shapes[i % len(self.shapes)])
            if self.spec is not None:
                try:
                    self.spec.check_feed(feed)
                except VktError as e:
                    log.warning("skipping calibration image %s: %s", path.name, e)
                    self.skipped.append((path.name, str(e)))
                    continue
            good += 1
            yield feed
        if good == 0:
            raise CalibrationError(f"none of the {len(self.paths)} image(s) in {str(self.folder)!r} could be used "
                                   f"(first failure: {self.skipped[0][0]}: {self.skipped[0][1]})")


def _check_shape(s: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s)
    except (TypeError, ValueError):
        raise CalibrationError(f"calibration shape must be (height, width), got {s!r}") from None
    if h < 1 or w < 1:
        raise CalibrationError(f"calibration shape must be positive, got {(h, w)}")
    return h, w


def resize_feed(feed: Mapping[str, np.ndarray], shape: tuple[int, int]) -> Feed:
    """Resize every 4-D float ``[N, C, H, W]`` array of a feed to ``shape`` = (H, W), bilinear; others pass through."""
    import cv2

    h, w = shape
    out: Feed = {}
    for k, a in feed.items():
        if a.ndim != 4 or a.dtype.kind != "f" or a.shape[2:] == (h, w):
            out[k] = a
            continue
        n, c = a.shape[:2]
        # cv2 resizes [H, W, C] with C <= 512 channels; fold N and C together.
        hwc = np.ascontiguousarray(a.reshape(n * c, *a.shape[2:]).transpose(1, 2, 0))
        r = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR)
        out[k] = np.ascontiguousarray(r.reshape(h, w, n * c).transpose(2, 0, 1).reshape(n, c, h, w)).astype(a.dtype, copy=False)
    return out


def calibration_shapes(spec: ExportSpec, profile: int = 0, round_to: int = 32, *, height: str = "height",
                       width: str = "width") -> list[tuple[int, int]]:
    """Square-ish (H, W) shapes inside a profile: opt, halfway to min, halfway to max (rounded, deduplicated).

    Sizes are rounded down to multiples of ``round_to`` (stride-32 detectors) and kept inside [min, max].
    Raises CalibrationError if the spec has no dynamic ``height``/``width`` axes.
    """
    if not spec.profiles or height not in spec.profiles[profile].axes or width not in spec.profiles[profile].axes:
        raise CalibrationError(f"calibration_shapes needs dynamic axes {height!r} and {width!r} in profile {profile}; "
                               f"the spec's dynamic axes are {sorted(spec.input_axes)}")
    axes = spec.profiles[profile].axes

    def pick(name: str) -> list[int]:
        lo, opt, hi = axes[name]
        vals = [opt, (lo + opt) // 2, (opt + hi) // 2]
        return [min(hi, max(lo, (v // round_to) * round_to or v)) for v in vals]

    out: list[tuple[int, int]] = []
    for s in zip(pick(height), pick(width)):
        if s not in out:
            out.append(s)
    return out


def simple_image_preprocess(input_name: str, scale: float = 1.0 / 255.0, mean: Sequence[float] = (0.0, 0.0, 0.0),
                            std: Sequence[float] = (1.0, 1.0, 1.0), color: str = "BGR") -> Preprocess:
    """A minimal ``preprocess(path)``: read with OpenCV, ``(x * scale - mean) / std``, ``[1, 3, H, W]`` float32.

    For bundles without a manifest ``preprocess`` section; combine with ``shapes`` to set the size.
    """
    import cv2

    from vkt.runtime.image import without_iccp

    if color not in ("BGR", "RGB"):
        raise CalibrationError(f"color must be 'BGR' or 'RGB', got {color!r}")
    a = (scale / np.asarray(std, np.float32)).reshape(3, 1, 1)
    b = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(3, 1, 1)

    def run(path: Path) -> Feed:
        img = cv2.imdecode(without_iccp(np.fromfile(str(path), np.uint8)), cv2.IMREAD_COLOR)
        if img is None:
            raise CalibrationError(f"cannot decode image {str(path)!r}: corrupt, truncated or not an image")
        if color == "RGB":
            img = img[:, :, ::-1]
        x = img.transpose(2, 0, 1).astype(np.float32) * a + b
        return {input_name: x[None]}

    return run


def array_feeds(arrays: Mapping[str, np.ndarray]) -> list[Feed]:
    """Split ``{name: [N, ...]}`` stacked arrays into N single-sample feeds ``{name: [1, ...]}``."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if not arrays or len(set(lengths.values())) != 1:
        raise CalibrationError(f"expected arrays with one common first dimension, got lengths {lengths}")
    n = next(iter(lengths.values()))
    return [{k: np.asarray(v[i : i + 1]) for k, v in arrays.items()} for i in range(n)]
