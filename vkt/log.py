"""Logging, timed steps and progress bars shared by every layer."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger("vkt")


def get_logger(name: str) -> logging.Logger:
    return logger.getChild(name.removeprefix("vkt."))


def setup(verbose: bool = False) -> None:
    """Route vkt's logs through rich (stderr) once; safe to call repeatedly."""
    if any(getattr(h, "_vkt", False) for h in logger.handlers):
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        return
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    handler._vkt = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


@contextlib.contextmanager
def timed(step: str, log: logging.Logger | None = None) -> Iterator[dict]:
    """Log the start and end of a long step with its wall time; yields a dict that gets 'seconds'."""
    log = log or logger
    log.info("%s ...", step)
    out: dict = {}
    t0 = time.perf_counter()
    try:
        yield out
    except BaseException:
        log.debug("%s failed after %.2f s", step, time.perf_counter() - t0)
        raise
    out["seconds"] = time.perf_counter() - t0
    log.info("%s done in %.2f s", step, out["seconds"])


def progress(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Wrap an iterable in a rich progress bar on stderr (transient, disabled when not a TTY)."""
    if not enabled:
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
