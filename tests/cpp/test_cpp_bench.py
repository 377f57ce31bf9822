"""What benchmarks/bench_cpp.py stands on: vkt_cpp --bench-stdin (its compiled model's settings, then one timed run
per path read from stdin, answered at once, so another process can take turns with it), the same OpenVINO settings
on both sides, and the paired statistics (turn order, median and its distribution-free confidence band, the
verdict)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cpp_tools import run_cpp


def _bench_cpp():
    """benchmarks/bench_cpp.py imported by path, as its script runs (benchmarks/ is not an installed package: a fresh
    clone's pytest cannot import it by name)."""
    spec = importlib.util.spec_from_file_location("_bench_cpp", Path(__file__).parents[2] / "benchmarks" / "bench_cpp.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_bench_cpp"] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


_b = _bench_cpp()
CppSide, median_ci95, ov_settings, paired, verdict = _b.CppSide, _b.median_ci95, _b.ov_settings, _b.paired, _b.verdict

pytest.importorskip("openvino")

SPLIT = ("decode_ms", "pre_ms", "infer_ms", "post_ms")


def test_bench_stdin_answers_each_line_before_the_next(vkt_cpp, ppocr_bundle, skimage_data):
    proc = subprocess.Popen([str(vkt_cpp), "--bundle", str(ppocr_bundle), "--threads", "1", "--bench-stdin"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        first = json.loads(proc.stdout.readline())  # the compiled model's settings come before any image
        rows = []
        for name in ("text.png", "astronaut.png"):  # the second path is sent only after the first answer came
            proc.stdin.write(f"{skimage_data / name}\n")
            proc.stdin.flush()
            rows.append(json.loads(proc.stdout.readline()))
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert first["settings"]["INFERENCE_NUM_THREADS"] == "1" and first["settings"]["INFERENCE_PRECISION_HINT"] == "f32"
    for name, r in zip(("text.png", "astronaut.png"), rows):
        assert r["image"].endswith(name)
        assert all(r[k] >= 0 for k in SPLIT) and r["infer_ms"] > 0
        assert sum(r[k] for k in SPLIT) <= r["total_ms"] * 1.001 + 1e-3  # the stages lie inside the timed call


def test_bench_stdin_takes_no_image_arguments(vkt_cpp, ppocr_bundle, skimage_data):
    p = run_cpp(vkt_cpp, "--bundle", ppocr_bundle, "--bench-stdin", skimage_data / "page.png")
    assert p.returncode == 2 and "--bench-stdin" in p.stderr, p.stderr


def test_pairs_alternate_which_side_goes_first():
    calls = []
    sides = {"a": lambda path: calls.append("a") or {"total_ms": 1.0}, "b": lambda path: calls.append("b") or {"total_ms": 2.0}}
    runs = paired(sides, "x.png", 4, gap=0.0, extra=lambda path: calls.append("split"))
    assert calls == ["a", "b", "split", "b", "a", "split", "a", "b", "split", "b", "a", "split"]
    assert [r["total_ms"] for r in runs["b"]] == [2.0] * 4


def test_median_and_its_band_by_order_statistics():
    values = [float(v) for v in range(1, 21)]  # n = 20: k = floor((20 - 1.96 * sqrt(20)) / 2) = 5
    assert median_ci95(values[::-1]) == (10.5, 6.0, 15.0)
    assert median_ci95([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)  # too few for a band narrower than the range
    assert verdict(1.01, 1.2) == "C++ faster" and verdict(0.8, 0.99) == "C++ slower" and verdict(0.97, 1.04) == "within noise"


def test_cpp_compiles_the_model_with_the_settings_of_python_ovrunner(vkt_cpp, ppocr_bundle):
    """Read back from both compiled models (not from the config either side passed): equal, key by key."""
    from vkt.runtime.textdet import TextDetector

    cpp = CppSide(vkt_cpp, ppocr_bundle, threads=2)
    try:
        with TextDetector(ppocr_bundle, backend="ov", threads=2) as det:
            python = ov_settings(det.runner.compiled)
    finally:
        cpp.close()
    assert python["PERFORMANCE_HINT"] == "LATENCY" and python["INFERENCE_NUM_THREADS"] == "2"
    assert len(python) >= 8 and cpp.settings == python


def test_cpp_runs_an_int8_graph_gated_in_bf16_with_the_settings_of_python(vkt_cpp, ppocr_bundle, tmp_path):
    """An openvino placement whose meta says its float layers were gated in bf16: both sides compile it with the same
    settings, read back (bf16 where the CPU has it natively, else f32); one without the meta stays f32 on both."""
    import shutil

    from vkt.bundle import Bundle
    from vkt.runtime import make_runner
    from vkt.runtime.openvino import native_bf16

    for meta, want in (({"placement": "openvino", "float_precision": "bf16"}, "bf16" if native_bf16() else "f32"),
                       ({"placement": "openvino"}, "f32")):
        bundle = tmp_path / f"b{len(meta)}.vkt"
        shutil.copytree(ppocr_bundle, bundle)
        # a stand-in Q/DQ graph (the FP32 graph under the int8 role): the settings are what is compared
        Bundle.load(bundle).add_file(bundle / "model.onnx", "model.int8.openvino.onnx", role="int8 qdq onnx", meta=meta)
        cpp = CppSide(vkt_cpp, bundle, threads=2, precision="int8")
        try:
            with make_runner(bundle, "ov", "int8", threads=2) as r:
                python = ov_settings(r.compiled)
        finally:
            cpp.close()
        assert python["INFERENCE_PRECISION_HINT"] == want and cpp.settings == python
