"""Datalists for chest-radiograph classification: CSV, MONAI decathlon JSON, and two public layouts.

Every loader returns ``list[dict]``, one dict per image, with the same keys and no ``None`` values
(MONAI's collate cannot stack ``None``):

========== ============================================================================================
key        value
========== ============================================================================================
image      absolute path (str) of the DICOM, PNG or JPEG file
label      0 (normal) or 1 (pneumonia)
patient_id str, ``""`` when unknown (:func:`medvision.data.fill_from_headers` takes it from PatientID)
study_uid  str or ``""``
sex        ``"M"``, ``"F"``, ``"O"`` or the value as given; ``""`` when unknown
age        years as float, ``nan`` when unknown
view       str (``"PA"``, ``"AP"``, ...) or ``""``
boxes      list of ``[x0, y0, x1, y1]`` in pixel indices of the source image (x = column, y = row)
split      ``"train"``, ``"val"`` or ``"test"`` when the source fixes it, else ``""``
source     where the item came from, for messages (``"manifest.csv:12"``)
========== ============================================================================================
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medvision.constants import BOXES, IMAGE, IMAGE_SUFFIXES, LABEL, PATIENT_ID
from medvision.errors import ConfigError, DataError

PathLike = str | os.PathLike

FORMATS = ("csv", "decathlon", "kermany", "rsna")
SPLITS = ("train", "val", "test")
LABEL_NAMES = {"0": 0, "1": 1, "normal": 0, "pneumonia": 1, "negative": 0, "positive": 1}
ALLOWED_LABELS = "0, 1, normal, pneumonia, negative, positive"
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
    "": "",
}
CSV_COLUMNS = ("image", "label", "patient_id", "study_uid", "sex", "age", "view", "boxes", "split")
#: How many problems an error message quotes before it only counts the rest.
MAX_LISTED = 20

KERMANY_CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}
KERMANY_LAYOUT = "DIR/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg"
RSNA_LABELS = "stage_2_train_labels.csv"
RSNA_IMAGES = "stage_2_train_images"
RSNA_LAYOUT = f"DIR/{RSNA_LABELS} (patientId,x,y,width,height,Target) and DIR/{RSNA_IMAGES}/<patientId>.dcm"

_KERMANY_PATIENT = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person1_bacteria_1, person1_virus_6
    re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+$", re.IGNORECASE),  # IM-0115-0001, NORMAL2-IM-1427-0001
)


def join_problems(problems: list[str], limit: int = MAX_LISTED) -> str:
    """``"a; b; c"``, or the first ``limit`` problems and ``"... and N more"``.

    Example:
        >>> join_problems(["row 2: x", "row 3: y"])
        'row 2: x; row 3: y'
    """
    text = "; ".join(problems[:limit])
    if len(problems) > limit:
        text += f"; ... and {len(problems) - limit} more"
    return text


def parse_label(value: Any) -> int:
    """0/1 from ``0``, ``1``, ``"0"``, ``"1.0"``, or a name (normal/pneumonia, negative/positive).

    Raises:
        ValueError: any other value.

    Example:
        >>> parse_label("Pneumonia"), parse_label(0), parse_label("1.0")
        (1, 0, 1)
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    text = str(value).strip().lower()
    if text in ("0.0", "1.0"):
        text = text[0]
    if text in LABEL_NAMES:
        return LABEL_NAMES[text]
    raise ValueError(f"label {value!r} (allowed: {ALLOWED_LABELS})")


def parse_age(value: Any) -> float:
    """Age in years: a number, a DICOM age string (``"045Y"``, ``"006M"``, ``"003W"``, ``"010D"``), or NaN.

    Raises:
        ValueError: text that is neither.

    Example:
        >>> parse_age("045Y"), parse_age(" 61.5 "), math.isnan(parse_age(""))
        (45.0, 61.5, True)
    """
    if value is None:
        return math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().upper()
    if text in ("", "NAN", "NA", "N/A"):
        return math.nan
    if len(text) >= 2 and text[-1] in "YMWD" and text[:-1].isdigit():
        scale = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}[text[-1]]
        return round(int(text[:-1]) * scale, 3)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"age {value!r} (a number of years or a DICOM age such as 045Y)") from None


