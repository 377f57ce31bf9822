"""Atomic file writes and checksums: a killed process never leaves a file a later load would trust."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on clean exit fsync it and rename it over ``path``.

    On an exception (or a kill) the temp file is removed / left as ``.<name>.tmp-*``, which no
    loader reads, and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)


def read_utf8_lines(path: str | os.PathLike, what: str) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file (BOM allowed) as ``(line number, line)``.

    ``what`` names the file in errors ("label file", "ground-truth file"): InputError when it is
    missing or not UTF-8.
    """
    from vkt.errors import InputError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{what} not found: {str(p)!r}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
