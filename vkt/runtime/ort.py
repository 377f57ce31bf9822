"""OrtRunner: onnxruntime on CPU (default), CUDA or its TensorRT execution provider — with loud failures."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vkt.errors import BackendError, ModelError
from vkt.runtime.base import Runner
from vkt.specs import ExportSpec

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OrtRunner(Runner):
    """onnxruntime InferenceSession behind the Runner interface.

    Args:
        model: path to an .onnx file, or its serialized bytes.
        providers: names from ``PROVIDERS`` ("cpu", "cuda", "tensorrt") in priority order; each must
            actually load — onnxruntime-gpu silently falls back to CPU, vkt raises instead.
        threads: intra-op threads (None: onnxruntime's default, one per physical core).
        spec: ExportSpec to validate feeds against (default: read from the graph).
        provider_options: per-provider option dicts, keyed like ``providers``.
        optimized_model_path: where onnxruntime writes its optimized graph (to count fused ops).
        session_config: onnxruntime session config entries (``SessionOptions.add_session_config_entry``), e.g.
            ``{"session.intra_op.allow_spinning": "0"}``; keys and values are strings.
    """

    backend = "ort"

    def __init__(self, model: str | os.PathLike | bytes, providers: Sequence[str] = ("cpu",), threads: int | None = None,
                 spec: ExportSpec | None = None, provider_options: Mapping[str, dict] | None = None,
                 graph_optimization: str = "all", optimized_model_path: str | None = None, name: str | None = None,
                 session_config: Mapping[str, str] | None = None):
        super().__init__(spec, name or f"ort-{'+'.join(providers)}")
        self.model = model
        if not isinstance(model, (bytes, bytearray)):
            p = Path(model)
            if not p.is_file():
                raise ModelError(f"ONNX file not found: {str(p)!r}")
        unknown = [p for p in providers if p not in PROVIDERS]
        if unknown or not providers:
            raise BackendError(f"unknown onnxruntime provider(s) {unknown or list(providers)}; expected some of {sorted(PROVIDERS)}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive integer (or unset: onnxruntime's default), got {threads!r}")
        if graph_optimization not in ("disable", "basic", "extended", "all"):
            raise BackendError(f"graph_optimization must be disable/basic/extended/all, got {graph_optimization!r}")
        if session_config is not None and (not isinstance(session_config, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in session_config.items())):
            raise BackendError(f"session_config must map strings to strings (onnxruntime session config entries), "
                               f"got {session_config!r}")
        self.providers = list(providers)
        self.threads = threads
        self.session_config = dict(session_config or {})
        self.provider_options = dict(provider_options or {})
        self.graph_optimization = graph_optimization
        self.optimized_model_path = optimized_model_path
        self.session: Any = None

    def _activate(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = [PROVIDERS[p] for p in self.providers]
        missing = [w for w in wanted if w not in available]
        if missing:
            raise BackendError(
                f"onnxruntime {ort.__version__} here has no {', '.join(missing)} (available: {', '.join(available)}); "
                + ("install onnxruntime-gpu on a machine with an NVIDIA GPU (pip install 'vkt[gpu]')" if "CPUExecutionProvider" not in missing else "")
            )
        so = ort.SessionOptions()
        if self.threads is not None:
            so.intra_op_num_threads = self.threads
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        if self.optimized_model_path:
            so.optimized_model_filepath = str(self.optimized_model_path)
        for k, v in self.session_config.items():
            try:
                so.add_session_config_entry(k, v)
            except Exception as e:  # onnxruntime refuses malformed entries here, unknown keys only when they are read
                raise BackendError(f"onnxruntime rejects session config entry {k!r}={v!r}: {str(e).strip()[:300]}") from None
        so.log_severity_level = 4  # run errors are raised as BackendError; at 3 ORT also prints them, in raw colour
        provs = [(PROVIDERS[p], self.provider_options.get(p, {})) for p in self.providers]
        if "CPUExecutionProvider" not in wanted:
            provs.append(("CPUExecutionProvider", {}))  # ORT needs it for ops the GPU EPs leave behind
        src = bytes(self.model) if isinstance(self.model, (bytes, bytearray)) else str(self.model)
        try:
            sess = ort.InferenceSession(src, sess_options=so, providers=provs)
        except Exception as e:
            where = "<bytes>" if isinstance(src, bytes) else repr(src)
            raise ModelError(f"onnxruntime cannot load {where}: {str(e).strip().splitlines()[0][:500]}") from None
        loaded = sess.get_providers()
        # The silent-fallback check: every asked provider must be in the session, not just available.
        dropped = [w for w in wanted if w not in loaded]
        if dropped:
            raise BackendError(f"onnxruntime did not load {', '.join(dropped)} (session runs on {', '.join(loaded)}); "
                               "check the CUDA/cuDNN/TensorRT libraries and the GPU driver")
        self.session = sess
        if self._spec is None:
            self._spec = _spec_from_session(sess)
        self._out_names = [o.name for o in sess.get_outputs()]

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self.session.run(self._out_names, feed)
        except Exception as e:  # ORT's Fail/InvalidArgument/RuntimeException
            raise BackendError(f"onnxruntime failed to run {self.name}: {str(e).strip().splitlines()[0][:500]}") from None
        return dict(zip(self._out_names, outs))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.session is not None:
            d["providers"] = self.session.get_providers()
        d["threads"] = self.threads
        if self.session_config:
            d["session_config"] = dict(self.session_config)
        return d


def _spec_from_session(sess: Any) -> ExportSpec:
    from vkt.specs import ONNX_TO_DTYPE, TensorSpec

    ort_types = {f"tensor({k})": k for k in ONNX_TO_DTYPE.values()}
    ort_types["tensor(float)"] = "float32"
    ort_types["tensor(double)"] = "float64"

    def conv(args: Any) -> tuple[TensorSpec, ...]:
        out = []
        for a in args:
            dims = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d.isidentifier() else f"{a.name}_dim{i}")
                         for i, d in enumerate(a.shape))
            dims = tuple(d if isinstance(d, int) else "".join(c if c.isalnum() or c == "_" else "_" for c in d) for d in dims)
            if a.type not in ort_types:
                raise ModelError(f"tensor {a.name!r} has type {a.type}, which vkt does not support")
            out.append(TensorSpec(a.name, ort_types[a.type], dims))
        return tuple(out)

    return ExportSpec(conv(sess.get_inputs()), conv(sess.get_outputs()))
