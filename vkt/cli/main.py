"""Entry point: builds the typer app from the command modules and turns VktErrors into one red line."""

from __future__ import annotations

import importlib
import os
import sys

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
    """Run the CLI; user errors print one line and exit 2 (``--verbose`` shows the traceback)."""
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or "-v" in args[:1] or os.environ.get("VKT_VERBOSE") == "1"
    try:
        app(args=args, standalone_mode=False)
    except VktError as e:
        if verbose:
            raise
        _error(str(e))
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        _error("aborted")
        return 130
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as e:
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
    return 0


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
