"""What the commands share: exit codes, the ``--tracking-uri`` option, the ``--debug`` switch and the error line.

Nothing here imports torch, monai or MLflow.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated

import typer

from medvision.errors import MedvisionError
from medvision.tracking.store import TRACKING_URI_ENV

#: Exit codes (the package docstring of :mod:`medvision.cli` explains them).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_INTERRUPTED = 130

#: ``--tracking-uri``: the one option of every command that reads or writes the MLflow tracking store.
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar=TRACKING_URI_ENV,
        show_envvar=True,
        help="MLflow tracking store: sqlite:///PATH, http(s)://HOST:PORT or a folder. For train it wins over the"
        " config's tracking.uri. Default: the config's tracking.uri (train, report --config), else"
        f" ${TRACKING_URI_ENV}, else sqlite:///mlflow.db in the working directory.",
    ),
]

_state = {"debug": False}


def set_debug(debug: bool) -> None:
    """Show tracebacks (``--debug``) or one-line errors."""
    _state["debug"] = debug


def print_error(exc: BaseException) -> None:
    """``error: <where>: <reason>; <fix>`` on stderr (``error: unexpected <type>: ...`` for a bug), after the
    traceback with ``--debug``."""
    if _state["debug"]:
        traceback.print_exception(exc)
    if isinstance(exc, MedvisionError):
        line = exc.one_line()
    else:
        line = f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}"
    typer.echo(f"error: {line}", err=True)


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the option ``name`` was typed (not taken from its environment variable or its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"

#: The PACS options the report and the listener share.
CaBundle = Annotated[
    Path | None, typer.Option("--ca-bundle", help="PEM file of the CAs to trust for the PACS (TLS).")
]
PacsCredentials = Annotated[
    Path | None,
    typer.Option(
        "--credentials",
        help="PACS credentials file ({username, password} or {token}, chmod 600); default: $MEDVISION_PACS_USER and"
        " $MEDVISION_PACS_PASSWORD, or $MEDVISION_PACS_TOKEN.",
    ),
]
