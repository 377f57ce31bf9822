"""The lean runtime: numpy + onnxruntime, OpenVINO or TensorRT. Never imports torch (a test checks it)."""

from __future__ import annotations

import os
from typing import Any

from vkt.errors import BackendError
from vkt.runtime.base import Runner
from vkt.runtime.ort import OrtRunner

BACKENDS = {
    "ort": "onnxruntime, CPU execution provider",
    "ort-cuda": "onnxruntime-gpu, CUDA execution provider",
    "ort-trt": "onnxruntime-gpu, TensorRT execution provider",
    "trt": "TensorRT engine (.plan) through the TensorRT Python API",
    "ov": "OpenVINO, CPU device (pip install 'vkt[openvino]')",
}

__all__ = ["BACKENDS", "OrtRunner", "OvRunner", "Runner", "TrtRunner", "make_runner"]


def __getattr__(name: str) -> Any:  # TrtRunner / OvRunner import nothing heavy, but keep them lazy all the same
    if name == "TrtRunner":
        from vkt.runtime.trt import TrtRunner

        return TrtRunner
    if name == "OvRunner":
        from vkt.runtime.openvino import OvRunner

        return OvRunner
    raise AttributeError(name)


def make_runner(source: Any, backend: str = "ort", precision: str = "fp32", component: str = "model",
                threads: int | None = None, session_config: dict[str, str] | None = None) -> Runner:
    """A runner for a bundle (``vkt.bundle.Bundle`` or its folder) or a bare .onnx/.plan path.

    ``precision`` picks the bundle file: "fp32" (fp32 onnx), "fp16" (fp16 onnx), "int8" (int8 qdq onnx);
    backend "trt" takes the bundle's plan of that precision; backend "ov" (OpenVINO) takes the graph placed for
    OpenVINO (INT8: only a Q/DQ graph with placement "openvino" or none; its float layers run in the precision its
    gate scored, meta "float_precision": bf16 where the CPU has it natively, else f32). ``session_config``: onnxruntime session
    config entries for the onnxruntime backends (see ``OrtRunner``); ignored by "trt" and "ov".
    """
    from pathlib import Path

    from vkt.bundle import PRECISION_ROLES, Bundle

    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; expected one of {sorted(BACKENDS)}")
    if precision not in PRECISION_ROLES:
        raise BackendError(f"unknown precision {precision!r}; expected one of {sorted(PRECISION_ROLES)}")
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        source = Bundle.load(source)
    float_precision = None
    if isinstance(source, Bundle):
        spec = source.spec(component)
        if backend == "trt":
            plans = [e for e in source.files("plan", component) if e.meta.get("precision", "fp32") == precision]
            if not plans:
                raise BackendError(f"bundle {source.name!r} has no {precision} plan for {component!r}; build one with 'vkt build'")
            path = source.root / plans[-1].path
        elif backend == "ov":
            entry = _ov_entry(source, PRECISION_ROLES[precision], component)
            path = source.root / entry.path
            float_precision = entry.meta.get("float_precision")  # what its gate scored the float layers in
        else:
            # An INT8 bundle may hold one Q/DQ graph per placement: take the one written for this backend.
            role = PRECISION_ROLES[precision]
            path = source.root / source.entry(role, component, placement="ort" if backend == "ort" else "trt").path
        name = f"{backend}-{precision}"
    else:
        spec, path, name = None, Path(source), f"{backend}-{Path(source).stem}"
    if backend == "trt":
        from vkt.runtime.trt import TrtRunner

        return TrtRunner(path, spec=spec, name=name)
    if backend == "ov":
        from vkt.runtime.openvino import OvRunner, float_hint

        return OvRunner(path, spec=spec, threads=threads, name=name, precision=precision if spec is not None else None,
                        inference_precision=float_hint(float_precision))
    providers = {"ort": ("cpu",), "ort-cuda": ("cuda",), "ort-trt": ("tensorrt", "cuda")}[backend]
    return OrtRunner(path, providers=providers, threads=threads, spec=spec, name=name, session_config=session_config)


def _ov_entry(bundle: Any, role: str, component: str) -> Any:
    """The bundle's graph of ``role`` for OpenVINO: placement "openvino", else one without a placement. A graph
    placed for onnxruntime or TensorRT is not taken: its Q/DQ placement and accuracy gate were chosen for them."""
    entry = bundle.entry(role, component, placement="openvino")  # raises, listing the roles, when there is none
    if entry.meta.get("placement", "openvino") == "openvino":
        return entry
    placed = sorted({e.meta.get("placement", "?") for e in bundle.files(role, component)})
    raise BackendError(f"bundle {bundle.name!r} component {component!r} has no {role!r} graph for OpenVINO (its "
                       f"{role} graphs are placed for {', '.join(placed)}): add one with `vkt quantize BUNDLE --calib DIR "
                       "--target openvino`, or run OpenVINO in fp32 (--precision fp32), or INT8 on onnxruntime (--backend ort)")
