"""DB text detection: probability map -> boxes, and the TextDetector pipeline (bucketed batches).

Post-processing follows Differentiable Binarization (Liao et al., 2020, sec. 3.4) as PP-OCR and
rapidocr run it, so boxes match theirs on the same probability map. The manifest's
``postprocess`` section (type "db") holds:

    thresh          0.3    pixels with prob > thresh are text
    box_thresh      0.5    keep a region if its score >= box_thresh
    unclip_ratio    1.6    expand a region by d = area * unclip_ratio / perimeter (pyclipper, round joins)
    max_candidates  1000   look at the first N contours (cv2.findContours order, as PP-OCR), not the N best
    min_size        3      drop a region whose min-area-rect short side < min_size (map pixels) before
                           unclip, or < min_size + 2 after
    min_side_px     4      drop a box with a side shorter than this in source pixels, after mapping back
                           and clipping (rapidocr's filter_tag_det_res drops int(side) <= 3); 0 keeps all
    use_dilation    true   dilate the bitmap with a 2x2 kernel (anchor at (1, 1), cv2's default) first
    score_mode      "fast" score = mean prob inside the min-area box (quad) or polygon, computed on the
                           box's bounding-box crop; "slow": mean prob inside the contour itself
    box_type        "quad" quad: the unclipped region's min-area rectangle, 4 points clockwise from
                           top-left; "poly": the contour simplified by approxPolyDP
                           (epsilon = 0.002 * perimeter), unclipped — K >= 4 points
    channel         0      which channel of the model's [N, C, H, W] output is the probability map
                           (0 for the usual one-channel map; set at import for a multi-channel output)

Boxes are mapped back to the source image by ``x * src_w / map_w`` (``y`` likewise) and clipped to
``[0, src_w - 1] x [0, src_h - 1]``; coordinates stay float32 in memory and are written to JSON with 2 decimals.

The pre-processing keys a TextDetector (and ``vkt run``) may override: resize ``limit_side_len``,
``limit_type``, ``round_to``, ``max_side_len`` (the long-side cap) and ``mean``, ``std``, ``scale``,
``color`` (vkt.tasks documents them). When the long-side cap shrinks an image, its Detections say so
under ``meta["resized"]`` and a warning is logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import cv2
import numpy as np
import pyclipper

from vkt.errors import InputError
from vkt.log import get_logger
from vkt.runtime.image import Preprocessor, Resized
from vkt.runtime.pipeline import ImagePipeline, apply_overrides, open_source

log = get_logger(__name__)
_DILATE_KERNEL = np.ones((2, 2), dtype=np.uint8)


@dataclass(frozen=True)
class DBParams:
    """DB post-processing parameters (module docstring explains each; defaults are rapidocr's)."""

    thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.6
    max_candidates: int = 1000
    min_size: float = 3
    min_side_px: float = 4
    use_dilation: bool = True
    score_mode: str = "fast"
    box_type: str = "quad"
    channel: int = 0

    def __post_init__(self) -> None:
        def number(v: Any) -> bool:
            return not isinstance(v, bool) and isinstance(v, (int, float)) and np.isfinite(v)

        if not number(self.thresh) or not 0.0 < self.thresh < 1.0:
            raise InputError(f"postprocess.thresh must be a number in (0, 1), got {self.thresh!r}")
        if not number(self.box_thresh) or not 0.0 <= self.box_thresh <= 1.0:
            raise InputError(f"postprocess.box_thresh must be a number in [0, 1], got {self.box_thresh!r}")
        if not number(self.unclip_ratio) or self.unclip_ratio <= 0:
            raise InputError(f"postprocess.unclip_ratio must be a number > 0, got {self.unclip_ratio!r}")
        if isinstance(self.channel, bool) or not isinstance(self.channel, int) or self.channel < 0:
            raise InputError(f"postprocess.channel must be an integer >= 0, got {self.channel!r}")
        if isinstance(self.max_candidates, bool) or not isinstance(self.max_candidates, int) or self.max_candidates < 1:
            raise InputError(f"postprocess.max_candidates must be a positive integer, got {self.max_candidates!r}")
        for name in ("min_size", "min_side_px"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise InputError(f"postprocess.{name} must be a number >= 0, got {v!r}")
        if not isinstance(self.use_dilation, bool):
            raise InputError(f"postprocess.use_dilation must be true or false, got {self.use_dilation!r}")
        if self.score_mode not in ("fast", "slow"):
            raise InputError(f"postprocess.score_mode must be 'fast' or 'slow', got {self.score_mode!r}")
        if self.box_type not in ("quad", "poly"):
            raise InputError(f"postprocess.box_type must be 'quad' or 'poly', got {self.box_type!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DBParams:
        """From a manifest ``postprocess`` dict (key ``type`` must be "db" if present; unknown keys raise)."""
        d = dict(d)
        kind = d.pop("type", "db")
        if kind != "db":
            raise InputError(f"postprocess.type must be 'db' for text detection, got {kind!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown postprocess keys {unknown}; expected some of {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "db", **asdict(self)}


@dataclass
class Detections:
    """Text regions found in one image.

    polygons: list of N float32 arrays ``[K, 2]`` of (x, y) source-image pixels (K = 4 for quads,
        clockwise from top-left). scores: float32 ``[N]``. image_size: source ``(height, width)``.
    """

    polygons: list[np.ndarray]
    scores: np.ndarray
    image_size: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.polygons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": {"height": self.image_size[0], "width": self.image_size[1]},
            # float64 before rounding: a rounded float32 (12.34 -> 12.340000152587891) would print its noise
            "detections": [{"polygon": np.round(p.astype(np.float64), 2).tolist(), "score": round(float(s), 5)}
                           for p, s in zip(self.polygons, self.scores)],
            **self.meta,
        }


# ---- DB post-processing ------------------------------------------------------------------------
def _min_box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Min-area rectangle of points ([M, 1, 2] or [M, 2]) -> (corners [4, 2] float32 ordered
    top-left, top-right, bottom-right, bottom-left; its short side)."""
    rect = cv2.minAreaRect(points)
    pts = cv2.boxPoints(rect)                         # [4, 2] float32
    pts = pts[np.argsort(pts[:, 0], kind="stable")]    # two left-most, then two right-most
    left = pts[:2] if pts[1, 1] > pts[0, 1] else pts[1::-1]    # (top, bottom) of the left pair
    right = pts[2:] if pts[3, 1] > pts[2, 1] else pts[:1:-1]
    return np.stack([left[0], right[0], right[1], left[1]]), min(rect[1])


def _mean_in_polygon(prob: np.ndarray, poly: np.ndarray) -> float:
    """Mean of ``prob`` [H, W] over the pixels of polygon ``poly`` [K, 2] (vertices truncated to ints
    after shifting to the crop origin, as PP-OCR's box_score_fast), computed on the bounding-box crop."""
    h, w = prob.shape
    xmin = min(max(int(np.floor(poly[:, 0].min())), 0), w - 1)
    xmax = min(max(int(np.ceil(poly[:, 0].max())), 0), w - 1)
    ymin = min(max(int(np.floor(poly[:, 1].min())), 0), h - 1)
    ymax = min(max(int(np.ceil(poly[:, 1].max())), 0), h - 1)
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    shifted = (poly - np.array([xmin, ymin], dtype=poly.dtype)).astype(np.int32)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2), 1)
    return cv2.mean(prob[ymin:ymax + 1, xmin:xmax + 1], mask)[0]


def _unclip(poly: np.ndarray, ratio: float) -> np.ndarray | None:
    """Offset polygon ``poly`` [K, 2] outward by area * ratio / perimeter (pyclipper, round joins).

    Returns the offset outline [M, 2] (float32), or None if it vanishes or splits in pieces.
    """
    x, y = poly[:, 0].astype(np.float64), poly[:, 1].astype(np.float64)
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))   # shoelace
    perimeter = float(np.linalg.norm(poly - np.roll(poly, -1, axis=0), axis=1).sum())
    if perimeter == 0:
        return None
    off = pyclipper.PyclipperOffset()
    # pyclipper works on integer coordinates: it truncates ours, exactly as PP-OCR passes them.
    off.AddPath(poly.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    paths = off.Execute(area * ratio / perimeter)
    if len(paths) != 1:
        return None
    return np.asarray(paths[0], dtype=np.float32)


def db_postprocess(prob: np.ndarray, src_size: tuple[int, int], params: DBParams | None = None) -> Detections:
    """Boxes from one DB probability map.

    Args:
        prob: float32 ``[H, W]`` text probability on the network input grid (``[1, H, W]`` accepted).
        src_size: source image ``(height, width)`` the boxes are mapped back to.
        params: DBParams (default: rapidocr's values).
    Returns:
        Detections with polygons in source pixels (float32 [K, 2]) and float32 scores.
    """
    p = params or DBParams()
    prob = np.asarray(prob)
    if prob.ndim == 3 and prob.shape[0] == 1:
        prob = prob[0]
    if prob.ndim != 2 or prob.size == 0:
        raise InputError(f"expected a probability map [H, W], got shape {prob.shape}")
    if prob.dtype != np.float32:
        prob = prob.astype(np.float32)
    map_h, map_w = prob.shape
    src_h, src_w = int(src_size[0]), int(src_size[1])
    bitmap = (prob > p.thresh).view(np.uint8)  # bool -> 0/1 without a copy
    if p.use_dilation:
        bitmap = cv2.dilate(bitmap, _DILATE_KERNEL)
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    scale = np.array([src_w / map_w, src_h / map_h], dtype=np.float64)
    upper = np.array([src_w - 1, src_h - 1], dtype=np.float64)
    polys: list[np.ndarray] = []
    scores: list[float] = []
    for contour in contours[: p.max_candidates]:
        if p.box_type == "quad":
            region, short = _min_box(contour)
            if short < p.min_size:
                continue
        else:
            eps = 0.002 * cv2.arcLength(contour, True)
            region = cv2.approxPolyDP(contour, eps, True).reshape(-1, 2).astype(np.float32)
            if len(region) < 4:
                continue
        score = _mean_in_polygon(prob, region if p.score_mode == "fast" else contour.reshape(-1, 2))
        if score < p.box_thresh:
            continue
        grown = _unclip(region, p.unclip_ratio)
        if grown is None:
            continue
        box, short = _min_box(grown)
        if short < p.min_size + 2:
            continue
        out = box if p.box_type == "quad" else grown
        # Map to source pixels: (x / map_w) * src_w, then clip to the image.
        out = np.clip(out.astype(np.float64) * scale, 0.0, upper).astype(np.float32)
        if p.min_side_px > 0:
            # rapidocr's last filter, in source pixels: slivers left by clipping or by a large downscale.
            side = (min(np.linalg.norm(out[0] - out[1]), np.linalg.norm(out[0] - out[3])) if p.box_type == "quad"
                    else min(cv2.minAreaRect(out)[1]))
            if side < p.min_side_px:
                continue
        polys.append(out)
        scores.append(score)
    return Detections(polys, np.asarray(scores, dtype=np.float32), (src_h, src_w))


# ---- settings ----------------------------------------------------------------------------------
PRE_KEYS = ("mean", "std", "scale", "color")
RESIZE_KEYS = ("limit_side_len", "limit_type", "round_to", "max_side_len")
POST_KEYS = tuple(f.name for f in fields(DBParams))
BATCH_MODES = ("bucket", "pad_to_largest")


def textdet_settings(pre: Mapping[str, Any], post: Mapping[str, Any], overrides: Mapping[str, Any],
                     what: str = "text-detection setting") -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of a textdet ``preprocess`` / ``postprocess`` pair with ``overrides`` applied, checked.

    ``overrides`` keys: PRE_KEYS (mean, std, scale, color), RESIZE_KEYS (into ``pre["resize"]``) and
    POST_KEYS (DBParams fields). An unknown key, or a value DBParams / Preprocessor refuses, raises
    InputError ("unknown <what> 'key'" lists the accepted ones).
    """
    pre, post = apply_overrides(pre, post, overrides, RESIZE_KEYS, POST_KEYS, what, pre_keys=PRE_KEYS)
    DBParams.from_dict(post)
    Preprocessor(pre)
    return pre, post


def input_meta(plan: Resized, pre: Preprocessor) -> dict[str, Any]:
    """A Detections' ``meta`` for one image's resize: ``input_size``, and ``resized`` (logged as a warning)
    when the long-side cap shrank it: ``{"from": source [h, w], "to": input [h, w], "without_cap": [h, w],
    "reason": ...}``."""
    rh, rw = plan.size
    meta: dict[str, Any] = {"input_size": {"height": rh, "width": rw}}
    if plan.capped_at is not None:
        reason = f"long side capped at {plan.capped_at} ({pre.cap_source})"
        meta["resized"] = {"from": list(plan.src_size), "to": [rh, rw], "without_cap": list(plan.uncapped_size or ()),
                           "reason": reason}
        log.warning("a %dx%d image runs at %dx%d instead of %dx%d: %s; boxes are mapped back to source pixels, small "
                    "text may be missed", *plan.src_size, rh, rw, *(plan.uncapped_size or (0, 0)), reason)
    return meta


# ---- the pipeline ------------------------------------------------------------------------------


class TextDetector(ImagePipeline):
    """DB text detector: images -> pre-process -> model -> DB post-process -> Detections.

    Args:
        source: a textdet bundle (``vkt.bundle.Bundle`` or its folder) or a Runner (then the
            pre/post-processing defaults of ``vkt.tasks.TASKS["textdet"]`` apply).
        backend, precision, threads: passed to ``vkt.runtime.make_runner`` for a bundle.
        batch_mode: "bucket" (default): images that resize to the same shape run as one batch,
            others in their own batches, nothing padded; "pad_to_largest": consecutive images are
            batched in input order and padded to the
            largest shape of their batch (padding holds 0 after normalisation), then each map is cropped back.
        max_batch: images per model call (default: the profile's max batch, else 8).
        **overrides: postprocess keys (thresh, box_thresh, unclip_ratio, max_candidates, min_size,
            min_side_px, use_dilation, score_mode, box_type, channel), resize keys (limit_side_len,
            limit_type, round_to, max_side_len) and normalisation keys (mean, std, scale, color),
            replacing the manifest's values (checked before the model is loaded).
    Call with an image or a list of images (BGR uint8 arrays as cv2 gives, or paths); returns one
    Detections per image. Use as a context manager, or call :meth:`close`, to free the session.
    """

    def __init__(self, source: Any, backend: str = "ort", precision: str = "fp32", threads: int | None = None,
                 batch_mode: str = "bucket", max_batch: int | None = None, **overrides: Any):
        if batch_mode not in BATCH_MODES:
            raise InputError(f"batch_mode must be one of {BATCH_MODES}, got {batch_mode!r}")
        runner, pre, post = open_source(source, "textdet", "TextDetector",
                                        lambda pre, post: textdet_settings(pre, post, overrides, "TextDetector option"),
                                        backend, precision, threads)
        self.params = DBParams.from_dict(post)
        self.batch_mode = batch_mode
        self._open(runner, pre, max_batch)

    def activate(self) -> TextDetector:
        spec = self._start()
        self.output_name = spec.output_names[0]
        oshape = spec.outputs[0].shape
        if len(oshape) != 4:  # e.g. a classifier tagged text-detection by hand, or imported before the check
            raise InputError(f"output {self.output_name!r} has shape {list(oshape)}; a text detector's output is a "
                             "probability map [N, 1, H, W] (`vkt export onnx --task textdet` checks this)")
        channels = oshape[1]
        if isinstance(channels, int) and self.params.channel >= channels:
            raise InputError(f"postprocess.channel {self.params.channel} is out of range: output {self.output_name!r} "
                             f"has {channels} channel(s) {list(spec.outputs[0].shape)}")
        # The profile's max height/width caps the resize (a documented downscale, not a crash).
        profile = spec.profiles[0].axes if spec.profiles else {}
        dims = spec.input(self.input_name).shape
        side_caps = [profile[d][2] for d in dims[2:] if isinstance(d, str) and d in profile]
        self.pre = Preprocessor(self._pre_cfg, max_side=min(side_caps) if side_caps else None)
        return self

    def __call__(self, images: Any) -> list[Detections]:
        # 1. Check and load inputs (paths are read here; arrays are validated and converted).
        images = self._load(images)
        if not images:
            return []
        assert self.pre is not None
        plans = [self.pre.plan(im) for im in images]
        # 2. Group into model calls.
        groups = self._bucket(plans) if self.batch_mode == "bucket" else self._chunks(len(images))
        results: list[Detections | None] = [None] * len(images)
        for idx in groups:
            # 3. Pre-process straight into the batch tensor (no per-image arrays, no concatenate).
            h = max(plans[i].size[0] for i in idx)
            w = max(plans[i].size[1] for i in idx)
            padded = any(plans[i].size != (h, w) for i in idx)
            batch = (np.zeros if padded else np.empty)((len(idx), 3, h, w), dtype=np.float32)
            for slot, i in enumerate(idx):
                self.pre.write(images[i], plans[i], batch[slot])
            # 4. Run the model: [N, C, h, w] probabilities (C = 1 but for a multi-channel map imported with a channel).
            prob = self.runner.infer({self.input_name: batch})[self.output_name]
            # 5. Post-process each map, cropped to its own image's resized size.
            for slot, i in enumerate(idx):
                rh, rw = plans[i].size
                det = db_postprocess(prob[slot, self.params.channel, :rh, :rw], plans[i].src_size, self.params)
                det.meta.update(input_meta(plans[i], self.pre))
                results[i] = det
        return results  # type: ignore[return-value]
