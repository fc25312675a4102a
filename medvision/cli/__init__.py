"""The ``medvision`` command. It parses arguments and delegates; it holds no logic of its own.

Commands: ``inspect`` and ``demo-data`` (:mod:`medvision.cli.data`); ``train``, ``evaluate`` and
``predict`` (:mod:`medvision.cli.train`); ``report`` (:mod:`medvision.cli.report`); ``runs list|compare|
promote|show`` (:mod:`medvision.cli.runs`); ``weights import|list`` (:mod:`medvision.cli.weights`). None
of them imports torch, MONAI or MLflow before it runs, so ``medvision --help``, ``medvision COMMAND
--help`` and ``medvision --version`` answer without loading them.

Exit codes (one handler, :meth:`MedvisionGroup.main`, turns every outcome into one of them; commands
raise, they print no errors of their own):

* **0**: success.
* **2**: a usage error (unknown command or option, missing or bad value): click's own output, the usage
  line, ``Try 'medvision COMMAND --help' for help.`` and the error.
* **3**: an input, config, model or tracking error (:class:`~medvision.errors.MedvisionError`): one line
  ``error: <where>: <reason>; <fix>`` on stderr, after the traceback with ``medvision --debug ...``. Also
  when some of several paths of ``inspect`` or ``predict`` failed: each gets its line and the others are
  still processed.
* **130**: interrupted (Ctrl-C).
* **1**: an unexpected internal error, a bug: ``error: unexpected <type>: <message>`` (``--debug`` shows the
  traceback).

Every command that reads or writes MLflow takes ``--tracking-uri`` (else ``$MLFLOW_TRACKING_URI``, else
``./mlflow.db``); reading commands refuse a store that does not exist rather than create one.

Example:
    >>> main(["--version"])  # doctest: +SKIP
    medvision 0.1.0
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup
from typer.main import get_command

from medvision import __version__
from medvision.cli import data, listen, report, runs, train, weights
from medvision.cli._common import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    print_error,
    set_debug,
)
from medvision.errors import MedvisionError

__all__ = ["EXIT_ERROR", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "app", "main"]

PROG_NAME = "medvision"

# typer vendors click (typer._click) in recent versions and re-exports it in older ones: find click's
# ClickException (usage errors and the like) through typer's own subclass instead of importing click.
_CLICK_EXCEPTION: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _exit_code(exc: BaseException) -> int:
    """Print what ``exc`` means for the user (if anything) and return the exit code: the one error handler."""
    if isinstance(exc, typer.Exit):
        return int(exc.exit_code)
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_INTERNAL)
    if isinstance(exc, _CLICK_EXCEPTION):
        usage: Any = exc
        usage.show()
        return int(usage.exit_code)
    if isinstance(exc, KeyboardInterrupt | typer.Abort | EOFError):
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    if isinstance(exc, MedvisionError):
        print_error(exc)
        return EXIT_ERROR
    if isinstance(exc, BrokenPipeError) or (isinstance(exc, OSError) and exc.errno == errno.EPIPE):
        # The reader went away (`medvision runs list | head -1`): stop quietly, as click does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_INTERNAL
    print_error(exc)
    return EXIT_INTERNAL


class MedvisionGroup(TyperGroup):
    """The root command: click's parsing, with the one error handler around it (also under CliRunner)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:  # the caller handles exceptions and exit codes itself
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        extra.pop("windows_expand_args", None)
        set_debug(False)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            with self.make_context(prog_name or PROG_NAME, argv, **extra) as ctx:
                self.invoke(ctx)
            code = EXIT_OK
        except BaseException as exc:  # every outcome becomes an exit code here, and only here
            code = _exit_code(exc)
        sys.exit(code)


app = typer.Typer(
    name=PROG_NAME,
    cls=MedvisionGroup,
    help="medvision: train, evaluate and report medical-imaging models (MONAI, torchvision, MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG_NAME} {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    set_debug(debug)


app.command()(data.inspect)
app.command("demo-data")(data.demo_data)
app.command()(train.train)
app.command()(train.evaluate)
app.command()(train.predict)
app.command("report")(report.report)
app.command("listen")(listen.listen)
app.add_typer(weights.app, name="weights", help="Manage ImageNet weights in the torch hub cache.")
app.add_typer(runs.app, name="runs", help="Review MLflow runs: list, compare, promote, show.")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console entry point: run ``medvision ARGV`` (default ``sys.argv[1:]``) and exit with its code."""
    get_command(app).main(args=argv, prog_name=PROG_NAME)
    raise AssertionError("unreachable: MedvisionGroup.main always exits")  # pragma: no cover


if __name__ == "__main__":
    main()