def parse_sex(value: Any) -> str:
    """``"M"``, ``"F"`` or ``"O"`` from the usual spellings; other text as given; ``""`` when empty.

    Example:
        >>> parse_sex("female"), parse_sex("M"), parse_sex(None)
        ('F', 'M', '')
    """
    text = "" if value is None else str(value).strip()
    return {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}.get(text.lower(), text)


def box_list(value: Any, expected_json: str, expected_list: str) -> list[Any]:
    """The raw list of boxes in ``value`` (a list, a tuple or its JSON text); ``""``/``None`` mean none.

    Raises:
        ValueError: not JSON, or not a list; the message quotes the value and ``expected_*``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"boxes {value!r} are not JSON (expected {expected_json})") from None
    if not isinstance(value, list | tuple):
        raise ValueError(f"boxes {value!r} (expected {expected_list})")
    return list(value)


def parse_boxes(value: Any) -> list[list[float]]:
    """Boxes ``[[x0, y0, x1, y1], ...]`` from a list or its JSON text; ``""``/``None`` mean none.

    Raises:
        ValueError: not JSON, not a list of 4-number lists, or a box with ``x1 <= x0`` or ``y1 <= y0``.

    Example:
        >>> parse_boxes("[[10, 20, 30, 40]]")
        [[10.0, 20.0, 30.0, 40.0]]
    """
    value = box_list(value, "[[x0, y0, x1, y1], ...]", "a list [[x0, y0, x1, y1], ...]")
    boxes = []
    for box in value:
        ok = (
            isinstance(box, list | tuple)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in box)
        )
        if not ok:
            raise ValueError(f"box {box!r} (expected 4 numbers [x0, y0, x1, y1])")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"box {list(box)!r} has x1 <= x0 or y1 <= y0 (expected corners [x0, y0, x1, y1], "
                "not [x, y, width, height])"
            )
        boxes.append([x0, y0, x1, y1])
    return boxes


def parse_split(value: Any) -> str:
    """``"train"``, ``"val"``, ``"test"`` (also training/valid/validation/testing) or ``""``.

    Example:
        >>> parse_split("Validation")
        'val'
    """
    text = "" if value is None else str(value).strip().lower()
    if text not in SPLIT_NAMES:
        raise ValueError(f"split {value!r} (allowed: train, val, test, or empty)")
    return SPLIT_NAMES[text]


def make_item(
    image: PathLike,
    label: int,
    *,
    source: str,
    patient_id: Any = "",
    study_uid: Any = "",
    sex: Any = "",
    age: Any = None,
    view: Any = "",
    boxes: Any = None,
    split: Any = "",
) -> dict[str, Any]:
    """One datalist item with every key present and no ``None`` (values are parsed as in the CSV).

    Example:
        >>> item = make_item("/data/a.dcm", 1, source="x.csv:2", age="045Y")
        >>> item["age"], item["patient_id"], item["boxes"]
        (45.0, '', [])
    """
    return {
        IMAGE: os.path.normpath(os.path.abspath(os.fspath(image))),
        LABEL: int(label),
        PATIENT_ID: "" if patient_id is None else str(patient_id).strip(),
        "study_uid": "" if study_uid is None else str(study_uid).strip(),
        "sex": parse_sex(sex),
        "age": parse_age(age),
        "view": "" if view is None else str(view).strip().upper(),
        BOXES: parse_boxes(boxes),
        "split": parse_split(split),
        "source": source,
    }


def _resolve(base: Path, value: Any) -> str:
    return os.path.normpath(os.path.join(base, os.fspath(value)))


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(path, f"{what} not found", "check data.path")
    if not path.is_file():
        raise DataError(path, f"is a folder, expected a {what}", "point data.path at the file")


def _parse_entry(entry: dict[str, Any], base: Path, source: str, problems: list[str], where: str) -> dict | None:
    """Parse one record (CSV row or JSON entry); append a problem text and return None when it is bad."""
    image = entry.get("image")
    if image is None or (isinstance(image, str) and not image.strip()):
        problems.append(f"{where}: empty image")
        return None
    if not isinstance(image, str):
        problems.append(f"{where}: image {image!r} (expected one path)")
        return None
    try:
        label = parse_label(entry.get("label", ""))
        return make_item(
            _resolve(base, image.strip()),
            label,
            source=source,
            patient_id=entry.get("patient_id"),
            study_uid=entry.get("study_uid"),
            sex=entry.get("sex"),
            age=entry.get("age"),
            view=entry.get("view"),
            boxes=entry.get("boxes"),
            split=entry.get("split"),
        )
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return None


def _raise_problems(path: Path, problems: list[str], what: str, fix: str) -> None:
    if problems:
        raise DataError(path, f"{len(problems)} bad {what}: {join_problems(problems)}", fix)


def load_csv(path: PathLike) -> list[dict[str, Any]]:
    """Items from a CSV file with columns ``image`` and ``label`` (and optional ``patient_id``, ``study_uid``,
    ``sex``, ``age``, ``view``, ``boxes`` (JSON), ``split``); image paths are relative to the CSV's folder.

    Example:
        >>> items = load_csv("data/demo/cxr/manifest.csv")  # doctest: +SKIP
    """
    path = Path(path)
    _require_file(path, "CSV datalist")
    base = path.parent.absolute()
    items: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("image", "label") if c not in columns]
            if missing:
                header = ", ".join(columns) or "none"
                raise DataError(
                    path,
                    f"missing column(s) {', '.join(missing)} (header: {header})",
                    f"add the column(s); allowed columns: {', '.join(CSV_COLUMNS)}",
                )
            reader.fieldnames = columns
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for k, v in row.items() if k is not None):
                    continue  # blank line
                item = _parse_entry(row, base, f"{path.name}:{line}", problems, f"row {line}")
                if item is not None:
                    items.append(item)
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason})", "save the CSV as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(path, f"not a readable CSV file ({exc})", "check the quoting of the file") from exc
    _raise_problems(path, problems, "row(s)", "fix the listed rows (row = line number in the file)")
    if not items:
        raise DataError(path, "the datalist holds no rows", "add one row per image")
    return items


def load_decathlon(path: PathLike) -> list[dict[str, Any]]:
    """Items from a MONAI decathlon-style JSON: a ``training`` list and optional ``validation``/``test`` lists.

    Each entry is ``{"image": "./x.dcm", "label": 0, ...}`` with the optional keys of the CSV; paths are
    relative to the JSON's folder. When a ``validation`` or a non-empty ``test`` list is present, the
    lists fix the split (``training`` -> ``"train"``); otherwise ``split`` is ``""`` unless an entry sets
    its own ``split``.

    Example:
        >>> items = load_decathlon("data/demo/cxr/dataset.json")  # doctest: +SKIP
    """
    path = Path(path)
    _require_file(path, "decathlon JSON datalist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not a readable JSON file ({exc})", "check the JSON syntax") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("training"), list):
        raise DataError(path, "no 'training' list", 'expected {"training": [{"image": "./x.dcm", "label": 0}, ...]}')
    base = path.parent.absolute()
    lists = {"training": "train", "validation": "val", "test": "test"}
    fixed = "validation" in doc or bool(doc.get("test"))
    items: list[dict[str, Any]] = []
    problems: list[str] = []
    for name, split in lists.items():
        entries = doc.get(name) or []
        if not isinstance(entries, list):
            problems.append(f"'{name}' is not a list")
            continue
        for i, entry in enumerate(entries):
            where = f"{name}[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{where}: {entry!r} (expected an object with image and label)")
                continue
            if "label" not in entry:
                problems.append(f"{where}: no label")
                continue
            if fixed and not entry.get("split"):
                entry = {**entry, "split": split}
            item = _parse_entry(entry, base, f"{path.name}:{where}", problems, where)
            if item is not None:
                items.append(item)
    _raise_problems(path, problems, "entries", "give every entry an image path and a label 0/1")
    if not items:
        raise DataError(path, "the 'training' list is empty", "add one entry per image")
    return items


def kermany_patient_id(name: str) -> str:
    """Patient id from a file name of the Kermany (2018) pediatric pneumonia set.

    ``person1_bacteria_1.jpeg`` and ``person1_virus_6.jpeg`` -> ``person1``; ``IM-0115-0001.jpeg`` ->
    ``IM-0115``; ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``; any other name -> its stem.

    Example:
        >>> kermany_patient_id("person1_virus_6.jpeg"), kermany_patient_id("NORMAL2-IM-1427-0001.jpeg")
        ('person1', 'NORMAL2-IM-1427')
    """
    stem = Path(name).stem
    for pattern in _KERMANY_PATIENT:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def _subfolders(folder: Path) -> dict[str, Path]:
    return {p.name.upper(): p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def load_kermany(path: PathLike) -> list[dict[str, Any]]:
    """Items from the Kermany (2018) pediatric pneumonia layout ``DIR/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``.

    The split comes from the folder, the label from the class folder, the patient id from the file name
    (:func:`kermany_patient_id`). ``.jpg`` and ``.png`` files are read too; hidden files are skipped.

    Example:
        >>> items = load_kermany("data/chest_xray")  # doctest: +SKIP
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            root,
            "folder not found" if not root.exists() else "is not a folder",
            f"point data.path at the folder with the layout {KERMANY_LAYOUT}",
        )
    splits = {name.lower(): folder for name, folder in _subfolders(root).items() if name.lower() in SPLITS}
    if not splits:
        raise DataError(
            root,
            f"holds none of the folders train/, val/, test/ (expected {KERMANY_LAYOUT})",
            "point data.path at the folder that holds train/ val/ test/ (the Kaggle archive nests it as chest_xray/)",
        )
    items: list[dict[str, Any]] = []
    for split in SPLITS:
        if split not in splits:
            continue
        classes = _subfolders(splits[split])
        missing = [c for c in KERMANY_CLASSES if c not in classes]
        if missing:
            raise DataError(
                splits[split] / missing[0],
                f"class folder missing (expected {KERMANY_LAYOUT})",
                f"create {', '.join(missing)} in {splits[split]} or point data.path at the right folder",
            )
        for cls, label in KERMANY_CLASSES.items():
            for file in sorted(classes[cls].iterdir()):
                if file.name.startswith(".") or not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                rel = file.relative_to(root).as_posix()
                items.append(
                    make_item(
                        file.absolute(),
                        label,
                        source=f"{root.name}:{rel}",
                        patient_id=kermany_patient_id(file.name),
                        split=split,
                    )
                )
    if not items:
        raise DataError(
            root, f"no .jpeg/.jpg/.png images in the class folders (expected {KERMANY_LAYOUT})", "check data.path"
        )
    return items


