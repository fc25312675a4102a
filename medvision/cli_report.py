"""``medvision report``: a folder of studies in, a radiologist's report folder out.

The command parses its options and calls :func:`medvision.reporting.batch.run_report`; it holds no
logic. Errors are :class:`~medvision.errors.MedvisionError` and become one line on stderr with exit
status 2 (``medvision --debug report ...`` shows the traceback); Ctrl-C stops cleanly with status 130.

The de-identification salt of ``--deidentify`` comes from ``$MEDVISION_REPORT_SALT`` when set (the same
salt gives the same pseudonyms and lets a re-run reuse its studies); otherwise a new random one is
used. It is never written into the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

#: Environment variable holding the de-identification salt.
SALT_ENV = "MEDVISION_REPORT_SALT"


def report(
    input_dir: Path = typer.Option(..., "--input", help="Folder of studies: DICOM files and series, NIfTI volumes."),
    out: Path = typer.Option(..., "--out", help="Report folder (replaced when it holds an earlier report)."),
    classifier: str | None = typer.Option(
        None,
        "--classifier",
        help="Pneumonia classifier URI (default: models:/pneumonia-classifier@champion, else @candidate).",
    ),
    detector: str | None = typer.Option(
        None, "--detector", help="Tumour detector URI (default: models:/tumor-detector@champion, else @candidate)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Radiographs per forward pass."),
    deidentify: bool = typer.Option(
        False, "--deidentify", help=f"Replace names, ids, dates and UIDs everywhere (salt from ${SALT_ENV})."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar with ETA on stderr."),
    image_format: str = typer.Option(
        "png", "--image-format", help="png (lossless) or jpeg (a report about five times smaller and faster)."
    ),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow store of the models (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)."
    ),
    secondary_capture: bool = typer.Option(
        False,
        "--secondary-capture",
        help="Also file each DICOM study's key picture (overlay or key slice) into its study as a DICOM Secondary"
        " Capture (sc/<key>.dcm).",
    ),
) -> None:
    """Write a prioritised report (HTML, PDF, CSV, JSON, DICOM SR, optionally DICOM Secondary Capture) of every
    study below --input."""
    from medvision.reporting.batch import format_summary, run_report

    summary = run_report(
        input_dir,
        out,
        classifier_uri=classifier,
        detector_uri=detector,
        device=device,
        batch_size=batch_size,
        deidentify=deidentify,
        progress=progress,
        tracking_uri=tracking_uri,
        deid_salt=os.environ.get(SALT_ENV) or None,
        image_format=image_format,
        secondary_capture=secondary_capture,
    )
    typer.echo(format_summary(summary))
    typer.echo(f"report: {summary['index']}")
