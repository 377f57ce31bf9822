"""DB label generation against hand-computed cases (numpy / opencv / pyclipper only: no torch)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyclipper")
pytest.importorskip("cv2")

from vkt.errors import InputError  # noqa: E402
from vkt.models.textdet import labels as L  # noqa: E402

# A 100 x 20 box: A = 2000, L = 240, r = 0.4 -> D = 2000 * (1 - 0.16) / 240 = 7.
RECT = np.array([[10, 10], [110, 10], [110, 30], [10, 30]], np.float64)


def test_shrink_distance_hand_computed():
    assert L.shrink_distance(RECT, 0.4) == pytest.approx(7.0)
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]])  # A = 100, L = 40 -> D = 2.1
    assert L.shrink_distance(square, 0.4) == pytest.approx(2.1)
    assert L.polygon_area_perimeter(RECT) == pytest.approx((2000.0, 240.0))


def test_shrunk_rectangle_is_inset_by_d():
    (kernel,) = L.offset_polygon(RECT, -7.0)
    assert kernel.min(axis=0) == pytest.approx([17, 17]) and kernel.max(axis=0) == pytest.approx([103, 23])
    gt, mask = L.make_shrink_map([RECT], (50, 130))
    # pixels x in 17..103 (87), y in 17..23 (7), both ends included by the fill
    assert gt.sum() == 87 * 7 and gt[17, 17] == 1 and gt[16, 17] == 0 and gt[23, 103] == 1 and gt[24, 103] == 0
    assert mask.min() == 1.0


def test_threshold_map_follows_distance_to_edges():
    t, m = L.make_threshold_map([RECT], (50, 130))
    row = 20  # the box's middle row; the left edge is x = 10, D = 7
    # on the edge: 0.7; 4 px outside: 0.3 + 0.4 * (1 - 4/7); 3 px inside: 0.3 + 0.4 * (1 - 3/7); >= D: 0.3
    assert t[row, 10] == pytest.approx(0.7)
    assert t[row, 6] == pytest.approx(0.3 + 0.4 * 3 / 7)
    assert t[row, 13] == pytest.approx(0.3 + 0.4 * 4 / 7)
    assert t[row, 17] == pytest.approx(0.3) and t[row, 60] == pytest.approx(0.3)
    assert t[row, 0] == pytest.approx(0.3)
    # the mask is the box dilated by D = 7: x from 3 to 117
    assert m[row, 2] == 0 and m[row, 3] == 1 and m[row, 117] == 1 and m[row, 118] == 0
    assert t.min() >= 0.3 - 1e-6 and t.max() <= 0.7 + 1e-6


def test_ignored_and_tiny_polygons_are_masked_out():
    tiny = np.array([[60, 40], [64, 40], [64, 44], [60, 44]], np.float64)  # 4 px < min_text_size 8
    lab = L.make_db_labels([RECT, tiny], (50, 130), texts=["###", "a"])
    assert lab.shrink_map.sum() == 0
    assert lab.shrink_mask[20, 60] == 0 and lab.shrink_mask[42, 62] == 0 and lab.shrink_mask[2, 2] == 1
    assert lab.threshold_mask[20, 60] == 0  # ignored: no threshold target
    assert lab.threshold_mask[42, 62] == 1  # too small for a kernel, still has a border
    assert lab.shrink_map.dtype == lab.threshold_map.dtype == np.float32


@pytest.mark.parametrize("call, match", [
    (lambda: L.make_shrink_map([np.zeros((2, 2))], (10, 10)), r"\[N >= 3, 2\]"),
    (lambda: L.make_shrink_map([RECT], (0, 10)), "positive"),
    (lambda: L.make_shrink_map([RECT], (50, 130), ratio=1.5), r"shrink ratio must be in \(0, 1\), got 1.5"),
    (lambda: L.make_threshold_map([RECT], (50, 130), thresh_min=0.8), "thresh_min < thresh_max"),
    (lambda: L.make_db_labels([RECT], (50, 130), texts=["a", "b"]), "one text per polygon"),
    (lambda: L.make_shrink_map([RECT * np.nan], (50, 130)), "finite"),
])
def test_bad_inputs_raise_input_error(call, match):
    with pytest.raises(InputError, match=match):
        call()
