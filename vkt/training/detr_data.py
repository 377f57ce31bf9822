"""DETR training data: COCO-format folders, synthetic shapes, manifest pre-processing with augmentation, padded batches.

Targets follow facebookresearch/detr: ``boxes`` are cxcywh normalised by the *resized, unpadded*
image size (the model sees padding through ``pixel_mask``), ``class_labels`` are class ids. The runtime
(vkt.runtime.detection) scales predictions by the source size accordingly. (transformers'
DetrImageProcessor instead renormalises boxes to the padded canvas when it pads; for unpadded
inference the two agree.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.runtime.image import Preprocessor, read_image


@dataclass
class Sample:
    """One image and its objects: image BGR uint8 ``[H, W, 3]``, boxes float32 ``[N, 4]`` xyxy pixels, labels int64 ``[N]``."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int = 0


# ---- sources ---------------------------------------------------------------------------------------
def synthetic_shapes(n: int, size: tuple[int, int] = (160, 224), num_classes: int = 3, max_objects: int = 3,
                     seed: int = 0, separated: bool = False, min_frac: float = 1 / 6, max_frac: float = 1 / 2) -> list[Sample]:
    """``n`` images of coloured shapes on noise: class 0 rectangle, 1 ellipse, 2 triangle, then repeating
    with other colours. Boxes are the shapes' exact extents (for smoke training and tests).

    Each shape's width and height are drawn in ``[min_frac, max_frac)`` of the image's; ``separated``
    re-draws a shape (up to 50 tries, else drops it) until its box, grown by 4 pixels, overlaps no earlier one.
    """
    import cv2

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if num_classes < 1 or max_objects < 1:
        raise InputError(f"num_classes and max_objects must be >= 1, got {num_classes} and {max_objects}")
    if not 0 < min_frac < max_frac <= 1:
        raise InputError(f"expected 0 < min_frac < max_frac <= 1, got min_frac={min_frac} and max_frac={max_frac}")
    rng = np.random.default_rng(seed)
    h, w = size
    if min(h, w) < 32:
        raise InputError(f"size must be at least 32 x 32, got {size}")
    palette = [(40, 40, 220), (40, 200, 40), (220, 60, 40), (0, 200, 220), (200, 0, 200), (220, 220, 0)]
    lo_w, hi_w = max(2, int(w * min_frac)), max(3, int(w * max_frac))
    lo_h, hi_h = max(2, int(h * min_frac)), max(3, int(h * max_frac))
    out = []
    for i in range(n):
        img = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            c = int(rng.integers(0, num_classes))
            for _try in range(50 if separated else 1):
                bw, bh = int(rng.integers(lo_w, hi_w)), int(rng.integers(lo_h, hi_h))
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                if not separated or all(x0 + bw + 4 <= b[0] or b[2] + 4 <= x0 or y0 + bh + 4 <= b[1] or b[3] + 4 <= y0
                                        for b in boxes):
                    break
            else:
                continue
            x1, y1 = x0 + bw - 1, y0 + bh - 1
            color = palette[c % len(palette)]
            shape = c % 3
            if shape == 0:
                cv2.rectangle(img, (x0, y0), (x1, y1), color, cv2.FILLED)
            elif shape == 1:
                cv2.ellipse(img, (((x0 + x1) / 2, (y0 + y1) / 2), (bw, bh), 0.0), color, cv2.FILLED)
            else:
                pts = np.array([[x0, y1], [x1, y1], [(x0 + x1) // 2, y0]], np.int32)
                cv2.fillPoly(img, [pts], color)
            boxes.append([x0, y0, x1 + 1, y1 + 1])
            labels.append(c)
        out.append(Sample(img, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), image_id=i + 1))
    return out


class CocoDetectionDataset:
    """A COCO ``instances_*.json`` and its image folder as a sequence of Samples (images read lazily).

    Args:
        annotations: the JSON file. images: the folder holding each image's ``file_name``.
        contiguous: map category ids to 0..C-1 in id order (for a new head); False keeps COCO's ids
            as class ids (how DETR's 91-slot COCO head is laid out).
    Crowd boxes (``iscrowd``) are dropped, as DETR's training does; boxes are clipped to the image.
    """

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike, contiguous: bool = False):
        p = Path(annotations)
        if not p.is_file():
            raise InputError(f"COCO annotation file not found: {str(p)!r}")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{str(p)!r} is not valid JSON ({e})") from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise InputError(f"{str(p)!r}: expected a list under {key!r} (COCO instances format)")
        self.root = Path(images)
        if not self.root.is_dir():
            raise InputError(f"COCO image folder not found: {str(self.root)!r}")
        self.images = data["images"]
        cats = sorted(int(c["id"]) for c in data["categories"])
        self.category_ids = cats
        self.names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        self.label_of = {cid: (i if contiguous else cid) for i, cid in enumerate(cats)}
        self.by_image: dict[int, list[Mapping[str, Any]]] = {}
        for a in data["annotations"]:
            if a.get("iscrowd", 0):
                continue
            if int(a["category_id"]) not in self.label_of:
                raise InputError(f"{str(p)!r}: annotation {a.get('id')} has category_id {a['category_id']}, "
                                 f"not among the categories {cats[:20]}")
            self.by_image.setdefault(int(a["image_id"]), []).append(a)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        info = self.images[i]
        img = read_image(self.root / info["file_name"])
        h, w = img.shape[:2]
        anns = self.by_image.get(int(info["id"]), [])
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]                                   # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = np.array([self.label_of[int(a["category_id"])] for a in anns], np.int64)
        return Sample(img, boxes[keep], labels[keep], int(info["id"]))


