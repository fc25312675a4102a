"""``medvision runs``: review MLflow runs (list, compare, promote, show).

It parses arguments and delegates to :mod:`medvision.tracking.review`; it holds no logic and no error
handler of its own. A run id may be given whole or as a unique prefix (``runs list`` prints 8
characters). The store is ``--tracking-uri`` (the former ``--uri`` is gone), else
``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``; ``list``, ``show`` and ``compare`` refuse a store that
does not exist instead of creating one.
"""

from __future__ import annotations

import json

import typer

from medvision.cli._common import TrackingUri

__all__ = ["app"]

app = typer.Typer(
    help="Review MLflow runs: leaderboard, paired comparison, promotion to champion, run details.",
    no_args_is_help=True,
    add_completion=False,
)

_RUN_HELP = "whole, or a unique prefix as `runs list` prints it"


def _json(value: object) -> str:
    from medvision.tracking.review import jsonable

    return json.dumps(jsonable(value), allow_nan=False)


@app.command("list")
def list_command(
    experiment: str = typer.Option("pneumonia-demo", "--experiment", "-e", help="Experiment name."),
    tracking_uri: TrackingUri = None,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per run, one per line."),
) -> None:
    """The runs of an experiment, best test AUROC first."""
    from medvision.tracking import review

    rows = review.list_runs(tracking_uri, experiment)
    if as_json:
        for row in rows:
            typer.echo(_json(row))
    elif not rows:
        typer.echo(f"experiment {experiment!r} has no runs")
    else:
        typer.echo(review.leaderboard_table(rows))


@app.command("compare")
def compare_command(
    run_a: str = typer.Argument(..., help=f"Run id of model A ({_RUN_HELP})."),
    run_b: str = typer.Argument(..., help=f"Run id of model B ({_RUN_HELP})."),
    tracking_uri: TrackingUri = None,
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Paired bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Paired comparison of two runs on the same test studies (DeLong test and paired bootstrap)."""
    from medvision.tracking import review

    result = review.compare_runs(tracking_uri, run_a, run_b, n_bootstraps=bootstrap, seed=seed)
    typer.echo(_json(result) if as_json else review.comparison_table(result))


@app.command("promote")
def promote_command(
    model: str = typer.Argument(..., help="Registered model name, e.g. pneumonia-classifier."),
    version: str = typer.Argument(..., help="The version to promote."),
    alias: str = typer.Option("champion", "--alias", help="The alias to point at the version."),
    force: bool = typer.Option(False, "--force", help="Promote even if worse than the alias's current version."),
    tracking_uri: TrackingUri = None,
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Point an alias (champion) at a model version whose run has test evidence."""
    from medvision.tracking import review

    result = review.promote(tracking_uri, model, version, alias=alias, force=force)
    typer.echo(_json(result) if as_json else review.promotion_text(result))


@app.command("show")
def show_command(
    run: str = typer.Argument(..., help=f"Run id ({_RUN_HELP})."),
    tracking_uri: TrackingUri = None,
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Params, metrics, tags, artifacts and registered versions of one run."""
    from medvision.tracking import review

    info = review.show_run(tracking_uri, run)
    typer.echo(_json(info) if as_json else review.show_text(info))
