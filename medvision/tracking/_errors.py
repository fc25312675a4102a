"""MLflow's exceptions as :class:`~medvision.errors.TrackingError` (one line, the fix), shared by the registry
and the experiment review (a module of its own so that neither imports the other's internals)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from medvision.errors import TrackingError

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _not_found(exc: BaseException) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


@contextmanager
def _mlflow_errors(where: str, action: str, fix: str | None = None) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except TrackingError:
        raise
    except MlflowException as exc:
        raise TrackingError(where, f"MLflow refused to {action}: {_first_line(exc)}", fix) from exc
    except OSError as exc:
        raise TrackingError(where, f"could not {action}: {type(exc).__name__}: {exc}", fix) from exc


def _available(client: MlflowClient, name: str) -> str:
    """``aliases: champion -> v2, candidate -> v3; versions: 1, 2, 3`` for a registered model."""
    try:
        registered = client.get_registered_model(name)
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except Exception:  # only decorates an error message
        return ""
    aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(dict(registered.aliases or {}).items()))
    return f"aliases: {aliases or 'none'}; versions: {', '.join(map(str, versions)) or 'none'}"
