"""OvRunner: OpenVINO on CPU, with the bundle's shape profile as dynamic bounds and FP32 that means FP32."""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import BackendError, ModelError
from vkt.runtime.base import Runner
from vkt.specs import ExportSpec

MISSING = "the OpenVINO backend needs the openvino package: pip install 'vkt[openvino]'"
# OpenVINO's CPU plugin computes in bf16 by default on CPUs with AVX-512 BF16 / AMX: "fp32" must mean f32.
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
# Layers whose runtime precision says what a graph really runs in (the rest are data movement and activations).
COMPUTE_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatMul")


@functools.lru_cache(maxsize=1)
def shared_core() -> Any:
    """The process's one ``openvino.Core``. Its CPU plugin sets the calling thread's alternate signal stack in memory
    of its own library; a Core dropped after use unloads that library and leaves the stack dangling, and the next
    signal (Ctrl-C) crashed the process (SIGSEGV) instead of exiting 130. One Core kept for the process keeps it loaded."""
    import openvino as ov

    return ov.Core()


# What the layers an INT8 graph leaves in float may run in, as an openvino placement records it ("float_precision"):
# f32, or bf16 where the CPU computes bf16 natively (OpenVINO's own default there).
FLOAT_PRECISIONS = ("auto", "f32", "bf16")


def native_bf16(device: str = "CPU") -> bool:
    """Whether OpenVINO computes bf16 natively on ``device`` (its OPTIMIZATION_CAPABILITIES list BF16: AVX-512 BF16 or
    AMX); False where openvino is not installed or the device is absent."""
    try:
        return "BF16" in shared_core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no openvino, no such device
        return False


def float_hint(recorded: str | None, device: str = "CPU") -> str:
    """The INFERENCE_PRECISION_HINT for a Q/DQ graph whose float layers were gated in ``recorded`` ("bf16"; "f32" or
    None: f32): bf16 only where ``device`` runs it natively, else f32 — more exact than what was gated, never less."""
    return "bf16" if recorded == "bf16" and native_bf16(device) else "f32"


def resolve_float_precision(requested: str | None, device: str = "CPU") -> str:
    """What an openvino placement's float layers run in on this machine, for ``requested`` ("auto": bf16 where the CPU
    has it natively, else f32; "f32"; "bf16": BackendError where the CPU lacks it, since the gate must measure what
    ships). None means "f32"."""
    if requested in (None, "f32"):
        return "f32"
    if requested not in FLOAT_PRECISIONS:
        raise BackendError(f"float precision must be one of {', '.join(FLOAT_PRECISIONS)}, got {requested!r}")
    native = native_bf16(device)
    if requested == "bf16" and not native:
        raise BackendError(f"this {device} has no native bf16 for OpenVINO (its capabilities lack BF16): use "
                           "--float-precision f32 (or auto)")
    return "bf16" if native else "f32"


