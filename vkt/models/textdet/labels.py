"""DB training targets from text polygons: shrink map + mask, threshold map + mask (numpy / opencv / pyclipper).

Conventions: a polygon is ``[N, 2]`` float ``(x, y)`` in pixel units of the target map, pixel ``(i, j)``
sits at ``x = j, y = i``. Following DB (Liao et al., 2020, eq. 6) a polygon of area A and perimeter L
is offset by ``D = A (1 - r^2) / L``: inwards for the shrink map (text kernel), outwards for the
threshold map's border band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vkt.errors import InputError

IGNORE_TEXT = "###"  # ICDAR's "do not care" transcription
_CLIPPER_SCALE = 64.0  # pyclipper works on integers: scale up to keep sub-pixel offsets


@dataclass(frozen=True)
class DBLabels:
    """Targets for one image, every map ``[H, W]`` float32.

    shrink_map: 1 inside shrunk text polygons.
    shrink_mask: 0 over ignored / too small polygons (the loss skips those pixels), 1 elsewhere.
    threshold_map: thresh_min + (thresh_max - thresh_min) * (1 - dist / D) in the border band,
        thresh_min elsewhere.
    threshold_mask: 1 inside the dilated polygons (where the threshold L1 loss applies).
    """

    shrink_map: np.ndarray
    shrink_mask: np.ndarray
    threshold_map: np.ndarray
    threshold_mask: np.ndarray


def polygon_area_perimeter(polygon: np.ndarray) -> tuple[float, float]:
    """Absolute area (shoelace formula) and perimeter of a closed polygon ``[N, 2]``."""
    p = np.asarray(polygon, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    perimeter = float(np.linalg.norm(p - np.roll(p, -1, axis=0), axis=1).sum())
    return area, perimeter


def shrink_distance(polygon: np.ndarray, ratio: float = 0.4) -> float:
    """DB's offset ``D = A (1 - r^2) / L`` (0 for a degenerate polygon)."""
    _check_ratio(ratio)
    area, perimeter = polygon_area_perimeter(_check_polygon(polygon, 0))
    return 0.0 if perimeter <= 0 else area * (1.0 - ratio * ratio) / perimeter


