"""examples/cpp: the C++17 client builds with CMake and, against a live `vkt serve` of PP-OCRv5, sends the
tensor it pre-processed itself (binary extension) and gets what the Python path gets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "examples" / "cpp"
skimage = pytest.importorskip("skimage")
PAGE = Path(skimage.__file__).parent / "data" / "page.png"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Path:
    """Configure and build examples/cpp in a temp dir; skip (saying what is missing) without the toolchain."""
    missing = [t for t in ("g++", "cmake") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} to build examples/cpp (apt-get install g++ cmake)")
    build = tmp_path_factory.mktemp("cpp-build")
    # Debug (-O0): a third less compile time than Release, and the client's loops are fast enough either way.
    conf = subprocess.run(["cmake", "-S", str(SRC), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug"],
                          capture_output=True, text=True, timeout=120, check=False)
    if conf.returncode != 0:
        text = conf.stdout + conf.stderr
        for pkg, needle in (("libcurl4-openssl-dev", "CURL"), ("nlohmann-json3-dev", "nlohmann_json")):
            if f"Could NOT find {needle}" in text or f'package configuration file provided by "{needle}"' in text:
                pytest.skip(f"needs {pkg} to build examples/cpp (apt-get install -y {pkg})")
        pytest.fail(f"cmake configure failed:\n{text[-3000:]}")
    make = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, timeout=300, check=False)
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    return build / "vkt_client"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from vkt.models import zoo

    return zoo.ppocrv5_det_mobile_bundle(tmp_path_factory.mktemp("cpp") / "ppocrv5")


@pytest.fixture(scope="module")
def server(bundle):
    proc = subprocess.Popen([sys.executable, "-m", "vkt", "serve", str(bundle), "--port", "0", "--threads", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert " on http://127.0.0.1:" in line, line
        yield line.rsplit(" on ", 1)[1].strip()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_cpp_client_binary_infer_matches_python(server, client, bundle, tmp_path):
    import cv2

    from vkt.eval.textdet import hmean_between
    from vkt.runtime.image import read_image
    from vkt.runtime.textdet import TextDetector, db_postprocess

    img = read_image(PAGE)
    ppm = tmp_path / "page.ppm"
    cv2.imwrite(str(ppm), img)  # the client reads binary PPM/PGM (no image library needed)
    run = subprocess.run([str(client), "--url", server, "--bundle", str(bundle), "--image", str(ppm),
                          "--dump-input", str(tmp_path / "x.f32"), "--dump-output", str(tmp_path / "y.f32"),
                          "--detect", str(PAGE)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1].removeprefix("SUMMARY "))

    with TextDetector(bundle, threads=2) as det:
        x, plans = det.pre([img])
        y = det.runner.infer({det.input_name: x})[det.output_name]
        want = det(img)[0]
    # 1. The resize rule (limit_side 736, round half-to-even to 32) gives the same shape; pixels agree to one
    #    level (OpenCV's fixed-point resize, emulated) on all but a few border pixels.
    assert summary["input_shape"] == list(x.shape) == [1, 3, 736, 1472]
    xc = np.fromfile(tmp_path / "x.f32", np.float32).reshape(x.shape)
    diff = np.abs(xc - x)
    assert diff.max() <= 1 / 127.5 + 1e-6 and (diff == 0).mean() > 0.999, (diff.max(), (diff == 0).mean())
    # 2. The output tensor came back over the binary extension with the model's shape and values.
    assert summary["shape"] == list(y.shape) and summary["output"] == det.output_name
    yc = np.fromfile(tmp_path / "y.f32", np.float32).reshape(y.shape)
    assert abs(summary["mean"] - float(y.mean())) < 1e-3 and np.abs(yc - y).mean() < 1e-3
    # 3. DB post-processing of the C++ client's tensor finds the same text lines as the Python path.
    got = db_postprocess(yc[0, 0], plans[0].src_size, det.params)
    assert len(want) == 45 and hmean_between([got.polygons], [want.polygons]) > 0.97
    # 4. The task endpoint, called from C++, answers the same detections as TextDetector.
    assert summary["detections"] == len(want)
