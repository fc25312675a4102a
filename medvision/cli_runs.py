"""``medvision runs``: review MLflow runs (list, compare, promote, show).

It parses arguments and delegates to :mod:`medvision.tracking.review`; it holds no logic of its own.
A :class:`~medvision.errors.MedvisionError` becomes one line ``error: <where>: <reason>; <fix>`` on
stderr and exit status 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from medvision.errors import MedvisionError

app = typer.Typer(
    help="Review MLflow runs: leaderboard, paired comparison, promotion to champion, run details.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_URI_HELP = "Tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory)."


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except MedvisionError as exc:
        typer.echo(f"error: {exc.one_line()}", err=True)
        raise typer.Exit(2) from exc


def _json(value: object) -> str:
    from medvision.tracking.review import jsonable

    return json.dumps(jsonable(value), allow_nan=False)


@app.command("list")
def list_command(
    experiment: str = typer.Option("pneumonia-demo", "--experiment", "-e", help="Experiment name."),
    uri: str | None = typer.Option(None, "--uri", help=_URI_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run, one per line."),
) -> None:
    """The runs of an experiment, best test AUROC first."""
    from medvision.tracking import review

    with _errors():
        rows = review.list_runs(uri, experiment)
    if as_json:
        for row in rows:
            typer.echo(_json(row))
    elif not rows:
        typer.echo(f"experiment {experiment!r} has no runs")
    else:
        typer.echo(review.leaderboard_table(rows))


@app.command("compare")
def compare_command(
    run_a: str = typer.Argument(..., help="Run id of model A."),
    run_b: str = typer.Argument(..., help="Run id of model B."),
    uri: str | None = typer.Option(None, "--uri", help=_URI_HELP),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Paired bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Paired comparison of two runs on the same test studies (DeLong test and paired bootstrap)."""
    from medvision.tracking import review

    with _errors():
        result = review.compare_runs(uri, run_a, run_b, n_bootstraps=bootstrap, seed=seed)
    typer.echo(_json(result) if as_json else review.comparison_table(result))


@app.command("promote")
def promote_command(
    model: str = typer.Argument(..., help="Registered model name, e.g. pneumonia-classifier."),
    version: str = typer.Argument(..., help="The version to promote."),
    alias: str = typer.Option("champion", "--alias", help="The alias to point at the version."),
    force: bool = typer.Option(False, "--force", help="Promote even if worse than the alias's current version."),
    uri: str | None = typer.Option(None, "--uri", help=_URI_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Point an alias (champion) at a model version whose run has test evidence."""
    from medvision.tracking import review

    with _errors():
        result = review.promote(uri, model, version, alias=alias, force=force)
    typer.echo(_json(result) if as_json else review.promotion_text(result))


@app.command("show")
def show_command(
    run: str = typer.Argument(..., help="Run id."),
    uri: str | None = typer.Option(None, "--uri", help=_URI_HELP),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Params, metrics, tags, artifacts and registered versions of one run."""
    from medvision.tracking import review

    with _errors():
        info = review.show_run(uri, run)
    typer.echo(_json(info) if as_json else review.show_text(info))
