"""COCO box AP through pycocotools: results conversion, a hand-computed AP, and input errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from vkt.errors import InputError  # noqa: E402
from vkt.eval.coco import coco_ap, coco_ground_truth, to_coco_results, write_results  # noqa: E402
from vkt.runtime.detection import Detections  # noqa: E402

GT_BOXES = np.array([[10, 10, 110, 110], [200, 200, 300, 300]], np.float32)   # two "large" boxes (area 1e4 > 96^2)


def gt():
    return coco_ground_truth([{"id": 7, "height": 400, "width": 400}], ["thing"], [GT_BOXES], [[1, 1]])


def det(boxes, scores, labels):
    return Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(labels, np.int64),
                      [""] * len(scores), (400, 400))


def test_perfect_detections_score_one():
    res = to_coco_results([det(GT_BOXES, [0.9, 0.8], [1, 1])], [7])
    assert res[0] == {"image_id": 7, "category_id": 1, "bbox": [10.0, 10.0, 100.0, 100.0], "score": 0.9}
    m = coco_ap(gt(), res)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["APl"] == pytest.approx(1.0)
    assert m["APs"] == -1 and m["APm"] == -1   # no small/medium objects: nothing to measure


def test_hand_computed_ap():
    # TP (IoU 1, 0.9), FP (0.8), TP at IoU 0.625 (0.7): 101-point interpolated precision gives
    # AP@[.5,.6] = (51 * 1 + 50 * 2/3) / 101 and AP@[.65..] = 51 / 101 (the second box is missed).
    boxes = [[10, 10, 110, 110], [320, 320, 380, 380], [200, 200, 300, 262.5]]
    m = coco_ap(gt(), to_coco_results([det(boxes, [0.9, 0.8, 0.7], [1, 1, 1])], [7]))
    high, low = (51 + 50 * 2 / 3) / 101, 51 / 101
    assert m["AP50"] == pytest.approx(high, abs=1e-4)
    assert m["AP75"] == pytest.approx(low, abs=1e-4)
    assert m["AP"] == pytest.approx((3 * high + 7 * low) / 10, abs=1e-4)


def test_category_mapping_files_and_empty(tmp_path):
    res = to_coco_results([det(GT_BOXES, [0.9, 0.8], [0, 0])], [7], category_ids=[1])
    path = write_results(res, tmp_path / "res.json")
    import json

    (tmp_path / "gt.json").write_text(json.dumps(gt()))
    assert coco_ap(tmp_path / "gt.json", path)["AP"] == pytest.approx(1.0)
    assert coco_ap(gt(), [])["AP"] == 0.0


def test_errors(tmp_path):
    with pytest.raises(InputError, match="2 detection sets but 1 image ids"):
        to_coco_results([det(GT_BOXES, [0.9, 0.8], [1, 1])] * 2, [7])
    with pytest.raises(InputError, match="class id 3 has no COCO category id"):
        to_coco_results([det(GT_BOXES[:1], [0.9], [3])], [7], category_ids={0: 1})
    with pytest.raises(InputError, match="image_id 8"):
        coco_ap(gt(), [{"image_id": 8, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(InputError, match="category_id 2"):
        coco_ap(gt(), [{"image_id": 7, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(InputError, match="needs image_id"):
        coco_ap(gt(), [{"image_id": 7}])
    with pytest.raises(InputError, match="not found"):
        coco_ap(tmp_path / "none.json", [])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        coco_ap(tmp_path / "bad.json", [])
    with pytest.raises(InputError, match="under 'annotations'"):
        coco_ap({"images": [], "categories": []}, [])
    with pytest.raises(InputError, match="xyxy"):
        coco_ground_truth([{"id": 1, "height": 9, "width": 9}], ["a"], [np.array([[5, 5, 1, 1]])], [[1]])
