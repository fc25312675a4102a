"""``medvision report``: a folder of studies in, a radiologist's report folder out.

The command builds one :class:`~medvision.config.ReportConfig` from its ``--config`` file and its options
(an option given wins over the file's key), validated once, and calls
:func:`medvision.reporting.batch.run_report`; it holds no other logic. Errors are
:class:`~medvision.errors.MedvisionError` and become one line on stderr with exit status 3
(``medvision --debug report ...`` shows the traceback); Ctrl-C stops cleanly with status 130.
A tracking store that does not exist is refused (status 3), never created.

The de-identification salt of ``--deidentify`` comes from ``$MEDVISION_REPORT_SALT`` when set (the same
salt gives the same pseudonyms and lets a re-run reuse its studies); otherwise a new random one is
used. It is never written into the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from medvision.cli._common import CaBundle, PacsCredentials, TrackingUri, given_on_command_line

__all__ = ["SALT_ENV", "report"]

#: Environment variable holding the de-identification salt.
SALT_ENV = "MEDVISION_REPORT_SALT"


def report(
    ctx: typer.Context,
    input_dir: str | None = typer.Option(
        None,
        "--input",
        help="Folder of studies (DICOM files and series, NIfTI volumes), or a PACS: dicomweb+http(s)://host:port/path"
        " or dimse://AET@host:port (with --query).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Report folder (replaced when it holds an earlier report)."),
    config: Path | None = typer.Option(
        None, "--config", help="Report config (YAML, e.g. configs/report_deidentified.yaml); options given here win."
    ),
    classifier: str | None = typer.Option(
        None,
        "--classifier",
        help="Pneumonia classifier URI (default: models:/pneumonia-classifier@champion, else @candidate).",
    ),
    detector: str | None = typer.Option(
        None, "--detector", help="Tumour detector URI (default: models:/tumor-detector@champion, else @candidate)."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default cpu)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Radiographs per forward pass (default 8)."
    ),
    deidentify: bool | None = typer.Option(
        None,
        "--deidentify/--no-deidentify",
        help=f"DICOM PS3.15 Basic Profile de-identification everywhere (salt from ${SALT_ENV}).",
    ),
    retain_dates: bool | None = typer.Option(
        None,
        "--retain-dates/--remove-dates",
        help="With --deidentify: shift every date by one offset, keeping intervals (default), or remove them.",
    ),
    clean_descriptors: bool | None = typer.Option(
        None,
        "--clean-descriptors/--remove-descriptors",
        help="With --deidentify: keep descriptions and comments cleaned of identifiers, or remove them (default).",
    ),
    retain_device_identity: bool | None = typer.Option(
        None,
        "--retain-device-identity/--remove-device-identity",
        help="With --deidentify: keep station names and device serial numbers, or replace them (default).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar with ETA on stderr."),
    image_format: str | None = typer.Option(
        None, "--image-format", help="png (default, lossless) or jpeg (a report about five times smaller and faster)."
    ),
    secondary_capture: bool | None = typer.Option(
        None,
        "--secondary-capture/--no-secondary-capture",
        help="Also file each DICOM study's key picture (overlay or key slice) into its study as a DICOM Secondary"
        " Capture (sc/<key>.dcm).",
    ),
    query: str | None = typer.Option(
        None,
        "--query",
        help="With a PACS --input: the studies, e.g. 'StudyDate=20261125-20261126&ModalitiesInStudy=CR'.",
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Send each study's SR (and secondary capture) to this PACS as its row is written:"
        " dicomweb+http(s)://host:port/path or dimse://AET@host:port.",
    ),
    store_attempts: int | None = typer.Option(
        None, "--store-attempts", min=1, help="Sends per object with --store, the first included (default 3)."
    ),
    calling_aet: str | None = typer.Option(
        None, "--calling-aet", help="medvision's DIMSE AE title (default MEDVISION)."
    ),
    ca_bundle: CaBundle = None,
    credentials: PacsCredentials = None,
    pacs_cache: Path | None = typer.Option(
        None, "--pacs-cache", help="Where studies retrieved from a PACS are kept (default <out>.pacs-cache)."
    ),
    pacs_workers: int | None = typer.Option(
        None, "--pacs-workers", min=1, max=32, help="Studies retrieved from a PACS at once (default 4)."
    ),
    resend: Path | None = typer.Option(
        None,
        "--resend",
        help="Send again the SR/SC of every row of this report that is not stored (with --store); no model is loaded.",
    ),
    tracking_uri: TrackingUri = None,
) -> None:
    """Write a prioritised report (HTML, PDF, CSV, JSON, DICOM SR, optionally DICOM Secondary Capture) of every
    study below --input (a folder or a PACS), optionally sent to a PACS (--store)."""
    from medvision.config import load_report_config
    from medvision.reporting.batch import format_summary, run_report

    if resend is not None:
        _resend(resend, store, calling_aet, ca_bundle, credentials, store_attempts)
        return
    if input_dir is None or out is None:
        missing = "--input" if input_dir is None else "--out"
        raise typer.BadParameter(f"{missing} is required (or --resend OUT --store ADDRESS)", param_hint=missing)

    options = {
        "retain_dates": retain_dates,
        "clean_descriptors": clean_descriptors,
        "retain_device_identity": retain_device_identity,
    }
    given = {
        "input": input_dir,
        "out": out,
        "classifier": classifier,
        "detector": detector,
        "device": device,
        "batch_size": batch_size,
        "image_format": image_format,
        # $MLFLOW_TRACKING_URI comes after the config's tracking_uri: only a typed --tracking-uri wins over it.
        "tracking_uri": tracking_uri if given_on_command_line(ctx, "tracking_uri") else None,
        "secondary_capture": secondary_capture,
        "query": query,
        "store": store,
        "store_attempts": store_attempts,
        "calling_aet": calling_aet,
        "ca_bundle": ca_bundle,
        "credentials": credentials,
        "pacs_cache": pacs_cache,
        "pacs_workers": pacs_workers,
        "deidentify": {"enabled": deidentify, **options, "salt": os.environ.get(SALT_ENV) or None},
    }
    # The one validation: the file, the options given over it, then $MLFLOW_TRACKING_URI where neither names a store.
    cfg = load_report_config(config, given, defaults={"tracking_uri": tracking_uri})
    if not cfg.deidentify.enabled and any(value is not None for value in options.values()):
        named = ", ".join(f"--{key.replace('_', '-')}" for key, value in options.items() if value is not None)
        raise typer.BadParameter(f"{named} only applies with --deidentify", param_hint="--deidentify")

    summary = run_report(cfg, progress=progress)
    typer.echo(format_summary(summary))
    typer.echo(f"report: {summary['index']}")


def _resend(
    out: Path,
    store: str | None,
    calling_aet: str | None,
    ca_bundle: Path | None,
    credentials: Path | None,
    attempts: int | None,
) -> None:
    """``--resend OUT --store ADDRESS``: one summary line; exit status 3 when some objects are still not stored."""
    from medvision.errors import ConfigError
    from medvision.pacs import DEFAULT_CALLING_AET, RetryPolicy, check_ae_title
    from medvision.reporting.pacs import format_resend, resend

    if not store:
        raise ConfigError("--resend", "needs --store ADDRESS (where to send)", "e.g. --store dimse://ORTHANC@pacs:4242")
    aet = check_ae_title(calling_aet or DEFAULT_CALLING_AET, "--calling-aet")
    retry = RetryPolicy(attempts=attempts) if attempts else RetryPolicy()
    done = resend(out, store, credentials=credentials, calling_aet=aet, ca_bundle=ca_bundle, retry=retry)
    typer.echo(format_resend(done))
    if done["not_stored"]:
        raise typer.Exit(3)
