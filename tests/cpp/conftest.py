"""Fixtures of the cpp/ tests: vkt_cpp built once per session (VKT_CPP_BUILD=<folder> reuses a build folder), and
the bundles and photos they run on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cpp_tools import build_vkt_cpp


@pytest.fixture(scope="session")
def vkt_cpp(tmp_path_factory) -> Path:
    build = Path(os.environ["VKT_CPP_BUILD"]) if os.environ.get("VKT_CPP_BUILD") else tmp_path_factory.mktemp("cpp-build")
    return build_vkt_cpp(build)


@pytest.fixture(scope="session")
def ppocr_bundle(tmp_path_factory) -> Path:
    """The real PP-OCRv5 mobile detector, imported as `vkt quickstart` does."""
    from vkt.models.zoo import ppocrv5_det_mobile_bundle

    return ppocrv5_det_mobile_bundle(tmp_path_factory.mktemp("cpp-ppocr") / "det.vkt")


@pytest.fixture(scope="session")
def skimage_data() -> Path:
    skimage = pytest.importorskip("skimage")
    return Path(skimage.__file__).parent / "data"
