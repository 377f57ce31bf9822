"""ONNX -> TensorRT / TensorRT-RTX plans: strongly typed, every ExportSpec profile, recorded in the bundle.

``tensorrt`` / ``tensorrt_rtx`` are imported only when a build starts, so importing this package is cheap.
There is no ``engine_info(plan)``: reading a plan back needs ``deserialize_cuda_engine``, which needs a
GPU (TensorRT-RTX's runtime crashes without one); the bundle's plan metadata answers those questions.
"""

from vkt.engines.backend import CHOICES as MODULE_CHOICES
from vkt.engines.backend import load_module
from vkt.engines.builder import BuildResult, build, build_bundle_plan, build_engine, profiles_summary, save_plan
from vkt.engines.config import PRECISIONS, ROLE_PRECISION, BuildConfig, normalize_sm

__all__ = ["MODULE_CHOICES", "PRECISIONS", "ROLE_PRECISION", "BuildConfig", "BuildResult", "build", "build_bundle_plan",
           "build_engine", "load_module", "normalize_sm", "profiles_summary", "save_plan"]
