"""De-identification: deid (pydicom's organisation) against dicognito, and medvision's profile on dicognito.

Why medvision de-identifies with dicognito (``medvision/reporting/deid.py``). Each tool runs on the same
synthetic headers in one process:

* **coverage**: a header holding every attribute of DICOM PS3.15 Table E.1-1 that pydicom knows (each with a
  distinctive made-up value, see ``tests/reporting/phi_data.py``); counted: the attributes whose Basic
  Profile action is not K and whose original value is still there afterwards, and the attributes removed
  outright (a removed Type 1 or 2 attribute makes the object invalid);
* **consistency**: two studies of one patient, de-identified one after the other: the same pseudonym for the
  patient, the same UID for an instance referenced from both, the interval between the study dates kept;
* **valid UIDs**: every UI value after de-identification is a valid UID;
* **speed**: headers per second on pydicom's CT_small header.

Run with ``make bench-deid`` (or ``.venv/bin/python benchmarks/bench_deid.py``).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import io
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import UID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medvision.reporting.deid import Deidentifier, profile_action  # noqa: E402
from tests.reporting.phi_data import annex_e_header  # noqa: E402

Tool = Callable[[Any], Any]


def deid_tool() -> Tool:
    """deid 0.4 with its default recipe (``deid.dicom``), as its documentation runs it."""
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers
    from deid.logger import bot

    bot.level = 0  # its warnings would flood the output
    recipe = DeidRecipe()

    def run(ds: Any) -> Any:
        # deid parses pydicom FileDatasets (it hashes them); a dataset in memory goes through bytes.
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        parsed = pydicom.dcmread(buffer)
        return replace_identifiers(dicom_files=[parsed], deid=recipe, save=False, remove_private=True)[0]

    return run


def dicognito_tool() -> Tool:
    """dicognito 0.19 as it comes: one Anonymizer (one seed) for all headers."""
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="bench")

    def run(ds: Any) -> Any:
        out = copy.deepcopy(ds)
        anonymizer.anonymize(out)
        return out

    return run


def medvision_tool() -> Tool:
    """medvision: Table E.1-1 actions, then dicognito (``Deidentifier.dataset``)."""
    deidentifier = Deidentifier("bench")
    return deidentifier.dataset


def _values(ds: Any) -> set[str]:
    found: set[str] = set()

    def visit(_: Any, elem: Any) -> None:
        if elem.VR == "SQ":
            return
        value = elem.value
        for v in value if isinstance(value, list | pydicom.multival.MultiValue) else [value]:
            found.add(v.decode(errors="replace") if isinstance(v, bytes) else str(v))

    ds.walk(visit)
    return found


def coverage(tool: Tool) -> dict[str, int]:
    ds, originals = annex_e_header()
    out = tool(ds)
    left = removed = considered = 0
    for tag, value in originals.items():
        action = profile_action(tag)
        if action in ("K", None):
            continue
        considered += 1
        if tag not in out:
            removed += 1
            continue
        now = out[tag].value
        if now == value or (isinstance(value, str) and isinstance(now, str) and value in now):
            left += 1
    values = _values(out)
    nested_left = sum(1 for n in range(1, 700) if f"Phiname{n:03d}^Given{n:03d}" in values)
    return {"considered": considered, "left": left, "removed": removed, "names_left_anywhere": nested_left}


def _study(patient: str, study_uid: str, date: str, ref_uid: str) -> Any:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID, ds.StudyDate = patient, "Doe^Jane", study_uid, date
    ds.SOPInstanceUID = study_uid + ".1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", ref_uid
    ds.ReferencedImageSequence = [item]
    return ds


def consistency(tool: Tool) -> dict[str, Any]:
    ref = "1.2.826.0.1.3680043.10.543.77.1"
    a = tool(_study("PAT-77", "1.2.826.0.1.3680043.10.543.1", "20240105", ref))
    b = tool(_study("PAT-77", "1.2.826.0.1.3680043.10.543.2", "20240215", ref))

    def day(ds: Any) -> dt.date | None:
        text = str(ds.get("StudyDate") or "")
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None

    same_patient = bool(a.get("PatientID")) and a.get("PatientID") == b.get("PatientID") != "PAT-77"
    refs = [str(x.ReferencedImageSequence[0].get("ReferencedSOPInstanceUID", "")) if "ReferencedImageSequence" in x
            else "" for x in (a, b)]  # fmt: skip
    same_ref = bool(refs[0]) and refs[0] == refs[1] != ref
    interval = (day(b) - day(a)).days if day(a) and day(b) else None
    uids: list[str] = []
    for ds in (a, b):
        ds.walk(lambda _, e: uids.append(str(e.value)) if e.VR == "UI" and e.value else None)
    valid = all(UID(u).is_valid for u in uids)
    return {"same_patient": same_patient, "same_reference": same_ref, "interval_days": interval, "uids_valid": valid,
            "uids": len(uids)}  # fmt: skip


def speed(tool: Tool, n: int) -> float:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    tool(ds)
    start = time.perf_counter()
    for _ in range(n):
        tool(ds)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headers", type=int, default=200, help="headers timed per tool")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    tools = {"deid 0.4.13 (default recipe)": deid_tool(), "dicognito 0.19.0": dicognito_tool(),
             "medvision (Table E.1-1 + dicognito)": medvision_tool()}  # fmt: skip
    rows = []
    for name, tool in tools.items():
        cov, con = coverage(tool), consistency(tool)
        rate = speed(tool, args.headers)
        rows.append((name, cov, con, rate))
    print(f"Table E.1-1 attributes in the header with a Basic Profile action other than K: {rows[0][1]['considered']}")
    print(
        "| tool | originals left | removed | names left in sequences | same patient pseudonym | same ref. UID"
        " | study interval (41 d) | UIDs valid | headers/s |"
    )
    print("| --- | ---: | ---: | ---: | --- | --- | ---: | --- | ---: |")
    fastest = max(r[3] for r in rows)
    for name, cov, con, rate in rows:
        print(
            f"| {name} | {cov['left']} | {cov['removed']} | {cov['names_left_anywhere']} | {con['same_patient']}"
            f" | {con['same_reference']} | {con['interval_days']} | {con['uids_valid']} | {rate:.0f}"
            f" ({rate / fastest:.2f}x) |"
        )


if __name__ == "__main__":
    main()