def offset_polygon(polygon: np.ndarray, distance: float) -> list[np.ndarray]:
    """Offset a polygon by ``distance`` pixels (negative: shrink) with round joins.

    Returns the resulting polygons ``[M, 2]`` float64 (none when shrinking consumed it; several when
    it split a thin shape).
    """
    import pyclipper

    p = _check_polygon(polygon, 0)
    pco = pyclipper.PyclipperOffset(arc_tolerance=0.25 * _CLIPPER_SCALE)
    pco.AddPath(np.round(p * _CLIPPER_SCALE).astype(np.int64).tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return [np.asarray(q, dtype=np.float64) / _CLIPPER_SCALE for q in pco.Execute(distance * _CLIPPER_SCALE)]


def make_shrink_map(polygons: Sequence[np.ndarray], size: tuple[int, int], ignore: Sequence[bool] | None = None,
                    ratio: float = 0.4, min_text_size: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Shrink map and its mask, both ``[H, W]`` float32.

    A polygon is ignored (mask 0 over it, no kernel) when flagged, when its box is narrower than
    ``min_text_size`` pixels on either side, or when shrinking leaves nothing.
    """
    h, w = _check_size(size)
    _check_ratio(ratio)
    polys = [_check_polygon(p, i) for i, p in enumerate(polygons)]
    flags = _check_ignore(ignore, len(polys))
    gt = np.zeros((h, w), np.float32)
    mask = np.ones((h, w), np.float32)
    for poly, ignored in zip(polys, flags):
        extent = poly.max(axis=0) - poly.min(axis=0)  # (width, height) of the box
        kernels = [] if ignored or extent.min() < min_text_size else offset_polygon(poly, -shrink_distance(poly, ratio))
        kernels = [k for k in kernels if len(k) >= 3]
        if not kernels:
            _fill(mask, poly, 0.0)
            continue
        for k in kernels:
            _fill(gt, k, 1.0)
    return gt, mask


def make_threshold_map(polygons: Sequence[np.ndarray], size: tuple[int, int], ignore: Sequence[bool] | None = None,
                       ratio: float = 0.4, thresh_min: float = 0.3, thresh_max: float = 0.7
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Threshold map and its mask, both ``[H, W]`` float32.

    Inside each (non-ignored) polygon dilated by D, a pixel at distance d from the nearest polygon
    edge (segment) scores ``1 - min(d / D, 1)``; overlapping polygons keep the maximum. The score
    is then mapped to ``[thresh_min, thresh_max]``; the mask is 1 inside the dilated polygons.
    """
    h, w = _check_size(size)
    _check_ratio(ratio)
    if not 0.0 <= thresh_min < thresh_max <= 1.0:
        raise InputError(f"expected 0 <= thresh_min < thresh_max <= 1, got thresh_min={thresh_min} thresh_max={thresh_max}")
    polys = [_check_polygon(p, i) for i, p in enumerate(polygons)]
    flags = _check_ignore(ignore, len(polys))
    canvas = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    for poly, ignored in zip(polys, flags):
        dist = shrink_distance(poly, ratio)
        if ignored or dist <= 0:
            continue
        for grown in offset_polygon(poly, dist):
            region = np.zeros((h, w), np.uint8)
            _fill(region, grown, 1)
            ys, xs = np.nonzero(region)
            if ys.size == 0:
                continue
            mask[ys, xs] = 1.0
            pts = np.stack([xs, ys], axis=1).astype(np.float64)  # [P, 2]
            score = 1.0 - np.minimum(_distance_to_edges(pts, poly) / dist, 1.0)
            canvas[ys, xs] = np.maximum(canvas[ys, xs], score.astype(np.float32))
    return (thresh_min + (thresh_max - thresh_min) * canvas).astype(np.float32), mask


def make_db_labels(polygons: Sequence[np.ndarray], size: tuple[int, int], ignore: Sequence[bool] | None = None,
                   texts: Sequence[str] | None = None, ratio: float = 0.4, min_text_size: float = 8.0,
                   thresh_min: float = 0.3, thresh_max: float = 0.7) -> DBLabels:
    """All four DB targets for one image of ``size = (H, W)``.

    ``ignore`` flags polygons to skip; alternatively ``texts`` marks those transcribed ``"###"``.
    """
    if texts is not None:
        if ignore is not None:
            raise InputError("give either ignore flags or texts, not both")
        if len(texts) != len(polygons):
            raise InputError(f"expected one text per polygon ({len(polygons)}), got {len(texts)}")
        ignore = [t == IGNORE_TEXT for t in texts]
    shrink, shrink_mask = make_shrink_map(polygons, size, ignore, ratio, min_text_size)
    thresh, thresh_mask = make_threshold_map(polygons, size, ignore, ratio, thresh_min, thresh_max)
    return DBLabels(shrink, shrink_mask, thresh, thresh_mask)


# ---- helpers --------------------------------------------------------------------------------------

def _distance_to_edges(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Euclidean distance ``[P]`` from each point ``[P, 2]`` to the closest edge segment of ``polygon``."""
    a = polygon  # [N, 2] segment starts
    b = np.roll(polygon, -1, axis=0)  # [N, 2] segment ends
    ab = b - a  # [N, 2]
    ap = points[:, None, :] - a[None, :, :]  # [P, N, 2]
    length2 = np.maximum((ab * ab).sum(-1), 1e-12)  # [N]
    t = np.clip((ap * ab[None]).sum(-1) / length2, 0.0, 1.0)  # [P, N] projection onto the segment
    nearest = a[None] + t[..., None] * ab[None]  # [P, N, 2]
    return np.linalg.norm(points[:, None, :] - nearest, axis=-1).min(axis=1)


def _fill(img: np.ndarray, polygon: np.ndarray, value: float) -> None:
    import cv2

    cv2.fillPoly(img, [np.round(polygon).astype(np.int32).reshape(-1, 1, 2)], value)


def _check_polygon(polygon: object, index: int) -> np.ndarray:
    try:
        p = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"polygon {index}: expected an [N, 2] array of numbers, got {type(polygon).__name__}") from None
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] < 3:
        raise InputError(f"polygon {index}: expected shape [N >= 3, 2], got {list(p.shape)}")
    if not np.isfinite(p).all():
        raise InputError(f"polygon {index}: coordinates must be finite, got {p.tolist()}")
    return p


def _check_size(size: object) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"size must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"size must be positive (height, width), got {size!r}")
    return h, w


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise InputError(f"shrink ratio must be in (0, 1), got {ratio!r}")


def _check_ignore(ignore: Sequence[bool] | None, n: int) -> list[bool]:
    if ignore is None:
        return [False] * n
    if len(ignore) != n:
        raise InputError(f"expected one ignore flag per polygon ({n}), got {len(ignore)}")
    return [bool(v) for v in ignore]
