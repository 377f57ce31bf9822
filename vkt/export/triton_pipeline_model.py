"""Triton Python-backend model: image file bytes -> vkt pre-processing -> BLS call to the core model -> vkt post-processing.

`vkt triton BUNDLE -o REPO --pipeline` copies this file to ``REPO/<name>_pipeline/1/model.py``, next to
the bundle's manifest (``REPO/<name>_pipeline/vkt_manifest.json``); config.pbtxt names the core model
in ``parameters { key: "core_model" ... }``. Triton's Python environment needs vkt's torch-free
runtime: ``pip install vkt`` (numpy, opencv-python-headless, pyclipper; onnxruntime is not used here,
the core model runs in Triton).

Tensors (``max_batch_size: 0``, one image per request):

    IMAGE       TYPE_UINT8  [-1]         the image file's bytes (PNG, JPEG, BMP, TIFF, WebP, PPM)
    DETECTIONS  TYPE_STRING [1]          JSON, as ``vkt serve``'s /detect answers
    text-detection:   POLYGONS FP32 [-1, 4, 2] (quads, source pixels, clockwise from top-left), SCORES FP32 [-1]
    object-detection: BOXES FP32 [-1, 4] (xyxy source pixels), SCORES FP32 [-1], LABELS INT64 [-1]

The pre/post-processing is ``vkt.runtime.server.tasks`` — the same code ``vkt serve`` runs — so the
answers equal ``TextDetector`` / ``Detector`` on the same image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

try:  # provided by Triton's Python backend; absent elsewhere (vkt ships this file as a template)
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - only outside Triton
    pb_utils = None

MAX_IMAGE_PIXELS = 40_000_000


def load_task(manifest: Mapping[str, Any]) -> Any:
    """The bundle's task pipeline (TextDetectTask | ObjectDetectTask) from its manifest."""
    from vkt.runtime.server.tasks import ObjectDetectTask, TextDetectTask
    from vkt.specs import ExportSpec

    spec = ExportSpec.from_dict(manifest["components"]["model"]["spec"])
    kinds = {"text-detection": TextDetectTask, "object-detection": ObjectDetectTask}
    if manifest.get("task") not in kinds:
        raise ValueError(f"the pipeline serves tasks {sorted(kinds)}, got {manifest.get('task')!r}")
    return kinds[manifest["task"]](manifest.get("preprocess", {}), manifest.get("postprocess", {}), spec), spec


def output_tensors(det: Any, task: str) -> dict[str, np.ndarray]:
    """Detections -> the pipeline's output tensors (see the module docstring)."""
    out = {"DETECTIONS": np.array([json.dumps(det.to_dict()).encode()], dtype=np.object_),
           "SCORES": np.asarray(det.scores, dtype=np.float32)}
    if task == "text-detection":
        out["POLYGONS"] = np.asarray(det.polygons, dtype=np.float32).reshape(-1, 4, 2)
    else:
        out["BOXES"] = np.asarray(det.boxes, dtype=np.float32).reshape(-1, 4)
        out["LABELS"] = np.asarray(det.labels, dtype=np.int64)
    return out


def run(image_bytes: bytes, task: Any, infer: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> dict[str, np.ndarray]:
    """Decode, pre-process, ``infer(feed) -> outputs`` (the core model), post-process; InputError for bad bytes."""
    from vkt.runtime.server.image_body import decode_image

    img = decode_image(image_bytes, max_pixels)
    return output_tensors(task.detections(img, infer), task.task)


def triton_error(message: str, code: str) -> Any:
    """pb_utils.TritonError with ``code`` (INVALID_ARG: HTTP 400, INTERNAL: 500) where this Triton's Python backend
    has error codes (the 2.51 of nvidia-pytriton 0.7.0 has), else without one (older backends: always 500)."""
    value = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if value is None else pb_utils.TritonError(message, value)


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize / execute / finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.core = params["core_model"]["string_value"]
        self.max_pixels = int(params.get("max_image_pixels", {}).get("string_value", MAX_IMAGE_PIXELS))
        manifest = json.loads((Path(__file__).resolve().parent.parent / "vkt_manifest.json").read_text(encoding="utf-8"))
        self.task, spec = load_task(manifest)
        self.core_outputs = list(spec.output_names)

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """BLS: one request to the core model (its batch axis included in the shapes), blocking."""
        request = pb_utils.InferenceRequest(model_name=self.core, requested_output_names=self.core_outputs,
                                            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feed.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"core model {self.core!r} failed: {response.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in self.core_outputs}

    def execute(self, requests: list[Any]) -> list[Any]:
        from vkt.errors import VktError

        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "IMAGE")
                if raw is None:
                    raise ValueError("input IMAGE (TYPE_UINT8 [-1], the image file's bytes) is missing")
                arr = raw.as_numpy()
                if arr.dtype != np.uint8 or arr.ndim != 1:
                    raise ValueError(f"input IMAGE must be TYPE_UINT8 [-1] (file bytes), got {arr.dtype} {list(arr.shape)}")
                out = run(arr.tobytes(), self.task, self._infer, self.max_pixels)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in out.items()]))
            except (VktError, ValueError) as e:  # the client's bytes: HTTP 400 / gRPC INVALID_ARGUMENT, not 500
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=triton_error(str(e), "INVALID_ARG")))
            except RuntimeError as e:  # the core model failed; this request fails alone, the model stays up
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=triton_error(str(e), "INTERNAL")))
        return responses

    def finalize(self) -> None:
        pass
