"""Study discovery: walk a folder, group DICOM files into studies and series, route each one.

:func:`discover` reads the headers of every file below a folder (never the pixels) and returns one
:class:`Study` per unit of work and per file that cannot be used:

* DICOM files are grouped by StudyInstanceUID and SeriesInstanceUID. A series of CR/DX radiographs
  (modality or SOP class) is routed to the classifier (``"classification"``); a CT/MR series to the
  detector (``"detection"``). Series of other modalities, objects without pixel data (SR, KOS,
  presentation states), localisers, single CT/MR slices and radiographs of another body part than the
  chest are ``"not_applicable"``, with the reason.
* Each NIfTI file (``.nii``, ``.nii.gz``) is a study of its own, routed to the detector, after a
  header check.
* Anything else (text, a truncated header, an empty file, a DICOM file without StudyInstanceUID, a
  NIfTI file whose header cannot be read) becomes a ``"failed"`` :class:`Study` whose ``reason`` names
  the file, the reason and the fix. One bad file never stops the walk.

Hidden files and folders (names starting with ``.``) are skipped and counted; folders passed as
``exclude`` (the report's own output) are not entered.

Each study has a stable :attr:`Study.key`: a short hash of its StudyInstanceUID and
SeriesInstanceUID (DICOM) or of its path relative to the input folder (NIfTI, failures), prefixed by
the modality, e.g. ``dx-3f2a9c1b7e04``; safe as a file name and free of identifiers (but not salted:
:mod:`medvision.reporting.deid` re-keys a de-identified report).

Example:
    >>> found = discover("studies/")  # doctest: +SKIP
    >>> [(s.key, s.route, s.reason) for s in found.studies]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvision.constants import IMAGE_SUFFIXES, NIFTI_SUFFIXES
from medvision.errors import InputError, MedvisionError

__all__ = [
    "CHEST_BODY_PARTS",
    "CLASSIFICATION",
    "DETECTION",
    "FAILED",
    "NOT_APPLICABLE",
    "RADIOGRAPH_SOP_CLASSES",
    "Discovery",
    "Instance",
    "Study",
    "discover",
]

#: Routes a study can take.
CLASSIFICATION = "classification"
DETECTION = "detection"
NOT_APPLICABLE = "not_applicable"
FAILED = "failed"

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
VOLUME_MODALITIES = frozenset({"CT", "MR"})

#: Single-frame projection radiograph storage SOP classes (CR; DX for presentation and for processing).
RADIOGRAPH_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1",
        "1.2.840.10008.5.1.4.1.1.1.1.1",
    }
)

#: BodyPartExamined values the pneumonia classifier accepts (an empty value is accepted too).
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_LAT", "PORTABLE CHEST"})

_READS = "the report reads CR/DX chest radiographs (classifier) and CT/MR volumes or NIfTI files (detector)"


def _digest(*parts: str, n: int = 12) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:n]


def _slug(text: str) -> str:
    cleaned = "".join(c for c in text.lower() if c.isalnum())
    return cleaned[:6] or "x"


@dataclass(frozen=True)
class Instance:
    """One DICOM file of a series: where it is and what it is."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None = None
    n_frames: int = 1
    burned_in: str | None = None  # BurnedInAnnotation (YES/NO), None when absent


@dataclass
class Study:
    """One unit of work (a DICOM series or a NIfTI file), or one file that cannot be used.

    Attributes:
        key: stable, file-name safe identifier (see the module docstring).
        route: ``"classification"``, ``"detection"``, ``"not_applicable"`` or ``"failed"``.
        kind: ``"dicom"``, ``"nifti"`` or ``"file"`` (a failure or an unsupported file).
        source: path relative to the input folder: the file, or the folder holding the series' files.
        paths: every file of the unit, sorted (instance number, then path, for DICOM).
        reason: why the study is not applicable or failed (one line: file, reason, fix).
        meta: header facts for the report (``patient_id``, ``patient_name``, ``study_date``, ``study_time``,
            ``study_uid``, ``series_uid``, ``accession``, ``modality``, ``study_description``,
            ``series_description``, ``body_part``, ``frame_of_reference_uid``); empty for NIfTI and
            failures.
        instances: the DICOM instances, in ``paths`` order.
    """

    key: str
    route: str
    kind: str
    source: str
    paths: list[Path]
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)

    def fingerprint(self, root: str | os.PathLike[str]) -> str:
        """A hash of the files' relative paths, sizes and modification times (changes when a file does).

        Args:
            root: the input folder the paths are relative to.

        Returns:
            64 hex characters.
        """
        h = hashlib.sha256()
        for path in self.paths:
            try:
                st = path.stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{_relative(path, Path(root))}\x1f{stamp}\x1e".encode())
        return h.hexdigest()


