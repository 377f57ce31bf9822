"""COCO box AP: detections in COCO's results format, scored by pycocotools' COCOeval (the reference implementation).

COCO's protocol (cocodataset.org/#detection-eval): AP is averaged over IoU thresholds 0.50:0.05:0.95
and 101 recall points, per category, then over categories; AP50 / AP75 at one threshold; APs / APm /
APl restrict ground truth and detections to areas < 32^2, 32^2..96^2 and > 96^2 pixels; at most 100
detections per image. Ground-truth ``iscrowd`` boxes are matched but never counted as misses.
A metric with nothing to measure (e.g. no small objects) is -1, as pycocotools reports it.

Boxes: results are ``[x, y, width, height]`` in source pixels (COCO's layout); vkt's detections are
xyxy and are converted here. DETR's COCO heads predict COCO category ids directly (91 slots, some
unused), so class ids map to category ids one to one unless a mapping is given.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(detections: Iterable[Any], image_ids: Sequence[int],
                    category_ids: Mapping[int, int] | Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO results (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``) from vkt Detections.

    Args:
        detections: one ``vkt.runtime.detection.Detections`` per image (``boxes`` [N, 4] xyxy,
            ``scores`` [N], ``labels`` [N]).
        image_ids: the COCO image id of each.
        category_ids: class id -> COCO category id (a dict, or a list indexed by class id);
            None: the class id is the category id (DETR's COCO models).
    """
    dets = list(detections)
    if len(dets) != len(image_ids):
        raise InputError(f"got {len(dets)} detection sets but {len(image_ids)} image ids; expected one id per image")
    out: list[dict[str, Any]] = []
    for det, image_id in zip(dets, image_ids):
        boxes = np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det.scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(det.labels).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise InputError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; "
                             "expected one of each per detection")
        for (x0, y0, x1, y1), s, c in zip(boxes, scores, labels):
            out.append({"image_id": int(image_id), "category_id": _category(int(c), category_ids),
                        "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                        "score": round(float(s), 5)})
    return out


def _category(label: int, mapping: Mapping[int, int] | Sequence[int] | None) -> int:
    if mapping is None:
        return label
    try:
        return int(mapping[label])
    except (KeyError, IndexError):
        raise InputError(f"class id {label} has no COCO category id in the mapping given "
                         f"({len(mapping)} entries)") from None


def coco_ground_truth(images: Sequence[Mapping[str, Any]], categories: Sequence[Mapping[str, Any]] | Sequence[str],
                      boxes: Sequence[np.ndarray], labels: Sequence[Sequence[int]],
                      iscrowd: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """A COCO ground-truth dict (instances_*.json layout) from per-image xyxy boxes.

    Args:
        images: ``{"id", "height", "width"}`` (+ optional ``file_name``) per image.
        categories: ``{"id", "name"}`` dicts, or names (ids 1, 2, ...).
        boxes: per image, ``[N, 4]`` xyxy pixels; labels: per image, N category ids.
        iscrowd: per image, N 0/1 flags (default all 0).
    Area is the box area (COCO's uses the segment area; for box-only data the box is the segment).
    """
    if not (len(images) == len(boxes) == len(labels)):
        raise InputError(f"got {len(images)} images, {len(boxes)} box sets and {len(labels)} label sets; expected one each per image")
    cats = [c if isinstance(c, Mapping) else {"id": i + 1, "name": str(c)} for i, c in enumerate(categories)]
    anns = []
    for k, (img, b, lab) in enumerate(zip(images, boxes, labels)):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        if len(b) != len(lab):
            raise InputError(f"image {img.get('id')}: {len(b)} boxes but {len(lab)} labels")
        if len(b) and np.any(b[:, 2:] < b[:, :2]):
            raise InputError(f"image {img.get('id')}: boxes must be xyxy with x1 >= x0 and y1 >= y0, got {b[np.any(b[:, 2:] < b[:, :2], axis=1)][0].tolist()}")
        crowd = iscrowd[k] if iscrowd is not None else [0] * len(b)
        for (x0, y0, x1, y1), c, cr in zip(b, lab, crowd):
            anns.append({"id": len(anns) + 1, "image_id": int(img["id"]), "category_id": int(c),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float((x1 - x0) * (y1 - y0)), "iscrowd": int(cr)})
    return {"images": [dict(i) for i in images], "annotations": anns, "categories": cats}


def coco_ap(ground_truth: str | os.PathLike | Mapping[str, Any], results: str | os.PathLike | Sequence[Mapping[str, Any]],
            image_ids: Sequence[int] | None = None, max_dets: int = 100) -> dict[str, float]:
    """Box AP of ``results`` against ``ground_truth`` with pycocotools.

    Args:
        ground_truth: an instances_*.json path or the dict (see :func:`coco_ground_truth`).
        results: a results-JSON path or list (see :func:`to_coco_results`).
        image_ids: evaluate these images only (default: every ground-truth image).
        max_dets: detections per image for the AP figures (COCO: 100).
    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}``
        as fractions in [0, 1] (-1 where nothing could be measured).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise InputError("COCO evaluation needs pycocotools: pip install 'vkt[eval]'") from None
    gt_dict = _read_json(ground_truth, "ground truth") if isinstance(ground_truth, (str, os.PathLike)) else dict(ground_truth)
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt_dict.get(key), list):
            raise InputError(f"COCO ground truth needs a list under {key!r}, got {type(gt_dict.get(key)).__name__}")
    res = _read_json(results, "results") if isinstance(results, (str, os.PathLike)) else list(results)
    if not isinstance(res, list):
        raise InputError(f"COCO results must be a list of detections, got {type(res).__name__}")
    known_imgs = {int(i["id"]) for i in gt_dict["images"]}
    known_cats = {int(c["id"]) for c in gt_dict["categories"]}
    for r in res:
        if not isinstance(r, Mapping) or not {"image_id", "category_id", "bbox", "score"} <= set(r):
            raise InputError(f"a COCO result needs image_id, category_id, bbox and score, got {r!r:.200}")
        if int(r["image_id"]) not in known_imgs:
            raise InputError(f"result for image_id {r['image_id']}, which the ground truth does not have")
        if int(r["category_id"]) not in known_cats:
            raise InputError(f"result with category_id {r['category_id']}, not among the ground truth's {sorted(known_cats)[:20]}")
        if len(r["bbox"]) != 4:
            raise InputError(f"result bbox must be [x, y, width, height], got {r['bbox']!r}")
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise InputError(f"max_dets must be a positive integer, got {max_dets!r}")
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):   # pycocotools prints progress and the table
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        if not res:
            return {m: (0.0 if gt_dict["annotations"] else -1.0) for m in METRICS}
        dt = gt.loadRes([dict(r) for r in res])
        ev = COCOeval(gt, dt, iouType="bbox")
        if image_ids is not None:
            ev.params.imgIds = [int(i) for i in image_ids]
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: float(v) for m, v in zip(METRICS, ev.stats)}


def write_results(results: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write COCO results JSON atomically (what the official evaluation server takes)."""
    from vkt.fsutil import atomic_write_text

    p = Path(path)
    atomic_write_text(p, json.dumps(list(results)))
    return p


def _read_json(path: str | os.PathLike, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"COCO {what} file not found: {str(p)!r}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"COCO {what} file {str(p)!r} is not valid JSON ({e})") from None
