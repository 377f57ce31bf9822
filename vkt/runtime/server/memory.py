"""The server process's allocator: large buffers go back to the OS when freed, and idle moments return freed heap.

Why: each /detect request allocates tens of MB (the decoded photo, its BGR copy, the model
input, the probability map). glibc serves blocks above its mmap threshold with mmap and unmaps
them on free — but it raises that threshold to the size of every mmapped block freed (up to
32 MiB on 64-bit), after which such buffers come from the per-thread heaps (arenas) and stay
there, fragmented. Fixing the threshold at 1 MiB keeps large buffers on mmap; ``malloc_trim``
when the server goes idle returns what the arenas hold free. Measured on issue 14's /detect load
(64 clients, photos up to 9.4 MP; benchmarks/results/serve_detect_allocator_ab.jsonl): idle RSS
after the load 1103 MB with both vs 1756 MB without, peak 1736 vs 2108 MB. Both are no-ops where
glibc is absent (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 20
TRIM_EVERY_S = 1.0

_libc = None
_last_trim = [0.0]
_pending: list[threading.Timer] = []
_lock = threading.Lock()


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc or None


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold (process-wide); True if it was set."""
    lib = _glibc()
    return bool(lib is not None and lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim_when_idle() -> None:
    """Return freed heap memory to the OS (called when no request is in flight).

    At most once per second; a call inside that second schedules one trim at its end instead,
    so the last idle moment after a burst is always followed by a trim.
    """
    lib = _glibc()
    if lib is None:
        return
    with _lock:
        wait = _last_trim[0] + TRIM_EVERY_S - time.monotonic()
        if wait > 0:
            if not _pending:
                t = threading.Timer(wait, _trim_later)
                t.daemon = True
                _pending.append(t)
                t.start()
            return
        _last_trim[0] = time.monotonic()
    lib.malloc_trim(0)


def _trim_later() -> None:
    with _lock:
        _pending.clear()
        _last_trim[0] = time.monotonic()
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