@dataclass
class Discovery:
    """What :func:`discover` found: the studies (failures included) and the count of skipped hidden files."""

    root: Path
    studies: list[Study]
    hidden_skipped: int = 0

    def by_route(self, route: str) -> list[Study]:
        """The studies that take ``route``."""
        return [s for s in self.studies if s.route == route]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _walk(root: Path, exclude: Iterable[Path]) -> tuple[list[Path], int]:
    excluded = {p.resolve() for p in exclude}
    files: list[Path] = []
    hidden = 0
    for folder, dirs, names in os.walk(root):
        keep = []
        for d in sorted(dirs):
            full = Path(folder) / d
            if d.startswith("."):
                hidden += 1
            elif full.resolve() not in excluded:
                keep.append(d)
        dirs[:] = keep
        for name in sorted(names):
            if name.startswith("."):
                hidden += 1
                continue
            files.append(Path(folder) / name)
    return files, hidden


def _failure(path: Path, root: Path, reason: str) -> Study:
    """A failed file; the reason names it by its path relative to the input folder."""
    rel = _relative(path, root)
    reason = reason.replace(str(path), rel)
    return Study(key=f"err-{_digest(rel)}", route=FAILED, kind="file", source=rel, paths=[path], reason=reason)


def _not_applicable(prefix: str, kind: str, path: Path, rel: str, reason: str) -> Study:
    """A file no model applies to, listed with its reason."""
    key = f"{prefix}-{_digest(rel)}"
    return Study(key=key, route=NOT_APPLICABLE, kind=kind, source=rel, paths=[path], reason=reason)


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _header_meta(ds: Any) -> dict[str, Any]:
    return {
        "patient_id": _text(ds, "PatientID") or None,
        "patient_name": _text(ds, "PatientName") or None,
        "study_date": _text(ds, "StudyDate") or None,
        "study_time": _text(ds, "StudyTime") or None,
        "study_uid": _text(ds, "StudyInstanceUID") or None,
        "series_uid": _text(ds, "SeriesInstanceUID") or None,
        "accession": _text(ds, "AccessionNumber") or None,
        "modality": _text(ds, "Modality").upper() or None,
        "study_description": _text(ds, "StudyDescription") or None,
        "series_description": _text(ds, "SeriesDescription") or None,
        "body_part": _text(ds, "BodyPartExamined").upper() or None,
        "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID") or None,
    }


def _instance(path: Path, ds: Any) -> Instance:
    try:
        number = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    try:
        frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        frames = 1
    burned_in = _text(ds, "BurnedInAnnotation").upper() or None
    return Instance(path, _text(ds, "SOPClassUID"), _text(ds, "SOPInstanceUID"), number, frames, burned_in)


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "unknown SOP class")


def _route(first: Any, instances: list[Instance]) -> tuple[str, str | None]:
    """``(route, reason)`` for one series, from its first header and its instances."""
    modality = _text(first, "Modality").upper()
    sop = _text(first, "SOPClassUID")
    where = f"series {_text(first, 'SeriesDescription') or _text(first, 'SeriesInstanceUID') or '?'}"
    if "Rows" not in first or "Columns" not in first:
        return NOT_APPLICABLE, f"{where}: {modality or 'unknown modality'} ({_sop_name(sop)}) holds no image; {_READS}"
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    if modality in RADIOGRAPH_MODALITIES or (not modality and sop in RADIOGRAPH_SOP_CLASSES):
        body = _text(first, "BodyPartExamined").upper()
        if body and body not in CHEST_BODY_PARTS:
            return NOT_APPLICABLE, (
                f"{where}: a {modality or 'radiograph'} of body part {body}; the classifier reads chest radiographs"
            )
        return CLASSIFICATION, None
    if modality in VOLUME_MODALITIES:
        if "LOCALIZER" in image_type:
            return NOT_APPLICABLE, f"{where}: a {modality} localizer (scout), not a volume"
        if sum(i.n_frames for i in instances) < 2:
            return NOT_APPLICABLE, f"{where}: a single {modality} slice is not a volume; the detector reads volumes"
        return DETECTION, None
    return NOT_APPLICABLE, f"{where}: modality {modality or 'not given'} ({_sop_name(sop)}) is not read; {_READS}"


def _series_studies(firsts: dict[tuple[str, str], Any], members: dict[tuple[str, str], list[Instance]],
                    root: Path) -> list[Study]:  # fmt: skip
    studies = []
    for group in sorted(firsts):
        first = firsts[group]
        instances = sorted(
            members[group], key=lambda i: (i.instance_number is None, i.instance_number or 0, i.path.as_posix())
        )
        route, reason = _route(first, instances)
        meta = _header_meta(first)
        paths = [i.path for i in instances]
        if len(paths) == 1:
            source = _relative(paths[0], root)
        else:
            common = Path(os.path.commonpath([str(p.parent) for p in paths]))
            source = _relative(common, root) if common != root else "."
        studies.append(
            Study(
                key=f"{_slug(meta['modality'] or 'dcm')}-{_digest(*group)}",
                route=route,
                kind="dicom",
                source=source,
                paths=paths,
                reason=reason,
                meta=meta,
                instances=instances,
            )
        )
    return studies


