"""Registered models are stored as safetensors and loaded without pickle (issue 12).

Round trips of both model kinds through a real MLflow SQLite store, and models that carry a pickle
payload (the old format, a pickle in place of the safetensors file): every loading path refuses them
with "register it again", and the payload's marker file is never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from medvision.errors import ModelFormatError, TrackingError
from medvision.models import Classifier, create_model
from medvision.models.detector import SliceDetector, create_detector
from medvision.tracking.flavor import FLAVOR_NAME, WEIGHTS_FILE
from medvision.tracking.registry import ARCHITECTURE_KEY, load_model_with_metadata, log_classifier
from medvision.tracking.run import RunTracker

CLASSIFIER = {"task": "classification", "backbone": "resnet18", "in_channels": 1, "image_size": 32,
              "keep_aspect": True, "mean": 0.5, "std": 0.25, "temperature": 1.0, "threshold": 0.5,
              "intended_use": "test", "weights_source": "none"}  # fmt: skip
DETECTOR = {"task": "detection", "backbone": "resnet18", "context": 1, "threshold": 0.5, "weights_source": "none"}
REFUSED = "register it again"


class Payload(nn.Module):
    """A module whose pickle touches ``marker`` when it is unpickled (what an attacker would register)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = str(marker)
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path(self.marker).touch, ())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-format")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    yield f"sqlite:///{folder}/mlflow.db"
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    if previous is not None:
        os.environ["MLFLOW_TRACKING_URI"] = previous


def _classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    model = create_model("resnet18", weights="none", in_channels=1, num_classes=1)
    with torch.no_grad():
        model.head.bias.fill_(0.25)
    return model.eval()


def _artifact_folder(uri: str, model_id: str) -> Path:
    from mlflow import MlflowClient
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(MlflowClient(tracking_uri=uri).get_logged_model(model_id).artifact_location))


@pytest.fixture(scope="module")
def registered(store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A classifier and a detector in the new format, and three models that carry a pickle payload."""
    import mlflow.pytorch

    markers = tmp_path_factory.mktemp("markers")
    classifier = _classifier()
    torch.manual_seed(1)
    detector = create_detector("resnet18", weights="none", slice_shape=(40, 48), detections_per_img=5).eval()
    with RunTracker(store, "model-format") as run:
        cls_info = log_classifier(classifier, input_example=np.zeros((1, 1, 32, 32), np.float32),
                                  metadata=CLASSIFIER, registered_name="cls")  # fmt: skip
        det_info = log_classifier(detector, input_example=np.zeros((1, 3, 40, 48), np.float32),
                                  metadata=DETECTOR, registered_name="det")  # fmt: skip
        # 1. The old format: MLflow's pytorch flavour, a pickle (what the detector was registered as before).
        old_marker = markers / "old-format"
        old = mlflow.pytorch.log_model(
            Payload(old_marker),
            name="model",
            registered_model_name="evil-old",
            metadata={**CLASSIFIER, ARCHITECTURE_KEY: {"class": "medvision.models.Classifier", "backbone": "resnet18"}},
            serialization_format="pickle",
            pip_requirements=["torch"],  # no requirement inference: it would load (unpickle) the model
        )
        # 2. and 3. The medvision flavour with a pickle in place of the safetensors file, the recorded
        # sha256 left alone (2) or set to the pickle's (3).
        swapped = {}
        for name in ("evil-hash", "evil-parse"):
            info = log_classifier(_classifier(), input_example=np.zeros((1, 1, 32, 32), np.float32),
                                  metadata=CLASSIFIER, registered_name=name)  # fmt: skip
            swapped[name] = (info, markers / name)
    for name, (info, marker) in swapped.items():
        folder = _artifact_folder(store, info["model_id"])
        payload = pickle.dumps(Payload(marker))
        (folder / WEIGHTS_FILE).write_bytes(payload)
        if name == "evil-parse":
            mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
            mlmodel["flavors"][FLAVOR_NAME]["sha256"] = hashlib.sha256(payload).hexdigest()
            (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    assert not any(markers.iterdir()), "registering must not unpickle anything"
    return {
        "run_id": run.run_id,
        "classifier": (classifier, cls_info),
        "detector": (detector, det_info),
        "evil": {
            "models:/evil-old/1": old_marker,
            "models:/evil-hash@candidate": swapped["evil-hash"][1],
            "models:/evil-parse@candidate": swapped["evil-parse"][1],
        },
        "old_model_id": old.model_id,
        "markers": markers,
    }


# ---------------------------------------------------------------------------------------------- round trips


def _check_artifacts(store: str, model_id: str) -> dict[str, Any]:
    """The model's artifact folder holds the safetensors file, no pickle; its MLmodel has the medvision flavour."""
    folder = _artifact_folder(store, model_id)
    names = {p.name for p in folder.rglob("*") if p.is_file()}
    assert WEIGHTS_FILE in names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".pickle")) or n == "data.pkl"], names
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    conf = mlmodel["flavors"][FLAVOR_NAME]
    assert conf["format"] == "safetensors" and conf["weights"] == WEIGHTS_FILE
    assert conf["sha256"] == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert "pytorch" not in mlmodel["flavors"]
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "medvision.tracking.flavor"
    return mlmodel


