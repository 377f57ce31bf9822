"""BuildConfig: every knob of one ONNX -> TensorRT plan build, as plain, validated, frozen data."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vkt.bundle import PRECISION_ROLES
from vkt.engines.backend import CHOICES
from vkt.errors import InputError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# bundle file role -> the precision its graph carries (networks are strongly typed: the graph decides)
ROLE_PRECISION = {role: precision for precision, role in PRECISION_ROLES.items()}
_SM = re.compile(r"^SM(\d{2,3})$")


@dataclass(frozen=True)
class BuildConfig:
    """How to build a plan. Defaults give a portable, strongly typed FP32-graph build.

    Args:
        workspace_bytes: cap on the builder's scratch memory pool (``MemoryPoolType.WORKSPACE``);
            None (default) leaves TensorRT's default (the device's memory).
        timing_cache: file to load tactic timings from and save them to after the build (full
            TensorRT only; TensorRT-RTX ignores timing caches and vkt logs that instead). None: none.
        version_compatible: ``BuilderFlag.VERSION_COMPATIBLE``: the plan runs on later TensorRT
            versions of the same major (loading it needs ``engine_host_code_allowed``). Default False.
        exclude_lean_runtime: ``BuilderFlag.EXCLUDE_LEAN_RUNTIME``: smaller version-compatible plan
            that needs the lean runtime installed where it runs; requires ``version_compatible``.
        compute_capabilities: TensorRT-RTX target GPUs, e.g. ``("SM89",)`` or ``("SM86", "SM89")``;
            empty (default) takes TensorRT-RTX's default set (Ampere and later; Turing = "SM75" must be
            asked for). "CURRENT" targets the GPU of the build machine (needs one).
        builder_optimization_level: 0..5 (TensorRT's default is 3); None keeps the default.
        precision: label recorded in the bundle ("fp32", "fp16", "bf16", "int8", "fp8"). The graph
            decides the real precision; None (default) derives it from the ONNX's bundle role.
        module: "auto", "tensorrt" or "tensorrt_rtx" (see ``vkt.engines.backend.load_module``).
    """

    workspace_bytes: int | None = None
    timing_cache: str | os.PathLike | None = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    compute_capabilities: tuple[str, ...] = field(default=())
    builder_optimization_level: int | None = None
    precision: str | None = None
    module: str = "auto"

    def __post_init__(self) -> None:
        ws = self.workspace_bytes
        if ws is not None and (isinstance(ws, bool) or not isinstance(ws, int) or ws <= 0):
            raise InputError(f"workspace_bytes must be a positive number of bytes (or unset), got {ws!r}")
        if self.timing_cache is not None:
            if not isinstance(self.timing_cache, (str, os.PathLike)) or not str(self.timing_cache):
                raise InputError(f"timing_cache must be a file path (or unset), got {self.timing_cache!r}")
            if Path(self.timing_cache).is_dir():
                raise InputError(f"timing_cache must be a file path, got the directory {str(self.timing_cache)!r}")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise InputError("exclude_lean_runtime=True needs version_compatible=True "
                             "(TensorRT accepts EXCLUDE_LEAN_RUNTIME only for version-compatible plans)")
        ccs = self.compute_capabilities
        if isinstance(ccs, str):
            ccs = (ccs,)
        try:
            ccs = tuple(normalize_sm(c) for c in ccs)
        except TypeError:
            raise InputError(f"compute_capabilities must be a sequence of names like 'SM89', got {self.compute_capabilities!r}") from None
        if len(set(ccs)) != len(ccs):
            raise InputError(f"compute_capabilities lists a target twice: {list(ccs)}")
        if "CURRENT" in ccs and len(ccs) > 1:
            raise InputError(f"compute capability 'CURRENT' must be the only target, got {list(ccs)}")
        object.__setattr__(self, "compute_capabilities", ccs)
        lvl = self.builder_optimization_level
        if lvl is not None and (isinstance(lvl, bool) or not isinstance(lvl, int) or not 0 <= lvl <= 5):
            # TensorRT-RTX silently accepts out-of-range levels; refuse them here instead.
            raise InputError(f"builder_optimization_level must be an integer in [0, 5] (or unset), got {lvl!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {list(PRECISIONS)} (or unset), got {self.precision!r}")
        if self.module not in CHOICES:
            from vkt.errors import BackendError

            raise BackendError(f"unknown TensorRT module {self.module!r}; expected one of {list(CHOICES)}")

    def flags(self) -> dict[str, bool]:
        """Builder flags as recorded in the bundle (networks are always strongly typed)."""
        return {"strongly_typed": True, "version_compatible": self.version_compatible,
                "exclude_lean_runtime": self.exclude_lean_runtime}

    def to_dict(self) -> dict[str, Any]:
        return {"workspace_bytes": self.workspace_bytes,
                "timing_cache": None if self.timing_cache is None else str(self.timing_cache),
                **self.flags(), "compute_capabilities": list(self.compute_capabilities),
                "builder_optimization_level": self.builder_optimization_level, "precision": self.precision,
                "module": self.module}


def normalize_sm(value: Any) -> str:
    """'sm89', 'SM89', '8.9', 89 -> 'SM89'; 'current' -> 'CURRENT'. Raises InputError on anything else."""
    if isinstance(value, bool):
        raise InputError(f"compute capability must look like 'SM89' or '8.9', got {value!r}")
    s = str(value).strip().upper().replace("_", "")
    if s == "CURRENT":
        return s
    if re.fullmatch(r"\d+\.\d", s):
        major, minor = s.split(".")
        s = f"SM{major}{minor}"
    elif s.isdigit():
        s = f"SM{s}"
    if not _SM.match(s):
        raise InputError(f"compute capability must look like 'SM89' or '8.9', got {value!r}")
    return s
