"""Output paths checked before any work starts: never an input, the right kind (file or folder), writable.

Every command that writes calls one of these on each output path first, so a mistake costs well
under a second and one `error:` line (exit 2), not a finished computation and a traceback. An output
may not be an input, hold one (what it writes could land on it) or lie inside an input bundle.

- :func:`output_file`: a file written atomically (JSON, plot, plan, image);
- :func:`output_folder`: a folder files are written into (``vkt run -o``, a training run);
- :func:`replaced_folder`: a folder made whole and swapped in (a bundle, a data set, a Triton model),
  replacing an existing one only with ``--force`` and only when it is one of its kind;
- :func:`edited_folder`: a bundle changed in place, all or nothing (quantize, build).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from vkt.errors import InputError

Inputs = Iterable["str | os.PathLike | None"]


def output_file(path: str | os.PathLike, flag: str, inputs: Inputs = ()) -> Path:
    """Check a file output: not an input, not a folder, its folder writable (or creatable). Returns it as a Path."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {str(p)!r} is a folder; expected a file path")
    _not_an_input(p, flag, inputs, container=False)
    _writable(p.parent, flag, p)
    return p


def output_folder(path: str | os.PathLike, flag: str, inputs: Inputs = (), *, container: bool = False) -> Path:
    """Check a folder that files are written into: not an input and holding none (its files could
    overwrite them), not a file, writable. ``container``: only the files the command names inside it are
    outputs (a Triton model repository), so holding an input is fine."""
    p = Path(path)
    _not_an_input(p, flag, inputs, container=container)
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {str(p)!r} is an existing file; expected a folder (or a path that does not exist yet)")
    _writable(p, flag, p)
    return p


def replaced_folder(path: str | os.PathLike, flag: str, inputs: Inputs = (), *, force: bool, marker: str,
                    what: str, force_flag: str = "--force") -> Path:
    """Check a folder written whole and swapped in (:func:`vkt.fsutil.staged_dir`): it may exist only as an
    empty folder, or, with ``force``, as a folder of the same kind (holding ``marker``, e.g. manifest.json).
    ``what`` names the kind in messages ("bundle"); ``force_flag`` is the option that allows replacing."""
    p = Path(path)
    _not_an_input(p, flag, inputs, container=False)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise InputError(f"{flag} {str(p)!r} is an existing file; expected a folder path for the {what}")
        if any(p.iterdir()):
            if not (p / marker).is_file():
                raise InputError(f"{flag} {str(p)!r} exists and is not a {what} (it has no {marker}); refusing to "
                                 f"replace it: choose a new folder")
            if not force:
                raise InputError(f"{flag} {str(p)!r} already exists; pass {force_flag} to replace it")
    _writable(p.parent, flag, p)
    return p


def edited_folder(path: str | os.PathLike, flag: str) -> Path:
    """Check a folder changed all or nothing (:func:`vkt.bundle.edit_bundle`): its copy is made beside it
    and renamed over it, so the folder above must be writable."""
    p = Path(path)
    _writable(p.parent, flag, p)
    return p


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _not_an_input(out: Path, flag: str, inputs: Inputs, container: bool) -> None:
    o = _real(out)
    for raw in inputs:
        if raw is None or str(raw) in ("", "-"):
            continue
        inp = Path(raw)
        i = _real(inp)
        same = o == i
        if not same and out.exists() and inp.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, inp)  # hard links, bind mounts
        if same:
            raise InputError(f"{flag} {str(out)!r} is an input; writing there would overwrite it: choose another path")
        if o in i.parents and not container:
            raise InputError(f"{flag} {str(out)!r} holds the input {str(inp)!r}; writing there could overwrite it: "
                             "choose an output folder outside the inputs")
        # Inside an input folder is fine (readers do not recurse; new names overwrite nothing), except in a
        # bundle: it is one unit, replaced whole when quantize/build/--force change it.
        if i in o.parents and (inp / "manifest.json").is_file():
            raise InputError(f"{flag} {str(out)!r} is inside the input bundle {str(inp)!r}; choose an output "
                             "outside it")


def _writable(folder: Path, flag: str, out: Path) -> None:
    """The nearest existing folder at or above ``folder`` must take a new file (tried, then removed):
    permission bits alone do not say it (root, read-only mounts, /sys)."""
    base = folder if str(folder) else Path(".")
    while not base.exists() and base != base.parent:
        if base.is_symlink():
            raise InputError(f"{flag} {str(out)!r}: {str(base)!r} is a broken symbolic link")
        base = base.parent
    if not base.is_dir():
        raise InputError(f"{flag} {str(out)!r}: {str(base)!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vkt-write-test-", dir=base)
    except OSError as e:
        raise InputError(f"{flag} {str(out)!r}: cannot write in {str(base)!r} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


__all__ = ["edited_folder", "output_file", "output_folder", "replaced_folder"]
