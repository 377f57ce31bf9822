"""The bundle: one folder with ``manifest.json`` and the files it names, written atomically, verified on load.

Manifest layout (schema ``vkt.bundle``, version 1)::

    {
      "schema": "vkt.bundle", "schema_version": 1,
      "name": "ppocrv5-det", "family": "textdet", "task": "text-detection", "created_utc": "...",
      "components": {"model": {"spec": <ExportSpec.to_dict()>}},          # SD has several
      "files": [{"path": "model.onnx", "role": "fp32 onnx", "component": "model",
                 "sha256": "...", "bytes": 123, "meta": {...}}],              # plans: builder, versions, SM
      "preprocess": {...}, "postprocess": {...},                             # enough for a C++ service
      "precision": {...}, "calibration": {...} | null,
      "provenance": {"vkt": "0.1.0", "onnx": "...", ...}
    }
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from vkt import __version__
from vkt.errors import BundleError
from vkt.fsutil import (
    atomic_copy,
    atomic_write_bytes,
    atomic_write_text,
    dir_mode,
    replace_dir,
    sha256_file,
    staged_dir,
    temp_dir_beside,
)
from vkt.specs import ExportSpec

SCHEMA = "vkt.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ROLES = frozenset({
    "fp32 onnx", "fp16 onnx", "int8 qdq onnx", "onnx external data", "plan", "timing cache",
    "calibration table", "tokenizer", "scheduler config", "config", "label map", "report", "image",
})
# precision -> the role of the graph file that runs it (make_runner, Txt2Img, vkt build / bench / triton)
PRECISION_ROLES = {"fp32": "fp32 onnx", "fp16": "fp16 onnx", "int8": "int8 qdq onnx"}
PROVENANCE_PACKAGES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "diffusers",
                       "tensorrt", "tensorrt-rtx", "opencv-python-headless")


def provenance() -> dict[str, str]:
    """Versions of vkt and of the installed packages that shape an artifact (read from metadata: no imports)."""
    out = {"vkt": __version__}
    for pkg in PROVENANCE_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


@dataclass
class FileEntry:
    path: str
    role: str
    component: str
    sha256: str
    bytes: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "role": self.role, "component": self.component, "sha256": self.sha256,
                "bytes": self.bytes, "meta": self.meta}


def _check_rel(path: str) -> str:
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path or path.startswith("~"):
        raise BundleError(f"bundle file path must be relative and inside the bundle, got {path!r}")
    if p.name == MANIFEST:
        raise BundleError(f"{MANIFEST!r} is reserved for the manifest")
    return str(p)


class Bundle:
    """A verified bundle on disk. Use :meth:`load` to open one and :class:`BundleWriter` to make one."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self.entries = [FileEntry(**{**e, "meta": e.get("meta", {})}) for e in manifest["files"]]
        self._specs: dict[str, ExportSpec] = {}

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> Bundle:
        """Open a bundle; with ``verify`` check every file's size and sha256 before returning."""
        root = Path(path)
        if not root.exists():
            raise BundleError(f"bundle not found: {str(root)!r}")
        if root.is_file():
            if root.name == MANIFEST:
                root = root.parent
            else:
                raise BundleError(f"{str(root)!r} is a file; a bundle is a folder holding {MANIFEST}")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{str(root)!r} is not a vkt bundle: it has no {MANIFEST}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{str(mpath)!r} is not valid JSON ({e})") from None
        cls._check_manifest(manifest, mpath)
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        for name in manifest["components"]:
            bundle.spec(name)  # parse every spec now: never half-load
        return bundle

    @staticmethod
    def _check_manifest(m: Any, where: Path) -> None:
        if not isinstance(m, dict) or m.get("schema") != SCHEMA:
            raise BundleError(f"{str(where)!r}: expected schema {SCHEMA!r}, got {m.get('schema') if isinstance(m, dict) else type(m).__name__!r}")
        ver = m.get("schema_version")
        if not isinstance(ver, int) or ver < 1:
            raise BundleError(f"{str(where)!r}: schema_version must be a positive integer, got {ver!r}")
        if ver > SCHEMA_VERSION:
            raise BundleError(f"{str(where)!r} has schema_version {ver}, newer than this vkt understands ({SCHEMA_VERSION}); upgrade vkt")
        for key, typ in (("files", list), ("components", dict), ("family", str), ("task", str)):
            if not isinstance(m.get(key), typ):
                raise BundleError(f"{str(where)!r}: key {key!r} must be a {typ.__name__}, got {type(m.get(key)).__name__}")
        for e in m["files"]:
            if not isinstance(e, dict) or not {"path", "role", "component", "sha256", "bytes"} <= set(e):
                raise BundleError(f"{str(where)!r}: malformed file entry {e!r}")
            _check_rel(e["path"])
            if e["component"] not in m["components"]:
                raise BundleError(f"{str(where)!r}: file {e['path']!r} belongs to unknown component {e['component']!r}")

    def verify(self) -> None:
        """Check that every listed file exists with the recorded size and sha256."""
        for e in self.entries:
            p = self.root / e.path
            if not p.is_file():
                raise BundleError(f"bundle {str(self.root)!r}: file {e.path!r} ({e.role}) is missing")
            size = p.stat().st_size
            if size != e.bytes:
                raise BundleError(f"bundle {str(self.root)!r}: file {e.path!r} has {size} bytes, the manifest says {e.bytes} (truncated or replaced?)")
            digest = sha256_file(p)
            if digest != e.sha256:
                raise BundleError(f"bundle {str(self.root)!r}: file {e.path!r} fails its sha256 check (tampered or corrupt): expected {e.sha256[:16]}…, got {digest[:16]}…")

    # ---- queries -------------------------------------------------------------------------
    family = property(lambda self: self.manifest["family"])
    task = property(lambda self: self.manifest["task"])
    name = property(lambda self: self.manifest.get("name", self.root.name))
    preprocess = property(lambda self: self.manifest.get("preprocess", {}))
    postprocess = property(lambda self: self.manifest.get("postprocess", {}))

    @property
    def components(self) -> list[str]:
        return list(self.manifest["components"])

    def spec(self, component: str = "model") -> ExportSpec:
        if component not in self._specs:
            comp = self.manifest["components"].get(component)
            if comp is None:
                raise BundleError(f"bundle {self.name!r} has no component {component!r}; it has {self.components}")
            try:
                self._specs[component] = ExportSpec.from_dict(comp["spec"])
            except Exception as e:
                raise BundleError(f"bundle {self.name!r}: component {component!r} has an invalid spec: {e}") from None
        return self._specs[component]

    def files(self, role: str | None = None, component: str | None = None) -> list[FileEntry]:
        return [e for e in self.entries if (role is None or e.role == role) and (component is None or e.component == component)]

    def has(self, role: str, component: str = "model") -> bool:
        return bool(self.files(role, component))

    def path(self, role: str, component: str = "model") -> Path:
        """The newest file of ``role``, preferring files without a placement (the canonical graph: an SD
        bundle's ``fp32 onnx`` beside its onnxruntime-only fused ``*.ort.onnx``)."""
        found = self.files(role, component)
        if not found:
            have = sorted({e.role for e in self.files(component=component)})
            raise BundleError(f"bundle {self.name!r} component {component!r} has no {role!r} file; it has {have}")
        return self.root / ([e for e in found if "placement" not in e.meta] or found)[-1].path

    def entry(self, role: str, component: str = "model", placement: str | None = None) -> FileEntry:
        """The newest file of ``role``; with ``placement`` ("ort" / "trt"), the graph written for that
        backend when the bundle has one, else one without a placement (those fit any)."""
        self.path(role, component)  # raises, listing what the component has
        found = self.files(role, component)
        if placement is not None:
            found = ([e for e in found if e.meta.get("placement") == placement]
                     or [e for e in found if "placement" not in e.meta] or found)
        return found[-1]

    # ---- in-place additions (plans, calibration tables, ...) --------------------------------
    def add_file(self, src: str | os.PathLike | bytes, name: str, role: str, component: str = "model",
                 meta: Mapping[str, Any] | None = None, replace: bool = True) -> FileEntry:
        """Copy a file into the bundle atomically, then rewrite the manifest atomically."""
        entry = _stage_file(self.root, src, name, role, component, meta, self.manifest["components"])
        if replace:
            self.entries = [e for e in self.entries if e.path != entry.path]
        self.entries.append(entry)
        self.save()
        return entry

    def update(self, **sections: Any) -> None:
        """Set top-level manifest sections (``calibration=...``, ``precision=...``) and save."""
        for k in sections:
            if k in ("schema", "schema_version", "files", "components"):
                raise BundleError(f"manifest section {k!r} cannot be set through update()")
        self.manifest.update(sections)
        self.save()

    def save(self) -> None:
        self.manifest["files"] = [e.to_dict() for e in self.entries]
        atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=False) + "\n")