def _looks_like_mask(path: Path, header: Any) -> bool:
    """A segmentation mask rather than an image: NIfTI intent "label", or named as one (Decathlon's labelsTr)."""
    try:
        intent = str(header.get_intent()[0]).lower()
    except Exception:  # noqa: BLE001 - an odd intent code is not a mask marker
        intent = ""
    stem = path.name.lower().removesuffix(".gz").removesuffix(".nii")
    return (
        intent == "label"
        or path.parent.name.lower().startswith(("labels", "masks"))
        or stem.endswith(("_seg", "_mask", "_label", "_labels"))
    )


def _check_nifti(path: Path) -> tuple[str, str] | None:
    """``None`` when the NIfTI header reads as a volume, else ``(route, one-line reason)``."""
    from medvision.io.nifti import NiftiReader

    try:
        reader = NiftiReader()
        img = reader.read(path)
        shape = tuple(int(s) for s in img.header.get_data_shape())
        if _looks_like_mask(path, img.header):
            return NOT_APPLICABLE, f"{path}: a label mask (segmentation), not an image to report on"
    except MedvisionError as exc:
        return FAILED, exc.one_line()
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a bad file
        reason = f"not a readable NIfTI file ({type(exc).__name__}: {exc})"
        return FAILED, InputError(path, reason, "re-export it").one_line()
    if len(shape) < 3 or sum(1 for s in shape[:3] if s > 1) < 3:
        reason = f"NIfTI image of shape {shape} is not a 3-D volume"
        return NOT_APPLICABLE, InputError(path, reason, "the detector reads volumes").one_line()
    return None


def discover(
    input_dir: str | os.PathLike[str],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    progress: Callable[[int], None] | None = None,
) -> Discovery:
    """Read every file's header below ``input_dir`` and return the studies to report on.

    Args:
        input_dir: the folder to walk (recursively).
        exclude: folders not to enter (e.g. the report's output folder).
        progress: called with the number of files read so far, every 200 files.

    Returns:
        A :class:`Discovery`: DICOM series (one :class:`Study` each, in StudyInstanceUID then
        SeriesInstanceUID order), then NIfTI files, then unusable files, each in path order.

    Raises:
        InputError: ``input_dir`` is not a folder.
    """
    from medvision.io.dicom import read_dataset

    root = Path(input_dir)
    if not root.is_dir():
        what = "no such folder" if not root.exists() else "is a file, not a folder"
        raise InputError(root, what, "pass the folder that holds the studies (--input DIR)")
    files, hidden = _walk(root, [Path(p) for p in exclude])
    # Only the first header of each series is kept (for its metadata); the rest become small Instances.
    firsts: dict[tuple[str, str], Any] = {}
    members: dict[tuple[str, str], list[Instance]] = {}
    niftis: list[Study] = []
    others: list[Study] = []
    for n, path in enumerate(files, 1):
        if progress is not None and n % 200 == 0:
            progress(n)
        rel = _relative(path, root)
        lower = path.name.lower()
        if lower.endswith(NIFTI_SUFFIXES):
            problem = _check_nifti(path)
            if problem is not None and problem[0] == FAILED:
                others.append(_failure(path, root, problem[1]))
            elif problem is not None:
                others.append(_not_applicable("nii", "nifti", path, rel, problem[1].replace(str(path), rel)))
            else:
                niftis.append(Study(key=f"nii-{_digest(rel)}", route=DETECTION, kind="nifti", source=rel, paths=[path]))
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            reason = (
                f"{rel}: a {path.suffix.lower()[1:].upper()} image carries no modality or patient header;"
                " convert it to DICOM to have it reported"
            )
            others.append(_not_applicable("img", "file", path, rel, reason))
            continue
        if path.name.upper() == "DICOMDIR":
            reason = f"{rel}: a DICOMDIR index; the images it lists are read directly"
            others.append(_not_applicable("dir", "file", path, rel, reason))
            continue
        try:
            ds = read_dataset(path, stop_before_pixels=True)
        except MedvisionError as exc:
            others.append(_failure(path, root, exc.one_line()))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad file never stops the walk
            reason = InputError(path, f"cannot be read ({type(exc).__name__}: {exc})", "re-export the file")
            others.append(_failure(path, root, reason.one_line()))
            continue
        study_uid, series_uid = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
        if not study_uid:
            reason = InputError(path, "DICOM file without StudyInstanceUID", "re-export it from the PACS")
            others.append(_failure(path, root, reason.one_line()))
            continue
        firsts.setdefault((study_uid, series_uid), ds)
        members.setdefault((study_uid, series_uid), []).append(_instance(path, ds))
    series = _series_studies(firsts, members, root)
    return Discovery(root=root, studies=series + niftis + others, hidden_skipped=hidden)
