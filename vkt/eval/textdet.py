"""ICDAR-2015-style text-detection metrics: precision, recall, hmean with one-to-one polygon IoU matching.

Protocol (the ICDAR 2015 "Incidental Scene Text" task 4.1 rules, as PaddleOCR's DetectionIoUEvaluator):
    1. ground-truth regions transcribed ``###`` are "don't care";
    2. a detection whose area lies > 50 % inside one don't-care region is dropped from both counts;
    3. detections and cared-for ground truth are matched one to one when IoU >= ``iou_thresh`` (0.5),
       greedily by decreasing IoU (the official script takes pairs in index order; greedy-by-IoU
       finds the same matches whenever each region has one clear partner, and never fewer);
    4. precision = matches / detections, recall = matches / cared-for GT, hmean = their harmonic mean,
       summed over the whole data set (not averaged per image). With no GT and no detections the
       scores are 1.
Polygons are [K, 2] (x, y) arrays; self-intersecting ones are repaired with shapely's make_valid.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import InputError

DONT_CARE = "###"


@dataclass
class GtRegion:
    """One ground-truth region: polygon float32 [K, 2], transcription, and whether it is don't-care."""

    polygon: np.ndarray
    text: str = ""
    dont_care: bool = False


@dataclass
class ImageResult:
    """Counts for one image: detections kept, cared-for GT, matches, and the matched (det, gt, iou) pairs."""

    n_det: int
    n_gt: int
    n_match: int
    pairs: list[tuple[int, int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        p, r, h = prh(self.n_match, self.n_det, self.n_gt)
        return {"detections": self.n_det, "ground_truth": self.n_gt, "matches": self.n_match,
                "precision": p, "recall": r, "hmean": h,
                "pairs": [{"det": d, "gt": g, "iou": round(i, 4)} for d, g, i in self.pairs]}


def prh(matches: int, n_det: int, n_gt: int) -> tuple[float, float, float]:
    """(precision, recall, hmean); an empty side scores 1 when the other is empty too, else 0."""
    precision = matches / n_det if n_det else (1.0 if n_gt == 0 else 0.0)
    recall = matches / n_gt if n_gt else (1.0 if n_det == 0 else 0.0)
    hmean = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, hmean


# ---- loading ICDAR labels ----------------------------------------------------------------------
def parse_icdar_line(line: str, where: str = "label") -> GtRegion:
    """``x1,y1,x2,y2,x3,y3,x4,y4,transcription`` (the transcription may hold commas; ``###`` = don't care)."""
    parts = line.strip().lstrip("\ufeff").split(",")
    if len(parts) < 8:
        raise InputError(f"{where}: expected 'x1,y1,x2,y2,x3,y3,x4,y4,transcription', got {line.strip()!r}")
    try:
        coords = [float(v) for v in parts[:8]]
    except ValueError:
        raise InputError(f"{where}: the first 8 fields must be numbers, got {parts[:8]}") from None
    text = ",".join(parts[8:])
    return GtRegion(np.asarray(coords, dtype=np.float32).reshape(4, 2), text, text == DONT_CARE)


def load_icdar_gt(path: str | os.PathLike) -> list[GtRegion]:
    """Read one ICDAR-2015 ground-truth file (UTF-8, BOM allowed, blank lines skipped)."""
    from vkt.fsutil import read_utf8_lines

    return [parse_icdar_line(line, f"{Path(path).name} line {i}") for i, line in read_utf8_lines(path, "ground-truth file")]


def gt_path_for(image: Path, root: Path) -> Path | None:
    """ICDAR naming: ``img_12.jpg`` -> ``gt_img_12.txt``, looked for beside the image, in ``root`` and ``root/gt``."""
    name = f"gt_{image.stem}.txt"
    for folder in (image.parent, root, root / "gt"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_icdar_dir(root: str | os.PathLike) -> list[tuple[Path, list[GtRegion]]]:
    """Pairs (image path, GT regions) for every image in ``root`` (or ``root/images``) that has a
    ``gt_<stem>.txt``. Raises InputError if the folder is missing, holds no images, or an image lacks GT."""
    from vkt.runtime.image import IMAGE_SUFFIXES

    r = Path(root)
    if not r.is_dir():
        raise InputError(f"data folder not found: {str(r)!r}; expected a folder of images and gt_<image>.txt files")
    img_dir = r / "images" if (r / "images").is_dir() else r
    images = sorted(f for f in img_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"no images in {str(img_dir)!r}; expected ICDAR-style images with gt_<image>.txt labels")
    out, missing = [], []
    for im in images:
        gt = gt_path_for(im, r)
        if gt is None:
            missing.append(im.name)
        else:
            out.append((im, load_icdar_gt(gt)))
    if missing:
        raise InputError(f"{len(missing)} image(s) in {str(img_dir)!r} have no gt_<name>.txt label file: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return out


# ---- matching ------------------------------------------------------------------------------------
def _polygon(pts: Any) -> Any:
    from shapely.geometry import Polygon
    from shapely.validation import make_valid

    a = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    if len(a) < 3:
        raise InputError(f"a polygon needs at least 3 points, got {len(a)}")
    poly = Polygon(a)
    return poly if poly.is_valid else make_valid(poly)


def iou_matrix(dets: Sequence[Any], gts: Sequence[Any]) -> np.ndarray:
    """Polygon IoU [len(dets), len(gts)] (float64) via shapely."""
    dp, gp = [_polygon(d) for d in dets], [_polygon(g) for g in gts]
    out = np.zeros((len(dp), len(gp)))
    for i, d in enumerate(dp):
        for j, g in enumerate(gp):
            if not d.intersects(g):
                continue
            inter = d.intersection(g).area
            union = d.area + g.area - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def evaluate_image(dets: Sequence[Any], gts: Sequence[GtRegion | Any], iou_thresh: float = 0.5,
                   dont_care_overlap: float = 0.5) -> ImageResult:
    """Match one image's detections (polygons [K, 2]) to its ground truth (GtRegion or bare polygons)."""
    gts = [g if isinstance(g, GtRegion) else GtRegion(np.asarray(g, dtype=np.float32)) for g in gts]
    care = [g.polygon for g in gts if not g.dont_care]
    ignore = [_polygon(g.polygon) for g in gts if g.dont_care]
    kept = list(range(len(dets)))
    if ignore:
        kept = []
        for i, d in enumerate(dets):
            dp = _polygon(d)
            inside = max((dp.intersection(g).area for g in ignore), default=0.0)
            if dp.area == 0 or inside / dp.area <= dont_care_overlap:
                kept.append(i)
    iou = iou_matrix([dets[i] for i in kept], care)
    pairs = []
    if iou.size:
        cand = np.argwhere(iou >= iou_thresh)
        order = np.argsort(-iou[cand[:, 0], cand[:, 1]], kind="stable")
        used_d, used_g = set(), set()
        for k in order:
            d, g = (int(v) for v in cand[k])
            if d not in used_d and g not in used_g:
                used_d.add(d)
                used_g.add(g)
                pairs.append((kept[d], g, float(iou[d, g])))
    return ImageResult(len(kept), len(care), len(pairs), pairs)


def evaluate(dets: Iterable[Sequence[Any]], gts: Iterable[Sequence[GtRegion | Any]], names: Sequence[str] | None = None,
             iou_thresh: float = 0.5) -> dict[str, Any]:
    """Data-set precision / recall / hmean over paired per-image detections and ground truth.

    Returns ``{"precision", "recall", "hmean", "detections", "ground_truth", "matches", "iou_thresh",
    "images": {name: per-image dict}}``; names default to the image index.
    """
    dets, gts = list(dets), list(gts)
    if len(dets) != len(gts):
        raise InputError(f"got detections for {len(dets)} images but ground truth for {len(gts)}")
    names = list(names) if names is not None else [str(i) for i in range(len(dets))]
    per = {n: evaluate_image(d, g, iou_thresh) for n, d, g in zip(names, dets, gts)}
    m = sum(r.n_match for r in per.values())
    nd = sum(r.n_det for r in per.values())
    ng = sum(r.n_gt for r in per.values())
    p, r, h = prh(m, nd, ng)
    return {"precision": p, "recall": r, "hmean": h, "detections": nd, "ground_truth": ng, "matches": m,
            "iou_thresh": iou_thresh, "images": {n: res.to_dict() for n, res in per.items()}}


def hmean_between(a: Iterable[Sequence[Any]], b: Iterable[Sequence[Any]], iou_thresh: float = 0.5) -> float:
    """Agreement of two detectors: hmean of ``a`` scored against ``b`` taken as ground truth."""
    return evaluate(a, b, iou_thresh=iou_thresh)["hmean"]


def save_json(result: Mapping[str, Any], path: str | os.PathLike) -> None:
    import json

    from vkt.fsutil import atomic_write_text

    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")
