"""``medvision inspect`` and ``medvision demo-data``: what medvision reads from a file, and the demo data set."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import typer

from medvision.cli._common import EXIT_ERROR, print_error
from medvision.constants import DEFAULT_MAX_VOXELS
from medvision.errors import MedvisionError

__all__ = ["demo_data", "inspect"]


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
    """Print what medvision loads from each PATH; a bad path gets one error line, the others go on (exit status 3)."""
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
            print_error(exc)
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
        raise typer.Exit(EXIT_ERROR)


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
