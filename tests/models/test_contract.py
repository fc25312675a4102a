"""The typed model contract: what every registered model carries, parsed once, refused with the field named."""

from __future__ import annotations

import numpy as np
import pytest

from medvision.config import VolumeConfig
from medvision.errors import ModelFormatError
from medvision.models.contract import ClassifierMetadata, DetectorMetadata, parse_metadata

CLASSIFIER = {
    "task": "classification",
    "backbone": "densenet121",
    "in_channels": 1,
    "image_size": 32,
    "keep_aspect": True,
    "mean": 0.449,
    "std": 0.226,
    "temperature": 1.7,
    "threshold": 0.31,
    "operating_point": "youden",
    "intended_use": "triage research",
    "weights_source": "imagenet:DenseNet121_Weights.IMAGENET1K_V1",
    "medvision_version": "0.1.0",
    "dataset_digest": "abc",
    "labels": ["normal", "pneumonia"],
    "medvision_architecture": {"class": "medvision.models.Classifier"},
}
DETECTOR = {
    "task": "detection",
    "backbone": "resnet18",
    "context": 1,
    "spacing": [2.0, 2.0, 2.0],
    "modality": "MR",
    "threshold": 0.4,
    "intended_use": "research",
    "merge": {"top_k": 5},
}


def test_a_classifier_document_round_trips_and_keeps_unknown_keys() -> None:
    md = parse_metadata(CLASSIFIER, "models:/x/1")
    assert isinstance(md, ClassifierMetadata)
    assert (md.image_size, md.temperature, md.threshold) == (32, 1.7, 0.31)
    assert md.stored()["medvision_architecture"] == {"class": "medvision.models.Classifier"}  # extra kept
    assert parse_metadata(md.stored(), "again") == md


def test_a_document_without_task_is_a_classifier_as_before() -> None:
    legacy = {k: v for k, v in CLASSIFIER.items() if k not in ("task", "labels", "operating_point")}
    md = parse_metadata(legacy, "models:/old/1")
    assert md.task == "classification" and md.labels == ["normal", "pneumonia"]


def test_the_classifier_transforms_are_the_training_chain(tmp_path) -> None:
    from PIL import Image

    from medvision.data import classification_transforms

    md = parse_metadata(CLASSIFIER, "m")
    path = tmp_path / "cxr.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40)).astype(np.uint8)).save(path)
    ours = md.transforms()({"image": str(path), "label": 0})["image"]
    theirs = classification_transforms(image_size=32, keep_aspect=True, mean=0.449, std=0.226, train=False)(
        {"image": str(path), "label": 0}
    )["image"]
    assert tuple(ours.shape) == (1, 32, 32)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_a_detector_gets_the_defaults_it_was_always_read_with() -> None:
    md = parse_metadata(DETECTOR, "models:/det/3")
    assert isinstance(md, DetectorMetadata)
    assert md.ct_window == VolumeConfig().ct_window and md.mr_percentiles == VolumeConfig().mr_percentiles
    assert md.sequence_selection() == {"channels": [0]}  # registered before sequences were recorded
    assert md.merge == {"top_k": 5} and md.iou_threshold == 0.1


def test_a_multi_sequence_detector_names_what_it_expects() -> None:
    md = parse_metadata(
        {
            **DETECTOR,
            "sequences": ["T1w", "FLAIR"],
            "channels": [1, 0],
            "volume_channels": 2,
            "volume_sequences": ["FLAIR", "T1w"],
        },  # fmt: skip
        "m",
    )
    sel = md.sequence_selection("the model models:/det/3")
    assert sel["channels"] == [1, 0] and sel["expect_channels"] == 2
    assert "expects 2 sequence(s) (FLAIR, T1w) and uses T1w, FLAIR" in sel["sequences_wanted"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image_size": None}, "image_size"),
        ({"std": 0.0}, "std"),
        ({"temperature": "hot"}, "temperature"),
        ({"intended_use": None}, "intended_use"),
        ({"task": "segmentation"}, "metadata"),
    ],
)
def test_a_document_that_does_not_fit_is_refused_with_the_field_named(change, field) -> None:
    doc = {k: v for k, v in {**CLASSIFIER, **change}.items() if v is not None}
    with pytest.raises(ModelFormatError) as info:
        parse_metadata(doc, "models:/x/2")
    assert info.value.where.startswith("models:/x/2 metadata")
    assert field in info.value.where or field == "metadata"
    assert "register the model again" in info.value.fix


def test_a_detector_without_spacing_is_refused() -> None:
    with pytest.raises(ModelFormatError, match="spacing"):
        parse_metadata({k: v for k, v in DETECTOR.items() if k != "spacing"}, "models:/det/1")
