"""The one row schema of every benchmark: JSON lines whose common keys mean the same thing in every file.

Every benchmark's ``--json PATH`` writes one JSON object per line, built by :func:`row`. The keys in
:data:`COMMON_KEYS` are always present (``None`` where a row has no such figure, e.g. ``p50_ms`` of an
accuracy row); a benchmark adds its own keys beside them (``speedup``, ``hmean_vs_fp32``, ``stages_s``, ...).

    from benchmarks.schema import RowWriter, row
    with RowWriter(args.json) as out:
        out.write(row("textdet", "vkt", includes="pre + ORT + DB post, one image", p50_ms=12.5, threads=2))
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vkt.bench import machine_info

# key -> what it means (README.md of benchmarks/ shows the same table)
COMMON_KEYS: dict[str, str] = {
    "bench": "the benchmark that wrote the row (script name without bench_, e.g. 'textdet', 'sd')",
    "target": "what was timed or scored: implementation, graph or variant (e.g. 'vkt', 'ort-int8', 'diffusers-torch')",
    "model": "the model measured (e.g. 'PP-OCRv5 mobile det', 'DETR-R50 (random weights)')",
    "backend": "where it ran: 'ort-cpu', 'torch-cpu', 'http' (a served model), ...",
    "precision": "'fp32', 'int8', 'fp16' or None when not one precision",
    "threads": "intra-op threads per session (int); None: the library's default",
    "shape": "input shape as text: '1x3x736x736', 'short side 736', 'B=1 512x512 4 steps'",
    "batch": "items per timed call (images, prompts' images)",
    "n": "timed samples behind p50_ms / p90_ms",
    "p50_ms": "median latency of one timed call, ms (None: the row is not a latency)",
    "p90_ms": "90th percentile latency, ms",
    "includes": "plain words: what one timed call includes (and what it leaves out)",
    "load_avg": "1-minute load average when measured: a number, or [before, after]",
    "date": "UTC time the row was written (ISO 8601)",
    "versions": "versions of python, vkt and the runtimes loaded in the process",
    "machine": "cpu model, core count, architecture",
}

_SHAPE_TYPES = (str, type(None))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def versions() -> dict[str, str]:
    """python, vkt, numpy and every runtime package already imported by this process (none is imported here)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for module, dist in (("vkt", "vkt"), ("numpy", "numpy"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                         ("torch", "torch"), ("transformers", "transformers"), ("diffusers", "diffusers"),
                         ("openvino", "openvino"), ("rapidocr_onnxruntime", "rapidocr-onnxruntime"),
                         ("tensorrt", "tensorrt"), ("tensorrt_rtx", "tensorrt-rtx")):
        if module in sys.modules or module in ("vkt", "numpy"):
            try:
                out[module] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                ver = getattr(sys.modules.get(module), "__version__", None)
                if ver:
                    out[module] = str(ver)
    return out


def shape_text(shape: Any) -> str | None:
    """(1, 3, 736, 736) or [1, 3, 736, 736] -> '1x3x736x736'; text stays as it is."""
    if shape is None or isinstance(shape, str):
        return shape
    return "x".join(str(int(v)) for v in shape)


def row(bench: str, target: str, *, includes: str, **fields: Any) -> dict[str, Any]:
    """One row: the common keys (given in ``fields`` or None; ``date``, ``versions``, ``machine`` and
    ``load_avg`` filled in when not given) followed by the benchmark's own keys, in the order given.

    ``shape`` may be a tuple/list of ints (written as '1x3x736x736'); ``p50_ms`` / ``p90_ms`` are rounded
    to 4 decimals. Raises ValueError when a common key has the wrong type (see :func:`problems`).
    """
    out: dict[str, Any] = {k: None for k in COMMON_KEYS}
    out.update(bench=bench, target=target, includes=includes)
    for k, v in fields.items():
        out[k] = v
    out["shape"] = shape_text(out["shape"])
    for k in ("threads", "batch", "n", "p50_ms", "p90_ms"):
        if hasattr(out[k], "item"):  # numpy scalars
            out[k] = out[k].item()
    for k in ("p50_ms", "p90_ms"):
        if isinstance(out[k], float):
            out[k] = round(out[k], 4)
    if out["load_avg"] is None:
        out["load_avg"] = round(os.getloadavg()[0], 2)
    out["date"] = out["date"] or _now()
    out["versions"] = out["versions"] or versions()
    out["machine"] = out["machine"] or machine_info()
    bad = problems(out)
    if bad:
        raise ValueError(f"benchmark row for {bench}/{target}: " + "; ".join(bad))
    return out


def problems(r: Mapping[str, Any]) -> list[str]:
    """What makes ``r`` not a row of this schema (empty list: it is one)."""
    out = [f"missing key {k!r}" for k in COMMON_KEYS if k not in r]
    if out:
        return out

    def num(v: Any) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    for k in ("bench", "target", "includes", "date"):
        if not isinstance(r[k], str) or not r[k]:
            out.append(f"{k} must be a non-empty string, got {r[k]!r}")
    for k in ("model", "backend", "precision"):
        if not isinstance(r[k], _SHAPE_TYPES):
            out.append(f"{k} must be a string or null, got {r[k]!r}")
    if not isinstance(r["shape"], _SHAPE_TYPES):
        out.append(f"shape must be text like '1x3x736x736' or null, got {r['shape']!r}")
    for k in ("threads", "batch", "n"):
        if r[k] is not None and (not isinstance(r[k], int) or isinstance(r[k], bool)):
            out.append(f"{k} must be an integer or null, got {r[k]!r}")
    for k in ("p50_ms", "p90_ms"):
        if not num(r[k]):
            out.append(f"{k} must be a number of ms or null, got {r[k]!r}")
    la = r["load_avg"]
    if not (num(la) or (isinstance(la, list) and all(num(v) for v in la))):
        out.append(f"load_avg must be a number or [before, after], got {la!r}")
    for k in ("versions", "machine"):
        if not isinstance(r[k], dict):
            out.append(f"{k} must be an object, got {r[k]!r}")
    return out


def from_bench_row(bench: str, r: Any, **fields: Any) -> dict[str, Any]:
    """A :class:`vkt.bench.Row` (run_bench's result) as a schema row; ``fields`` add or override keys."""
    skipped = getattr(r, "status", "ok") != "ok"
    base = {"shape": r.case, "batch": r.batch, "n": r.n,
            "p50_ms": None if skipped else r.p50_ms, "p90_ms": None if skipped else r.p90_ms,
            "p99_ms": None if skipped else r.p99_ms, "mean_ms": None if skipped else r.mean_ms,
            "min_ms": None if skipped else r.min_ms, "max_ms": None if skipped else r.max_ms,
            "throughput": r.throughput, "ratio_vs_first": r.ratio_vs_first, "status": r.status}
    if r.info:
        base["info"] = r.info
    return row(bench, r.target, includes=r.includes, **{**base, **fields})


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file, each checked against the schema (ValueError naming the line otherwise)."""
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(r, dict):
            raise ValueError(f"{path}:{i}: a row must be a JSON object")
        bad = problems(r)
        if bad:
            raise ValueError(f"{path}:{i}: " + "; ".join(bad))
        rows.append(r)
    return rows


class RowWriter:
    """JSON lines to ``path``, one row at a time, each also printed to stdout.

    Rows go to ``<path>.partial`` as they come (flushed: a crash keeps what was measured) and the file is
    renamed to ``path`` on a clean close, so an interrupted run never replaces an earlier complete result.
    ``path=None`` only prints.
    """

    def __init__(self, path: str | os.PathLike | None, echo: bool = True) -> None:
        self.path = None if path is None else Path(path)
        self.echo = echo
        self.rows: list[dict[str, Any]] = []
        self._f = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._partial = self.path.with_name(self.path.name + ".partial")
            self._f = open(self._partial, "w")

    def write(self, r: Mapping[str, Any]) -> None:
        bad = problems(r)
        if bad:
            raise ValueError(f"benchmark row for {r.get('bench')}/{r.get('target')}: " + "; ".join(bad))
        line = json.dumps(r, default=_jsonable)
        self.rows.append(dict(r))
        if self.echo:
            print(line, flush=True)
        if self._f is not None:
            self._f.write(line + "\n")
            self._f.flush()

    def write_all(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for r in rows:
            self.write(r)

    def close(self, ok: bool = True) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        if ok:
            os.replace(self._partial, self.path)
        else:
            print(f"# kept the rows measured so far in {self._partial}", file=sys.stderr)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(ok=exc_type is None)


def _jsonable(v: Any) -> Any:
    """numpy scalars and arrays, Paths and the like as JSON values."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    return str(v)
