"""The ``medvision`` command. It parses arguments and delegates; it holds no logic of its own.

Every :class:`~medvision.errors.MedvisionError` becomes one line ``error: <where>: <reason>; <fix>``
on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import typer

from medvision.constants import DEFAULT_MAX_VOXELS
from medvision.errors import MedvisionError

app = typer.Typer(
    help="medvision: train, evaluate and report medical-imaging models (MONAI, torchvision, MLflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


def _fail(exc: BaseException, where: str | None = None) -> None:
    """Print one error line (or the traceback with --debug)."""
    if _state["debug"]:
        traceback.print_exception(exc)
    if isinstance(exc, MedvisionError):
        typer.echo(f"error: {exc.one_line()}", err=True)
    else:
        prefix = f"{where}: " if where else ""
        typer.echo(f"error: {prefix}unexpected {type(exc).__name__}: {' '.join(str(exc).split())}", err=True)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors.")) -> None:
    _state["debug"] = debug


@app.command()
def inspect(
    paths: list[Path] = typer.Argument(..., help="DICOM files, DICOM series folders, NIfTI or PNG/JPEG files."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    series: str | None = typer.Option(None, "--series", help="SeriesInstanceUID to pick in a multi-series folder."),
    largest_series: bool = typer.Option(False, "--largest-series", help="Pick the series with most files."),
    max_voxels: int = typer.Option(DEFAULT_MAX_VOXELS, "--max-voxels", help="Refuse headers asking for more."),
    ras: bool = typer.Option(False, "--ras", help="Reorient NIfTI volumes to RAS before summarising."),
    allow_irregular: bool = typer.Option(
        False,
        "--allow-irregular",
        help="Resample a DICOM series with a missing slice or uneven slice steps onto a regular grid "
        "along the slice normal (said in the notes) instead of refusing it.",
    ),
) -> None:
    """Print what medvision loads from each PATH; bad paths get one error line and exit status 2."""
    from medvision.io import load, summarise
    from medvision.io._boundary import guarded

    failed = 0
    for path in paths:
        try:
            # load() is the io trust boundary already; summarising and the JSON line get the same guard, so
            # inspect prints only typed one-line errors (never "unexpected", never a traceback).
            with guarded(path, "inspecting the image"), warnings.catch_warnings():
                # pydicom warns (with its source line) about values that medvision then refuses or notes itself.
                warnings.simplefilter("ignore", UserWarning)
                array, meta = load(
                    path,
                    max_voxels=max_voxels,
                    series_uid=series,
                    series_rule="largest" if largest_series else "error",
                    reorient_ras=ras,
                    irregular="resample" if allow_irregular else "refuse",
                )
                info = summarise(array, meta)
                line = json.dumps(info, allow_nan=False) if as_json else None  # strict JSON: never NaN/Infinity
        except MedvisionError as exc:  # one bad path never stops the others
            failed += 1
            _fail(exc, str(path))
            continue
        if line is not None:
            typer.echo(line)
        else:
            shape = "x".join(str(s) for s in info["shape"])
            spacing = " x ".join("-" if s is None else f"{s:g}" for s in info["spacing_mm"])
            values = "  ".join(
                f"{name} {'-' if info[name] is None else format(info[name], fmt)}"
                for name, fmt in (("min", "g"), ("max", "g"), ("mean", ".4g"))
            )
            if info["non_finite_voxels"]:
                values += f"  ({info['non_finite_voxels']:,} NaN/inf voxels left out)"
            typer.echo(
                f"{info['path']}\n  kind {info['kind']}  modality {info['modality'] or '-'}  "
                f"photometric {info['photometric'] or '-'}  slices {info['n_slices']}\n"
                f"  shape {shape} (x, y[, z])  spacing {spacing} mm  dtype {info['dtype']}\n"
                f"  values {values}\n"
                f"  study {info['study_uid'] or '-'}  series {info['series_uid'] or '-'}"
                + "".join(f"\n  note: {note}" for note in info["notes"])
            )
    if failed:
        raise typer.Exit(2)


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(Path("data/demo"), "--out", help="Folder to write the demo data set into."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same files."),
    cxr_patients: int = typer.Option(200, "--cxr-patients", help="Number of chest radiograph patients."),
    mri_volumes: int = typer.Option(80, "--mri-volumes", help="Number of brain MRI volumes."),
    mri_dicom: int = typer.Option(4, "--mri-dicom", help="How many of the MRI volumes are also written as DICOM."),
    mri_sequences: int = typer.Option(
        1,
        "--mri-sequences",
        help="1: T1 volumes; 4: multi-sequence 4D NIfTI as MSD Task01 (FLAIR, T1w, t1gd, T2w; tumours enhance in"
        " t1gd, some show in FLAIR/T2w, none in T1w); the DICOM series then hold t1gd.",
    ),
) -> None:
    """Write the embedded demo data set (chest radiographs as DICOM, brain MRI as NIfTI and DICOM)."""
    from medvision.demo import write_demo_data

    start = time.perf_counter()
    inventory = write_demo_data(
        out,
        seed,
        n_cxr_patients=cxr_patients,
        n_mri=mri_volumes,
        n_mri_dicom=min(mri_dicom, mri_volumes),
        n_mri_sequences=mri_sequences,
        progress=lambda msg: typer.echo(f"  {msg}", err=True),
    )
    typer.echo(f"demo data written to {out} in {time.perf_counter() - start:.1f} s")
    typer.echo(json.dumps(inventory, indent=2, default=str))


@app.command()
def train(
    config: Path | None = typer.Argument(
        None, help="Experiment YAML, e.g. configs/pneumonia_demo.yaml (omit with --from-run)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set train.epochs=3 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint into the same MLflow run."),
    from_run: str | None = typer.Option(
        None,
        "--from-run",
        help="Repeat this MLflow run: its logged config plus any --set, as a new run tagged reproduces=RUN_ID."
        " The run is looked up in --set tracking.uri=..., else $MLFLOW_TRACKING_URI, else ./mlflow.db.",
    ),
    skip_unreadable: bool = typer.Option(
        False, "--skip-unreadable", help="Drop unreadable images (counted and logged) instead of refusing."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars for epochs and batches."),
) -> None:
    """Train, evaluate and register a model as the CONFIG (or the run given to --from-run) describes."""
    from medvision.config import load_config
    from medvision.errors import ConfigError

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
    from medvision.engine import train_classification
    from medvision.engine.reproduce import reproduce_run

    if from_run is not None:
        _setup_logging()
        result = reproduce_run(from_run, overrides, progress=progress)
    else:
        assert config is not None
        cfg = load_config(config, overrides)
        _setup_logging()
        if cfg.task == "detection":
            from medvision.engine.detection import train_detection

            result = train_detection(cfg, resume=resume, progress=progress, config_path=config)
        else:
            result = train_classification(cfg, resume=resume, progress=progress, config_path=config)
    if result.run_id is not None:
        typer.echo(
            f"run {result.run_id}  model {result.model_uri or '(not registered)'}  weights {result.weights_source}"
        )
        uri = result.tracking_uri or "sqlite:///mlflow.db"
        browse = f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
        typer.echo(f"evidence in {result.output_dir / 'evidence'}; browse with: {browse}")


@app.command()
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
) -> None:
    """Evaluate a registered model on a datalist, at the operating point stored with the model."""
    from medvision.engine import evaluate_registered

    report = evaluate_registered(
        model, data_format, data, out_dir=out, n_bootstraps=bootstrap, skip_unreadable=skip_unreadable
    )
    typer.echo(json.dumps(report))


@app.command()
def predict(
    paths: list[Path] = typer.Argument(..., help="NIfTI volumes or DICOM series folders."),
    model: str = typer.Option(
        "models:/tumor-detector@candidate", "--model", help="A registered tumour detector (models:/NAME@ALIAS ...)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Detect tumours: one JSON line per volume with its boxes (RAS world mm), scores and the model's provenance.

    A path that cannot be read gets one error line on stderr; the others go on; exit status 2 if any failed.
    """
    from medvision.engine.detect import load_detector, predict_volume

    bundle = load_detector(model, device=device)
    prov = bundle.provenance
    failed = 0
    for path in paths:
        try:
            pred = predict_volume(bundle, path)
        except MedvisionError as exc:
            failed += 1
            typer.echo(f"error: {exc.one_line()}", err=True)
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
            "intended_use": bundle.metadata.get("intended_use"),
            "status": "draft: not for diagnostic use without review by a radiologist",
            "seconds": round(pred.timings.get("total_s", 0.0), 2),
        }
        typer.echo(json.dumps(record))
    if failed:
        raise typer.Exit(2)


def _setup_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _mount_subcommands() -> None:
    from medvision.cli_runs import app as runs_app
    from medvision.models.cli import app as weights_app

    app.add_typer(weights_app, name="weights", help="Manage ImageNet weights in the torch hub cache.")
    app.add_typer(runs_app, name="runs", help="Review MLflow runs: list, compare, promote, show.")
    app.command("report")(__import__("medvision.cli_report", fromlist=["report"]).report)


def main() -> None:
    """Console entry point."""
    _mount_subcommands()
    try:
        # With standalone_mode=False click returns the exit code of typer.Exit instead of raising it.
        code = app(standalone_mode=False)
    except MedvisionError as exc:
        _fail(exc)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        _fail(exc)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
