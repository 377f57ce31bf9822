"""benchmarks/bench_triton.py: the process-tree RSS it reports equals psutil's sum over the same tree."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

_root = Path(__file__).parents[1]
sys.path.insert(0, str(_root))  # bench_triton imports benchmarks.schema / benchmarks.tritonserver
_spec = importlib.util.spec_from_file_location("vkt_bench_triton", _root / "benchmarks" / "bench_triton.py")
bench = sys.modules.setdefault("vkt_bench_triton", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(bench)


def test_tree_rss_counts_the_children_as_psutil_does():
    psutil = pytest.importorskip("psutil")
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                             "'import time; x = bytearray(64 << 20); time.sleep(30)'])"])
    try:
        p = psutil.Process(proc.pid)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until the grandchild holds its 64 MiB
            kids = p.children(recursive=True)
            if kids and kids[0].memory_info().rss > 64 << 20:
                break
            time.sleep(0.1)
        def tree() -> float:
            return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20

        before = tree()
        got = bench.tree_rss_mb(proc.pid)
        after = tree()
        # the grandchild's 64 MiB counted; psutil's reads bracket ours (pages may still move under load)
        assert got > 64 and min(before, after) - 2 < got < max(before, after) + 2
    finally:
        for q in psutil.Process(proc.pid).children(recursive=True):
            q.kill()
        proc.kill()
        proc.wait()
    assert bench.tree_rss_mb(proc.pid) is None  # gone
