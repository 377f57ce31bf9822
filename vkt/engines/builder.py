"""ONNX -> strongly typed TensorRT / TensorRT-RTX plan, with every ExportSpec profile, and plans recorded in bundles."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vkt.engines.backend import LogCapture, TrtModule, load_module, progress_monitor
from vkt.engines.config import ROLE_PRECISION, BuildConfig
from vkt.errors import BackendError, BuildError, InputError, ModelError, SpecError
from vkt.log import get_logger, timed
from vkt.specs import ExportSpec

log = get_logger(__name__)
MAX_PARSER_ERRORS = 5


@dataclass
class BuildResult:
    """A serialized plan and what the bundle records about its build (``meta``: JSON-ready)."""

    plan: bytes
    meta: dict[str, Any] = field(default_factory=dict)


def build_engine(onnx_path: str | os.PathLike, spec: ExportSpec, config: BuildConfig | None = None,
                 output: str | os.PathLike | None = None) -> bytes:
    """Build a serialized plan from an ONNX file.

    Args:
        onnx_path: the ONNX graph (external-data files beside it are found by the parser).
        spec: its ExportSpec; every profile in ``spec.profiles`` becomes one optimization profile
            (in order: profile i of the spec is profile i of the engine).
        config: BuildConfig (default: ``BuildConfig()``).
        output: if given, the plan is also written there atomically.

    Returns:
        The plan bytes.

    Raises:
        ModelError: the ONNX file is missing or empty.
        BuildError: the parser rejects a node (the message names node, op and reason) or the build fails.
        BackendError: no usable TensorRT module.
    """
    result = build(onnx_path, spec, config)
    if output is not None:
        save_plan(result.plan, output)
    return result.plan


def save_plan(plan: bytes, path: str | os.PathLike) -> Path:
    """Write a plan atomically (a killed build never leaves a half plan a runner would trust)."""
    from vkt.fsutil import atomic_write_bytes

    p = Path(path)
    atomic_write_bytes(p, plan)
    return p


def build(onnx_path: str | os.PathLike, spec: ExportSpec, config: BuildConfig | None = None) -> BuildResult:
    """:func:`build_engine` returning the plan *and* its metadata (module, version, profiles, flags, timings)."""
    config = config or BuildConfig()
    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"ONNX file not found: {str(path)!r}" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise ModelError(f"ONNX file {str(path)!r} is empty")
    if not isinstance(spec, ExportSpec):
        raise InputError(f"spec must be a vkt.specs.ExportSpec, got {type(spec).__name__}")
    trt = load_module(config.module)
    logs = LogCapture.get(trt)
    logs.reset()
    t = trt.mod

    # 1. Network: strongly typed, so the precision is the graph's (TensorRT 11 and RTX are always strongly
    #    typed and keep the flag only for compatibility; TensorRT 10 needs it set).
    if not trt.is_rtx or "CURRENT" in config.compute_capabilities:
        # Full TensorRT times kernels on the GPU it builds for; say so before the builder fails obscurely.
        from vkt.runtime.gpu import probe

        count, why = probe()
        if not count and trt.is_rtx:
            raise BackendError(f"compute capability 'CURRENT' targets the GPU of the build machine, and there is none "
                               f"({why}); name the targets instead, e.g. compute_capabilities=('SM89',) (CLI: --sm SM89)")
        if not count:
            raise BackendError(f"{trt.name} {trt.version} builds on a GPU ({why}); to build ahead of time without one use "
                               "module 'tensorrt_rtx' (pip install tensorrt-rtx)")
    try:
        builder = t.Builder(logs.logger)
    except Exception as e:  # pybind raises when the factory returns null (no GPU / driver mismatch)
        raise BuildError(f"{trt.name} {trt.version} could not create a builder: {logs.error_summary() or e}") from None
    if builder is None:
        raise BuildError(f"{trt.name} {trt.version} could not create a builder: {logs.error_summary() or 'no reason logged'}")
    network = builder.create_network(_network_flags(trt))
    parser = t.OnnxParser(network, logs.logger)
    with timed(f"parse {path.name} ({trt.name} {trt.version})", log):
        ok = parser.parse_from_file(str(path))
    if not ok or parser.num_errors:
        raise BuildError(_parser_message(path, parser, trt))
    if network.num_layers == 0 and network.num_outputs == 0:
        # protobuf decodes many byte strings as an empty ModelProto, and the parser then "succeeds"
        raise BuildError(f"{trt.name} {trt.version} parsed {str(path)!r} but found no graph in it: "
                         "the file is not a readable ONNX model")
    _check_network(network, spec, path)

    # 2. Builder config: memory, flags, targets, profiles, timing cache.
    bconfig = builder.create_builder_config()
    if config.workspace_bytes is not None:
        bconfig.set_memory_pool_limit(t.MemoryPoolType.WORKSPACE, int(config.workspace_bytes))
    if config.builder_optimization_level is not None:
        bconfig.builder_optimization_level = int(config.builder_optimization_level)
    for flag, wanted in (("VERSION_COMPATIBLE", config.version_compatible), ("EXCLUDE_LEAN_RUNTIME", config.exclude_lean_runtime)):
        if wanted:
            if not hasattr(t.BuilderFlag, flag):
                raise BuildError(f"{trt.name} {trt.version} has no BuilderFlag.{flag}")
            bconfig.set_flag(getattr(t.BuilderFlag, flag))
    _set_compute_capabilities(bconfig, config, trt)
    profiles = _add_profiles(builder, bconfig, spec, network)
    cache = _TimingCache(config.timing_cache, trt, bconfig)
    cache.load()

    monitor = progress_monitor(trt)
    if monitor is not None:
        bconfig.progress_monitor = monitor

    # 3. Build.
    with timed(f"build plan from {path.name} ({len(profiles)} profile(s))", log) as tm:
        plan = builder.build_serialized_network(network, bconfig)
    if plan is None:
        raise BuildError(f"{trt.name} {trt.version} failed to build {str(path)!r}: {logs.error_summary() or 'no reason logged'}"
                         + _failure_hint(logs.errors, config, trt))
    data = bytes(plan)  # IHostMemory exposes the buffer protocol; copy out before TensorRT frees it
    del plan, monitor
    if not data:
        raise BuildError(f"{trt.name} {trt.version} built an empty plan from {str(path)!r}: {logs.error_summary() or 'no reason logged'}")
    cache.save()

    from vkt.runtime.gpu import gpu_info

    gpu = None if trt.is_rtx and "CURRENT" not in config.compute_capabilities else gpu_info()
    meta = {
        "builder": {"module": trt.name, "package": trt.package, "version": trt.version},
        "precision": config.precision or "fp32",
        "profiles": profiles,
        "compute_capabilities": list(config.compute_capabilities) if trt.is_rtx else ([gpu["sm"]] if gpu else []),
        "flags": config.flags(),
        "workspace_bytes": config.workspace_bytes,
        "builder_optimization_level": config.builder_optimization_level,
        "timing_cache": cache.report(),
        "build_seconds": round(tm["seconds"], 3),
        "plan_bytes": len(data),
        "gpu": gpu,  # the GPU the plan was built on; None for TensorRT-RTX's ahead-of-time (CPU) build
    }
    log.info("plan: %.1f KiB, %s %s, %d profile(s)", len(data) / 1024, trt.name, trt.version, len(profiles))
    return BuildResult(data, meta)


def build_bundle_plan(bundle: Any, config: BuildConfig | None = None, component: str = "model",
                      source_role: str = "fp32 onnx", name: str | None = None, spec: ExportSpec | None = None) -> Any:
    """Build a plan from one ONNX file of a bundle and add it to the bundle (role "plan").

    Args:
        bundle: a ``vkt.bundle.Bundle`` or its folder.
        config: BuildConfig; its ``precision`` defaults to the source role's ("fp32 onnx" -> "fp32",
            "fp16 onnx" -> "fp16", "int8 qdq onnx" -> "int8") and must agree with it when given.
        component: bundle component ("model"; SD bundles have "unet", "vae_decoder", ...).
        source_role: which ONNX of the component to build from.
        name: file name inside the bundle (default ``"<component>.<precision>.plan"``; an existing
            file of that name is replaced).
        spec: override the component's spec (e.g. other profiles); default: the bundle's.

    Returns:
        The new ``vkt.bundle.FileEntry``; its ``meta`` holds builder module/version, precision,
        profiles, compute capabilities, flags, timing-cache report, build seconds and GPU (or None).
    """
    from vkt.bundle import Bundle

    config = config or BuildConfig()
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if source_role not in ROLE_PRECISION:
        raise InputError(f"source_role must be one of {sorted(ROLE_PRECISION)}, got {source_role!r}")
    implied = ROLE_PRECISION[source_role]
    if config.precision not in (None, implied):
        raise InputError(f"precision {config.precision!r} does not match the source {source_role!r} ({implied}): "
                         "networks are strongly typed, so the plan has the graph's precision; pick the matching ONNX")
    if config.precision is None:
        from dataclasses import replace

        config = replace(config, precision=implied)
    onnx_entry = bundle.entry(source_role, component, placement="trt")  # INT8: the Q/DQ placed for TensorRT
    spec = spec or bundle.spec(component)
    result = build(bundle.root / onnx_entry.path, spec, config)
    meta = {**result.meta, "source": {"path": onnx_entry.path, "role": source_role, "sha256": onnx_entry.sha256}}
    fname = name or f"{component}.{config.precision}.plan"
    entry = bundle.add_file(result.plan, fname, role="plan", component=component, meta=meta)
    log.info("added %s to bundle %s", fname, bundle.name)
    return entry


# ---- helpers -------------------------------------------------------------------------------------
def _network_flags(trt: TrtModule) -> int:
    flag = getattr(trt.mod.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _failure_hint(errors: list[str], config: BuildConfig, trt: TrtModule) -> str:
    text = " ".join(errors)
    if "libnvinfer_lean" in text and config.version_compatible and not config.exclude_lean_runtime:
        # Seen with tensorrt-rtx 1.7 from PyPI: it ships no lean runtime to embed in the plan.
        return (f". {trt.package} has no lean runtime to embed: also set exclude_lean_runtime=True "
                "(CLI: --exclude-lean-runtime)")
    if "OutOfMemory" in text and config.workspace_bytes is not None:
        return (f". The workspace limit ({config.workspace_bytes / 2**20:.0f} MiB) may be too small for the largest "
                "profile shapes: raise workspace_bytes (CLI: --workspace-mb) or shrink the profile's max")
    return ""


def _parser_message(path: Path, parser: Any, trt: TrtModule) -> str:
    n = parser.num_errors
    if n == 0:
        return f"{trt.name} {trt.version} could not parse {str(path)!r} and reported no error"
    parts = []
    for i in range(min(n, MAX_PARSER_ERRORS)):
        e = parser.get_error(i)
        code = getattr(e.code(), "name", str(e.code()))
        desc = " ".join(str(e.desc()).split())[:300]
        if e.node() >= 0:
            # node_name()/node_operator() exist in TensorRT >= 10 and TensorRT-RTX; older parsers give the index only
            node_name = e.node_name() if hasattr(e, "node_name") else "?"
            op = e.node_operator() if hasattr(e, "node_operator") else "?"
            parts.append(f"node #{e.node()} {node_name!r} (op {op}): {code}: {desc}")
        else:
            parts.append(f"{code}: {desc}")
    more = f" (+{n - MAX_PARSER_ERRORS} more)" if n > MAX_PARSER_ERRORS else ""
    hint = ""
    bad_file = getattr(trt.mod.ErrorCode, "MODEL_DESERIALIZE_FAILED", None)
    if bad_file is not None and any(parser.get_error(i).code() == bad_file for i in range(min(n, MAX_PARSER_ERRORS))):
        hint = " (the file is not a readable ONNX model)"
    return f"{trt.name} {trt.version} cannot parse {str(path)!r}{hint}: " + "; ".join(parts) + more


def _check_network(network: Any, spec: ExportSpec, path: Path) -> None:
    """The parsed network's inputs must be the spec's (names, ranks, static sizes): profiles are set by name."""
    net_inputs = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        net_inputs[tensor.name] = tensor
        if getattr(tensor, "is_shape_tensor", False):
            raise BuildError(f"input {tensor.name!r} of {str(path)!r} is a shape tensor; vkt's builder supports execution-tensor inputs only")
    if set(net_inputs) != set(spec.input_names):
        raise BuildError(f"the inputs of {str(path)!r} are {sorted(net_inputs)} but the spec's are {sorted(spec.input_names)}; "
                         "re-export the spec from the graph (ExportSpec.from_onnx)")
    for ts in spec.inputs:
        shape = tuple(net_inputs[ts.name].shape)
        if len(shape) != ts.rank:
            raise BuildError(f"input {ts.name!r}: the graph has rank {len(shape)} {list(shape)}, the spec rank {ts.rank} {list(ts.shape)}")
        for axis, (g, s) in enumerate(zip(shape, ts.shape)):
            if g >= 0 and isinstance(s, int) and g != s:
                raise BuildError(f"input {ts.name!r} dim {axis}: the graph has size {g}, the spec {s}")


def _add_profiles(builder: Any, bconfig: Any, spec: ExportSpec, network: Any) -> list[dict[str, Any]]:
    """One optimization profile per spec profile; returns them as recorded in the bundle."""
    if not spec.input_axes:
        fixed = {n: s[0] for n, s in spec.profile_shapes().items()}
        graph_dynamic = any(d < 0 for i in range(network.num_inputs) for d in network.get_input(i).shape)
        if graph_dynamic:
            # A static spec pins a dynamic graph to one shape: TensorRT needs that as a min=opt=max profile.
            tprof = builder.create_optimization_profile()
            for name, shape in fixed.items():
                tprof.set_shape(name, shape, shape, shape)
            if bconfig.add_optimization_profile(tprof) < 0:
                raise BuildError(f"TensorRT rejected the static shapes {fixed}")
        return [{"axes": {}, "shapes": {n: {"min": list(s), "opt": list(s), "max": list(s)} for n, s in fixed.items()}}]
    if not spec.profiles:
        raise SpecError(f"the graph has dynamic axes {sorted(spec.input_axes)} but the spec has no shape profile; "
                        "give one per axis, e.g. ExportSpec.with_profiles({'batch': (1, 1, 8), ...}) "
                        "(CLI: --profile 'batch=1:1:8,...')")
    graph_shapes = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    out = []
    for index, prof in enumerate(spec.profiles):
        shapes = spec.profile_shapes(index)
        tprof = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            for axis, g in enumerate(graph_shapes[name]):
                # The graph fixed this size; a profile range over it is a spec error, said plainly here
                # rather than as TensorRT's "Dimension mismatch ... profile 0" at the end of the build.
                if g >= 0 and not lo[axis] == hi[axis] == g:
                    raise BuildError(f"profile {index}: input {name!r} dim {axis} is fixed to {g} in the graph, "
                                     f"but the profile asks for min {lo[axis]} max {hi[axis]}")
            tprof.set_shape(name, lo, opt, hi)
        got = bconfig.add_optimization_profile(tprof)
        if got < 0:
            raise BuildError(f"TensorRT rejected profile {index} ({prof.to_dict()}): shapes {shapes}")
        out.append({"axes": prof.to_dict(),
                    "shapes": {n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for n, s in shapes.items()}})
    return out


def _set_compute_capabilities(bconfig: Any, config: BuildConfig, trt: TrtModule) -> None:
    ccs = config.compute_capabilities
    if not ccs:
        return
    if not hasattr(bconfig, "num_compute_capabilities"):
        raise BuildError(f"compute_capabilities {list(ccs)} need TensorRT-RTX (module 'tensorrt_rtx'); "
                         f"{trt.name} {trt.version} builds for the GPU it runs on")
    enum = trt.mod.ComputeCapability
    known = [m for m in enum.__members__ if m not in ("NONE",)]
    missing = [c for c in ccs if c not in known]
    if missing:
        raise BuildError(f"{trt.name} {trt.version} cannot target {missing}; it knows {known}")
    bconfig.num_compute_capabilities = len(ccs)
    for i, cc in enumerate(ccs):
        if not bconfig.set_compute_capability(getattr(enum, cc), i):
            raise BuildError(f"{trt.name} {trt.version} rejected compute capability {cc} at index {i}")


class _TimingCache:
    """Load a timing cache before the build and save it after. Under TensorRT-RTX this is a logged no-op:
    its timing-cache calls do nothing (and make the CPU-only ahead-of-time build look for a GPU)."""

    def __init__(self, path: str | os.PathLike | None, trt: TrtModule, bconfig: Any):
        self.path = None if path is None else Path(path)
        self.trt, self.bconfig = trt, bconfig
        self.status = "not used" if path is None else "pending"

    def load(self) -> None:
        if self.path is None:
            return
        if self.trt.is_rtx:
            self.status = "ignored: timing-cache operations are no-ops in TensorRT-RTX"
            log.info("timing cache %s %s", str(self.path), self.status)
            return
        blob = b""
        if self.path.is_file():
            blob = self.path.read_bytes()
        cache = self.bconfig.create_timing_cache(blob)
        if cache is None:
            raise BuildError(f"{str(self.path)!r} is not a TensorRT timing cache of {self.trt.name} {self.trt.version}; "
                             "delete it and a fresh one will be written")
        if not self.bconfig.set_timing_cache(cache, ignore_mismatch=False):
            # A cache from another GPU/version: start fresh instead of failing the build.
            log.warning("timing cache %s does not match this GPU/TensorRT version; starting a new one", str(self.path))
            cache = self.bconfig.create_timing_cache(b"")
            self.bconfig.set_timing_cache(cache, ignore_mismatch=False)
            blob = b""
        self.status = f"loaded {len(blob)} bytes" if blob else "created"

    def save(self) -> None:
        if self.path is None or self.trt.is_rtx:
            return
        from vkt.fsutil import atomic_write_bytes

        cache = self.bconfig.get_timing_cache()
        if cache is None:
            log.warning("TensorRT returned no timing cache to save")
            return
        data = bytes(cache.serialize())
        atomic_write_bytes(self.path, data)
        self.status += f", saved {len(data)} bytes"
        log.info("timing cache saved to %s (%d bytes)", str(self.path), len(data))

    def report(self) -> dict[str, Any] | None:
        if self.path is None:
            return None
        return {"path": str(self.path), "status": self.status, "used": not self.trt.is_rtx}


def profiles_summary(profiles: list[Mapping[str, Any]]) -> list[str]:
    """``["batch=1:1:8 height=16:64:256", ...]`` for logs and the CLI."""
    return [" ".join(f"{a}={lo}:{opt}:{hi}" for a, (lo, opt, hi) in p["axes"].items()) or "static" for p in profiles]
