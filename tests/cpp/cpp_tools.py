"""Building and running cpp/ (vkt_cpp) from the tests: the C++ in-process runtime, checked against vkt.runtime.

The build needs g++, cmake, the openvino wheel (its C++ headers, libraries and CMake config) and the Debian
packages libopencv-dev, libpolyclipping-dev and nlohmann-json3-dev; without one of them the tests skip, naming it.
VKT_CPP_BUILD=<folder> reuses (and updates) a build folder instead of a fresh temporary one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "cpp"
# cmake's "Could NOT find X" / missing package-config text -> the Debian package that provides X
PACKAGES = (("OpenCV", "libopencv-dev"), ("polyclipping", "libpolyclipping-dev"), ("nlohmann_json", "nlohmann-json3-dev"),
            ("OpenVINO", "openvino (pip install openvino)"))


def openvino_cmake_dir() -> Path | None:
    """The openvino wheel's CMake config folder (``<site-packages>/openvino/cmake``), or None without the wheel."""
    try:
        import openvino
    except ImportError:
        return None
    d = Path(openvino.__file__).parent / "cmake"
    return d if (d / "OpenVINOConfig.cmake").is_file() else None


def build_vkt_cpp(build: Path, *extra: str) -> Path:
    """Configure and build cpp/ into ``build``; skip naming what is missing; returns the vkt_cpp binary."""
    missing = [t for t in ("g++", "cmake") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} to build cpp/ (apt-get install g++ cmake)")
    ov = openvino_cmake_dir()
    if ov is None:
        pytest.skip("needs the openvino wheel (its C++ headers and CMake config) to build cpp/: pip install openvino")
    # A folder configured before (e.g. by .ci/run) keeps its generator; a new one takes Ninja where there is one.
    gen = ["-G", "Ninja"] if shutil.which("ninja") and not (build / "CMakeCache.txt").exists() else []
    conf = subprocess.run(["cmake", "-S", str(SRC), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
                           f"-DOpenVINO_DIR={ov}", *extra], capture_output=True, text=True, timeout=300, check=False)
    if conf.returncode != 0:
        text = conf.stdout + conf.stderr
        for needle, pkg in PACKAGES:
            if f"Could NOT find {needle}" in text or f'provided by "{needle}"' in text:
                pytest.skip(f"needs {pkg} to build cpp/ (apt-get install -y {pkg})")
        pytest.fail(f"cmake configure failed:\n{text[-3000:]}")
    make = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, timeout=900, check=False)
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    return build / "vkt_cpp"


def run_cpp(binary: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False)


def run_json(binary: Path, *args: str, timeout: int = 300) -> list[dict]:
    """vkt_cpp's JSON lines (it must exit 0)."""
    p = run_cpp(binary, *args, timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
