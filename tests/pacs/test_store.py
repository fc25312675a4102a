"""Sending to a real Orthanc: STOW-RS and C-STORE confirmed per instance, retried with backoff, never raising."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from medvision.errors import ConfigError
from medvision.pacs import Credentials, DicomwebSource, DicomwebStore, DimseStore, PacsAddress, RetryPolicy
from medvision.pacs.store import DicomwebStore as _Stow
from medvision.pacs.store import _cstore_result, _Item
from tests.pacs.conftest import CALLING_AET, USER, Orthanc, PacsStudies, require_orthanc


def _sr(path: Path, ref: Dataset) -> Path:
    """An Enhanced SR (highdicom) on the CT study: a finding in text."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    root = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = [
        hd.sr.TextContentItem(name=codes.DCM.Finding, value="draft finding", relationship_type="CONTAINS")
    ]
    sr = hd.sr.EnhancedSR(
        evidence=[ref], content=root, series_instance_uid=generate_uid(), series_number=900,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medvision tests",
        is_complete=False, is_final=False, is_verified=False,
    )  # fmt: skip
    sr.save_as(path, enforce_file_format=True)
    return path


def _sc(path: Path, ref: Dataset) -> Path:
    """A secondary capture (highdicom) on the CT study, Implicit VR Little Endian."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    pixels = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=pixels, photometric_interpretation="MONOCHROME2", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "P"), series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(), series_number=901, instance_number=1, manufacturer="medvision tests",
    )  # fmt: skip
    sc.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def reports(tmp_path: Path, pacs_studies: PacsStudies) -> dict[str, Path]:
    ref = dcmread(pacs_studies.ct[0])
    return {"sr": _sr(tmp_path / "sr.dcm", ref), "sc": _sc(tmp_path / "sc.dcm", ref)}


def _found_by_qido(orthanc: Orthanc, sop_uid: str) -> bool:
    source = DicomwebSource(orthanc.dicomweb, credentials=orthanc.credentials, timeout=10)
    hits = source._client.search_for_instances(search_filters={"SOPInstanceUID": sop_uid})
    return [h["00080018"]["Value"][0] for h in hits] == [sop_uid]


def make_store(kind: str, address_of: Orthanc, **kw) -> DicomwebStore | DimseStore:
    if kind == "dicomweb":
        return DicomwebStore(address_of.dicomweb, credentials=address_of.credentials, timeout=10, **kw)
    return DimseStore(address_of.dimse, calling_aet=CALLING_AET, timeout=10, **kw)


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_sr_and_sc_land_in_orthanc(kind: str, orthanc: Orthanc, reports: dict[str, Path], tmp_path: Path) -> None:
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not DICOM")
    paths = [reports["sr"], not_dicom, reports["sc"], tmp_path / "missing.dcm"]
    outcomes = make_store(kind, orthanc).send(paths)

    assert [o.path for o in outcomes] == paths
    sr, bad, sc, missing = outcomes
    for done, path in ((sr, reports["sr"]), (sc, reports["sc"])):
        assert (done.ok, done.status, done.attempts, done.warning) == (True, "stored", 1, None)
        assert done.sop_instance_uid == dcmread(path).SOPInstanceUID
        assert _found_by_qido(orthanc, done.sop_instance_uid)
    # one file's failure is an outcome, never sent, and the others still go
    assert not bad.ok and bad.attempts == 0 and bad.status.startswith("failed: not a readable DICOM file")
    assert not missing.ok and missing.attempts == 0 and "No such file" in missing.status


@pytest.fixture
def stopped_orthanc(tmp_path: Path):
    """A second Orthanc, started once (so its ports and config are real) and stopped."""
    require_orthanc()
    server = Orthanc(tmp_path / "stopped")
    server.start()
    server.stop(graceful=False)
    yield server
    server.stop(graceful=False)


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_stopped_orthanc_gives_failed_outcomes_after_the_attempts(
    kind: str, stopped_orthanc: Orthanc, reports: dict[str, Path]
) -> None:
    waits: list[float] = []
    store = make_store(kind, stopped_orthanc, retry=RetryPolicy(attempts=3, base_delay=0.01), sleep=waits.append)
    outcomes = store.send([reports["sr"], reports["sc"]])  # no exception
    assert waits == [0.01, 0.02]  # exponential backoff between the three rounds
    for outcome in outcomes:
        assert not outcome.ok and outcome.attempts == 3
        assert outcome.status.startswith("failed: ") and outcome.status.endswith("(after 3 attempts)")
    says = "cannot connect" if kind == "dicomweb" else "no DICOM association"
    assert says in outcomes[0].status


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_retry_stores_once_the_pacs_is_back(kind: str, stopped_orthanc: Orthanc, reports: dict[str, Path]) -> None:
    """The first round finds Orthanc down; during the backoff it comes back; the second round stores."""
    store = make_store(kind, stopped_orthanc, retry=RetryPolicy(attempts=3, base_delay=0.01),
                       sleep=lambda _s: stopped_orthanc.start())  # fmt: skip
    outcomes = store.send([reports["sc"]])
    assert [(o.ok, o.status, o.attempts) for o in outcomes] == [(True, "stored", 2)]
    assert stopped_orthanc.has_instance(outcomes[0].sop_instance_uid)


def test_wrong_password_is_not_retried_and_not_shown(orthanc: Orthanc, reports: dict[str, Path]) -> None:
    wrong = "wrong-" + orthanc.password
    waits: list[float] = []
    store = DicomwebStore(orthanc.dicomweb, credentials=Credentials(username=USER, password=wrong),
                          retry=RetryPolicy(attempts=3, base_delay=0.01), sleep=waits.append)  # fmt: skip
    [outcome] = store.send([reports["sr"]])
    assert not outcome.ok and outcome.attempts == 1 and waits == []
    assert "HTTP 401" in outcome.status and "refused the credentials" in outcome.status
    assert wrong not in repr(outcome) and orthanc.password not in repr(outcome)


def test_refused_association_names_the_ae_and_is_not_retried(orthanc: Orthanc, reports: dict[str, Path]) -> None:
    address = PacsAddress("dimse", "127.0.0.1", orthanc.dicom_port, ae_title="NOT-ORTHANC")
    waits: list[float] = []
    store = DimseStore(address, calling_aet=CALLING_AET, retry=RetryPolicy(attempts=3, base_delay=0.01),
                       sleep=waits.append)  # fmt: skip
    [outcome] = store.send([reports["sc"]])
    assert not outcome.ok and outcome.attempts == 1 and waits == []
    assert "called AE title 'NOT-ORTHANC'" in outcome.status


def test_unknown_calling_ae_cannot_store(orthanc: Orthanc, reports: dict[str, Path]) -> None:
    """Orthanc takes C-STORE only from registered AE titles here (DicomAlwaysAllowStore false)."""
    store = DimseStore(orthanc.dimse, calling_aet="STRANGER", retry=RetryPolicy(attempts=2, base_delay=0.01))
    [outcome] = store.send([reports["sr"]])
    assert not outcome.ok and "STRANGER" in outcome.status
    assert not orthanc.has_instance(outcome.sop_instance_uid)


# --- per-instance confirmation, without a server ---------------------------------------------------------


def _stow_response(referenced: list[tuple[str, int | None]], failed: list[tuple[str, int]]) -> Dataset:
    response = Dataset()
    response.ReferencedSOPSequence = []
    for uid, warning in referenced:
        item = Dataset()
        item.ReferencedSOPInstanceUID = uid
        if warning is not None:
            item.WarningReason = warning
        response.ReferencedSOPSequence.append(item)
    response.FailedSOPSequence = []
    for uid, reason in failed:
        item = Dataset()
        item.ReferencedSOPInstanceUID = uid
        item.FailureReason = reason
        response.FailedSOPSequence.append(item)
    return response


def test_stow_response_is_read_per_instance() -> None:
    items = [_Item(i, Path(f"{i}.dcm"), sop_uid=f"1.2.{i}") for i in range(5)]
    response = _stow_response([("1.2.0", None), ("1.2.1", 0xB000)], [("1.2.2", 0xA700), ("1.2.3", 0x0122)])
    _Stow._confirm(response, items, unlisted=("transient", "not confirmed"))
    assert [i.result[0] for i in items] == ["ok", "warning", "transient", "permanent", "transient"]
    assert items[1].result[1] == "0xB000 coercion of data elements"
    assert "0xA700" in items[2].result[1] and "0x0122" in items[3].result[1]


@pytest.mark.parametrize(
    ("code", "kind", "says"),
    [
        (0x0000, "ok", ""),
        (0xB000, "warning", "coercion of data elements"),
        (0xB007, "warning", "data set does not match SOP class"),
        (0xB006, "warning", "elements discarded"),
        (0xA700, "transient", "0xA700"),
        (0xA900, "permanent", "0xA900"),
        (0xC000, "permanent", "0xC000"),
    ],
)
def test_c_store_status(code: int, kind: str, says: str) -> None:
    status = Dataset()
    status.Status = code
    assert _cstore_result(status)[0] == kind
    assert says in _cstore_result(status)[1]


def test_retry_policy() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=3)
    assert [policy.delay(n) for n in range(1, 5)] == [0.5, 1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="at least 1"):
        RetryPolicy(attempts=0)
