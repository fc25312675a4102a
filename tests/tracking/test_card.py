"""The Markdown model card."""

from __future__ import annotations

import math

import numpy as np

from medvision.metrics import evaluate_binary
from medvision.tracking.card import NOT_RECORDED, render_model_card

SECTIONS = (
    "## Model",
    "## Intended use",
    "## Data",
    "## Metrics",
    "## Operating point",
    "## Calibration",
    "## Subgroups",
    "## Limitations",
    "## Provenance",
)


def _info(weights_source: str) -> dict:
    return {
        "name": "pneumonia-classifier",
        "version": 3,
        "alias": "candidate",
        "model_uri": "models:/pneumonia-classifier/3",
        "metadata": {
            "backbone": "densenet121",
            "in_channels": 1,
            "image_size": 224,
            "weights_source": weights_source,
            "intended_use": "Triage of paediatric chest radiographs for pneumonia",
            "temperature": 1.2345,
            "threshold": 0.4321,
            "operating_point": "youden",
            "task": "classification",
        },
        "data": {
            "source": "data/demo/cxr/manifest.csv",
            "format": "csv",
            "digest": "sha256:abc123",
            "splits": {
                "train": {"images": 700, "patients": 350, "positives": 210},
                "val": {"images": 150, "patients": 75, "positives": 45},
                "test": {"images": 150, "patients": 76, "positives": 44},
            },
        },
        "metrics": {
            "test_auroc": 0.912,
            "test_auroc_ci_low": 0.871,
            "test_auroc_ci_high": 0.948,
            "test_auprc": 0.833,
            "test_sensitivity": 0.864,
            "test_specificity": 0.811,
            "test_ppv": 0.655,
            "test_npv": 0.935,
            "test_ece": 0.031,
            "test_ece_uncalibrated": 0.087,
            "test_brier": 0.101,
            "test_brier_uncalibrated": 0.122,
            "test_n": 150,
            "test_n_pos": 44,
        },
        "subgroups": [
            {
                "attribute": "sex",
                "group": "F",
                "n": 70,
                "n_pos": 20,
                "auroc": 0.905,
                "ci_low": 0.84,
                "ci_high": 0.96,
                "note": "",
            },
            {
                "attribute": "view",
                "group": "AP|PA",
                "n": 5,
                "n_pos": 0,
                "auroc": math.nan,
                "ci_low": math.nan,
                "ci_high": math.nan,
                "note": "only one class",
            },
        ],
        "limitations": ["Single-site data."],
        "provenance": {"run_id": "abc123run", "git_commit": "deadbeef", "medvision_version": "0.1.0"},
    }


def test_card_contains_the_values() -> None:
    card = render_model_card(_info("imagenet:DenseNet121_Weights.IMAGENET1K_V1 sha256:a639ec97"))
    for heading in SECTIONS:
        assert heading in card
    for text in (
        "# Model card: pneumonia-classifier v3",
        "densenet121",
        "ImageNet pretrained",
        "Triage of paediatric chest radiographs",
        "not for diagnostic use without review by a radiologist",
        "sha256:abc123",
        "| test | 150 | 76 | 44 |",
        "0.912 (95% CI 0.871–0.948)",
        "| AUPRC | 0.833 |",
        "0.864",
        "0.811",
        "0.655",
        "0.935",
        "0.087 / 0.031",
        "0.122 / 0.101",
        "youden",
        "0.4321",
        "1.2345",
        "| sex | F | 70 | 20 | 0.905 | 0.840–0.960 |  |",
        "AP\\|PA",
        "only one class",
        "Single-site data.",
        "abc123run",
        "deadbeef",
        "0.1.0",
    ):
        assert text in card, text
    assert "random initialisation" not in card


def test_random_init_is_said_plainly() -> None:
    source = "random-init (ImageNet weights for densenet121 not available: offline)"
    card = render_model_card(_info(source))
    assert "random initialisation, NOT ImageNet" in card
    assert "NOT pretrained on ImageNet" in card
    assert "random initialisation" in render_model_card({"weights_source": "none"})


def test_missing_keys_never_crash() -> None:
    for info in ({}, {"metrics": None, "data": "oops", "subgroups": "x", "limitations": 3}, None):
        card = render_model_card(info)  # type: ignore[arg-type]
        for heading in SECTIONS:
            assert heading in card
        assert NOT_RECORDED in card
    card = render_model_card({})
    assert "**Backbone:** not recorded" in card
    assert "**Git commit:** not recorded" in card
    assert "| AUROC | not recorded (95% CI not recorded) |" in card


def test_evaluate_binary_output_renders() -> None:
    rng = np.random.default_rng(0)
    y_val, y_test = rng.integers(0, 2, 80), rng.integers(0, 2, 80)
    result = evaluate_binary(
        y_val=y_val,
        logits_val=y_val + rng.normal(0, 1, 80),
        y_test=y_test,
        logits_test=y_test + rng.normal(0, 1, 80),
        groups_test={"sex": rng.choice(["F", "M"], 80)},
        n_bootstraps=50,
    )
    card = render_model_card({"name": "m", "metrics": result})
    assert f"{result['test_auroc']:.3f} (95% CI {result['test_auroc_ci_low']:.3f}" in card
    assert f"{result['operating_point']['threshold']:.4f}" in card
    assert f"{result['temperature']:.4f}" in card
    assert "| sex | F |" in card and "| sex | M |" in card


def test_the_detector_card_names_the_sequences_the_model_expects() -> None:
    from medvision.tracking.card import render_detector_card

    base = {"context": 1, "spacing": [2.0, 2.0, 2.0], "modality": "MR"}
    four = {
        **base,
        "sequences": ["FLAIR", "T1w", "t1gd", "T2w"],
        "volume_channels": 4,
        "volume_sequences": ["FLAIR", "T1w", "t1gd", "T2w"],
    }
    card = render_detector_card({"name": "tumor-detector", "metadata": four})
    assert (
        "- **Input:** 3 adjacent axial slices at 2.000, 2.000, 2.000 mm, MR normalisation; 4 MR sequences (FLAIR, T1w, "
        "t1gd, T2w), each with its 3 slices, 12 channels in all\n" in card
    )
    assert "- **Sequences expected:** 4 per volume; a volume with another number is refused" in card
    first = {**four, "sequences": ["FLAIR"]}
    card = render_detector_card({"name": "tumor-detector", "metadata": first})
    assert "MR normalisation; sequence FLAIR (of the volume's 4: FLAIR, T1w, t1gd, T2w)\n" in card
    old = render_detector_card({"name": "tumor-detector", "metadata": base})  # registered before sequences
    assert "- **Input:** 3 adjacent axial slices at 2.000, 2.000, 2.000 mm, MR normalisation\n" in old
    assert "Sequences expected" not in old
