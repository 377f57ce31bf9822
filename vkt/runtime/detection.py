"""DETR object detection without torch: the Detector pipeline, its numpy post-processing, soft-NMS and drawing.

A DETR bundle's graph comes in one of two kinds (vkt.models.detr.export):

    raw            logits [N, Q, C + 1], pred_boxes [N, Q, 4] (cxcywh in [0, 1]): post-processed here;
    postprocessed  inputs pixel_values + orig_sizes [N, 2] (height, width) -> scores [N, K] (sorted),
                   labels [N, K], boxes [N, K, 4] (xyxy source pixels): only thresholded here.
Either may take a ``pixel_mask`` [N, H, W] (1 = image, 0 = padding); then images of different
sizes share one padded batch, otherwise a batch holds images that resize to the same shape.

The manifest's ``postprocess`` section (type "detr") holds:

    score_threshold  0.5    keep detections with score > score_threshold (as transformers)
    top_k            100    at most this many detections per image, best first
    soft_nms         false  Gaussian soft-NMS (Bodla et al. 2017, eq. 3): s_i *= exp(-iou^2 / sigma)
    soft_nms_sigma   0.5
    class_agnostic   false  soft-NMS across classes instead of within each class
    labels           []     class names by class id (C entries); missing names read "class_<id>"

Scores follow transformers' ``post_process_object_detection``: softmax over the C + 1 logits, the
"no object" column dropped, each query's best class. Boxes are ``(cx -/+ w/2, cy -/+ h/2)`` times
the source image's width/height, not clipped (as transformers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from vkt.errors import InputError, ModelError
from vkt.runtime.image import Preprocessor, load_image
from vkt.runtime.pipeline import ImagePipeline, apply_overrides, open_source

RAW_OUTPUTS = ("logits", "pred_boxes")
FINAL_OUTPUTS = ("scores", "labels", "boxes")
MASK, SIZES = "pixel_mask", "orig_sizes"


@dataclass(frozen=True)
class DetrParams:
    """DETR post-processing parameters (the module docstring explains each)."""

    score_threshold: float = 0.5
    top_k: int = 100
    soft_nms: bool = False
    soft_nms_sigma: float = 0.5
    class_agnostic: bool = False
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        t = self.score_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise InputError(f"postprocess.score_threshold must be a number in [0, 1], got {t!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise InputError(f"postprocess.top_k must be a positive integer, got {self.top_k!r}")
        for name in ("soft_nms", "class_agnostic"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"postprocess.{name} must be true or false, got {getattr(self, name)!r}")
        s = self.soft_nms_sigma
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise InputError(f"postprocess.soft_nms_sigma must be a number > 0, got {s!r}")
        labels = self.labels
        if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
            raise InputError(f"postprocess.labels must be a list of class names, got {labels!r:.200}")
        object.__setattr__(self, "labels", tuple(labels))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetrParams:
        """From a manifest ``postprocess`` dict (``type`` must be "detr" if present; unknown keys raise)."""
        d = dict(d)
        kind = d.pop("type", "detr")
        if kind != "detr":
            raise InputError(f"postprocess.type must be 'detr' for object detection, got {kind!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown postprocess keys {unknown}; expected some of {sorted(names)}")
        if "labels" in d and isinstance(d["labels"], list):
            d["labels"] = tuple(d["labels"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "detr", **asdict(self), "labels": list(self.labels)}

    def name(self, label: int) -> str:
        return self.labels[label] if 0 <= label < len(self.labels) else f"class_{label}"


@dataclass
class Detections:
    """Objects found in one image.

    boxes: float32 ``[N, 4]`` xyxy in source pixels; scores: float32 ``[N]`` (descending);
    labels: int64 ``[N]`` class ids; names: N class names; image_size: source ``(height, width)``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    image_size: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": {"height": self.image_size[0], "width": self.image_size[1]},
            "detections": [{"box": np.round(b, 2).tolist(), "score": round(float(s), 5), "label": int(c), "name": n}
                           for b, s, c, n in zip(self.boxes, self.scores, self.labels, self.names)],
            **self.meta,
        }


# ---- post-processing -----------------------------------------------------------------------------
def output_kind(output_names: Sequence[str], error: type[Exception] = ModelError) -> str:
    """``"postprocessed"`` (in-graph scores/labels/boxes) or ``"raw"`` (logits/pred_boxes) for a DETR graph's
    outputs; ``error`` (ModelError by default) naming both expected sets otherwise."""
    outs = set(output_names)
    if set(FINAL_OUTPUTS) <= outs:
        return "postprocessed"
    if set(RAW_OUTPUTS) <= outs:
        return "raw"
    raise error(f"a DETR graph has outputs {list(RAW_OUTPUTS)} or {list(FINAL_OUTPUTS)}, got {list(output_names)}")


