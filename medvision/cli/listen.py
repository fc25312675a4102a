"""``medvision listen``: receive studies by C-STORE, report each one, store the SR and SC back.

A thin layer over :class:`medvision.pacs.listener.Listener`: it checks the options, builds the store from
``--store`` (credentials for DICOMweb from the environment, as everywhere), and serves until SIGTERM or Ctrl-C,
which let the current study finish and exit with status 0. Errors are
:class:`~medvision.errors.MedvisionError` (exit status 3). Heavy imports (pynetdicom, torch, the report) happen
inside the command only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from medvision.cli._common import CaBundle, PacsCredentials, TrackingUri

__all__ = ["listen"]


def listen(
    out: Path = typer.Option(..., "--out", help="Working folder: incoming/, queue/ and reports/<StudyUID>/."),
    aet: str = typer.Option("MEDVISION", "--aet", help="The listener's AE title."),
    port: int = typer.Option(11112, "--port", min=0, max=65535, help="TCP port to listen on."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)."
    ),
    store: str | None = typer.Option(
        None,
        "--store",
        help="Where the SR and SC go: dimse://AET@host:port or dicomweb+http(s)://host:port/path (default: disk only).",
    ),
    study_timeout: float = typer.Option(
        30.0, "--study-timeout", min=0, help="Seconds without a new instance after which a study is complete."
    ),
    allow_aet: list[str] = typer.Option(
        [], "--allow-aet", help="Calling AE title allowed to send (repeat the option; default: any)."
    ),
    classifier: str | None = typer.Option(
        None, "--classifier", help="Pneumonia classifier URI (default: models:/pneumonia-classifier@champion)."
    ),
    detector: str | None = typer.Option(
        None, "--detector", help="Tumour detector URI (default: models:/tumor-detector@champion)."
    ),
    secondary_capture: bool = typer.Option(
        True, "--secondary-capture/--no-secondary-capture", help="Also write and store the key-picture SC."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="DICOM TLS: the listener's certificate (PEM)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="DICOM TLS: its private key (PEM)."),
    ca_bundle: CaBundle = None,
    credentials: PacsCredentials = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Receive studies by C-STORE, report each complete study and send its SR (and SC) to --store."""
    from medvision.errors import ConfigError
    from medvision.pacs.listener import Listener
    from medvision.reporting.pacs import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per association is too much
    target = None
    if store is not None:  # medvision calls the PACS with the listener's own AE title
        target = open_store(store, credentials=credentials, calling_aet=aet, ca_bundle=ca_bundle)
    tls = None
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert", "needs --tls-key too (and the other way round)", "pass both PEM files")
    if tls_cert is not None and tls_key is not None:
        import ssl

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(str(tls_cert), str(tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("--tls-cert", f"cannot load the certificate and key ({exc})", "pass PEM files") from None
    listener = Listener(
        out, aet=aet, host=host, port=port, store=target, study_timeout=study_timeout, allowed_aets=allow_aet,
        classifier_uri=classifier, detector_uri=detector, tracking_uri=tracking_uri,
        secondary_capture=secondary_capture, tls=tls,
    )  # fmt: skip
    listener.serve()
