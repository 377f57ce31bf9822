"""NVIDIA GPU probing and device memory through cuda-python (``cuda.bindings.runtime``), imported lazily.

Everything here is safe to call on a machine without a GPU or a driver: probes return None / 0 and a
reason instead of crashing, so callers can fail with a clear BackendError *before* TensorRT's lean
runtime is touched (it segfaults when it deserializes a plan without a GPU).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from vkt.errors import BackendError

CUDA_PIP = "cuda-python"


def import_cudart() -> Any | None:
    """The cuda-python runtime module (``cuda.bindings.runtime``, or the pre-12.6 ``cuda.cudart``), or None."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6

        return cudart
    except Exception:  # ImportError, or an OSError from a broken install: treat both as "not usable"
        pass
    try:
        from cuda import cudart  # type: ignore[no-redef]  # cuda-python < 12.6

        return cudart
    except Exception:
        return None


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` tuple; raise BackendError naming ``what`` and the CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA call {what} failed: {error_text(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def error_text(err: Any) -> str:
    name = getattr(err, "name", str(err))
    cudart = import_cudart()
    if cudart is not None:
        try:
            _, msg = cudart.cudaGetErrorString(err)
            return f"{name} ({msg.decode() if isinstance(msg, bytes) else msg})"
        except Exception:
            pass
    return str(name)


def _driver_hint() -> str:
    """Why the driver-level check says there is (or is not) a GPU, for messages when cuda-python is absent."""
    if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"):
        return "an NVIDIA device node exists (/dev/nvidia0 or /dev/nvidiactl)"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15)
            if out.returncode == 0 and "GPU" in out.stdout:
                return "nvidia-smi lists a GPU"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return ""


def probe(device: int = 0) -> tuple[int, str]:
    """``(number of visible CUDA devices, reason when 0 or when ``device`` is out of range)``; never raises."""
    cudart = import_cudart()
    if cudart is None:
        hint = _driver_hint()
        if hint:
            return 0, f"{hint}, but cuda-python is not installed (pip install {CUDA_PIP})"
        return 0, "no NVIDIA GPU found (no /dev/nvidia0, no nvidia-smi) and cuda-python is not installed"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # a broken libcudart load surfaces here, not at import
        return 0, f"cuda-python cannot query devices ({type(e).__name__}: {e})"
    if int(err) != 0:
        # cudaErrorInsufficientDriver (35) is what a machine without the NVIDIA driver reports.
        return 0, f"no usable NVIDIA GPU: cudaGetDeviceCount failed with {error_text(err)}"
    if count <= 0:
        return 0, "no NVIDIA GPU: cudaGetDeviceCount found 0 devices"
    if not 0 <= device < count:
        return count, f"GPU index {device} is out of range: this machine has {count} CUDA device(s)"
    return count, ""


def require_gpu(device: int = 0, who: str = "TensorRT") -> Any:
    """Return cudart once device ``device`` is known to be usable; else raise BackendError saying why."""
    count, why = probe(device)
    if why:
        raise BackendError(f"{who} needs an NVIDIA GPU with its driver and cuda-python: {why}. "
                           "Run this on a GPU machine, or use the onnxruntime backend ('ort') here")
    cudart = import_cudart()
    assert cudart is not None and count > 0
    return cudart


def gpu_info(device: int = 0) -> dict[str, Any] | None:
    """``{"name", "compute_capability": "8.9", "sm": "SM89", "memory_bytes"}`` of one GPU, or None without one."""
    count, why = probe(device)
    if why:
        return None
    cudart = import_cudart()
    try:
        prop = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    except BackendError:
        return None
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"index": device, "name": name.rstrip("\x00"), "compute_capability": f"{prop.major}.{prop.minor}",
            "sm": f"SM{prop.major}{prop.minor}", "memory_bytes": int(prop.totalGlobalMem)}


class DeviceBuffer:
    """One device allocation that only grows: ``ensure(nbytes)`` reallocates when more is needed.

    Returns True from ``ensure`` when the address changed (callers must re-bind it). Sizes are bytes.
    """

    def __init__(self, cudart: Any):
        self._rt = cudart
        self.ptr = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> bool:
        if nbytes <= self.capacity and self.ptr:
            return False
        self.free()
        # Allocate at least 1 byte so that empty tensors still get a valid, non-null address.
        self.ptr = int(check(self._rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))
        self.capacity = max(int(nbytes), 1)
        return True

    def free(self) -> None:
        if self.ptr:
            check(self._rt.cudaFree(self.ptr), "cudaFree")
        self.ptr, self.capacity = 0, 0


class PinnedBuffer:
    """Page-locked host memory that only grows; ``view(dtype, shape)`` is a numpy array over its start."""

    def __init__(self, cudart: Any):
        self._rt = cudart
        self.ptr = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.capacity and self.ptr:
            return
        self.free()
        self.ptr = int(check(self._rt.cudaMallocHost(max(int(nbytes), 1)), f"cudaMallocHost({nbytes})"))
        self.capacity = max(int(nbytes), 1)

    def view(self, dtype: Any, shape: tuple[int, ...]) -> Any:
        import ctypes

        import numpy as np

        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        raw = (ctypes.c_ubyte * max(n, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=np.uint8, count=n).view(dt).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            check(self._rt.cudaFreeHost(self.ptr), "cudaFreeHost")
        self.ptr, self.capacity = 0, 0
