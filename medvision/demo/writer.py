"""``write_demo_data``: the whole demo data set, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from pydicom.uid import UID

from medvision import __version__
from medvision.demo.datalists import write_cxr_datalists, write_json, write_mri_datalists
from medvision.demo.mri import SEQUENCES, write_mri
from medvision.demo.radiographs import LABEL_NAMES, write_cxr
from medvision.errors import DataError

GENERATOR = "medvision.demo"
INVENTORY = "inventory.json"


def _counts(values: Iterable[object]) -> dict[str, int]:
    """Counts keyed by ``str(value)``, sorted by key (stable JSON)."""
    return dict(sorted(Counter(str(v) for v in values).items()))


def _is_demo_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / INVENTORY).read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier demo data set."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder", "choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not _is_demo_folder(out):
        raise DataError(
            out,
            "is not empty and holds no medvision demo data set (no inventory.json from medvision.demo)",
            "choose a new or empty folder, or remove this one",
        )


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an earlier demo set at ``out`` is removed only afterwards."""
    if not out.exists():
        os.replace(staging, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _tree_summary(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def write_demo_data(
    out: str | Path,
    seed: int = 0,
    *,
    n_cxr_patients: int = 200,
    n_mri: int = 80,
    n_mri_dicom: int = 4,
    progress: Callable[[str], None] | None = None,
    n_mri_sequences: int = 1,
) -> dict:
    """Write the synthetic demo data set: chest radiographs (DICOM) and brain MRI (NIfTI + DICOM).

    Layout under ``out``::

        inventory.json
        cxr/dicom/P0001/ST01/IM0001.dcm ...   cxr/manifest.csv   cxr/dataset.json
        mri/imagesTr/BRAIN_001.nii.gz ...     mri/labelsTr/BRAIN_001.nii.gz ...
        mri/dicom/BRAIN_001/IM0001.dcm ...    mri/dataset.json   mri/detection.json   mri/manifest.csv

    Everything is written to a hidden folder next to ``out`` and renamed into place at the end,
    so an interrupted run leaves no half-written data set. Files are byte-identical for the same
    seed and counts, except the timings in ``inventory.json``.

    Args:
        out: Output folder. It must not exist, be empty, or hold an earlier demo data set (which
            is replaced).
        seed: Seed of every random draw and UID.
        n_cxr_patients: Number of radiograph patients (1 to 4 studies each).
        n_mri: Number of brain volumes.
        n_mri_dicom: How many of the first volumes are also written as DICOM series.
        progress: Called with short progress messages.
        n_mri_sequences: 1 (T1 volumes, the default), or 4 for multi-sequence volumes as MSD Task01 (4D NIfTI
            with FLAIR, T1w, t1gd, T2w; ``modality`` in the JSON datalists; the DICOM series hold t1gd).

    Returns:
        The inventory (counts per modality, class, transfer syntax, photometric interpretation;
        datalist paths relative to ``out``; seconds taken), also written to ``out/inventory.json``.

    Raises:
        DataError: ``out`` is a file or a non-empty folder that is not a demo data set.
        ValueError: A count is out of range.
    """
    start = time.perf_counter()
    out = Path(out).expanduser().absolute()
    if not 0 <= n_cxr_patients <= 9999:
        raise ValueError(f"n_cxr_patients must be in [0, 9999], got {n_cxr_patients}")
    if not 0 <= n_mri_dicom <= n_mri <= 999:
        raise ValueError(f"need 0 <= n_mri_dicom <= n_mri <= 999, got n_mri={n_mri}, n_mri_dicom={n_mri_dicom}")
    if n_mri_sequences not in (1, len(SEQUENCES)):
        raise ValueError(
            f"n_mri_sequences must be 1 or {len(SEQUENCES)} ({', '.join(SEQUENCES)}), got {n_mri_sequences}"
        )
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    say = progress or (lambda _message: None)
    try:
        say(f"cxr: {n_cxr_patients} patients")
        cxr_records = write_cxr(staging, seed, n_cxr_patients, progress)
        datalists = write_cxr_datalists(staging, cxr_records, seed)
        t_cxr = time.perf_counter() - start

        say(f"mri: {n_mri} volumes, {n_mri_dicom} as DICOM")
        mri_records = write_mri(staging, seed, n_mri, n_mri_dicom, progress, n_sequences=n_mri_sequences)
        sequences = SEQUENCES if n_mri_sequences > 1 else None
        datalists.update(write_mri_datalists(staging, mri_records, seed, sequences))
        t_mri = time.perf_counter() - start - t_cxr

        studies = [r["study"] for r in cxr_records]
        tumours = [t for r in mri_records for t in r["tumours"]]
        n_files, n_bytes = _tree_summary(staging)
        inventory = {
            "generator": GENERATOR,
            "version": __version__,
            "seed": seed,
            "parameters": {
                "n_cxr_patients": n_cxr_patients,
                "n_mri": n_mri,
                "n_mri_dicom": n_mri_dicom,
                **({"n_mri_sequences": n_mri_sequences} if n_mri_sequences > 1 else {}),
            },
            "cxr": {
                "patients": len({s.patient_id for s in studies}),
                "studies": len(studies),
                "boxes": sum(len(r["boxes"]) for r in cxr_records),
                "by_label": {name: sum(s.label == i for s in studies) for i, name in enumerate(LABEL_NAMES)},
                "by_modality": _counts(s.modality for s in studies),
                "by_photometric": _counts(s.photometric for s in studies),
                "by_transfer_syntax": _counts(UID(s.transfer_syntax).name for s in studies),
                "by_bits_stored": _counts(s.bits_stored for s in studies),
                "by_view": _counts(s.view for s in studies),
                "by_sex": _counts(s.sex for s in studies),
            },
            "mri": {
                "volumes": len(mri_records),
                "with_tumours": sum(bool(r["tumours"]) for r in mri_records),
                "tumours": len(tumours),
                "by_n_tumours": _counts(len(r["tumours"]) for r in mri_records),
                "by_kind": _counts(t.kind for t in tumours),
                **(
                    {
                        "sequences": list(SEQUENCES),
                        "tumours_shown_in": {n: sum(n in (t.shown_in or []) for t in tumours) for n in SEQUENCES},
                    }
                    if n_mri_sequences > 1
                    else {}
                ),
                "dicom_series": sum(r["dicom"] is not None for r in mri_records),
                "dicom_files": sum(r["n_dicom_files"] for r in mri_records),
                "by_transfer_syntax": {"Explicit VR Little Endian": sum(r["n_dicom_files"] for r in mri_records)},
            },
            "datalists": dict(sorted(datalists.items())),
            "files": n_files + 1,
            "bytes_without_inventory": n_bytes,
        }
        inventory["seconds"] = {
            "cxr": round(t_cxr, 2),
            "mri": round(t_mri, 2),
            "total": round(time.perf_counter() - start, 2),
        }
        write_json(staging / INVENTORY, inventory)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"done: {out} in {inventory['seconds']['total']} s")
    return inventory
