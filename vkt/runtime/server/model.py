"""ServedModel: an active runner plus what the metadata and config endpoints say about it."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vkt.errors import InputError
from vkt.log import get_logger
from vkt.runtime.base import Runner
from vkt.runtime.server.errors import RequestError
from vkt.runtime.server.protocol import InferRequest, to_datatype
from vkt.specs import ExportSpec

log = get_logger(__name__)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # what Triton's repository accepts, URL-safe
PLATFORMS = {"ort": "onnxruntime_onnx", "ort-cuda": "onnxruntime_onnx", "ort-trt": "onnxruntime_onnx", "trt": "tensorrt_plan",
             "ov": "openvino"}  # Triton's OpenVINO backend has no platform name: it is named by backend alone


@dataclass
class ServedModel:
    """One model the server answers for.

    Args:
        name: URL name (``/v2/models/<name>``): letters, digits, ``_ . -``; starts with a letter or digit.
        runner: the Runner; the server activates it and deactivates it at shutdown.
        version: the one version served (KServe URLs may name it).
        platform: Triton platform string for metadata/config (``onnxruntime_onnx`` | ``tensorrt_plan``).
        info: extra facts for the config's ``parameters`` (family, task, backend, precision, bundle name).
        bundle_root: the bundle's folder (task endpoints load it); never shown to clients.
    """

    name: str
    runner: Runner
    version: str = "1"
    platform: str = "onnxruntime_onnx"
    info: dict[str, str] = field(default_factory=dict)
    bundle_root: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not MODEL_NAME.match(self.name):
            raise InputError(f"model name {self.name!r} cannot be served: expected 1-128 letters, digits, '_', '.', '-' "
                             "starting with a letter or digit (rename the bundle's folder or its manifest 'name')")

    @property
    def spec(self) -> ExportSpec:
        return self.runner.spec

    @property
    def max_values(self) -> int | None:
        """The most tensor values one request's inputs can hold (static dims, profile maxima); None if unbounded."""
        spec = self.spec
        total = 0
        for t in spec.inputs:
            n = 1
            for d in t.shape:
                if isinstance(d, str):
                    tops = [p.axes[d][2] for p in spec.profiles if d in p.axes]
                    if not tops:
                        return None
                    d = max(tops)
                n *= d
            total += n
        return total

    # ---- request validation (HTTP thread, before queueing) --------------------------------
    def validate(self, req: InferRequest) -> None:
        """Raise a 400 naming the input and what the model expects; the batcher only sees valid feeds."""
        spec = self.spec
        for t in spec.inputs:
            a = req.inputs.get(t.name)
            if a is not None and a.dtype != np.dtype(t.dtype):
                raise RequestError(f"input {t.name!r}: model {self.name!r} expects datatype {to_datatype(t.dtype)}, "
                                   f"got {to_datatype(a.dtype)}")
        spec.check_feed(req.inputs)  # ShapeError (400): names, ranks, static dims, profile ranges
        if req.outputs is not None:
            unknown = [k for k in req.outputs if k not in spec.output_names]
            if unknown:
                raise RequestError(f"requested outputs {unknown} do not exist; model {self.name!r} has outputs {spec.output_names}")

    # ---- metadata and config (KServe v2 / Triton) -----------------------------------------
    def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/<name>``: dynamic dims are -1."""
        def tensors(ts: Sequence) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": to_datatype(t.dtype), "shape": [-1 if isinstance(d, str) else d for d in t.shape]}
                    for t in ts]

        return {"name": self.name, "versions": [self.version], "platform": self.platform,
                "inputs": tensors(self.spec.inputs), "outputs": tensors(self.spec.outputs)}

    def config(self, max_batch_size: int, max_queue_delay_us: int, queue_size: int, timeout_s: float) -> dict[str, Any]:
        """``GET /v2/models/<name>/config``: Triton's ModelConfig as JSON, describing what this server does.

        With a leading batch axis the config uses Triton's batching form (dims without the batch
        axis, ``max_batch_size`` > 0, ``dynamic_batching``), as ``vkt triton`` writes config.pbtxt.
        """
        spec = self.spec
        batched = spec.batch_axis is not None

        def tensors(ts: Sequence) -> list[dict[str, Any]]:
            return [{"name": t.name, "data_type": "TYPE_" + to_datatype(t.dtype),
                     "dims": [-1 if isinstance(d, str) else d for d in (t.shape[1:] if batched else t.shape)]} for t in ts]

        cfg: dict[str, Any] = {
            "name": self.name, "platform": self.platform,
            "backend": {"tensorrt_plan": "tensorrt", "openvino": "openvino"}.get(self.platform, "onnxruntime"),
            "max_batch_size": max_batch_size if batched else 0,
            "input": tensors(spec.inputs), "output": tensors(spec.outputs),
            "instance_group": [{"name": f"{self.name}_0", "count": 1,
                                "kind": "KIND_CPU" if self.info.get("backend", "ort") in ("ort", "ov") else "KIND_GPU"}],
            "parameters": {k: {"string_value": str(v)} for k, v in self.info.items()},
        }
        if batched:
            cfg["dynamic_batching"] = {
                "max_queue_delay_microseconds": max_queue_delay_us,
                "default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": int(timeout_s * 1e6),
                                         "allow_timeout_override": True, "max_queue_size": queue_size},
            }
        return cfg


def models_from_bundles(paths: Sequence[str | os.PathLike], backend: str = "ort", precision: str = "fp32",
                        threads: int | None = None) -> list[ServedModel]:
    """One ServedModel per bundle component: named after the bundle, or ``<bundle>-<component>`` when it has several.

    Runners are created here but not activated (the server does that).
    """
    from vkt.bundle import Bundle
    from vkt.runtime import make_runner

    models: list[ServedModel] = []
    for p in paths:
        bundle = Bundle.load(p)
        _check_inside(bundle)
        comps = bundle.components
        for comp in comps:
            name = bundle.name if len(comps) == 1 else f"{bundle.name}-{comp}"
            runner = make_runner(bundle, backend=backend, precision=precision, component=comp, threads=threads)
            info = {"vkt_bundle": bundle.name, "vkt_family": bundle.family, "vkt_task": bundle.task,
                    "vkt_component": comp, "backend": backend, "precision": precision}
            models.append(ServedModel(name=name, runner=runner, platform=PLATFORMS.get(backend, "onnxruntime_onnx"), info=info,
                                      bundle_root=str(bundle.root)))
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"two bundles would be served under the same model name(s) {dup}; "
                         "give them different folder names or manifest names")
    return models


def _check_inside(bundle: Any) -> None:
    """Refuse a bundle whose files resolve outside its folder (a symlink to elsewhere): a server reads only its bundles."""
    from vkt.errors import BundleError

    root = bundle.root.resolve()
    for e in bundle.files():
        target = (bundle.root / e.path).resolve()
        if not target.is_relative_to(root):
            raise BundleError(f"bundle {bundle.name!r}: file {e.path!r} links outside the bundle folder; "
                              "vkt serve reads only files inside it (copy the file in instead of linking it)")
