"""Patient-level train/val/test splits.

Images of one patient are correlated (same anatomy, same scanner, often the same finding); when they
land on both sides of a split, validation and test AUROC are inflated. Every split therefore goes by
patient, and :func:`assign_splits` refuses any split, given or computed, that puts a patient on two
sides.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from medvision.constants import LABEL, PATIENT_ID
from medvision.data.datalist import SPLITS, datalist_name, join_problems
from medvision.errors import ConfigError, DataError

SPLIT_BY = ("patient", "given")


def _check_fractions(val: float, test: float) -> None:
    for key, value in (("data.split.val", val), ("data.split.test", test)):
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(key, f"fraction {value!r} is outside [0, 1)", "use a fraction such as 0.15")
    if val + test >= 1.0:
        raise ConfigError(
            "data.split",
            f"val + test = {val + test:g} leaves no training data",
            "make data.split.val + data.split.test smaller than 1",
        )


def _side_sizes(n: int, val: float, test: float) -> tuple[int, int]:
    """(n_val, n_test) for ``n`` patients of one class: rounded fractions, at least one per requested side
    when the class has enough patients, and always at least one training patient."""
    n_val, n_test = round(val * n), round(test * n)
    wanted = [side for side, frac in (("test", test), ("val", val)) if frac > 0]
    if n >= 1 + len(wanted):
        n_test = max(n_test, 1) if test > 0 else 0
        n_val = max(n_val, 1) if val > 0 else 0
    # Keep one training patient; take back from the larger of val/test.
    while n_val + n_test > max(n - 1, 0):
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def split_by_patient(
    items: list[dict[str, Any]], *, val: float = 0.15, test: float = 0.15, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Split items into ``train``/``val``/``test`` so that all images of a patient are on one side.

    Patients are stratified by their label (the largest label of their images), so that both classes
    are on every side when there are enough patients; the fractions count patients, not images. The
    result depends only on the set of (patient, label) pairs and ``seed``, not on the order of items.

    Args:
        items: datalist items with a non-empty ``patient_id``.
        val: fraction of patients for validation.
        test: fraction of patients for testing.
        seed: seed of the shuffle.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``; each list keeps the order of ``items``.

    Raises:
        DataError: items without a patient id.
        ConfigError: fractions outside [0, 1) or summing to 1 or more.

    Example:
        >>> items = [{"patient_id": f"p{i // 2}", "label": i % 4 // 2, "image": f"{i}.dcm"} for i in range(40)]
        >>> splits = split_by_patient(items, val=0.2, test=0.2, seed=0)
        >>> [len(splits[s]) for s in ("train", "val", "test")]
        [24, 8, 8]
    """
    _check_fractions(val, test)
    missing = [str(item.get("source") or item.get("image", "?")) for item in items if not item.get(PATIENT_ID)]
    if missing:
        raise DataError(
            datalist_name(items),
            f"{len(missing)} item(s) have no patient_id, so a patient-level split is impossible: "
            f"{join_problems(missing)}",
            "add a patient_id column, or take it from the DICOM PatientID with "
            "medvision.data.fill_from_headers (check_readable does this)",
        )
    patient_label: dict[str, int] = defaultdict(int)
    for item in items:
        pid = str(item[PATIENT_ID])
        patient_label[pid] = max(patient_label[pid], int(item[LABEL]))
    side_of: dict[str, str] = {}
    for cls in sorted(set(patient_label.values())):
        pids = sorted(p for p, label in patient_label.items() if label == cls)
        rng = np.random.default_rng([int(seed), int(cls)])
        order = [pids[i] for i in rng.permutation(len(pids))]
        n_val, n_test = _side_sizes(len(order), val, test)
        for i, pid in enumerate(order):
            side_of[pid] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    splits: dict[str, list[dict[str, Any]]] = {side: [] for side in SPLITS}
    for item in items:
        splits[side_of[str(item[PATIENT_ID])]].append(item)
    return splits


def check_no_patient_overlap(splits: dict[str, list[dict[str, Any]]]) -> None:
    """Refuse splits that put one patient on two sides. Items without a patient id cannot be checked.

    Raises:
        DataError: listing the patients (first 20 and a count) and their sides.

    Example:
        >>> check_no_patient_overlap({"train": [{"patient_id": "p1"}], "test": [{"patient_id": "p2"}]})
    """
    sides: dict[str, set[str]] = defaultdict(set)
    for side, members in splits.items():
        for item in members:
            if item.get(PATIENT_ID):
                sides[str(item[PATIENT_ID])].add(side)
    order = {name: i for i, name in enumerate(SPLITS)}
    shared = sorted(pid for pid, where in sides.items() if len(where) > 1)
    if shared:
        listed = [f"{pid} ({', '.join(sorted(sides[pid], key=lambda s: (order.get(s, 9), s)))})" for pid in shared]
        everything = [item for members in splits.values() for item in members]
        raise DataError(
            datalist_name(everything),
            f"{len(shared)} patient(s) are on more than one side of the split, which inflates validation and "
            f"test results: {join_problems(listed)}",
            "split by patient (data.split.by: patient), or fix the split column so each patient is on one side",
        )


def assign_splits(
    items: list[dict[str, Any]],
    *,
    by: str = "patient",
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """The train/val/test split of a datalist, checked for patient overlap.

    Args:
        items: datalist items.
        by: ``"patient"`` re-splits with :func:`split_by_patient` (ignoring any ``split`` in the source);
            ``"given"`` uses each item's ``split`` (every item must have one).
        val: validation fraction (``by="patient"``).
        test: test fraction (``by="patient"``).
        seed: split seed (``by="patient"``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        ConfigError: an unknown ``by``.
        DataError: items without a split (``"given"``) or without a patient id (``"patient"``), or a
            patient on two sides.

    Example:
        >>> items = [{"patient_id": "p1", "label": 0, "split": "train"},
        ...          {"patient_id": "p2", "label": 1, "split": "test"}]
        >>> {k: len(v) for k, v in assign_splits(items, by="given").items()}
        {'train': 1, 'val': 0, 'test': 1}
    """
    if by not in SPLIT_BY:
        raise ConfigError("data.split.by", f"unknown split rule {by!r}", f"use one of {', '.join(SPLIT_BY)}")
    if by == "patient":
        splits = split_by_patient(items, val=val, test=test, seed=seed)
    else:
        unset = [str(item.get("source") or item.get("image", "?")) for item in items if item.get("split") not in SPLITS]
        if unset:
            raise DataError(
                datalist_name(items),
                f"{len(unset)} item(s) have no split (train/val/test): {join_problems(unset)}",
                "fill the split column for every row, or split by patient (data.split.by: patient)",
            )
        splits = {side: [item for item in items if item["split"] == side] for side in SPLITS}
    check_no_patient_overlap(splits)
    return splits


def split_summary(splits: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Items, distinct (non-empty) patient ids and positives per side, for logging; no identifiers.

    Example:
        >>> split_summary({"train": [{"patient_id": "p1", "label": 1}, {"patient_id": "p1", "label": 0}]})
        {'train': {'n': 2, 'n_patients': 1, 'n_pos': 1}}
    """
    return {
        side: {
            "n": len(members),
            "n_patients": len({str(item[PATIENT_ID]) for item in members if item.get(PATIENT_ID)}),
            "n_pos": sum(int(item[LABEL]) for item in members),
        }
        for side, members in splits.items()
    }
