"""``medvision train``, ``evaluate`` and ``predict``: models made, measured and applied.

torch, MONAI and MLflow are imported inside the commands, never at import time.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medvision.cli._common import EXIT_ERROR, TrackingUri, given_on_command_line, print_error
from medvision.errors import ConfigError, MedvisionError

__all__ = ["evaluate", "predict", "train"]


def _with_tracking_uri(overrides: list[str], tracking_uri: str) -> list[str]:
    """``overrides`` plus ``tracking.uri=URI``; a ``--set tracking.uri`` that says otherwise is a conflict."""
    from medvision.config import apply_overrides

    given = [o for o in overrides if o.split("=", 1)[0].strip() == "tracking.uri"]
    if given:
        other = (apply_overrides({}, given).get("tracking") or {}).get("uri")
        if other != tracking_uri:
            raise ConfigError(
                "--tracking-uri",
                f"{tracking_uri!r} disagrees with --set tracking.uri={other!r}",
                "name the store once (--tracking-uri)",
            )
        return overrides
    return [*overrides, f"tracking.uri={json.dumps(tracking_uri)}"]  # quoted: a URI is a string, never YAML


def train(
    ctx: typer.Context,
    config: Path | None = typer.Argument(
        None, help="Experiment YAML, e.g. configs/pneumonia_demo.yaml (omit with --from-run)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=3 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint into the same MLflow run."),
    from_run: str | None = typer.Option(
        None,
        "--from-run",
        help="Repeat this MLflow run (its id, or a unique prefix as `runs list` prints): its logged config plus any"
        " --set, as a new run tagged reproduces=RUN_ID. The run is looked up in --tracking-uri (or --set"
        " tracking.uri=...), else $MLFLOW_TRACKING_URI, else ./mlflow.db.",
    ),
    skip_unreadable: bool = typer.Option(
        False, "--skip-unreadable", help="Drop unreadable images (counted and logged) instead of refusing."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars for epochs and batches."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Train, evaluate and register a model as the CONFIG (or the run given to --from-run) describes."""
    from medvision.config import load_config

    if (config is None) == (from_run is None):
        raise ConfigError(
            "train",
            "give either a CONFIG file or --from-run RUN_ID" + (", not both" if config is not None else ""),
            "e.g. medvision train configs/pneumonia_demo.yaml, or medvision train --from-run RUN_ID",
        )
    if from_run is not None and resume:
        raise ConfigError("--from-run", "--resume continues a run, --from-run starts a new one", "use one of them")
    if skip_unreadable:
        overrides = [*overrides, "data.skip_unreadable=true"]
    # Typed on the command line, the store wins over the config; from $MLFLOW_TRACKING_URI it does not
    # (the config's tracking.uri wins over the environment, as before).
    if tracking_uri and given_on_command_line(ctx, "tracking_uri"):
        overrides = _with_tracking_uri(overrides, tracking_uri)
    from medvision.engine.reproduce import reproduce_run
    from medvision.engine.tasks import train as train_task

    if from_run is not None:
        _setup_logging()
        result = reproduce_run(from_run, overrides, progress=progress)
    else:
        assert config is not None
        cfg = load_config(config, overrides)
        _setup_logging()
        result = train_task(cfg, resume=resume, progress=progress, config_path=config)
    if result.run_id is not None:
        typer.echo(
            f"run {result.run_id}  model {result.model_uri or '(not registered)'}"
            f"  weights {str(result.weights_source).split(' (', 1)[0]}"  # a random-init reason was said above
        )
        uri = result.tracking_uri or "sqlite:///mlflow.db"
        browse = f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
        typer.echo(f"evidence in {result.output_dir / 'evidence'}; browse with: {browse}")


def evaluate(
    model: str = typer.Option(..., "--model", help="models:/name@alias, models:/name/VERSION or runs:/ID/model."),
    data: Path = typer.Option(..., "--data", help="Datalist: CSV manifest, decathlon JSON or a dataset folder."),
    data_format: str | None = typer.Option(
        None,
        "--format",
        help="Classifiers: csv (default), decathlon, kermany, rsna. Detectors: detection (default for .json),"
        " decathlon (images + label masks), csv.",
    ),
    out: Path | None = typer.Option(None, "--out", help="Write metrics.json here."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the AUROC interval."),
    skip_unreadable: bool = typer.Option(False, "--skip-unreadable", help="Drop unreadable images."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Evaluate a registered model on a datalist, at the operating point stored with the model."""
    from medvision.engine import evaluate_registered

    report = evaluate_registered(
        model,
        data_format,
        data,
        out_dir=out,
        n_bootstraps=bootstrap,
        skip_unreadable=skip_unreadable,
        tracking_uri=tracking_uri,
    )
    typer.echo(json.dumps(report))


def predict(
    paths: list[Path] = typer.Argument(..., help="NIfTI volumes or DICOM series folders."),
    model: str = typer.Option(
        "models:/tumor-detector@candidate", "--model", help="A registered tumour detector (models:/NAME@ALIAS ...)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    tracking_uri: TrackingUri = None,
) -> None:
    """Detect tumours: one JSON line per volume with its boxes (RAS world mm), scores and the model's provenance.

    A path that cannot be read gets one error line on stderr; the others go on; exit status 3 if any failed.
    """
    from medvision.constants import DRAFT_NOTICE
    from medvision.engine.detect import load_detector, predict_volume

    bundle = load_detector(model, device=device, tracking_uri=tracking_uri)
    prov = bundle.provenance
    failed = 0
    for path in paths:
        try:
            pred = predict_volume(bundle, path)
        except MedvisionError as exc:
            failed += 1
            print_error(exc)
            continue
        record = {
            "path": str(path),
            "volume_score": round(pred.volume_score, 4),
            "flagged": pred.flagged,
            "threshold": round(pred.threshold, 4),
            "boxes": [{k: b[k] for k in ("world_mm", "size_mm", "score", "above_threshold")} for b in pred.boxes],
            "coordinates": "RAS millimetres [x0, y0, z0, x1, y1, z1]",
            "model": {
                "uri": bundle.uri,
                "name": prov.get("name"),
                "version": prov.get("version"),
                "run_id": prov.get("run_id"),
            },
            "intended_use": bundle.metadata.intended_use,
            "status": DRAFT_NOTICE,
            "seconds": round(pred.timings.get("total_s", 0.0), 2),
        }
        typer.echo(json.dumps(record))
    if failed:
        raise typer.Exit(EXIT_ERROR)


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