def test_classifier_round_trip(store: str, registered: dict[str, Any]) -> None:
    import mlflow.pyfunc

    original, info = registered["classifier"]
    loaded, metadata, pinned = load_model_with_metadata("models:/cls@candidate", tracking_uri=store)
    assert isinstance(loaded, Classifier) and not loaded.training and pinned == "models:/cls/1"
    assert loaded.weights_source == "mlflow:models:/cls/1"  # provenance as before
    assert metadata["task"] == "classification" and metadata[ARCHITECTURE_KEY]["backbone"] == "resnet18"
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    mlmodel = _check_artifacts(store, info["model_id"])
    assert mlmodel["signature"]["inputs"] and mlmodel["saved_input_example_info"]["type"] == "ndarray"
    # Serving goes through medvision's loader, which reads the same file.
    served = mlflow.pyfunc.load_model("models:/cls/1").predict(x.numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(served, original(x).numpy())


def test_detector_round_trip(store: str, registered: dict[str, Any]) -> None:
    original, info = registered["detector"]
    loaded, metadata, pinned = load_model_with_metadata(info["alias_uri"], tracking_uri=store)
    assert isinstance(loaded, SliceDetector) and not loaded.training and pinned == "models:/det/1"
    assert loaded.architecture == original.architecture and metadata[ARCHITECTURE_KEY] == original.architecture
    assert loaded.weights_source == "mlflow:models:/det/1"
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    _check_artifacts(store, info["model_id"])


# ---------------------------------------------------------------------------------------------- pickle payloads


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``medvision ARGS`` in this process: ``(exit status, stderr)``."""
    from medvision import cli

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["medvision", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return int(info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("uri", ["models:/evil-old/1", "models:/evil-hash@candidate", "models:/evil-parse@candidate"])
def test_a_pickle_payload_is_refused_and_never_unpickled(store: str, registered: dict[str, Any], uri: str) -> None:
    marker = registered["evil"][uri]
    with pytest.raises(ModelFormatError) as info:
        load_model_with_metadata(uri, tracking_uri=store)
    assert isinstance(info.value, TrackingError) and REFUSED in str(info.value)
    reason = info.value.reason
    if "evil-old" in uri:
        assert "registered in the old format" in reason
    elif "evil-hash" in uri:
        assert "does not match the sha256" in reason
    else:
        assert "is not a valid safetensors file" in reason
    assert not marker.exists()


@pytest.mark.parametrize("command", ["report", "predict", "evaluate"])
@pytest.mark.parametrize("uri", ["models:/evil-old/1", "models:/evil-hash@candidate", "models:/evil-parse@candidate"])
def test_the_cli_refuses_a_pickle_payload(
    store: str,
    registered: dict[str, Any],
    uri: str,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from tests.conftest import write_dicom
    from tests.reporting.conftest import _radiograph

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    if command == "report":
        write_dicom(tmp_path / "in" / "a.dcm", _radiograph(np.random.default_rng(0)), modality="DX", bits_stored=12)
        args = ["report", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--classifier", uri,
                "--tracking-uri", store, "--no-progress"]  # fmt: skip
    elif command == "predict":
        args = ["predict", str(tmp_path / "volume.nii.gz"), "--model", uri]
    else:
        (tmp_path / "data.csv").write_text("image,label\n")
        args = ["evaluate", "--model", uri, "--data", str(tmp_path / "data.csv")]
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 3, err
    last = err.strip().splitlines()[-1]  # after MLflow's download bar, if any
    name = uri.split("/")[1].split("@")[0]  # the report pins the alias to its version first
    assert last.startswith(f"error: models:/{name}") and REFUSED in last and "medvision train" in last, err
    assert not registered["evil"][uri].exists()
    assert not (tmp_path / "out").exists()  # the report stops: no report written


def test_the_old_format_payload_is_live(store: str, registered: dict[str, Any]) -> None:
    """The control: what the old loader (``mlflow.pytorch.load_model(..., weights_only=False)``) did with it."""
    import mlflow.pytorch

    marker = registered["evil"]["models:/evil-old/1"]
    assert not marker.exists()
    try:
        with contextlib.suppress(Exception):  # the payload returns None, not a module
            mlflow.pytorch.load_model(f"models:/{registered['old_model_id']}", weights_only=False)
        assert marker.exists(), "the test payload must run when unpickled, or the tests above prove nothing"
    finally:
        marker.unlink(missing_ok=True)
