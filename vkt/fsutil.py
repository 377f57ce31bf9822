"""Atomic file and folder writes that follow the umask, and checksums: a killed process never leaves a file a
later load would trust, and what it writes is readable by whoever the user's umask allows (0644/0755 under 022)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import threading
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


def current_umask() -> int:
    """The process umask. Read from /proc where it can be; else set and restored, through 0o077 so that a file
    another thread creates in between is only ever more private, never more open."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode a new file gets from open(): 0o666 less the umask (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode a new folder gets from mkdir: 0o777 less the umask (0o755 under umask 022)."""
    return 0o777 & ~current_umask()


def temp_dir_beside(dest: str | os.PathLike, kind: str = "tmp") -> Path:
    """A new hidden folder ``.<name>.<kind>-XXXX`` beside ``dest`` (same filesystem: renames are atomic).

    mkdtemp makes it 0700; it gets the umask's mode, so the folder renamed from it later is what mkdir makes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{kind}-", dir=dest.parent))
    os.chmod(tmp, dir_mode())
    return tmp


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the few statements inside (two renames), then act on them.

    Python runs signal handlers in the main thread between statements, whichever thread the kernel
    picked, so blocking the signal in one thread is not enough: the handlers are swapped for ones that
    only note the signal, and a noted signal is raised again once the block is done.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    # getsignal is None for a handler not set from Python: that one cannot be put back, so it stays
    old = {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) is not None}
    for s in old:
        signal.signal(s, lambda num, frame: noted.append(num))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(noted):
            signal.raise_signal(s)


def replace_dir(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the complete folder ``src`` to ``dest``, replacing what is there.

    The old ``dest`` is renamed aside, ``src`` renamed in, then the old one removed; an interrupt cannot
    fall between the two renames (:func:`signals_held`). Only a kill there leaves ``dest`` missing, with
    its old content in ``.<name>.old-*`` beside it.
    """
    src, dest = Path(src), Path(dest)
    box = None
    try:
        with signals_held():  # a signal noted here is raised on leaving the block, after both renames
            if dest.exists() or dest.is_symlink():
                box = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
                os.replace(dest, box / dest.name)
            os.replace(src, dest)
    finally:
        _fsync_dir(dest.parent)
        if box is not None:
            shutil.rmtree(box, ignore_errors=True)  # rmtree removes a symbolic link's entry, not its target


@contextlib.contextmanager
def staged_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Build the folder ``dest`` elsewhere; it replaces ``dest`` only when the block completes.

    Yields ``<hidden temp folder beside dest>/<dest's name>`` (not yet created: the block makes it, e.g.
    with a BundleWriter), so a bundle or model written there already has its final name. On an exception,
    an interrupt included, the staging folder is removed and ``dest`` is as before. Checking whether
    ``dest`` may be replaced is the caller's job, before the work starts.
    """
    dest = Path(dest)
    box = temp_dir_beside(dest)
    try:
        staged = box / dest.name
        yield staged
        if not staged.exists():
            raise FileNotFoundError(f"nothing was written to {str(staged)!r}")
        replace_dir(staged, dest)
    finally:
        shutil.rmtree(box, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on clean exit fsync it and rename it over ``path``.

    On an exception (or a kill) the temp file is removed / left as ``.<name>.tmp-*``, which no
    loader reads, and ``path`` keeps its old content. The file gets the mode open() would give it
    (0o666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes it 0600; the file a plain open() makes follows the umask
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