def load_rsna(path: PathLike) -> list[dict[str, Any]]:
    """Items from the RSNA Pneumonia Detection Challenge layout (``path`` is the folder or its labels CSV).

    ``stage_2_train_labels.csv`` has one row per box (``patientId,x,y,width,height,Target``); the label is
    the largest Target of a patientId, the boxes ``[x, y, x + width, y + height]`` of its Target-1 rows,
    the image ``stage_2_train_images/<patientId>.dcm``.

    Example:
        >>> items = load_rsna("data/rsna")  # doctest: +SKIP
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    labels = path if path.is_file() else root / RSNA_LABELS
    if not labels.is_file():
        raise DataError(
            labels,
            f"not found (expected {RSNA_LAYOUT})",
            "point data.path at the folder of the RSNA Pneumonia Detection Challenge download",
        )
    images = root / RSNA_IMAGES
    order: list[str] = []
    rows_of: dict[str, list[tuple[int, dict[str, str]]]] = {}
    with labels.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("patientId", "x", "y", "width", "height", "Target") if c not in columns]
        if missing:
            raise DataError(
                labels,
                f"missing column(s) {', '.join(missing)}",
                "expected the header patientId,x,y,width,height,Target",
            )
        reader.fieldnames = columns
        for row in reader:
            pid = (row.get("patientId") or "").strip()
            if pid not in rows_of:
                order.append(pid)
                rows_of[pid] = []
            rows_of[pid].append((reader.line_num, row))
    items: list[dict[str, Any]] = []
    problems: list[str] = []
    for pid in order:
        first_line = rows_of[pid][0][0]
        if not pid:
            problems.append(f"row {first_line}: empty patientId")
            continue
        label, boxes, ok = 0, [], True
        for line, row in rows_of[pid]:
            try:
                target = parse_label(row.get("Target", ""))
            except ValueError as exc:
                problems.append(f"row {line}: Target {str(exc).removeprefix('label ')}")
                ok = False
                continue
            label = max(label, target)
            if target == 1:
                try:
                    x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                        raise ValueError
                except (TypeError, ValueError):
                    problems.append(
                        f"row {line}: Target 1 needs a box, got x={row.get('x')!r} y={row.get('y')!r} "
                        f"width={row.get('width')!r} height={row.get('height')!r}"
                    )
                    ok = False
                    continue
                boxes.append([x, y, x + w, y + h])
        if ok:
            items.append(
                make_item(
                    images / f"{pid}.dcm", label, source=f"{labels.name}:{first_line}", patient_id=pid, boxes=boxes
                )
            )
    _raise_problems(labels, problems, "row(s)", "fix the listed rows (row = line number in the file)")
    if not items:
        raise DataError(labels, "holds no rows", "check the download")
    return items


_LOADERS: dict[str, Callable[[PathLike], list[dict[str, Any]]]] = {
    "csv": load_csv,
    "decathlon": load_decathlon,
    "kermany": load_kermany,
    "rsna": load_rsna,
}


def load_datalist(fmt: str, path: PathLike) -> list[dict[str, Any]]:
    """Read a datalist of chest radiographs into a list of item dicts (see the module docstring for the keys).

    Args:
        fmt: ``"csv"``, ``"decathlon"``, ``"kermany"`` or ``"rsna"`` (config key ``data.format``).
        path: the CSV or JSON file, or the folder of a public layout.

    Returns:
        One dict per image, in the order of the source.

    Raises:
        ConfigError: an unknown ``fmt``.
        DataError: a missing file, column or folder, or bad rows (all of them listed in one error).

    Example:
        >>> from medvision.demo import write_demo_data  # doctest: +SKIP
        >>> items = load_datalist("csv", "data/demo/cxr/manifest.csv")  # doctest: +SKIP
        >>> sorted(items[0])  # doctest: +SKIP
        ['age', 'boxes', 'image', 'label', 'patient_id', 'sex', 'source', 'split', 'study_uid', 'view']
    """
    loader = _LOADERS.get(str(fmt).strip().lower())
    if loader is None:
        raise ConfigError("data.format", f"unknown datalist format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    return loader(path)


def datalist_name(items: Iterable[dict[str, Any]]) -> str:
    """The file the items came from (from their ``source``), for error messages; ``"datalist"`` if mixed.

    Example:
        >>> datalist_name([{"source": "manifest.csv:2"}, {"source": "manifest.csv:3"}])
        'manifest.csv'
    """
    names = {str(item.get("source", "")).split(":", 1)[0] for item in items}
    names.discard("")
    return names.pop() if len(names) == 1 else "datalist"
