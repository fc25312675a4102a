"""The batch report end to end (issue 5): a tiny registered classifier, a fake detector, a mixed folder.

Checked: one row per study and per failure with reasons, worklist order, provenance in every row,
images and DICOM SR on disk (SR references and probability against the sources), index.html and
report.pdf, re-runs reusing unchanged studies, Ctrl-C leaving nothing behind, a missing model failing
only its studies, and a de-identified report in which no file holds an identifier of the input.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from medvision.config import ReportConfig
from medvision.errors import InputError
from medvision.reporting.batch import CACHE_NAME, ROW_KEYS, format_summary, run_report
from tests.reporting.conftest import FakeDetector, MixedFolder

pytestmark = pytest.mark.usefixtures("mlflow_globals")

N_OK_RADIOGRAPHS = 3  # DX, CR, DX
N_ROWS = 12  # 3 radiographs + pixel-cut DX + CT + NIfTI | mask, US, hand | header-cut, empty, text


def _run(mixed: MixedFolder, out: Path, uri: str, detector=None, **options):
    return run_report(ReportConfig(input=mixed.root, out=out, tracking_uri=uri, **options), detector=detector,
                      progress=False)  # fmt: skip


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


def _by_source(rows: list[dict]) -> dict[str, dict]:
    return {r["source"]: r for r in rows}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_mixed_folder_report_end_to_end(mixed: MixedFolder, registered_classifier: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    detector = FakeDetector()
    summary = _run(mixed, out, registered_classifier, detector)

    assert summary["studies_read"] == N_ROWS
    assert summary["studies"] == N_OK_RADIOGRAPHS + 2  # radiographs, CT, NIfTI
    assert summary["failed"] == 4 and summary["not_applicable"] == 3 and summary["reused"] == 0
    assert set(summary["timings"]) == {"load", "network", "gradcam", "write", "render"}
    assert (out / "index.html").is_file() and (out / "report.pdf").read_bytes().startswith(b"%PDF")
    assert _leftovers(out) == []
    line = format_summary(summary)
    assert line.startswith(f"report: {N_ROWS} studies read, ") and line.endswith(f"-> {out / 'index.html'}")

    with (out / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    rows = _rows(out)
    assert len(table) == len(rows) == N_ROWS
    assert [r["study_key"] for r in table] == [r["study_key"] for r in rows]
    assert all(set(r) == set(ROW_KEYS) for r in rows)
    by_source = _by_source(rows)
    rel = lambda p: p.relative_to(mixed.root).as_posix()  # noqa: E731

    # Failures and not-applicable studies: listed with the file and the reason.
    failed = {r["source"]: r["reason"] for r in rows if r["status"] == "failed"}
    assert set(failed) == {rel(mixed.header_cut), rel(mixed.empty), rel(mixed.text), rel(mixed.pixels_cut)}
    assert failed[rel(mixed.pixels_cut)].startswith(f"{rel(mixed.pixels_cut)}: (7FE0,0010) PixelData is truncated")
    assert failed[rel(mixed.text)].startswith("notes.txt: not a DICOM file")
    assert {r["source"] for r in rows if r["status"] == "not_applicable"} == {
        rel(mixed.mask),
        rel(mixed.ultrasound),
        rel(mixed.hand),
    }

    # Radiographs: calibrated probability, decision at the registered threshold, heatmap, SR, provenance.
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["status"] for r in rows[: len(ok)]] == ["ok"] * len(ok)  # the worklist comes first ...
    priorities = [r["priority"] for r in ok]
    assert priorities == sorted(priorities, reverse=True)  # ... most suspicious first
    assert all(r["priority"] >= 1 for r in ok if r["flagged"]) and all(
        r["priority"] < 1 for r in ok if not r["flagged"]
    )
    for path in mixed.radiographs:
        row = by_source[rel(path)]
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert row["task"] == "classification" and row["finding"] == "pneumonia"
        assert 0.0 <= row["probability"] <= 1.0
        assert row["flagged"] == (row["probability"] >= row["threshold"])
        assert row["patient_id"] == header.PatientID and row["study_uid"] == header.StudyInstanceUID
        assert row["patient_name"] == str(header.PatientName) and row["accession"] == header.AccessionNumber
        model = row["model"]
        assert model["name"] == "pneumonia-classifier" and model["version"] == 1 and model["run_id"]
        assert model["uri"] == "models:/pneumonia-classifier@candidate"  # no champion: the fallback alias
        assert model["intended_use"] and model["weights_source"] == "none"
        (image,) = row["images"]
        assert image["kind"] == "heatmap" and (out / image["path"]).is_file()
        assert image["path"].startswith(f"studies/{row['study_key']}/")
        sr = pydicom.dcmread(out / row["sr_path"])
        assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.StudyInstanceUID == header.StudyInstanceUID
        series = evidence.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == header.SeriesInstanceUID
        assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
        group = hd.sr.srread(out / row["sr_path"]).content.get_image_measurement_groups()[0]
        (probability,) = [m.value for m in group.get_measurements() if m.name == codes.DCM.Probability]
        assert float(probability) == pytest.approx(row["probability"], abs=1e-6)

    # Volumes: the detector got a readable series folder and the NIfTI file; boxes, key slices, SR.
    assert sorted(p.name for p in detector.calls) == sorted(["series1", mixed.nifti.name])
    ct = by_source["ct/series1"]
    assert ct["task"] == "detection" and ct["finding"] == "tumour" and ct["flagged"] is True
    assert ct["probability"] == 0.9 and ct["threshold"] == 0.5 and ct["priority"] == pytest.approx(1.9)
    (box,) = ct["boxes"]
    assert box["score"] == 0.9 and box["slice"] == 3 and box["size_mm"] == pytest.approx([16.0, 20.0, 6.0])
    assert ct["model"]["name"] == "tumor-detector" and ct["model"]["run_id"] == "fakedetectorrun"
    assert [i["kind"] for i in ct["images"]] == ["slice"] and (out / ct["images"][0]["path"]).is_file()
    assert "score 0.90" in ct["images"][0]["caption"]
    ct_sr = hd.sr.srread(out / ct["sr_path"])
    assert len(ct_sr.content.get_planar_roi_measurement_groups()) == 1
    nifti = by_source[rel(mixed.nifti)]
    assert nifti["status"] == "ok" and nifti["flagged"] is False and nifti["boxes"] == []
    assert nifti["sr_path"] is None and "no DICOM SR" in nifti["reason"]
    assert "below the threshold" in nifti["images"][0]["caption"]

    # The pages: one per row, the worklist links them.
    index = (out / "index.html").read_text()
    for row in rows:
        assert (out / "studies" / f"{row['study_key']}.html").is_file()
        assert f"studies/{row['study_key']}.html" in index
    cache = json.loads((out / CACHE_NAME).read_text())
    assert len(cache["entries"]) == N_OK_RADIOGRAPHS + 2


def test_rerun_reuses_unchanged_studies_and_recomputes_changed_ones(
    mixed: MixedFolder, registered_classifier: str, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    first = _run(mixed, out, registered_classifier, FakeDetector())
    before = {r["study_key"]: r for r in _rows(out)}

    detector = FakeDetector()
    second = _run(mixed, out, registered_classifier, detector)
    assert second["reused"] == first["studies"] == N_OK_RADIOGRAPHS + 2
    assert "5 studies reused from the previous report" in format_summary(second)
    assert detector.calls == []  # nothing recomputed
    after = {r["study_key"]: r for r in _rows(out)}
    assert after == before
    for row in after.values():
        for image in row["images"]:
            assert (out / image["path"]).is_file()
        if row["sr_path"]:
            assert (out / row["sr_path"]).is_file()
    assert _leftovers(out) == []

    # A changed radiograph is computed again; the others are reused.
    path = mixed.radiographs[0]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = _run(mixed, out, registered_classifier, FakeDetector())
    assert third["reused"] == N_OK_RADIOGRAPHS + 1


def test_ctrl_c_mid_batch_leaves_no_report_and_no_temporary_folder(
    mixed: MixedFolder, registered_classifier: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    class Interrupting(FakeDetector):
        def predict(self, path: Path):
            raise KeyboardInterrupt

    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        _run(mixed, out, registered_classifier, Interrupting())
    assert not out.exists() and _leftovers(out) == []
    assert "interrupted: no report written" in capsys.readouterr().err

    # With an earlier report in place, it stays as it was.
    _run(mixed, out, registered_classifier, FakeDetector())
    snapshot = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    os.utime(mixed.ct_files[0], ns=(0, 10**9))  # the CT series changed: the detector runs, and interrupts
    with pytest.raises(KeyboardInterrupt):
        _run(mixed, out, registered_classifier, Interrupting())
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    assert _leftovers(out) == []


def test_missing_detector_fails_its_studies_and_the_batch_goes_on(
    mixed: MixedFolder, registered_classifier: str, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    summary = _run(mixed, out, registered_classifier, detector=None)
    by_source = _by_source(_rows(out))
    for source in ("ct/series1", mixed.nifti.relative_to(mixed.root).as_posix()):
        row = by_source[source]
        assert row["status"] == "failed"
        assert row["reason"].startswith("no usable tumor-detector (") and "--detector URI" in row["reason"]
    assert summary["studies"] == N_OK_RADIOGRAPHS and summary["failed"] == 6


def test_deidentified_report_holds_no_identifier_of_the_input(
    mixed: MixedFolder, registered_classifier: str, tmp_path: Path
) -> None:
    out = tmp_path / "shareable"
    summary = _run(
        mixed,
        out,
        registered_classifier,
        FakeDetector(),
        deidentify={"enabled": True, "salt": "test-salt"},
        secondary_capture=True,
    )
    assert summary["deidentified"] is True and summary["input"] is None
    assert summary["deidentification"] == "PS3.15 Basic Profile; modified dates"
    needles = {"St Elsewhere", "141516"}
    for value in mixed.all_identifiers():
        needles.add(value)
        needles |= {part for part in value.split("^") if len(part) >= 4}
    needles |= {p.name for p in mixed.root.iterdir()}  # folder names carry patient ids
    needles.add(str(mixed.root))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        data = path.read_bytes()
        rel = path.relative_to(out).as_posix()
        for needle in needles:
            if len(needle) < 4:
                continue
            assert needle.encode() not in data, (rel, needle)
            assert needle not in rel, (rel, needle)

    rows = _rows(out)
    ok = [r for r in rows if r["status"] == "ok" and r["task"] == "classification"]
    assert len(ok) == N_OK_RADIOGRAPHS
    for row in ok:
        assert row["patient_id"].startswith("ANON-") and "Lovelace" not in row["patient_name"]
        assert row["source"].startswith("file-") and row["source"].endswith(".dcm")
        assert row["study_description"] is None  # removed (no Clean Descriptors)
        sr = pydicom.dcmread(out / row["sr_path"])
        # The SR carries the same pseudonyms as the row.
        assert sr.StudyInstanceUID == row["study_uid"] and sr.PatientID == row["patient_id"]
        assert sr.PatientName == row["patient_name"] and sr.StudyDate == row["study_date"]
        assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == row["study_uid"]
        # Identity removed only where every source image says BurnedInAnnotation NO; the others keep no picture.
        if row["shareable"] is True:
            assert sr.PatientIdentityRemoved == "YES" and row["images"]
            codes = [c.CodeValue for c in sr.DeidentificationMethodCodeSequence]
            assert codes == ["113100", "113107"]
        else:
            assert sr.PatientIdentityRemoved == "NO" and "DeidentificationMethodCodeSequence" not in sr
            assert not row["images"] and not row["secondary_capture_path"]
            assert "not shareable: burned-in annotation (BurnedInAnnotation absent in 1 of 1 images)" in row["reason"]
    assert sorted(r["shareable"] for r in ok) == [False, True, True]
    nifti = next(r for r in rows if r["task"] == "detection" and r["source"].endswith(".nii.gz"))
    assert nifti["shareable"] is False and not nifti["images"] and "not shareable" in nifti["reason"]
    ct_sc = pydicom.dcmread(
        out / next(r for r in rows if r["task"] == "detection" and r["sr_path"])["secondary_capture_path"]
    )
    assert ct_sc.PatientID.startswith("ANON-")  # the secondary capture carries the pseudonyms too
    assert ct_sc.PatientIdentityRemoved == "YES"  # its burned-in text is the model's boxes and scores

    # Same salt: same pseudonyms, and the studies are reused.
    again = _run(
        mixed,
        out,
        registered_classifier,
        FakeDetector(),
        deidentify={"enabled": True, "salt": "test-salt"},
        secondary_capture=True,
    )
    assert again["reused"] == N_OK_RADIOGRAPHS + 2
    assert [r["patient_id"] for r in _rows(out)] == [r["patient_id"] for r in rows]


def test_out_folder_that_is_not_a_report_is_never_replaced(mixed: MixedFolder, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    with pytest.raises(InputError, match="is not a medvision report"):
        run_report(ReportConfig(input=mixed.root, out=out), progress=False)
    assert (out / "thesis.docx").read_text() == "years of work"
    with pytest.raises(InputError, match="holds the input folder"):
        run_report(ReportConfig(input=mixed.root, out=mixed.root.parent), progress=False)
    with pytest.raises(InputError, match="no such folder"):
        run_report(ReportConfig(input=tmp_path / "missing", out=tmp_path / "r"), progress=False)
    assert not (tmp_path / "r").exists()


def test_cli_prints_the_summary_and_the_report_path(registered_classifier: str, tmp_path: Path) -> None:
    import numpy as np
    from typer.testing import CliRunner

    from medvision.cli import app
    from tests.conftest import write_dicom
    from tests.reporting.conftest import _radiograph

    write_dicom(tmp_path / "in" / "a.dcm", _radiograph(np.random.default_rng(1)), modality="DX", bits_stored=12)
    (tmp_path / "in" / "junk.txt").write_text("x")
    out = tmp_path / "out"
    args = ["report", "--input", str(tmp_path / "in"), "--out", str(out), "--tracking-uri", registered_classifier]
    result = CliRunner().invoke(app, [*args, "--no-progress", "--batch-size", "2", "--image-format", "jpeg"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-2].startswith("report: 2 studies read, ") and "1 failed" in lines[-2]
    assert lines[-1] == f"report: {out / 'index.html'}"
    (image,) = next(r for r in _rows(out) if r["status"] == "ok")["images"]
    assert image["path"].endswith(".jpg") and (out / image["path"]).read_bytes()[:2] == b"\xff\xd8"  # JPEG
    shutil.rmtree(out)


def test_a_radiograph_series_of_two_images_is_one_study_and_a_bad_image_is_listed(
    registered_classifier: str, tmp_path: Path
) -> None:
    import numpy as np
    from pydicom.uid import generate_uid

    from tests.conftest import write_dicom
    from tests.reporting.conftest import _radiograph

    rng = np.random.default_rng(5)
    study, series = generate_uid(), generate_uid()
    folder = tmp_path / "in" / "series"
    for n in (1, 2, 3):
        write_dicom(folder / f"IM{n}.dcm", _radiograph(rng, blob=n == 2), modality="CR", bits_stored=12,
                    study_uid=study, series_uid=series, instance_number=n)  # fmt: skip
    data = (folder / "IM3.dcm").read_bytes()
    (folder / "IM3.dcm").write_bytes(data[: len(data) - 1000])  # pixels cut short
    out = tmp_path / "out"
    config = ReportConfig(input=tmp_path / "in", out=out, tracking_uri=registered_classifier)
    summary = run_report(config, progress=False)
    row, failed = _rows(out)
    assert summary["studies"] == 1 and summary["failed"] == 1
    assert row["status"] == "ok" and row["source"] == "series"
    assert [i["path"].rsplit("/", 1)[1] for i in row["images"]] == ["radiograph-1.png", "radiograph-2.png"]
    assert row["reason"] == "1 of 3 images could not be read (listed apart)"
    # The unreadable image is a failure row of its own (the "could not be processed" section).
    assert failed["status"] == "failed" and failed["source"] == "series/IM3.dcm"
    assert failed["reason"].startswith("series/IM3.dcm: (7FE0,0010) PixelData is truncated")
    assert failed["study_uid"] == row["study_uid"] == study and failed["study_key"] == row["study_key"] + "-img3"
    doc = hd.sr.srread(out / row["sr_path"])
    groups = doc.content.get_image_measurement_groups()
    probabilities = [float(g.get_measurements()[0].value) for g in groups]
    assert len(groups) == 2 and max(probabilities) == pytest.approx(row["probability"], abs=1e-6)
    evidence = pydicom.dcmread(out / row["sr_path"]).CurrentRequestedProcedureEvidenceSequence[0]
    listed = [str(i.ReferencedSOPInstanceUID) for i in evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence]
    sources = [pydicom.dcmread(folder / f"IM{n}.dcm", stop_before_pixels=True).SOPInstanceUID for n in (1, 2)]
    assert sorted(listed) == sorted(str(u) for u in sources)  # the evidence is what the finding rests on

    # Re-run: the study and its failure row come back from the cache.
    again = run_report(config, progress=False)
    assert again["reused"] == 1 and _rows(out) == [row, failed]


def test_a_classifier_without_feature_layer_reports_without_heatmap(mixed: MixedFolder, tmp_path: Path) -> None:
    import torch

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3))[:, None] * 4.0

    metadata = {"backbone": "mean", "image_size": 32, "keep_aspect": True, "mean": 0.5, "std": 0.25,
                "temperature": 1.0, "threshold": 0.5, "intended_use": "test",
                "name": "mean-model", "version": 1}  # fmt: skip
    out = tmp_path / "out"
    run_report(ReportConfig(input=mixed.root, out=out), classifier=(Mean(), metadata), detector=FakeDetector(),
               progress=False)  # fmt: skip
    rows = [r for r in _rows(out) if r["task"] == "classification" and r["status"] == "ok"]
    assert len(rows) == N_OK_RADIOGRAPHS
    for row in rows:
        (image,) = row["images"]
        assert image["kind"] == "image" and "no heatmap" in image["caption"]
        assert row["model"]["name"] == "mean-model" and row["model"]["intended_use"] == "test"


def test_a_classifier_whose_contract_does_not_fit_is_refused_before_any_work(mixed: MixedFolder, tmp_path) -> None:
    import torch

    from medvision.errors import ModelFormatError

    metadata = {"backbone": "x", "keep_aspect": True, "mean": 0.5, "std": 0.25, "threshold": 0.5, "intended_use": "t"}
    with pytest.raises(ModelFormatError, match="image_size") as info:
        run_report(ReportConfig(input=mixed.root, out=tmp_path / "out"), classifier=(torch.nn.Identity(), metadata),
                   detector=FakeDetector(), progress=False)  # fmt: skip
    assert "register the model again" in info.value.fix
    assert not (tmp_path / "out").exists()


def test_cli_error_is_one_line_with_exit_status_3(tmp_path: Path) -> None:
    import subprocess
    import sys

    medvision = Path(sys.executable).parent / "medvision"
    proc = subprocess.run(
        [str(medvision), "report", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'missing'}: no such folder; ")


def test_pipeline_script_is_a_thin_wrapper(
    registered_classifier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util
    import sys

    import numpy as np

    from tests.conftest import write_dicom
    from tests.reporting.conftest import _radiograph

    spec = importlib.util.spec_from_file_location(
        "batch_report", Path(__file__).parents[2] / "pipelines" / "batch_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    write_dicom(tmp_path / "in" / "a.dcm", _radiograph(np.random.default_rng(2)), modality="DX", bits_stored=12)
    out = tmp_path / "out"
    argv = ["batch_report.py", "--input", str(tmp_path / "in"), "--out", str(out), "--no-progress"]
    monkeypatch.setattr(sys, "argv", [*argv, "--tracking-uri", registered_classifier, "--deidentify"])
    with pytest.raises(SystemExit) as done:  # the script is `medvision report`: it exits with its status
        module.main()
    assert done.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("report: 1 study read") and lines[1] == f"report: {out / 'index.html'}"
    (row,) = _rows(out)
    assert row["patient_id"].startswith("ANON-")


def test_secondary_capture_files_the_key_picture_into_its_study(
    mixed: MixedFolder, registered_classifier: str, tmp_path: Path
) -> None:
    from PIL import Image

    from medvision.reporting.sc import SC_SERIES_NUMBER

    root = tmp_path / "in"
    shutil.copytree(mixed.root, root)
    oriented = root / mixed.radiographs[0].relative_to(mixed.root)
    ds = pydicom.dcmread(oriented)
    ds.PatientOrientation = ["L", "F"]
    ds.save_as(oriented)
    out = tmp_path / "report"
    config = ReportConfig(input=root, out=out, tracking_uri=registered_classifier, image_format="jpeg",
                          secondary_capture=True)  # fmt: skip
    run_report(config, detector=FakeDetector(), progress=False)
    by_source = _by_source(_rows(out))
    rel = lambda p: p.relative_to(mixed.root).as_posix()  # noqa: E731

    row = by_source[rel(mixed.radiographs[0])]
    header = pydicom.dcmread(oriented, stop_before_pixels=True)
    sc = pydicom.dcmread(out / row["secondary_capture_path"])
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (sc.StudyInstanceUID, sc.PatientID) == (header.StudyInstanceUID, header.PatientID)
    assert sc.SeriesInstanceUID != header.SeriesInstanceUID and sc.SeriesNumber == SC_SERIES_NUMBER
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
    assert list(sc.PatientOrientation) == ["L", "F"] and sc.LossyImageCompression == "01"
    assert "pneumonia-classifier v1" in sc.SeriesDescription and "unverified" in sc.DerivationDescription
    with Image.open(out / row["images"][0]["path"]) as picture:
        assert (sc.pixel_array == np.asarray(picture.convert("RGB"))).all()  # the picture the report shows
    assert row["secondary_capture_path"] in (out / "studies" / f"{row['study_key']}.html").read_text()

    # A radiograph without PatientOrientation: the finding stands, the reason is given.
    plain = by_source[rel(mixed.radiographs[1])]
    assert plain["status"] == "ok" and plain["secondary_capture_path"] is None
    assert "no DICOM secondary capture" in plain["reason"] and "PatientOrientation" in plain["reason"]

    ct = by_source["ct/series1"]
    ct_sc = pydicom.dcmread(out / ct["secondary_capture_path"])
    ct_header = pydicom.dcmread(next((root / "ct" / "series1").iterdir()), stop_before_pixels=True)
    assert ct_sc.StudyInstanceUID == ct_header.StudyInstanceUID and list(ct_sc.PatientOrientation) == ["L", "P"]
    with Image.open(out / ct["images"][0]["path"]) as picture:
        assert ct_sc.pixel_array.shape == (picture.height, picture.width, 3)
    assert by_source[rel(mixed.nifti)]["secondary_capture_path"] is None  # no DICOM study to file it into


def test_a_pdf_that_cannot_be_printed_is_said_not_pointed_at(mixed: MixedFolder, tmp_path, monkeypatch) -> None:
    import torch

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3))[:, None]

    metadata = {"backbone": "mean", "image_size": 32, "mean": 0.5, "std": 0.25, "threshold": 0.5, "intended_use": "t"}
    monkeypatch.setenv("MEDVISION_CHROMIUM", str(tmp_path / "no-such-chromium"))
    out = tmp_path / "out"
    summary = run_report(ReportConfig(input=mixed.root, out=out), classifier=(Mean(), metadata),
                         detector=FakeDetector(), progress=False)  # fmt: skip
    assert summary["pdf"] is None and not (out / "report.pdf").exists()
    assert "no report.pdf (index.html says why)" in format_summary(summary)
    assert 'data-status="failed"' in (out / "index.html").read_text()