class OvRunner(Runner):
    """An OpenVINO compiled model and one reused InferRequest behind the Runner interface.

    Args:
        model: path to an .onnx file (or an OpenVINO IR .xml), or a serialized ONNX graph (bytes).
        spec: ExportSpec to validate feeds against and whose profiles bound the dynamic axes (each
            named axis gets [min of the profiles' mins, max of their maxes]); default: read from the graph,
            axes left unbounded.
        threads: CPU inference threads (``INFERENCE_NUM_THREADS``; None: OpenVINO's default).
        device: OpenVINO device ("CPU" default; "GPU", "AUTO" where the plugin exists).
        precision: what the graph file is ("fp32", "fp16", "int8"), for :meth:`describe`.
        inference_precision: the precision hint for what the graph leaves in float: "f32" (default; so
            FP32 graphs and the float parts of Q/DQ graphs compute as on onnxruntime), "bf16" or "f16".
            Q/DQ-quantized convolutions run in int8 either way.
    """

    backend = "ov"

    def __init__(self, model: str | os.PathLike | bytes, spec: ExportSpec | None = None, threads: int | None = None,
                 device: str = "CPU", name: str | None = None, precision: str | None = None,
                 inference_precision: str = "f32"):
        super().__init__(spec, name or f"ov-{device.lower()}")
        self.model: Path | bytes = model if isinstance(model, bytes) else Path(model)
        if isinstance(self.model, Path) and not self.model.is_file():
            raise ModelError(f"model file not found: {self._what}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive integer (or unset: OpenVINO's default), got {threads!r}")
        if not isinstance(device, str) or not device:
            raise BackendError(f"device must be an OpenVINO device name such as 'CPU', got {device!r}")
        if inference_precision not in INFERENCE_PRECISIONS:
            raise BackendError(f"inference_precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                               f"got {inference_precision!r}")
        self.threads = threads
        self.device = device
        self.precision = precision
        self.inference_precision = inference_precision
        self.compiled: Any = None
        self._request: Any = None
        self._outs: list[tuple[str, Any]] = []
        self._version = ""

    def _activate(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise BackendError(MISSING) from None
        self._version = ov.__version__.split("-")[0]
        core = shared_core()
        devices = core.available_devices
        if self.device.split(".")[0] not in devices and self.device.split(":")[0] not in ("AUTO", "MULTI", "HETERO"):
            raise BackendError(f"OpenVINO {self._version} here has no device {self.device!r} (available: {', '.join(devices)})")
        try:
            model = core.read_model(self.model if isinstance(self.model, bytes) else str(self.model))
        except Exception as e:
            raise ModelError(f"OpenVINO cannot read {self._what}: {_message(e)}") from None
        if self._spec is None:
            onnx_file = isinstance(self.model, Path) and self.model.suffix == ".onnx"
            self._spec = ExportSpec.from_onnx(self.model) if onnx_file else _spec_from_model(model)
        spec = self._spec
        # 1. dynamic axes bounded by the profiles (OpenVINO sizes its buffers for the range and refuses sizes past it)
        bounds = _bounds(spec)
        if bounds:
            shapes = {}
            for t in spec.inputs:
                dims = [ov.Dimension(*bounds[d]) if isinstance(d, str) and d in bounds
                        else ov.Dimension() if isinstance(d, str) else ov.Dimension(d) for d in t.shape]
                shapes[t.name] = ov.PartialShape(dims)
            try:
                model.reshape(shapes)
            except Exception as e:
                raise ModelError(f"OpenVINO cannot give {self._what} the profile's shapes "
                                 f"{ {k: str(v) for k, v in shapes.items()} }: {_message(e)}") from None
        # 2. compile: latency hint (one request at a time), threads, float precision as asked
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
            if self.threads is not None:
                config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            compiled = core.compile_model(model, self.device, config)
        except Exception as e:
            raise ModelError(f"OpenVINO cannot compile {self._what} for {self.device}: {_message(e)}") from None
        outs = []
        for t in spec.outputs:
            try:
                outs.append((t.name, compiled.output(t.name)))
            except Exception:
                names = sorted(n for o in compiled.outputs for n in o.get_names())
                raise ModelError(f"{self._what} has no output {t.name!r} (OpenVINO sees {names})") from None
        self.compiled, self._outs = compiled, outs
        self._request = compiled.create_infer_request()

    @property
    def _what(self) -> str:
        return "the in-memory ONNX graph" if isinstance(self.model, bytes) else repr(str(self.model))

    def _deactivate(self) -> None:
        self._request = None
        self.compiled = None
        self._outs = []

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            # share_inputs: the synchronous call reads the caller's arrays in place; outputs are copies
            res = self._request.infer(dict(feed), share_inputs=True)
        except Exception as e:
            raise BackendError(f"OpenVINO failed to run {self.name}: {_message(e)}") from None
        return {name: res[port] for name, port in self._outs}

    def executed_precisions(self) -> dict[str, dict[str, int]]:
        """``{layer type: {runtime precision: count}}`` of the compute layers OpenVINO actually runs
        (read from the compiled model's runtime graph), e.g. ``{"Convolution": {"u8": 62, "f32": 2}}``."""
        if self.compiled is None:
            raise BackendError(f"runner {self.name!r} is not active: call activate() first")
        return executed_precisions(self.compiled)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(device=self.device, threads=self.threads)
        if self.precision:
            d["precision"] = self.precision
        if self._version:
            d["openvino"] = self._version
        if self.compiled is not None:
            d["threads"] = _property(self.compiled, "INFERENCE_NUM_THREADS")
            hint = _property(self.compiled, "INFERENCE_PRECISION_HINT")
            d["inference_precision"] = hint.get_type_name() if hasattr(hint, "get_type_name") else hint
            d["compute"] = {k: dict(v) for k, v in executed_precisions(self.compiled).items()}
        return d


def executed_precisions(compiled: Any) -> dict[str, dict[str, int]]:
    """Per compute layer type, how many layers run in each precision in an OpenVINO compiled model."""
    counts: dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        if kind in COMPUTE_LAYERS:
            counts.setdefault(kind, Counter())[info["runtimePrecision"].astype(str)] += 1
    return {k: dict(v) for k, v in counts.items()}


def _bounds(spec: ExportSpec) -> dict[str, tuple[int, int]]:
    """Named axis -> (lowest min, highest max) over the spec's profiles."""
    out: dict[str, tuple[int, int]] = {}
    for p in spec.profiles:
        for axis, (lo, _, hi) in p.axes.items():
            a, b = out.get(axis, (lo, hi))
            out[axis] = (min(a, lo), max(b, hi))
    return out


def _property(compiled: Any, key: str) -> Any:
    try:
        return compiled.get_property(key)
    except Exception:  # a device without that property
        return None


def _message(e: Exception) -> str:
    """OpenVINO's exception text without its C++ source locations."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith("Exception from src/") and not ln.startswith("Check '")]
    return " ".join(keep or lines)[:500]


def _spec_from_model(model: Any) -> ExportSpec:
    """An ExportSpec from an OpenVINO model's ports (unnamed dynamic dims become ``<tensor>_dim<i>``)."""
    from vkt.specs import TensorSpec

    def conv(ports: Any) -> tuple[TensorSpec, ...]:
        out = []
        for port in ports:
            name = port.get_any_name()
            ps = port.get_partial_shape()
            dims = tuple(d.get_length() if d.is_static else "".join(c if c.isalnum() or c == "_" else "_" for c in f"{name}_dim{i}")
                         for i, d in enumerate(ps))
            dtype = np.dtype(port.get_element_type().to_dtype()).name
            out.append(TensorSpec(name, dtype, dims))
        return tuple(out)

    return ExportSpec(conv(model.inputs), conv(model.outputs))
