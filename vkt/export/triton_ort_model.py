"""Triton Python-backend model: a bundle's ONNX run by onnxruntime (CPU) inside Triton's Python backend.

`vkt triton BUNDLE -o REPO --backend python` copies this file to ``REPO/<name>/1/model.py`` beside
``1/model.onnx``. It is for Triton builds without the onnxruntime backend — e.g. the ``tritonserver``
binary of the ``nvidia-pytriton`` wheel, which ships only the Python backend. Where Triton has its
onnxruntime backend, ``--backend onnxruntime`` (platform ``onnxruntime_onnx``) serves the same file
without Python in the loop.

config.pbtxt is the same as for ``--backend onnxruntime`` (tensors, ``max_batch_size``, dynamic batching)
with ``backend: "python"``; ``parameters { key: "intra_op_threads" }`` sets onnxruntime's threads per
instance (0: onnxruntime's default). Triton's Python needs ``pip install vkt`` (the session is vkt's
``OrtRunner``, so the outputs equal ``vkt serve``'s on the same onnxruntime).

Each request in a dynamic batch runs alone: the requests' shapes may differ (dynamic axes), and the
batch axis of each is its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

try:  # provided by Triton's Python backend; absent elsewhere (vkt ships this file as a template)
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - only outside Triton
    pb_utils = None


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize / execute / finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        from vkt.runtime.ort import OrtRunner

        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0"))
        self.outputs = [o["name"] for o in config["output"]]
        self.inputs = [i["name"] for i in config["input"]]
        self.runner = OrtRunner(Path(__file__).resolve().parent / "model.onnx", threads=threads or None).activate()

    def execute(self, requests: list[Any]) -> list[Any]:
        from vkt.errors import VktError

        responses = []
        for request in requests:
            try:
                feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}
                out = self.runner.infer(feed)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, out[n])
                                                                            for n in self.outputs]))
            except VktError as e:  # a shape or dtype the graph refuses fails this request alone, as HTTP 400
                code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # older Python backends: no codes (500)
                error = pb_utils.TritonError(str(e)) if code is None else pb_utils.TritonError(str(e), code)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses

    def finalize(self) -> None:
        self.runner.deactivate()
