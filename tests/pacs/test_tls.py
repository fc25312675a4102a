"""TLS against a real Orthanc: HTTPS for DICOMweb and DICOM TLS for DIMSE, checked against a test CA.

Orthanc speaks DICOM TLS itself. Its HTTPS is not used: Debian 12's Orthanc 1.10.1 crashes (SIGSEGV) on its
first HTTPS request, with RSA and EC certificates alike, so DICOMweb goes through a small TLS-terminating proxy
in front of Orthanc's HTTP port, as a reverse proxy (nginx, a load balancer) does in front of many PACS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from medvision.errors import PacsError
from medvision.pacs import (
    DicomwebSource,
    DicomwebStore,
    DimseSource,
    DimseStore,
    PacsAddress,
    RetryPolicy,
    parse_address,
)
from tests.pacs.conftest import CALLING_AET, Orthanc, PacsStudies, require_orthanc


def _write_ca_and_server_cert(folder: Path) -> dict[str, str]:
    """A test CA and a server certificate for 127.0.0.1 signed by it (``cryptography``, an MLflow dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("medvision test CA"))
        .issuer_name(name("medvision test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    files = {
        "ca": ca.public_bytes(pem),
        "cert": cert.public_bytes(pem),
        "key": key_pem,
        "cert+key": cert.public_bytes(pem) + key_pem,
    }
    out = {}
    for label, data in files.items():
        path = folder / f"{label.replace('+', '-')}.pem"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        out[label] = str(path)
    return out


class TlsProxy:
    """Accept TLS on a loopback port (the test CA's server certificate) and pipe each connection to ``backend``."""

    def __init__(self, backend: int, cert: str, key: str) -> None:
        self.backend = backend
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()  # a client that does not trust the certificate
            return
        upstream = socket.create_connection(("127.0.0.1", self.backend))
        threading.Thread(target=self._pipe, args=(upstream, tls), daemon=True).start()
        self._pipe(tls, upstream)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()


@pytest.fixture(scope="module")
def tls_orthanc(tmp_path_factory: pytest.TempPathFactory, pacs_studies: PacsStudies):
    require_orthanc()
    root = tmp_path_factory.mktemp("orthanc-tls")
    server = Orthanc(root, tls=_write_ca_and_server_cert(root))
    server.start()
    try:
        server.upload(pacs_studies.radiographs[0])
        yield server
    finally:
        server.stop(graceful=False)


@pytest.fixture(scope="module")
def https(tls_orthanc: Orthanc) -> Iterator[PacsAddress]:
    """``dicomweb+https://127.0.0.1:<proxy>/dicom-web`` in front of the TLS Orthanc's DICOMweb."""
    assert tls_orthanc.tls is not None
    proxy = TlsProxy(tls_orthanc.http_port, tls_orthanc.tls["cert"], tls_orthanc.tls["key"])
    yield parse_address(f"dicomweb+https://127.0.0.1:{proxy.port}/dicom-web")
    proxy.close()


def test_dicomweb_over_https_with_the_ca_bundle(
    tls_orthanc: Orthanc, https: PacsAddress, pacs_studies: PacsStudies
) -> None:
    assert https.url.startswith("https://")
    ca = tls_orthanc.tls["ca"]
    source = DicomwebSource(https, credentials=tls_orthanc.credentials, ca_bundle=ca, timeout=10)
    [study] = source.find_studies({"ModalitiesInStudy": "CR"})
    assert study.study_uid == pacs_studies.uid(pacs_studies.radiographs[0])

    untrusting = DicomwebSource(https, credentials=tls_orthanc.credentials, timeout=10)
    with pytest.raises(PacsError, match="TLS handshake failed") as info:
        untrusting.find_studies({})
    assert "--ca-bundle" in str(info.value) and tls_orthanc.password not in str(info.value)

    [outcome] = DicomwebStore(https, credentials=tls_orthanc.credentials, ca_bundle=ca).send(
        [pacs_studies.radiographs[1]]
    )
    assert (outcome.ok, outcome.status) == (True, "stored")


def test_dimse_over_tls_with_the_ca_bundle(tls_orthanc: Orthanc, pacs_studies: PacsStudies, tmp_path: Path) -> None:
    assert str(tls_orthanc.dimse).startswith("dimse+tls://")
    ca = tls_orthanc.tls["ca"]
    [outcome] = DimseStore(tls_orthanc.dimse, calling_aet=CALLING_AET, ca_bundle=ca).send([pacs_studies.mri[0]])
    assert (outcome.ok, outcome.status) == (True, "stored")

    source = DimseSource(tls_orthanc.dimse, calling_aet=CALLING_AET, ca_bundle=ca, timeout=10)
    study_uid = pacs_studies.uid(pacs_studies.mri[0])
    [path] = source.retrieve(study_uid, tmp_path)
    assert dcmread(path).PixelData == dcmread(pacs_studies.mri[0]).PixelData

    # Without the CA the certificate is not trusted: no association, and a store is a failed outcome.
    with pytest.raises(PacsError, match="TLS handshake failed"):
        DimseSource(tls_orthanc.dimse, calling_aet=CALLING_AET, timeout=10).find_studies({})
    [refused] = DimseStore(tls_orthanc.dimse, calling_aet=CALLING_AET, retry=RetryPolicy(attempts=1)).send(
        [pacs_studies.mri[1]]
    )
    assert not refused.ok and "TLS" in refused.status
