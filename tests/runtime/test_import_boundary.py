"""The runtime's import boundary: a fresh process importing vkt.runtime must not load torch."""

import subprocess
import sys


def test_runtime_import_loads_no_torch():
    code = ("import sys, time; t = time.perf_counter(); import vkt.runtime, vkt.bundle, vkt.specs; "
            "dt = time.perf_counter() - t; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'tensorrt', 'tensorrt_rtx') if m in sys.modules); "
            "print(repr(heavy).replace(' ', ''), dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]", f"vkt.runtime imported {out[0]}"  # import time itself: benchmarks/bench_spine.py