def decode_raw(logits: np.ndarray, pred_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw heads -> (scores [Q], labels [Q] int64, boxes [Q, 4] xyxy in [0, 1]).

    logits: ``[Q, C + 1]`` (last column "no object"); pred_boxes: ``[Q, 4]`` cxcywh in [0, 1].
    """
    logits = np.asarray(logits, dtype=np.float32)
    pred_boxes = np.asarray(pred_boxes, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[1] < 2 or pred_boxes.shape != (logits.shape[0], 4):
        raise InputError(f"expected logits [Q, C + 1] and pred_boxes [Q, 4], got {logits.shape} and {pred_boxes.shape}")
    z = logits - logits.max(axis=1, keepdims=True)          # stable softmax
    e = np.exp(z)
    prob = e[:, :-1] / e.sum(axis=1, keepdims=True)         # [Q, C], "no object" dropped
    labels = prob.argmax(axis=1)
    scores = prob[np.arange(len(prob)), labels]
    cx, cy, w, h = pred_boxes.T
    boxes = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)
    return scores.astype(np.float32), labels.astype(np.int64), boxes.astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a`` [N, 4] and ``b`` [M, 4] -> [N, M] (0 where a union is empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def soft_nms(boxes: np.ndarray, scores: np.ndarray, sigma: float = 0.5, threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS: repeatedly take the best box and decay the rest by ``exp(-iou^2 / sigma)``.

    Args:
        boxes: ``[N, 4]`` xyxy; scores: ``[N]``.
        threshold: boxes whose decayed score falls to ``<= threshold`` are dropped.
    Returns:
        (kept indices into the input [M] int64, their decayed scores [M] float32), best first.
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    alive = np.arange(len(scores))
    keep, kept_scores = [], []
    while alive.size:
        best = alive[np.argmax(scores[alive])]
        if scores[best] <= threshold:
            break
        keep.append(best)
        kept_scores.append(scores[best])
        alive = alive[alive != best]
        if alive.size:
            iou = box_iou(boxes[best][None], boxes[alive])[0]
            scores[alive] *= np.exp(-(iou ** 2) / sigma)
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float32)


def select(scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray, src_size: tuple[int, int],
           params: DetrParams, normalized: bool) -> Detections:
    """Threshold, optional soft-NMS and top-k of one image's per-query results -> Detections.

    ``boxes`` [Q, 4] xyxy, in [0, 1] if ``normalized`` (scaled here by the source width/height),
    else already in source pixels.
    """
    h, w = src_size
    boxes = boxes.astype(np.float32)
    if normalized:
        boxes = boxes * np.array([w, h, w, h], dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > params.score_threshold]
    scores, labels, boxes = scores[order].astype(np.float32), labels[order].astype(np.int64), boxes[order]
    if params.soft_nms and len(scores) > 1:
        groups = [np.arange(len(scores))] if params.class_agnostic else [np.flatnonzero(labels == c) for c in np.unique(labels)]
        idx, new = [], []
        for g in groups:
            k, s = soft_nms(boxes[g], scores[g], params.soft_nms_sigma, params.score_threshold)
            idx.append(g[k])
            new.append(s)
        idx_all, s_all = np.concatenate(idx), np.concatenate(new)
        o = np.argsort(-s_all, kind="stable")
        scores, labels, boxes = s_all[o], labels[idx_all[o]], boxes[idx_all[o]]
    n = min(params.top_k, len(scores))
    return Detections(boxes[:n], scores[:n], labels[:n], [params.name(int(c)) for c in labels[:n]], (int(h), int(w)))


# ---- settings and the pipeline -------------------------------------------------------------------
RESIZE_KEYS = ("shortest_edge", "longest_edge")
POST_KEYS = tuple(f.name for f in fields(DetrParams))


def detr_settings(pre: Mapping[str, Any], post: Mapping[str, Any], overrides: Mapping[str, Any],
                  what: str = "DETR setting") -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of a DETR ``preprocess`` / ``postprocess`` pair with ``overrides`` applied, checked.

    ``overrides`` keys: RESIZE_KEYS (shortest_edge, longest_edge: into ``pre["resize"]``) and POST_KEYS
    (DetrParams fields). An unknown key, or a value DetrParams / Preprocessor refuses, raises InputError
    ("unknown <what> 'key'" lists the accepted ones).
    """
    pre, post = apply_overrides(pre, post, overrides, RESIZE_KEYS, POST_KEYS, what)
    DetrParams.from_dict(post)
    Preprocessor(pre)
    return pre, post


class Detector(ImagePipeline):
    """DETR detector: images -> pre-process -> model -> post-process -> Detections (source pixels).

    Args:
        source: a DETR bundle (``vkt.bundle.Bundle`` or its folder) or a Runner (then
            ``vkt.tasks.TASKS["detr"]``'s pre/post-processing apply, updated by ``overrides``).
        backend: "ort" (default), "ort-cuda", "ort-trt", "trt", "ov" (``vkt.runtime.make_runner``), or "auto": the
            faster of onnxruntime and OpenVINO on this bundle, by a short timing at the profile's opt shape when the
            detector is made (``runner.selection`` holds the timings). The one component may also be named:
            ``{"model": "ov"}`` or ``"model=ov"`` (``vkt.runtime.choose``).
        precision, threads: passed to ``vkt.runtime.make_runner`` for a bundle.
        max_batch: images per model call (default and cap: the profile's max batch, else the static batch).
        **overrides: postprocess keys (score_threshold, top_k, soft_nms, soft_nms_sigma, class_agnostic,
            labels) and resize keys (shortest_edge, longest_edge), replacing the manifest's values.
    Call with an image or a list of images (BGR uint8 arrays as cv2 gives, or paths); returns one
    Detections per image. Use as a context manager, or call :meth:`close`, to free the session.
    A static-shape graph takes images whose resize rule yields exactly its height and width (others
    raise a ShapeError naming both); a short batch is padded with empty slots up to its static batch.
    """

    def __init__(self, source: Any, backend: Any = "ort", precision: str = "fp32", threads: int | None = None,
                 max_batch: int | None = None, **overrides: Any):
        runner, pre, post = open_source(source, "detr", "Detector",
                                        lambda pre, post: detr_settings(pre, post, overrides, "Detector option"),
                                        backend, precision, threads)
        self.params = DetrParams.from_dict(post)
        self._open(runner, pre, max_batch)

    def activate(self) -> Detector:
        spec = self._start()
        self.kind = output_kind(spec.output_names)
        self.has_mask = MASK in spec.input_names
        if self.kind == "postprocessed" and SIZES not in spec.input_names:
            raise ModelError(f"a post-processed DETR graph needs input {SIZES!r}, got {spec.input_names}")
        self.pre = Preprocessor(self._pre_cfg)
        # A static graph takes exactly its batch and size: pad the batch, refuse other sizes clearly.
        first = spec.input(self.input_name).shape[0]
        self.static_batch = first if isinstance(first, int) else None
        return self

    def __call__(self, images: Any) -> list[Detections]:
        # 1. Check and load inputs (paths are read here; arrays are validated and converted).
        images = self._load(images)
        if not images:
            return []
        assert self.pre is not None
        plans = [self.pre.plan(im) for im in images]
        # 2. Group into model calls: padded batches if the graph takes a mask, else one shape per batch.
        groups = self._chunks(len(images)) if self.has_mask else self._bucket(plans)
        results: list[Detections | None] = [None] * len(images)
        for idx in groups:
            # 3. Pre-process straight into the batch tensor; padding is 0 and masked out.
            n = self.static_batch or len(idx)
            h = max(plans[i].size[0] for i in idx)
            w = max(plans[i].size[1] for i in idx)
            batch = np.zeros((n, 3, h, w), dtype=np.float32)
            feed: dict[str, np.ndarray] = {self.input_name: batch}
            if self.has_mask:
                mask = feed[MASK] = np.zeros((n, h, w), dtype=np.float32)
            sizes = np.ones((n, 2), dtype=np.float32)
            for slot, i in enumerate(idx):
                self.pre.write(images[i], plans[i], batch[slot])
                rh, rw = plans[i].size
                if self.has_mask:
                    mask[slot, :rh, :rw] = 1.0
                sizes[slot] = plans[i].src_size
            if self.kind == "postprocessed":
                feed[SIZES] = sizes
            # 4. Run the model.
            out = self.runner.infer(feed)
            # 5. Post-process each image.
            for slot, i in enumerate(idx):
                if self.kind == "raw":
                    s, c, b = decode_raw(out["logits"][slot], out["pred_boxes"][slot])
                    det = select(s, c, b, plans[i].src_size, self.params, normalized=True)
                else:
                    det = select(out["scores"][slot], out["labels"][slot], out["boxes"][slot], plans[i].src_size,
                                 self.params, normalized=False)
                det.meta["input_size"] = {"height": plans[i].size[0], "width": plans[i].size[1]}
                results[i] = det
        return results  # type: ignore[return-value]


# ---- drawing -------------------------------------------------------------------------------------
def _color(label: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour per class (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image: np.ndarray, det: Detections) -> np.ndarray:
    """BGR uint8 ``[H, W, 3]`` copy of ``image`` with each box outlined and labelled "name score"."""
    import cv2

    img = load_image(image)
    out = img.copy()
    thick = max(1, round(max(img.shape[:2]) / 500))
    for box, score, label, name in zip(det.boxes, det.scores, det.labels, det.names):
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        color = _color(int(label))
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thick, cv2.LINE_AA)
        text = f"{name} {score:.2f}"
        scale = 0.4 * thick
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = max(y0, th + base)
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw, ty), color, cv2.FILLED)
        cv2.putText(out, text, (x0, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out
