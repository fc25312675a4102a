"""Patient-level splits: no patient on two sides, deterministic, stratified; overlapping splits refused."""

from __future__ import annotations

import random

import pytest

from medvision.data import assign_splits, check_no_patient_overlap, split_by_patient, split_summary
from medvision.errors import ConfigError, DataError


def _items(n_patients: int = 60, seed: int = 0) -> list[dict]:
    """1-4 images per patient; about a third of the patients positive (on some of their images only)."""
    rng = random.Random(seed)
    items = []
    for p in range(n_patients):
        positive = p % 3 == 0
        for k in range(rng.randint(1, 4)):
            items.append(
                {
                    "image": f"/d/p{p}_{k}.dcm",
                    "label": int(positive and k == 0),
                    "patient_id": f"P{p:03d}",
                    "split": "",
                    "source": f"m.csv:{len(items) + 2}",
                }
            )
    return items


def _sides(splits: dict) -> dict[str, set[str]]:
    return {side: {i["patient_id"] for i in members} for side, members in splits.items()}


def test_no_patient_on_two_sides_and_all_items_kept() -> None:
    items = _items()
    splits = split_by_patient(items, val=0.15, test=0.15, seed=0)
    sides = _sides(splits)
    assert not sides["train"] & sides["val"] and not sides["train"] & sides["test"] and not sides["val"] & sides["test"]
    assert sorted(i["image"] for s in splits.values() for i in s) == sorted(i["image"] for i in items)
    # 60 patients: 20 positive, 40 negative -> val/test get 3 + 6 patients each
    assert [len(sides[s]) for s in ("train", "val", "test")] == [42, 9, 9]


def test_deterministic_and_order_independent() -> None:
    items = _items()
    a = split_by_patient(items, seed=3)
    b = split_by_patient(list(reversed(items)), seed=3)
    assert _sides(a) == _sides(b)
    assert _sides(split_by_patient(items, seed=4)) != _sides(a)


def test_stratified_by_patient_label() -> None:
    splits = split_by_patient(_items(), val=0.15, test=0.15, seed=1)
    summary = split_summary(splits)
    for side in ("train", "val", "test"):
        positives = {i["patient_id"] for i in splits[side] if i["label"] == 1}
        assert len(positives) == {"train": 14, "val": 3, "test": 3}[side]
        assert 0 < summary[side]["n_pos"] < summary[side]["n"]


def test_small_data_still_puts_both_classes_on_every_side() -> None:
    items = [{"image": f"{i}.dcm", "label": int(i >= 4), "patient_id": f"p{i}"} for i in range(8)]
    splits = split_by_patient(items, val=0.1, test=0.1, seed=0)
    for side in ("train", "val", "test"):
        assert sorted(i["label"] for i in splits[side]) == ([0, 0, 1, 1] if side == "train" else [0, 1])


def test_items_without_patient_id_are_refused() -> None:
    items = _items(5)
    items[1] = {**items[1], "patient_id": ""}
    with pytest.raises(DataError) as info:
        split_by_patient(items)
    assert info.value.where == "m.csv"
    assert "1 item(s) have no patient_id" in info.value.reason and "m.csv:3" in info.value.reason
    assert "fill_from_headers" in info.value.fix


def test_bad_fractions() -> None:
    with pytest.raises(ConfigError, match="data.split"):
        split_by_patient(_items(5), val=0.6, test=0.5)
    with pytest.raises(ConfigError) as info:
        assign_splits(_items(5), by="random")
    assert info.value.where == "data.split.by"


def test_given_split_with_overlap_is_refused_with_the_ids() -> None:
    items = [
        {"image": "a.dcm", "label": 0, "patient_id": "P1", "split": "train", "source": "m.csv:2"},
        {"image": "b.dcm", "label": 1, "patient_id": "P1", "split": "test", "source": "m.csv:3"},
        {"image": "c.dcm", "label": 1, "patient_id": "P2", "split": "train", "source": "m.csv:4"},
        {"image": "d.dcm", "label": 0, "patient_id": "P2", "split": "val", "source": "m.csv:5"},
        {"image": "e.dcm", "label": 0, "patient_id": "P3", "split": "val", "source": "m.csv:6"},
    ]
    with pytest.raises(DataError) as info:
        assign_splits(items, by="given")
    assert "2 patient(s) are on more than one side" in info.value.reason
    assert "P1 (train, test)" in info.value.reason and "P2 (train, val)" in info.value.reason
    assert "P3" not in info.value.reason
    # Re-splitting by patient repairs it.
    splits = assign_splits(items, by="patient", val=0.0, test=0.0)
    assert len(splits["train"]) == 5


def test_overlap_lists_first_20_and_a_count() -> None:
    splits = {
        "train": [{"patient_id": f"P{i:02d}"} for i in range(25)],
        "val": [{"patient_id": f"P{i:02d}"} for i in range(25)],
    }
    with pytest.raises(DataError) as info:
        check_no_patient_overlap(splits)
    assert "P19 (train, val)" in info.value.reason and "P20" not in info.value.reason
    assert "and 5 more" in info.value.reason


def test_given_split_uses_the_column_and_requires_it() -> None:
    items = _items(10)
    for item in items:
        item["split"] = "test" if item["patient_id"] == "P000" else "train"
    splits = assign_splits(items, by="given")
    assert {i["patient_id"] for i in splits["test"]} == {"P000"} and splits["val"] == []
    items[0]["split"] = ""
    with pytest.raises(DataError, match="1 item\\(s\\) have no split"):
        assign_splits(items, by="given")


def test_split_summary_counts() -> None:
    train = [{"patient_id": "a", "label": 1}, {"patient_id": "a", "label": 0}, {"patient_id": "b", "label": 0}]
    splits = {"train": train, "val": [], "test": [{"patient_id": "c", "label": 1}]}
    assert split_summary(splits) == {
        "train": {"n": 3, "n_patients": 2, "n_pos": 1},
        "val": {"n": 0, "n_patients": 0, "n_pos": 0},
        "test": {"n": 1, "n_patients": 1, "n_pos": 1},
    }
