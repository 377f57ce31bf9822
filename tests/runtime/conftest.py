"""Fixtures shared by the server tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SERVE_PROFILE = {"batch": (1, 1, 8), "height": (16, 64, 256), "width": (16, 64, 256)}


@pytest.fixture(scope="session")
def served_toy_bundle(tmp_path_factory, toy_onnx) -> Path:
    """The toy conv net imported as a bundle with a batch 1..8, 16..256 px profile (read only: servers load it)."""
    from vkt.export.onnx_import import import_onnx

    dest = tmp_path_factory.mktemp("served") / "toy"
    import_onnx(toy_onnx, dest, profile=SERVE_PROFILE)
    return dest
