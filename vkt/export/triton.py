"""Triton model repository from a bundle: config.pbtxt + versioned model file, ready for `tritonserver`.

Layout written::

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.onnx      (platform onnxruntime_onnx)   or
    REPO/<name>/1/model.plan      (platform tensorrt_plan)                               or
    REPO/<name>/1/model.onnx + model.py  (backend python: vkt/export/triton_ort_model.py runs the ONNX
                                  with onnxruntime inside Triton's Python backend, for Triton builds
                                  without the onnxruntime backend, e.g. the nvidia-pytriton wheel's)
    REPO/<name>/vkt_manifest.json (the bundle's manifest: pre/post-processing for clients)

and with ``pipeline=True`` (CLI ``--pipeline``; text- and object-detection bundles), beside it::

    REPO/<name>_pipeline/config.pbtxt       backend "python": IMAGE (TYPE_UINT8 [-1], file bytes) in,
                                            DETECTIONS (JSON) + POLYGONS/BOXES, SCORES (, LABELS) out
    REPO/<name>_pipeline/1/model.py         vkt/export/triton_pipeline_model.py: vkt's torch-free
                                            pre/post-processing around a BLS call to <name>
    REPO/<name>_pipeline/vkt_manifest.json  the parameters it reads

When every input and output has the same named axis first (``batch``), the config uses Triton's
batching form (``max_batch_size`` > 0, dims without the batch axis) and enables dynamic batching;
otherwise ``max_batch_size: 0`` and full dims. Dynamic axes become ``-1``. For TensorRT plans with
several optimization profiles, one instance group per profile is written (Triton selects profiles
per instance group).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkt.bundle import PRECISION_ROLES, Bundle
from vkt.errors import InputError
from vkt.fsutil import atomic_copy, atomic_write_text, staged_dir
from vkt.specs import ExportSpec, TensorSpec

TRITON_DTYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "bfloat16": "TYPE_BF16",
    "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class TritonOptions:
    """What goes into config.pbtxt.

    Args:
        backend: "onnxruntime" (the bundle's ONNX of ``precision``), "tensorrt" (its plan) or "python"
            (the ONNX run by onnxruntime inside Triton's Python backend: vkt/export/triton_ort_model.py).
        precision: fp32 | fp16 | int8 — which file of the bundle is served.
        max_batch_size: cap for Triton's batcher; None: the profile's max of the batch axis.
        max_queue_delay_us: dynamic batching delay.
        instances / kind: instance group count and KIND_CPU | KIND_GPU | KIND_AUTO.
        ort_tensorrt: for onnxruntime on GPU, ask for ORT's TensorRT execution accelerator.
        threads: onnxruntime's intra-op threads per instance of a "python" model (0: onnxruntime's default).
    """

    backend: str = "onnxruntime"
    precision: str = "fp32"
    max_batch_size: int | None = None
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "KIND_AUTO"
    ort_tensorrt: bool = False
    threads: int = 0


def _tensor(t: TensorSpec, skip_first: bool) -> str:
    dims = list(t.shape[1:] if skip_first else t.shape)
    dims_txt = ", ".join("-1" if isinstance(d, str) else str(d) for d in dims)
    return f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_DTYPES[t.dtype]}\n    dims: [ {dims_txt} ]\n  }}'


def config_pbtxt(name: str, spec: ExportSpec, opts: TritonOptions) -> str:
    """The text of config.pbtxt for one model (protobuf text format of Triton's ModelConfig)."""
    for t in (*spec.inputs, *spec.outputs):
        if t.dtype not in TRITON_DTYPES:
            raise InputError(f"tensor {t.name!r} has dtype {t.dtype!r}, which Triton cannot serve")
    axis = spec.batch_axis
    max_batch = 0
    if axis is not None:
        ranges = [p.axes[axis] for p in spec.profiles if axis in p.axes]
        cap = max((r[2] for r in ranges), default=1)
        max_batch = opts.max_batch_size if opts.max_batch_size is not None else cap
        if max_batch < 1:
            raise InputError(f"max_batch_size must be >= 1, got {max_batch}")
        if ranges and max_batch > cap:
            raise InputError(f"max_batch_size {max_batch} exceeds the profile's max batch {cap}")
    if opts.backend == "python":
        served_by = 'backend: "python"'
    else:
        served_by = 'platform: "' + {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[opts.backend] + '"'
    lines = [f'name: "{name}"', served_by, f"max_batch_size: {max_batch}",
             "input [\n" + ",\n".join(_tensor(t, max_batch > 0) for t in spec.inputs) + "\n]",
             "output [\n" + ",\n".join(_tensor(t, max_batch > 0) for t in spec.outputs) + "\n]"]
    if max_batch > 0:
        preferred = sorted({b for b in (1, 2, 4, 8, 16, 32) if b <= max_batch} | {max_batch})
        lines.append("dynamic_batching {\n  preferred_batch_size: [ " + ", ".join(map(str, preferred)) +
                     f" ]\n  max_queue_delay_microseconds: {opts.max_queue_delay_us}\n}}")
    if opts.backend == "tensorrt" and len(spec.profiles) > 1:
        groups = [f'  {{\n    count: {opts.instances}\n    kind: KIND_GPU\n    profile: [ "{i}" ]\n  }}'
                  for i in range(len(spec.profiles))]
        lines.append("instance_group [\n" + ",\n".join(groups) + "\n]")
    else:
        kind = {"tensorrt": "KIND_GPU", "python": "KIND_CPU"}.get(opts.backend, opts.kind)
        lines.append(f"instance_group [\n  {{\n    count: {opts.instances}\n    kind: {kind}\n  }}\n]")
    if opts.backend == "python":
        lines.append(f'parameters {{\n  key: "intra_op_threads"\n  value: {{ string_value: "{opts.threads}" }}\n}}')
    if opts.backend == "onnxruntime" and opts.ort_tensorrt:
        lines.append('optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n'
                     '      name : "tensorrt"\n      parameters { key: "precision_mode" value: "FP16" }\n    } ]\n  }\n}')
    return "\n".join(lines) + "\n"


PIPELINE_TASKS = ("text-detection", "object-detection")


def pipeline_config_pbtxt(name: str, core: str, task: str, instances: int = 1) -> str:
    """config.pbtxt of the Python-backend pipeline model ``name`` around the core model ``core``."""
    outs = [("DETECTIONS", "TYPE_STRING", "1"), ("SCORES", "TYPE_FP32", "-1")]
    if task == "text-detection":
        outs.append(("POLYGONS", "TYPE_FP32", "-1, 4, 2"))
    elif task == "object-detection":
        outs += [("BOXES", "TYPE_FP32", "-1, 4"), ("LABELS", "TYPE_INT64", "-1")]
    else:
        raise InputError(f"--pipeline serves bundles of tasks {list(PIPELINE_TASKS)}, got task {task!r}")
    tensors = ",\n".join(f'  {{\n    name: "{n}"\n    data_type: {t}\n    dims: [ {d} ]\n  }}' for n, t, d in outs)
    return "\n".join([
        f'name: "{name}"', 'backend: "python"', "max_batch_size: 0",
        'input [\n  {\n    name: "IMAGE"\n    data_type: TYPE_UINT8\n    dims: [ -1 ]\n  }\n]',
        f"output [\n{tensors}\n]",
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]",
        f'parameters {{\n  key: "core_model"\n  value: {{ string_value: "{core}" }}\n}}',
    ]) + "\n"


def _write_model_dir(model_dir: Path, files: dict[str, Path], manifest: dict, config: str, overwrite: bool) -> Path:
    """One Triton model folder: ``1/<fname>`` copied from ``src`` for each of ``files`` (fname -> src),
    ``vkt_manifest.json`` and ``config.pbtxt``, written beside it and swapped in whole (an existing one stays
    as it was until then)."""
    if model_dir.exists() and not overwrite:
        raise InputError(f"{str(model_dir)!r} already exists; choose another folder or replace it with --force")
    with staged_dir(model_dir) as stage:
        (stage / "1").mkdir(parents=True)
        for fname, src in files.items():
            atomic_copy(src, stage / "1" / fname)
        atomic_write_text(stage / "vkt_manifest.json", json.dumps(manifest, indent=2) + "\n")
        atomic_write_text(stage / "config.pbtxt", config)
    return model_dir


def write_pipeline_model(b: Bundle, repo: str | os.PathLike, core: str, instances: int = 1, overwrite: bool = False) -> Path:
    """Write ``<core>_pipeline`` (Python backend: image bytes -> detections, BLS to ``core``); returns its folder."""
    if b.task not in PIPELINE_TASKS:
        raise InputError(f"--pipeline serves bundles of tasks {list(PIPELINE_TASKS)}; bundle {b.name!r} is {b.task!r}")
    if b.task == "text-detection" and b.postprocess.get("box_type", "quad") != "quad":
        raise InputError(f"--pipeline outputs quads (POLYGONS [-1, 4, 2]); bundle {b.name!r} has box_type "
                         f"{b.postprocess.get('box_type')!r}: re-export with box_type 'quad'")
    name = f"{core}_pipeline"
    if not _NAME.match(name):
        raise InputError(f"Triton model name {name!r} is too long or has characters Triton does not accept")
    text = pipeline_config_pbtxt(name, core, b.task, instances)
    return _write_model_dir(Path(repo) / name, {"model.py": Path(__file__).with_name("triton_pipeline_model.py")},
                            b.manifest, text, overwrite)


def model_name(b: Bundle) -> str:
    """The model's default name in a Triton repository: the bundle's, with characters Triton refuses as '_'."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", b.name)


def write_triton_repo(bundle: Bundle | str | os.PathLike, repo: str | os.PathLike, name: str | None = None,
                      opts: TritonOptions = TritonOptions(), component: str = "model", overwrite: bool = False,
                      pipeline: bool = False) -> Path:
    """Write one model of a bundle into a Triton model repository; returns the model folder.

    With ``pipeline`` also the Python-backend model ``<name>_pipeline`` (see the module docstring).
    """
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if pipeline and b.task not in PIPELINE_TASKS:  # refuse before writing anything
        raise InputError(f"--pipeline serves bundles of tasks {list(PIPELINE_TASKS)}; bundle {b.name!r} is {b.task!r}")
    if opts.backend not in ("onnxruntime", "tensorrt", "python"):
        raise InputError(f"Triton backend must be 'onnxruntime', 'tensorrt' or 'python', got {opts.backend!r}")
    if opts.kind not in ("KIND_AUTO", "KIND_CPU", "KIND_GPU"):
        raise InputError(f"instance kind must be KIND_AUTO, KIND_CPU or KIND_GPU, got {opts.kind!r}")
    if opts.instances < 1:
        raise InputError(f"instances must be >= 1, got {opts.instances}")
    if opts.threads < 0:
        raise InputError(f"threads must be >= 0 (0: onnxruntime's default), got {opts.threads}")
    if opts.threads and opts.backend != "python":
        raise InputError(f"threads applies to backend 'python' (onnxruntime inside Triton's Python), got backend "
                         f"{opts.backend!r}")
    name = name or model_name(b)
    if not _NAME.match(name):
        raise InputError(f"Triton model name must be letters, digits, '_', '.', '-' (no path parts), got {name!r}")
    spec = b.spec(component)
    if opts.backend == "tensorrt":
        plans = [e for e in b.files("plan", component) if e.meta.get("precision", "fp32") == opts.precision]
        if not plans:
            raise InputError(f"bundle {b.name!r} has no {opts.precision} plan; build one with 'vkt build' first")
        files = {"model.plan": b.root / plans[-1].path}
    else:
        role = PRECISION_ROLES.get(opts.precision)
        if role is None:
            raise InputError(f"precision must be fp32, fp16 or int8, got {opts.precision!r}")
        files = {"model.onnx": b.root / b.entry(role, component, placement="ort").path}
        if opts.backend == "python":
            files["model.py"] = Path(__file__).with_name("triton_ort_model.py")
    text = config_pbtxt(name, spec, opts)
    model_dir = _write_model_dir(Path(repo) / name, files, b.manifest, text, overwrite)
    if pipeline:
        write_pipeline_model(b, repo, name, instances=opts.instances, overwrite=overwrite)
    return model_dir


def parse_config(text: str) -> Any:
    """Parse config.pbtxt with Triton's own protobuf schema (needs tritonclient[grpc]); for tests and checks."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise InputError("checking config.pbtxt needs tritonclient: pip install 'tritonclient[grpc]'") from None
    return text_format.Parse(text, model_config_pb2.ModelConfig())
