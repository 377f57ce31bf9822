"""One compiled model shared by 8 threads (one infer request each), 200 images per thread: every result equals
the serial run's, bit for bit, and the resident memory stays flat. The ASan + UBSan build runs the same (slow)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from cpp_tools import build_vkt_cpp, run_cpp, run_json

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def small(ppocr_bundle, skimage_data, tmp_path_factory):
    """(bundle, crops): PP-OCRv5 with limit_side_len 32 so that 64-96 px crops of page/text run unresized (fast)."""
    import cv2

    from vkt.runtime.image import read_image

    root = tmp_path_factory.mktemp("cpp-conc")
    bundle = shutil.copytree(ppocr_bundle, root / "small.vkt")
    m = json.loads((bundle / "manifest.json").read_text())
    m["preprocess"]["resize"]["limit_side_len"] = 32
    (bundle / "manifest.json").write_text(json.dumps(m))
    page, text = read_image(skimage_data / "page.png"), read_image(skimage_data / "text.png")
    crops = [page[100:196, 0:160], page[0:64, 100:292], text[100:164, 50:210], page[40:136, 200:328]]
    paths = []
    for i, c in enumerate(crops):
        paths.append(root / f"crop{i}.png")
        cv2.imwrite(str(paths[-1]), c)
    return bundle, paths


def check_threads(binary, bundle, paths, workers: int, repeat: int) -> dict:
    r = run_json(binary, "--bundle", bundle, "--threads", "2", "--workers", workers, "--repeat", repeat, *paths, timeout=600)[0]
    assert r["images"] == workers * repeat and r["mismatches"] == 0, r
    return r


def test_threads_sharing_one_model_match_serial_with_flat_memory(vkt_cpp, small):
    bundle, paths = small
    serial = run_json(vkt_cpp, "--bundle", bundle, "--threads", "2", "--each", *paths)
    assert sum(len(s["detections"]) for s in serial) >= 3  # the crops hold text: the comparison is not of nothing
    r = check_threads(vkt_cpp, bundle, paths, 8, 200)
    rss = r["rss_kb"]
    assert len(rss) >= 8, rss
    # After the first quarter (model compiled, every request and buffer size seen), memory does not grow.
    settled = max(rss[: len(rss) // 4])
    assert max(rss) - settled < 0.05 * settled, (settled, max(rss))


@pytest.mark.slow
def test_sanitizer_build_runs_clean(tmp_path_factory, small, ppocr_bundle, skimage_data):
    """cpp/ built with -DVKT_SANITIZE=ON (ASan + UBSan, halting on the first report): the parity run, the threads
    and the bad inputs run without a report."""
    binary = build_vkt_cpp(tmp_path_factory.mktemp("cpp-asan"), "-DVKT_SANITIZE=ON")
    # TBB_ENABLE_SANITIZERS: the wheel's TBB then loads tbbbind without RTLD_DEEPBIND, which ASan refuses.
    env = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
           "TBB_ENABLE_SANITIZERS": "1"}
    os.environ.update(env)
    try:
        bundle, paths = small
        page = skimage_data / "page.png"
        runs = [run_cpp(binary, "--bundle", ppocr_bundle, "--threads", "2", page, *paths),
                run_cpp(binary, "--bundle", bundle, "--threads", "2", "--workers", "4", "--repeat", "10", *paths),
                run_cpp(binary, "--bundle", ppocr_bundle, page, paths[0].parent / "absent.png"),
                run_cpp(binary, "--bundle", ppocr_bundle, "--precision", "int8", page)]
    finally:
        for k in env:
            os.environ.pop(k)
    for p, rc in zip(runs, (0, 0, 2, 2)):
        assert p.returncode == rc and "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr[-3000:]