def _stage_file(root: Path, src: str | os.PathLike | bytes, name: str, role: str, component: str,
                meta: Mapping[str, Any] | None, components: Mapping[str, Any]) -> FileEntry:
    name = _check_rel(name)
    if role not in ROLES:
        raise BundleError(f"unknown file role {role!r}; expected one of {sorted(ROLES)}")
    if component not in components:
        raise BundleError(f"unknown component {component!r}; add it first (components: {sorted(components)})")
    dst = root / name
    if isinstance(src, (bytes, bytearray, memoryview)):
        atomic_write_bytes(dst, bytes(src))
    else:
        if not Path(src).is_file():
            raise BundleError(f"cannot add {str(src)!r} to the bundle: not a file")
        if Path(src).resolve() != dst.resolve():
            atomic_copy(src, dst)
    return FileEntry(path=name, role=role, component=component, sha256=sha256_file(dst), bytes=dst.stat().st_size,
                     meta=dict(meta or {}))


class BundleWriter:
    """Build a bundle in a hidden temp folder; it appears at ``dest`` only when complete.

    >>> with BundleWriter("out/tiny", family="generic", task="tensor") as w:
    ...     w.add_component("model", spec)
    ...     w.add_file("tiny.onnx", "model.onnx", role="fp32 onnx")
    """

    def __init__(self, dest: str | os.PathLike, family: str, task: str, name: str | None = None, overwrite: bool = False):
        self.dest = Path(dest)
        if self.dest.exists() and not overwrite:
            raise BundleError(f"{str(self.dest)!r} already exists; choose another folder or replace it with --force")
        if self.dest.exists() and not (self.dest / MANIFEST).is_file() and any(self.dest.iterdir()):
            raise BundleError(f"{str(self.dest)!r} exists and is not a bundle; refusing to replace it")
        self.manifest: dict[str, Any] = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "name": name or self.dest.name, "family": family, "task": task,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "components": {}, "files": [], "preprocess": {}, "postprocess": {},
            "precision": {}, "calibration": None, "provenance": provenance(),
        }
        self.entries: list[FileEntry] = []
        self.tmp: Path | None = None

    def __enter__(self) -> BundleWriter:
        self.tmp = temp_dir_beside(self.dest)
        return self

    def add_component(self, name: str, spec: ExportSpec, **extra: Any) -> None:
        if name in self.manifest["components"]:
            raise BundleError(f"component {name!r} added twice")
        self.manifest["components"][name] = {"spec": spec.to_dict(), **extra}

    def add_file(self, src: str | os.PathLike | bytes, name: str, role: str, component: str = "model",
                 meta: Mapping[str, Any] | None = None) -> Path:
        assert self.tmp is not None, "use BundleWriter as a context manager"
        if any(e.path == name for e in self.entries):
            raise BundleError(f"file {name!r} added twice")
        self.entries.append(_stage_file(self.tmp, src, name, role, component, meta, self.manifest["components"]))
        return self.tmp / name

    def staged(self, name: str) -> Path:
        """Path inside the temp folder (to write a file in place before add_file)."""
        assert self.tmp is not None
        return self.tmp / _check_rel(name)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self.manifest["files"] = [e.to_dict() for e in self.entries]
            Bundle._check_manifest(self.manifest, self.dest / MANIFEST)
            atomic_write_text(self.tmp / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")
            replace_dir(self.tmp, self.dest)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def edit_bundle(path: str | os.PathLike) -> Iterator[Bundle]:
    """Change a bundle all or nothing (quantize, build): the block edits a copy, which replaces the bundle
    only when the block completes. An interrupt or error leaves the bundle exactly as it was.

    The copy hard-links the files where the filesystem allows (bundle files are only ever replaced by a
    rename, never written in place, so the original's files cannot change through the copy), else copies them.
    """
    src = Bundle.load(path)
    with staged_dir(src.root) as stage:
        shutil.copytree(src.root, stage, copy_function=_link_or_copy, symlinks=True)
        os.chmod(stage, dir_mode())  # copytree gave it the old folder's mode; the new one follows the umask
        yield Bundle.load(stage, verify=False)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
