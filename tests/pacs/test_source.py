"""Search and retrieve against a real Orthanc: QIDO-RS/WADO-RS and C-FIND/C-GET, the cache, the failures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import dcmread

from medvision.errors import PacsError
from medvision.pacs import Credentials, DicomwebSource, DimseSource, PacsAddress, cache_path
from tests.pacs.conftest import CALLING_AET, USER, Orthanc, PacsStudies, free_port

KINDS = ("dicomweb", "dimse")


def make_source(kind: str, orthanc: Orthanc) -> DicomwebSource | DimseSource:
    if kind == "dicomweb":
        return DicomwebSource(orthanc.dicomweb, credentials=orthanc.credentials, timeout=10)
    return DimseSource(orthanc.dimse, calling_aet=CALLING_AET, timeout=10)


@pytest.mark.parametrize("kind", KINDS)
def test_find_studies_by_date_and_modality(kind: str, orthanc: Orthanc, pacs_studies: PacsStudies) -> None:
    source = make_source(kind, orthanc)
    cxr_uid, mr_uid = pacs_studies.uid(pacs_studies.radiographs[0]), pacs_studies.uid(pacs_studies.mri[0])

    found = {s.study_uid: s for s in source.find_studies({"StudyDate": "20261125-20261126"})}
    assert set(found) == {cxr_uid, mr_uid}  # CT_small (2004) is outside the range
    assert sorted(found[cxr_uid].modalities) == ["CR", "DX"]
    assert found[cxr_uid].n_instances == 3
    assert found[mr_uid].modalities == ("MR",) and found[mr_uid].n_instances == 3
    assert found[cxr_uid].patient_id == "PACS0001"
    assert "PACS0001" not in repr(found[cxr_uid])  # in memory only

    only_cr = source.find_studies({"StudyDate": "20261125-20261126", "ModalitiesInStudy": "CR"})
    assert [s.study_uid for s in only_cr] == [cxr_uid]
    assert source.find_studies({"StudyDate": "19990101"}) == []


def _uploaded(pacs_studies: PacsStudies) -> dict[str, Path]:
    return {pacs_studies.uid(p, "SOPInstanceUID"): p for p in pacs_studies.all_files}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("study", ["radiographs", "mri"])
def test_retrieve_is_byte_identical_and_cached(
    kind: str, study: str, orthanc: Orthanc, pacs_studies: PacsStudies, tmp_path: Path
) -> None:
    source = make_source(kind, orthanc)
    files = getattr(pacs_studies, study)
    study_uid = pacs_studies.uid(files[0])
    uploaded = _uploaded(pacs_studies)

    paths = source.retrieve(study_uid, tmp_path)
    assert source.fetched == len(files) == len(paths)
    for path in paths:
        got = dcmread(path)
        original = dcmread(uploaded[got.SOPInstanceUID])
        assert path == cache_path(tmp_path, study_uid, original.SeriesInstanceUID, original.SOPInstanceUID)
        assert got.SOPInstanceUID == original.SOPInstanceUID and got.SOPClassUID == original.SOPClassUID
        # as stored: the MR slices stay RLE, their pixel bytes unchanged
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got.PixelData == original.PixelData
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "temporary files left in the cache"

    # A re-run downloads nothing: same files, untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    assert source.retrieve(study_uid, tmp_path) == paths
    assert source.fetched == 0
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes

    # One file lost (or unreadable): only that one comes again.
    paths[-1].unlink()
    paths[0].write_bytes(b"truncated")
    assert source.retrieve(study_uid, tmp_path) == paths
    assert source.fetched == 2
    assert dcmread(paths[0]).PixelData == dcmread(uploaded[dcmread(paths[0]).SOPInstanceUID]).PixelData


def test_dicomweb_rerun_sends_searches_only(orthanc: Orthanc, pacs_studies: PacsStudies, tmp_path: Path) -> None:
    source = make_source("dicomweb", orthanc)
    study_uid = pacs_studies.uid(pacs_studies.radiographs[0])
    source.retrieve(study_uid, tmp_path)
    requests_seen: list[str] = []
    source._client._session.hooks["response"].append(lambda r, *a, **k: requests_seen.append(r.request.url))
    source.retrieve(study_uid, tmp_path)
    assert requests_seen, "the re-run asked nothing (the hook is not called)"
    assert all("/instances?" in url for url in requests_seen), requests_seen  # QIDO only, no WADO-RS


def test_wrong_password_is_a_pacs_error_without_the_password(
    orthanc: Orthanc, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + orthanc.password
    source = DicomwebSource(orthanc.dicomweb, credentials=Credentials(username=USER, password=wrong), timeout=10)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(PacsError) as info:
            source.find_studies({"ModalitiesInStudy": "CR"})
    message = str(info.value)
    assert "HTTP 401" in message and "refused the credentials" in message
    assert message.startswith(str(orthanc.dicomweb))
    for secret in (wrong, orthanc.password):
        assert secret not in message and secret not in repr(info.value) and secret not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_wrong_called_ae_title_is_named(orthanc: Orthanc) -> None:
    address = PacsAddress("dimse", "127.0.0.1", orthanc.dicom_port, ae_title="NOT-ORTHANC")
    with pytest.raises(PacsError, match="called AE title 'NOT-ORTHANC'") as info:
        DimseSource(address, calling_aet=CALLING_AET, timeout=10).find_studies({})
    assert "dimse://NOT-ORTHANC@127.0.0.1" in str(info.value)


def test_unknown_calling_ae_title_is_refused(orthanc: Orthanc) -> None:
    with pytest.raises(PacsError, match="ended the association .*C-FIND from AE title .STRANGER."):
        DimseSource(orthanc.dimse, calling_aet="STRANGER", timeout=10).find_studies({})


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_study_and_no_server(kind: str, orthanc: Orthanc, tmp_path: Path) -> None:
    source = make_source(kind, orthanc)
    with pytest.raises(PacsError, match="study 1.2.3.4 has no instances"):
        source.retrieve("1.2.3.4", tmp_path)
    with pytest.raises(PacsError, match="invalid StudyInstanceUID '../x'"):
        source.retrieve("../x", tmp_path)
    port = free_port()
    if kind == "dicomweb":
        dead = DicomwebSource(PacsAddress("dicomweb", "127.0.0.1", port, path="/dicom-web"), timeout=5)
        says = "cannot connect"
    else:
        dead = DimseSource(PacsAddress("dimse", "127.0.0.1", port, ae_title="ORTHANC"), timeout=5)
        says = "no DICOM association"
    with pytest.raises(PacsError, match=says) as info:
        dead.find_studies({})
    assert f"127.0.0.1:{port}" in str(info.value) and info.value.fix
