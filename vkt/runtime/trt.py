"""TrtRunner: a TensorRT (10/11) or TensorRT-RTX plan behind the Runner interface, device memory via cuda-python.

Nothing is imported at module import time. ``activate()`` first reads the plan and checks for a usable
NVIDIA GPU (cuda-python + ``cudaGetDeviceCount``) and only then imports TensorRT: TensorRT-RTX's runtime
segfaults when it deserializes a plan on a machine without a GPU, so that must never be reached.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import BackendError, ModelError, ShapeError
from vkt.log import get_logger
from vkt.runtime.base import Runner
from vkt.runtime.gpu import DeviceBuffer, PinnedBuffer, check, require_gpu
from vkt.runtime.trt_plan import (
    MODULES,
    TrtLog,
    bundle_meta,
    check_plan_file,
    import_trt,
    read_plan,
    spec_from_engine,
    with_engine_profiles,
)
from vkt.specs import ExportSpec

log = get_logger(__name__)


class TrtRunner(Runner):
    """Runs a serialized TensorRT plan.

    Args:
        plan: path to a ``.plan`` file, or its bytes.
        spec: ExportSpec to validate feeds against (default: read from the engine at activate()).
        name: runner name for reports.
        module: "auto" (default: the builder module recorded in a bundle manifest beside the plan,
            else ``tensorrt``, else ``tensorrt_rtx``), "tensorrt" or "tensorrt_rtx". A plan runs only
            under the module (and version, unless version-compatible) that built it.
        device: CUDA device index (default 0).
        use_cuda_graph: replay inference as a CUDA graph. TensorRT 10/11: vkt captures
            ``execute_async_v3`` once per input-shape signature (re-captured when shapes or buffers
            change, so it pays off for static shapes). TensorRT-RTX: its built-in whole-graph capture
            (``IRuntimeConfig.cuda_graph_strategy``), which also handles dynamic shapes.
        pinned: stage host<->device copies through page-locked buffers (default True; faster,
            asynchronous copies).
        version_compatible: allow the host code of a version-compatible plan to run
            (``Runtime.engine_host_code_allowed``); None (default) reads it from the bundle manifest.

    Device buffers are allocated at the first call and grow only when a larger shape arrives; they are
    reused across calls. ``infer`` returns fresh numpy arrays owned by the caller.
    """

    backend = "trt"

    def __init__(self, plan: str | os.PathLike | bytes, spec: ExportSpec | None = None, name: str | None = None,
                 module: str = "auto", device: int = 0, use_cuda_graph: bool = False, pinned: bool = True,
                 version_compatible: bool | None = None):
        super().__init__(spec=spec, name=name)
        if isinstance(plan, (bytes, bytearray, memoryview)):
            if len(plan) == 0:
                raise ModelError("the plan bytes are empty")
            self.plan: Path | bytes = bytes(plan)
        elif isinstance(plan, (str, os.PathLike)):
            self.plan = Path(plan)
            check_plan_file(self.plan)
        else:
            raise ModelError(f"plan must be a path or bytes, got {type(plan).__name__}")
        if module not in ("auto", *MODULES):
            raise BackendError(f"unknown TensorRT module {module!r}; expected one of {['auto', *MODULES]}")
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise BackendError(f"device must be a CUDA device index >= 0, got {device!r}")
        self.module = module
        self.device = device
        self.use_cuda_graph = bool(use_cuda_graph)
        self.pinned = bool(pinned)
        self.version_compatible = version_compatible
        self._reset_state()

    def _reset_state(self) -> None:
        self._rt: Any = None  # cudart
        self._trt: Any = None
        self._runtime = self._engine = self._context = None
        self._stream: Any = None
        self._inputs: list[tuple[str, np.dtype]] = []
        self._outputs: list[tuple[str, np.dtype]] = []
        self._dev: dict[str, DeviceBuffer] = {}
        self._host: dict[str, PinnedBuffer] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._ranges: list[dict[str, tuple[tuple[int, ...], tuple[int, ...]]]] = []
        self._profile = 0
        self._graph: Any = None
        self._graph_exec: Any = None
        self._graph_key: tuple | None = None
        self._graph_ok = True
        self._rtx_graphs = False

    # ---- activation ------------------------------------------------------------------------------
    def _activate(self) -> None:
        # 1. The plan (no TensorRT involved): missing / emptied since __init__ -> ModelError.
        data = self.plan if isinstance(self.plan, bytes) else read_plan(self.plan)
        meta = {} if isinstance(self.plan, bytes) else bundle_meta(self.plan)
        # 2. A GPU, before anything imports TensorRT.
        self._rt = require_gpu(self.device, who="TrtRunner")
        try:
            self._load(data, meta)
        except BaseException:
            self._release()
            raise

    def _load(self, data: bytes, meta: Mapping[str, Any]) -> None:
        rt = self._rt
        check(rt.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
        # 3. TensorRT: the module that built the plan.
        wanted = self.module if self.module != "auto" else meta.get("builder", {}).get("module", "auto")
        self._trt = trt = import_trt(wanted)
        logs = TrtLog.get(trt)
        logs.errors.clear()
        self._runtime = trt.Runtime(logs)
        vc = self.version_compatible
        if vc is None:
            vc = bool(meta.get("flags", {}).get("version_compatible", False))
        if vc:
            self._runtime.engine_host_code_allowed = True  # version-compatible plans carry their own host code
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            where = repr(str(self.plan)) if isinstance(self.plan, Path) else "<bytes>"
            raise ModelError(f"{trt.__name__} {trt.__version__} cannot deserialize the plan {where}: "
                             f"{logs.summary() or 'no reason logged'} (truncated, or built by another TensorRT "
                             "module/version or for another GPU? rebuild it with 'vkt build')")
        # 4. Execution context (TensorRT-RTX: its own CUDA-graph capture through a runtime config).
        if self.use_cuda_graph and hasattr(self._engine, "create_runtime_config") and hasattr(trt, "CudaGraphStrategy"):
            rc = self._engine.create_runtime_config()
            rc.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self._context = self._engine.create_execution_context(rc)
            self._rtx_graphs = True
        else:
            self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context (out of GPU memory?): {logs.summary()}")
        self._stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        # 5. I/O tensors, spec and profile ranges.
        self._read_io()
        self._profile = 0
        self._shapes.clear()

    def _read_io(self) -> None:
        trt, eng = self._trt, self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        for n in names:
            try:
                dt = np.dtype(trt.nptype(eng.get_tensor_dtype(n)))
            except TypeError:
                raise BackendError(f"tensor {n!r} has TensorRT type {eng.get_tensor_dtype(n).name}, which numpy cannot hold; "
                                   "export the graph with float32/float16/int I/O") from None
            if eng.get_tensor_location(n) != trt.TensorLocation.DEVICE:
                raise BackendError(f"tensor {n!r} lives in host memory (a shape tensor); TrtRunner supports device tensors only")
            io = self._inputs if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT else self._outputs
            io.append((n, dt))
            self._dev[n] = DeviceBuffer(self._rt)
            if self.pinned:
                self._host[n] = PinnedBuffer(self._rt)
        self._ranges = []
        for p in range(eng.num_optimization_profiles):
            ranges = {}
            for n, _ in self._inputs:
                lo, _opt, hi = eng.get_tensor_profile_shape(n, p)
                ranges[n] = (tuple(lo), tuple(hi))
            self._ranges.append(ranges)
        if self._spec is None:
            self._spec = spec_from_engine(eng, self._inputs, self._outputs)
            return
        if set(self._spec.input_names) != {n for n, _ in self._inputs}:
            raise ModelError(f"the plan's inputs are {sorted(n for n, _ in self._inputs)} but the spec's are "
                             f"{sorted(self._spec.input_names)}: the plan was built from another graph")
        # The plan's profiles are the truth (it may have been built with other ranges than the bundle's spec).
        self._spec = with_engine_profiles(self._spec, eng)

    # ---- inference -------------------------------------------------------------------------------
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt, ctx = self._rt, self._context
        stream = self._stream
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        arrays = {}
        for name, dt in self._inputs:
            if name not in feed:
                raise ShapeError(f"missing input {name!r}; the plan takes {[n for n, _ in self._inputs]}")
            a = feed[name]
            if not isinstance(a, np.ndarray) or a.dtype != dt:
                raise ShapeError(f"input {name!r}: expected a numpy array of dtype {dt}, got "
                                 f"{a.dtype if isinstance(a, np.ndarray) else type(a).__name__}")
            arrays[name] = np.ascontiguousarray(a)
        # 1. Profile and input shapes (set only when they change: setting them has a cost).
        self._select_profile({n: a.shape for n, a in arrays.items()})
        for name, a in arrays.items():
            if self._shapes.get(name) != a.shape:
                if not ctx.set_input_shape(name, a.shape):
                    raise ShapeError(f"TensorRT rejected shape {a.shape} for input {name!r} (profile {self._profile}: "
                                     f"min {self._ranges[self._profile][name][0]}, max {self._ranges[self._profile][name][1]})")
                self._shapes[name] = a.shape
            self._dev[name].ensure(a.nbytes)
            ctx.set_tensor_address(name, self._dev[name].ptr)
        # 2. Output shapes follow from the input shapes; buffers grow when needed.
        out_shapes = {}
        for name, dt in self._outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"output {name!r} has a data-dependent shape {shape}; TrtRunner does not support "
                                   "output allocators (ops like NonZero/NMS)")
            out_shapes[name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            self._dev[name].ensure(nbytes)
            ctx.set_tensor_address(name, self._dev[name].ptr)
        # 3. Host -> device.
        for name, a in arrays.items():
            src = a.ctypes.data
            if self.pinned:
                buf = self._host[name]
                buf.ensure(a.nbytes)
                np.copyto(buf.view(a.dtype, a.shape), a)
                src = buf.ptr
            check(rt.cudaMemcpyAsync(self._dev[name].ptr, src, a.nbytes, h2d, stream), f"cudaMemcpyAsync(H2D {name})")
        # 4. Execute.
        self._execute()
        # 5. Device -> host, then wait.
        results: dict[str, np.ndarray] = {}
        staged = {}
        for name, dt in self._outputs:
            shape = out_shapes[name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            if self.pinned:
                buf = self._host[name]
                buf.ensure(nbytes)
                dst, staged[name] = buf.ptr, buf.view(dt, shape)
            else:
                results[name] = np.empty(shape, dt)
                dst = results[name].ctypes.data
            if nbytes:
                check(rt.cudaMemcpyAsync(dst, self._dev[name].ptr, nbytes, d2h, stream), f"cudaMemcpyAsync(D2H {name})")
        check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        for name, view in staged.items():
            results[name] = view.copy()  # the pinned buffer is reused by the next call
        return {name: results[name] for name, _ in self._outputs}

    def _select_profile(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        if len(self._ranges) <= 1:
            return
        def fits(r: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
            return all(all(lo <= s <= hi for s, lo, hi in zip(shapes[n], *r[n])) for n in shapes)
        if fits(self._ranges[self._profile]):
            return
        for p, r in enumerate(self._ranges):
            if fits(r):
                if not self._context.set_optimization_profile_async(p, int(self._stream)):
                    raise BackendError(f"TensorRT could not switch to optimization profile {p}")
                self._profile = p
                self._shapes.clear()  # shapes must be set again under the new profile
                self._drop_graph()
                return
        allowed = "; ".join(", ".join(f"{n} in [{list(lo)}, {list(hi)}]" for n, (lo, hi) in r.items()) for r in self._ranges)
        raise ShapeError(f"input shapes {dict(shapes)} fit no optimization profile of the plan (allowed: {allowed})")

    def _execute(self) -> None:
        ctx, handle = self._context, int(self._stream)
        if not self.use_cuda_graph or self._rtx_graphs or not self._graph_ok:
            if not ctx.execute_async_v3(handle):
                raise BackendError(f"TensorRT execute_async_v3 failed: {TrtLog.get(self._trt).summary() or 'no reason logged'}")
            return
        # A graph bakes in shapes and addresses: one graph per (shapes, buffers, profile), re-captured on change.
        key = (tuple(sorted(self._shapes.items())), tuple(b.ptr for b in self._dev.values()), self._profile)
        if key != self._graph_key:
            self._drop_graph()
            self._capture(key)  # its warm-up enqueue already computed this call's outputs
            return
        check(self._rt.cudaGraphLaunch(self._graph_exec, self._stream), "cudaGraphLaunch")

    def _capture(self, key: tuple) -> None:
        rt, ctx, stream = self._rt, self._context, self._stream
        # TensorRT's rule: enqueue once after shapes change, *then* capture, so that deferred shape work
        # is not baked into the graph. This first run also produces this call's outputs.
        if not ctx.execute_async_v3(int(stream)):
            raise BackendError("TensorRT execute_async_v3 failed")
        check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        try:
            check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                  "cudaStreamBeginCapture")
            ok = ctx.execute_async_v3(int(stream))
            graph = check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            if not ok:
                raise BackendError("execute_async_v3 failed during stream capture")
            self._graph = graph
            self._graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            self._graph_key = key
        except BackendError as e:
            log.warning("CUDA graph capture failed (%s); running without graphs", e)
            self._graph_ok = False
            self._drop_graph()

    def _drop_graph(self) -> None:
        rt = self._rt
        if self._graph_exec is not None:
            rt.cudaGraphExecDestroy(self._graph_exec)
        if self._graph is not None:
            rt.cudaGraphDestroy(self._graph)
        self._graph = self._graph_exec = self._graph_key = None

    # ---- teardown / reports ----------------------------------------------------------------------
    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        rt = self._rt
        if rt is not None:
            if self._stream is not None:
                rt.cudaStreamSynchronize(self._stream)
            self._drop_graph()
            for buf in [*self._dev.values(), *self._host.values()]:
                buf.free()
            if self._stream is not None:
                rt.cudaStreamDestroy(self._stream)
        # Context before engine before runtime: TensorRT objects must die in that order.
        self._context = None
        self._engine = None
        self._runtime = None
        spec = self._spec
        self._reset_state()
        self._spec = spec

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self._trt is not None:
            d["module"] = self._trt.__name__
            d["tensorrt_version"] = self._trt.__version__
        from vkt.runtime.gpu import gpu_info

        if self.is_active:
            d["gpu"] = gpu_info(self.device)
        d["cuda_graph"] = self.use_cuda_graph
        d["pinned"] = self.pinned
        return d
