"""Loading and saving ONNX files with clear errors (shared by export, calibration, engines, runtime)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vkt.errors import ModelError

TWO_GB = 2**31 - 1


def load_onnx(path: str | os.PathLike, load_external_data: bool = True) -> Any:
    """Load an ONNX model; raise ModelError naming the file when it is missing or not ONNX."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ONNX file not found: {str(p)!r}" + (" (it is a directory)" if p.is_dir() else ""))
    if p.stat().st_size == 0:
        raise ModelError(f"ONNX file {str(p)!r} is empty")
    try:
        model = onnx.load(str(p), load_external_data=load_external_data)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning, ... depending on the damage
        raise ModelError(f"{str(p)!r} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{str(p)!r} parsed as protobuf but holds no ONNX graph (is it an ONNX file?)")
    return model


def save_onnx(model: Any, path: str | os.PathLike) -> list[Path]:
    """Save atomically; graphs over 2 GB go to one external-data file beside it. Returns files written."""
    import onnx

    from vkt.fsutil import atomic_open

    p = Path(path)
    if model.ByteSize() < TWO_GB:
        with atomic_open(p, "wb") as f:
            f.write(model.SerializeToString())
        return [p]
    data_name = p.name + ".data"
    tmp_dir = p.parent / f".{p.name}.ext-tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(tmp_dir / p.name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    os.replace(tmp_dir / data_name, p.parent / data_name)
    os.replace(tmp_dir / p.name, p)
    os.rmdir(tmp_dir)
    return [p, p.parent / data_name]


def check_onnx(model_or_path: Any) -> None:
    """Run onnx.checker (full check with shapes); raise ModelError with its message."""
    import onnx

    try:
        onnx.checker.check_model(model_or_path if not isinstance(model_or_path, (str, os.PathLike)) else str(model_or_path))
    except Exception as e:
        raise ModelError(f"ONNX check failed: {e}") from None


def apply_spec_dims(model: Any, spec: Any) -> None:
    """Give the graph's inputs and outputs the spec's axis names and static sizes.

    Exporters invent their own names for dynamic dims (``s0``, ``Addoutput_dim_2``, ...); after this
    the graph says ``batch`` / ``height`` / ``width`` exactly where the ExportSpec does.
    Raises ModelError when a spec tensor is missing from the graph.
    """
    for vis, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        by_name = {v.name: v for v in vis}
        for t in tensors:
            vi = by_name.get(t.name)
            if vi is None:
                raise ModelError(f"the exported graph has no tensor named {t.name!r}; it has {sorted(by_name)}")
            dims = vi.type.tensor_type.shape.dim
            for i, d in enumerate(t.shape):
                if isinstance(d, str):
                    dims[i].ClearField("dim_value")
                    dims[i].dim_param = d
                else:
                    dims[i].ClearField("dim_param")
                    dims[i].dim_value = d
