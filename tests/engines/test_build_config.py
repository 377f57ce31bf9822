"""BuildConfig validation and module selection: no TensorRT needed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from vkt.engines import BuildConfig, load_module, normalize_sm
from vkt.errors import BackendError, InputError


@pytest.mark.parametrize("kwargs, match", [
    ({"workspace_bytes": 0}, "workspace_bytes must be a positive number of bytes"),
    ({"workspace_bytes": 1.5}, "workspace_bytes"),
    ({"exclude_lean_runtime": True}, "needs version_compatible=True"),
    ({"builder_optimization_level": 9}, r"in \[0, 5\]"),
    ({"precision": "int4"}, "precision must be one of"),
    ({"compute_capabilities": ("SM89", "sm89")}, "twice"),
    ({"compute_capabilities": ("CURRENT", "SM89")}, "only target"),
    ({"compute_capabilities": ("ampere",)}, "must look like 'SM89'"),
])
def test_bad_config_values_are_named(kwargs, match):
    with pytest.raises(InputError, match=match):
        BuildConfig(**kwargs)


def test_config_normalises_compute_capabilities():
    assert BuildConfig(compute_capabilities="8.9").compute_capabilities == ("SM89",)
    assert [normalize_sm(v) for v in ("sm75", "12.0", 86, "current")] == ["SM75", "SM120", "SM86", "CURRENT"]
    d = BuildConfig(workspace_bytes=1 << 30, compute_capabilities=("SM89",)).to_dict()
    assert d["workspace_bytes"] == 1 << 30 and d["compute_capabilities"] == ["SM89"] and d["strongly_typed"] is True


def test_unknown_module_is_a_backend_error():
    with pytest.raises(BackendError, match="unknown TensorRT module 'tensorrt9'"):
        BuildConfig(module="tensorrt9")
    with pytest.raises(BackendError, match="expected one of"):
        load_module("trt")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="full TensorRT is installed here")
def test_missing_module_names_the_pip_package():
    with pytest.raises(BackendError, match="pip install tensorrt"):
        load_module("tensorrt")


def test_importing_engines_loads_no_tensorrt_and_no_torch():
    code = ("import sys, vkt.engines, vkt.cli.build; "
            "bad = [m for m in ('tensorrt', 'tensorrt_rtx', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