# ---- pre-processing and batches -------------------------------------------------------------------
class DetrTransform:
    """Sample -> (pixel_values float32 [3, h, w], target, meta) with the manifest's pre-processing.

    Args:
        preprocess: a manifest ``preprocess`` dict (default ``vkt.tasks.TASKS["detr"].preprocess``);
            training and deployment then normalise identically.
        train: augment: horizontal flip with p = 0.5 and, if ``scales`` is given, a random
            ``shortest_edge`` from it per sample (DETR's multi-scale training; longest_edge kept).
        scales: shortest-edge choices for training, e.g. ``(480, 512, ..., 800)``.
        seed: augmentation RNG seed.
    target: ``{"class_labels": int64 [N], "boxes": float32 [N, 4] cxcywh / resized (w, h)}``;
    meta: ``{"image_id", "orig_size": (H, W), "size": (h, w)}``.
    """

    def __init__(self, preprocess: Mapping[str, Any] | None = None, train: bool = False,
                 scales: Sequence[int] | None = None, seed: int = 0):
        from vkt.tasks import TASKS

        self.cfg = dict(preprocess or TASKS["detr"].preprocess)
        self.pre = Preprocessor(self.cfg)
        self.train = train
        self.scales = tuple(int(s) for s in scales) if scales else ()
        if any(s < 1 for s in self.scales):
            raise InputError(f"scales must be positive shortest-edge sizes, got {scales!r}")
        self.scaled = {s: Preprocessor({**self.cfg, "resize": {**self.cfg.get("resize", {}), "shortest_edge": s}})
                       for s in self.scales}
        self.rng = np.random.default_rng(seed)

    def __call__(self, s: Sample) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
        img, boxes = s.image, np.asarray(s.boxes, np.float32).reshape(-1, 4)
        h0, w0 = img.shape[:2]
        pre = self.pre
        if self.train:
            if self.rng.random() < 0.5:
                img = img[:, ::-1]
                boxes = np.stack([w0 - boxes[:, 2], boxes[:, 1], w0 - boxes[:, 0], boxes[:, 3]], axis=1)
            if self.scales:
                pre = self.scaled[self.scales[int(self.rng.integers(len(self.scales)))]]
        img = np.ascontiguousarray(img)
        plan = pre.plan(img)
        h, w = plan.size
        x = np.empty((3, h, w), np.float32)
        pre.write(img, plan, x)
        # Normalised by the source size = by the resized size (the resize maps the whole image).
        scale = np.array([w0, h0, w0, h0], np.float32)
        xyxy = boxes / scale
        cxcywh = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                           xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1).astype(np.float32)
        target = {"class_labels": np.asarray(s.labels, np.int64).reshape(-1), "boxes": cxcywh.reshape(-1, 4)}
        return x, target, {"image_id": s.image_id, "orig_size": (h0, w0), "size": (h, w)}


def collate(items: Sequence[tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]]) -> dict[str, Any]:
    """Pad to the batch's largest size: ``pixel_values`` [B, 3, H, W] (0 = the mean colour after
    normalisation), ``pixel_mask`` [B, H, W] int64 (1 = image), ``labels`` (torch targets), ``meta``."""
    import torch

    if not items:
        raise InputError("cannot collate an empty batch")
    hmax = max(x.shape[1] for x, _, _ in items)
    wmax = max(x.shape[2] for x, _, _ in items)
    pixels = torch.zeros((len(items), 3, hmax, wmax), dtype=torch.float32)
    mask = torch.zeros((len(items), hmax, wmax), dtype=torch.int64)
    labels, meta = [], []
    for i, (x, t, m) in enumerate(items):
        _, h, w = x.shape
        pixels[i, :, :h, :w] = torch.from_numpy(x)
        mask[i, :h, :w] = 1
        labels.append({"class_labels": torch.from_numpy(t["class_labels"]), "boxes": torch.from_numpy(t["boxes"])})
        meta.append(m)
    return {"pixel_values": pixels, "pixel_mask": mask, "labels": labels, "meta": meta}


class DetrDataset:
    """``torch.utils.data.Dataset``-compatible: ``samples[i]`` through ``transform`` (map-style, picklable)."""

    def __init__(self, samples: Sequence[Sample], transform: DetrTransform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
        return self.transform(self.samples[i])
