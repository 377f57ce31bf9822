"""ICDAR-2015-style P/R/hmean: matching rules on hand-computable cases, label loading, bad labels."""

from __future__ import annotations

import numpy as np
import pytest

from vkt.errors import InputError
from vkt.eval.textdet import (
    GtRegion,
    evaluate,
    evaluate_image,
    iou_matrix,
    load_icdar_dir,
    load_icdar_gt,
    parse_icdar_line,
    prh,
)


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def test_iou_of_shifted_rectangles():
    # 10x10 squares overlapping on 10x5: IoU = 50 / 150
    assert iou_matrix([rect(0, 0, 10, 10)], [rect(0, 5, 10, 15)])[0, 0] == pytest.approx(1 / 3)
    # a rotated square (diamond) inside its bounding square: area 2*5*5 = 50 of 100
    diamond = np.array([[5, 0], [10, 5], [5, 10], [0, 5]], np.float32)
    assert iou_matrix([diamond], [rect(0, 0, 10, 10)])[0, 0] == pytest.approx(0.5)
    # a self-intersecting "bow tie" label is repaired, not a crash
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], np.float32)
    assert 0 < iou_matrix([bowtie], [rect(0, 0, 10, 10)])[0, 0] < 1


def test_one_to_one_matching_and_threshold():
    gt = [rect(0, 0, 10, 10), rect(20, 0, 30, 10)]
    # two detections on the first GT: only one may match; IoU(rect(0,0,10,8)) = 0.8, the other 0.6
    dets = [rect(0, 0, 10, 6), rect(0, 0, 10, 8), rect(20, 0, 30, 10)]
    r = evaluate_image(dets, gt)
    assert (r.n_det, r.n_gt, r.n_match) == (3, 2, 2)
    assert {(d, g) for d, g, _ in r.pairs} == {(1, 0), (2, 1)}  # the better of the two wins
    # IoU exactly 0.5 counts (>= 0.5), just below does not
    assert evaluate_image([rect(0, 0, 10, 5)], [rect(0, 0, 10, 10)]).n_match == 1
    assert evaluate_image([rect(0, 0, 10, 4.9)], [rect(0, 0, 10, 10)]).n_match == 0


def test_dont_care_regions_are_ignored_both_ways():
    gt = [GtRegion(rect(0, 0, 10, 10), "hello"), GtRegion(rect(50, 50, 60, 60), "###", True)]
    dets = [rect(0, 0, 10, 10), rect(51, 51, 59, 59), rect(100, 100, 110, 110)]
    r = evaluate_image(dets, gt)
    # the detection inside the don't-care region is dropped; the stray one is a false positive
    assert (r.n_det, r.n_gt, r.n_match) == (2, 1, 1)
    p, rec, h = prh(r.n_match, r.n_det, r.n_gt)
    assert (p, rec) == (0.5, 1.0) and h == pytest.approx(2 / 3)


def test_dataset_totals_are_summed_not_averaged():
    gts = [[rect(0, 0, 10, 10)], [rect(0, 0, 10, 10), rect(20, 0, 30, 10), rect(40, 0, 50, 10)]]
    dets = [[rect(0, 0, 10, 10)], [rect(0, 0, 10, 10)]]
    res = evaluate(dets, gts, names=["a", "b"])
    assert res["precision"] == 1.0 and res["recall"] == pytest.approx(2 / 4)
    assert res["hmean"] == pytest.approx(2 * 0.5 / 1.5)
    assert res["images"]["b"]["recall"] == pytest.approx(1 / 3)
    assert evaluate([[]], [[]])["hmean"] == 1.0       # nothing to find, nothing found
    assert evaluate([[rect(0, 0, 1, 1)]], [[]])["precision"] == 0.0
    with pytest.raises(InputError, match="2 images but ground truth for 1"):
        evaluate([[], []], [[]])


def test_icdar_label_files(tmp_path):
    r = parse_icdar_line("377,117,463,117,465,130,378,130,Genaxis Theatre")
    assert r.polygon.shape == (4, 2) and r.text == "Genaxis Theatre" and not r.dont_care
    assert parse_icdar_line("1,2,3,4,5,6,7,8,a,b,c").text == "a,b,c"  # commas in the transcription
    assert parse_icdar_line("1,2,3,4,5,6,7,8,###").dont_care
    f = tmp_path / "gt_img_1.txt"
    f.write_bytes("\ufeff0,0,10,0,10,10,0,10,hi\n\n20,0,30,0,30,10,20,10,###\n".encode())
    regions = load_icdar_gt(f)
    assert [g.dont_care for g in regions] == [False, True]
    with pytest.raises(InputError, match="line 1"):
        parse_icdar_line("1,2,3,hello", "gt.txt line 1")
    with pytest.raises(InputError, match="must be numbers"):
        parse_icdar_line("a,2,3,4,5,6,7,8,x")
    bad = tmp_path / "gt_bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="UTF-8"):
        load_icdar_gt(bad)


def test_icdar_folder_loader(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "img_1.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "gt_img_1.txt").write_text("0,0,4,0,4,4,0,4,x\n")
    pairs = load_icdar_dir(tmp_path)
    assert len(pairs) == 1 and pairs[0][0].name == "img_1.png" and len(pairs[0][1]) == 1
    cv2.imwrite(str(tmp_path / "img_2.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="img_2.png"):
        load_icdar_dir(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_icdar_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        load_icdar_dir(tmp_path / "empty")


def test_label_readers_name_missing_and_non_utf8_files(tmp_path):
    from vkt.errors import InputError
    from vkt.eval.textdet import load_icdar_gt
    from vkt.training.textdet_data import read_label_file

    bad = tmp_path / "gt_a.txt"
    bad.write_bytes("0,0,9,0,9,9,0,9,caf\xe9\n".encode("latin-1"))
    good = tmp_path / "gt_b.txt"
    good.write_text("\ufeff0,0,9,0,9,9,0,9,ab,c\n\n1,1,5,1,5,5,1,5,###\n", encoding="utf-8")
    for reader, what in ((load_icdar_gt, "ground-truth file"), (read_label_file, "label file")):
        with pytest.raises(InputError, match=f"{what} not found: .*nope.txt"):
            reader(tmp_path / "nope.txt")
        with pytest.raises(InputError, match=f"{what} .*gt_a.txt.* is not UTF-8 text"):
            reader(bad)
    regions = load_icdar_gt(good)  # BOM dropped, blank line skipped, commas kept in the transcription
    assert [r.text for r in regions] == ["ab,c", "###"] and [r.dont_care for r in regions] == [False, True]
    polys, texts = read_label_file(good)
    assert texts == ["ab,c", "###"] and polys[1].tolist() == [[1, 1], [5, 1], [5, 5], [1, 5]]
