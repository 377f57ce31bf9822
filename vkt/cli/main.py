"""Entry point: builds the typer app from the command modules and turns VktErrors into one red line."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from typing import Any

import typer

from vkt.errors import VktError

app = typer.Typer(
    name="vkt",
    help="Take vision and diffusion models from PyTorch to fast, verified ONNX/TensorRT engines, "
    "and run them from a torch-free runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

# Each module defines `register(app)`. Add one line per command module.
COMMAND_MODULES = [
    "vkt.cli.quickstart",
    "vkt.cli.doctor",
    "vkt.cli.export",
    "vkt.cli.build",
    "vkt.cli.bench",
    "vkt.cli.inspect",
    "vkt.cli.serve",
    "vkt.cli.triton",
    "vkt.cli.run",
    "vkt.cli.eval",
    "vkt.cli.txt2img",
    "vkt.cli.quantize",
    "vkt.cli.train",
    "vkt.cli.train_dreambooth",  # the three train modules share one `train` group (vkt.cli.train_common), any order
    "vkt.cli.train_detr",
    "vkt.cli.synth",
]


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs, and full tracebacks on errors.")) -> None:
    from vkt import log

    if verbose:
        os.environ["VKT_VERBOSE"] = "1"
    log.setup(verbose)


def _register() -> None:
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and exit 2 (``--verbose`` shows the traceback).

    SIGINT and SIGTERM stop the command like Ctrl-C does (a KeyboardInterrupt, so temp files and
    staging folders are cleaned up and outputs stay as they were); it prints one line naming the
    command and exits 130 (SIGINT) or 143 (SIGTERM), as shells report a process ended by them.
    """
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or "-v" in args[:1] or os.environ.get("VKT_VERBOSE") == "1"
    with _Interrupts() as signals:
        code = _run(args, verbose, signals)
        if code == 130 or signals.received is not None:
            signals.ignore()  # a second Ctrl-C while the line is printed does not end in a traceback
            sig = signals.received or signal.SIGINT
            _error(f"interrupted ({signal.Signals(sig).name}) during `{_command_name(args)}`")
            return 128 + int(sig)
    return code


def _run(args: list[str], verbose: bool, signals: _Interrupts) -> int:
    """Exit code of the command; an interrupt returns 130 without printing (main prints its line)."""
    try:
        rc = app(args=args, standalone_mode=False)  # typer returns an int for typer.Exit(n) and 130 for Ctrl-C
        return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
    except (KeyboardInterrupt, typer.Abort):
        return 130
    except typer.Exit as e:
        return e.exit_code
    except SystemExit:  # a library's sys.exit, e.g. Lightning's after it catches a KeyboardInterrupt
        if signals.received is not None:
            return 130
        raise
    except VktError as e:
        if signals.received is not None:
            return 130
        if verbose:
            raise
        _error(str(e))
        return e.exit_code
    except Exception as e:
        if signals.received is not None:
            return 130
        # Usage errors (unknown option, missing argument): typer vendors its own click, so match the
        # ClickException interface instead of importing click's class.
        if callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int):
            if e.format_message().strip():  # empty: no_args_is_help has printed the help already
                _error(_usage_line(e))
            return e.exit_code
        if verbose:
            raise
        _error(f"internal error ({type(e).__name__}: {e}); rerun with --verbose for the traceback and report it")
        return 1


class _Interrupts:
    """While active, SIGINT and SIGTERM raise KeyboardInterrupt (the exception every library and vkt's own
    writers treat as "stop and clean up") and the signal is noted; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
        raise KeyboardInterrupt

    def ignore(self) -> None:
        for s in self._old:
            signal.signal(s, signal.SIG_IGN)

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for s in self.SIGNALS:
                old = signal.getsignal(s)
                if old is not None:  # None: set outside Python, could not be put back
                    self._old[s] = old
                    signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _command_name(args: list[str]) -> str:
    """``vkt export onnx`` for ``["-v", "export", "onnx", "m.onnx", ...]``: the words that name commands."""
    words = ["vkt"]
    try:
        cmd: Any = typer.main.get_command(app)
    except Exception:  # naming the command must never hide the interrupt
        return "vkt"
    for a in args:
        if a.startswith("-"):
            continue
        sub = (getattr(cmd, "commands", None) or {}).get(a)
        if sub is None:
            break
        words.append(a)
        cmd = sub
    return " ".join(words)


def _usage_line(e: Exception) -> str:
    """A click usage error as one line that names the command: "--batch: Input should be ... (see `vkt run --help`)"."""
    msg = e.format_message()  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    path = getattr(ctx, "command_path", "") if ctx is not None else ""
    cmd = " ".join(["vkt", *path.split()[1:]]) if path else "vkt"
    msg = msg.replace("Invalid value for ", "")
    return f"{msg} (see `{cmd} --help`)"


def _error(msg: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    msg = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())  # one line, whatever the source
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(msg)}", markup=True)


if __name__ == "__main__":
    sys.exit(main())
