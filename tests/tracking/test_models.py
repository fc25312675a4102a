"""Model registry round trips against a real MLflow SQLite store (one per module)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medvision.errors import TrackingError
from medvision.models import Classifier, create_model
from medvision.tracking.phi import PhiGuard
from medvision.tracking.registry import (
    ARCHITECTURE_KEY,
    load_classifier,
    load_state_dict_from_uri,
    log_classifier,
    model_provenance,
    parse_model_uri,
    resolve_model_uri,
)
from medvision.tracking.run import RunTracker

NAME = "toy-pneumonia"
METADATA = {
    "backbone": "resnet18",
    "in_channels": 1,
    "image_size": 32,
    "keep_aspect": True,
    "mean": (0.449,),
    "std": (0.226,),
    "temperature": 1.3,
    "threshold": 0.42,
    "operating_point": "youden",
    "intended_use": "pneumonia triage research demo",
    "weights_source": "none",
    "medvision_version": "0.1.0",
    "task": "classification",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-models")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    yield f"sqlite:///{folder}/mlflow.db"
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    if previous is not None:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="module")
def logged(store: str) -> dict[str, Any]:
    """A resnet18 classifier (random init, 1 channel, 1 output) logged and registered once."""
    torch.manual_seed(0)
    model = create_model("resnet18", weights="none", in_channels=1, num_classes=1)
    model.train()  # log_classifier exports in eval mode and gives the mode back
    with torch.no_grad():  # make the head non-trivial (it starts with a zero bias)
        model.head.bias.fill_(0.25)
    with RunTracker(store, "models-test") as run:
        info = log_classifier(
            model,
            input_example=np.zeros((1, 1, 32, 32), np.float32),
            metadata=METADATA,
            registered_name=NAME,
        )
        run_id = run.run_id
    assert model.training
    return {"model": model.eval(), "info": info, "run_id": run_id}


def test_registered_version_and_alias(store: str, logged: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    info = logged["info"]
    assert info["name"] == NAME and info["version"] == 1 and info["run_id"] == logged["run_id"]
    assert info["model_uri"] == f"models:/{NAME}/1" and info["alias_uri"] == f"models:/{NAME}@candidate"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version_by_alias(NAME, "candidate")
    assert int(version.version) == 1 and version.status == "READY"  # an int from the SQL store, not a str
    assert version.tags == {
        "run_id": logged["run_id"],
        "intended_use": METADATA["intended_use"],
        "weights_source": "none",
    }


def test_load_classifier_round_trip(store: str, logged: dict[str, Any]) -> None:
    loaded, metadata = load_classifier(f"models:/{NAME}@candidate", tracking_uri=store)
    assert isinstance(loaded, Classifier) and not loaded.training
    assert loaded.weights_source == f"mlflow:models:/{NAME}/1"
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), logged["model"](x))
    expected = {**METADATA, "mean": [0.449], "std": [0.226]}  # stored as YAML: tuples come back as lists
    assert {k: v for k, v in metadata.items() if k != ARCHITECTURE_KEY} == expected
    assert metadata[ARCHITECTURE_KEY] == {
        "class": "medvision.models.Classifier",
        "backbone": "resnet18",
        "in_channels": 1,
        "num_classes": 1,
        "first_conv": "sum",
        "drop_rate": 0.0,
    }
    assert next(loaded.parameters()).device.type == "cpu"
    by_run, _ = load_classifier(f"runs:/{logged['run_id']}/model")
    by_version, _ = load_classifier(f"models:/{NAME}/1")
    with torch.no_grad():
        assert torch.equal(by_run(x), by_version(x))


def test_state_dict_from_uri(store: str, logged: dict[str, Any]) -> None:
    state = load_state_dict_from_uri(f"models:/{NAME}@candidate")
    expected = logged["model"].state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    # `model.weights: models:/...` is resolved by the engine through this function; the models room gets the dict.
    from medvision.engine.loop import resolve_weights

    weights = resolve_weights(f"models:/{NAME}@candidate")
    rebuilt = create_model("resnet18", weights=weights, in_channels=1, num_classes=1)
    assert rebuilt.weights_source == f"mlflow:models:/{NAME}@candidate"
    assert torch.equal(rebuilt.head.bias, expected["head.bias"])


def test_missing_alias_model_and_run(store: str, logged: dict[str, Any]) -> None:
    with pytest.raises(TrackingError) as info:
        load_classifier(f"models:/{NAME}@champion")
    err = info.value
    assert err.where == f"models:/{NAME}@champion"
    assert "no alias 'champion'" in err.reason and "candidate -> v1" in err.reason and "versions: 1" in err.reason
    with pytest.raises(TrackingError) as info:
        load_classifier("models:/no-such-model@champion")
    assert "no registered model 'no-such-model'" in info.value.reason and NAME in info.value.reason
    assert "medvision train" in (info.value.fix or "")
    with pytest.raises(TrackingError, match="no version 9"):
        load_classifier(f"models:/{NAME}/9")
    with pytest.raises(TrackingError, match="has no model"):
        load_classifier(f"runs:/{'0' * 32}/model")


def test_resolve_and_provenance(store: str, logged: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    assert resolve_model_uri(NAME) == f"models:/{NAME}@candidate"
    assert resolve_model_uri(f"models:/{NAME}/1") == f"models:/{NAME}/1"
    with pytest.raises(TrackingError, match="none of the aliases"):
        resolve_model_uri(NAME, aliases=("champion",))
    with pytest.raises(TrackingError, match="no registered model"):
        resolve_model_uri("absent")

    MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    try:
        assert resolve_model_uri(NAME) == f"models:/{NAME}@champion"
        prov = model_provenance(f"models:/{NAME}@champion")
    finally:
        MlflowClient().delete_registered_model_alias(NAME, "champion")
    assert prov["name"] == NAME and prov["version"] == 1 and prov["alias"] == "champion"
    assert prov["run_id"] == logged["run_id"] and prov["model_uri"] == f"models:/{NAME}/1"
    assert prov["aliases"] == ["candidate", "champion"] and prov["source"]
    by_run = model_provenance(f"runs:/{logged['run_id']}/model")
    assert by_run["name"] == NAME and by_run["version"] == 1 and by_run["alias"] is None


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_only_medvision_models_are_logged_and_errors(store: str, logged: dict[str, Any]) -> None:
    torch.manual_seed(0)
    toy = _Toy()
    example = np.zeros((1, 8), np.float32)
    with pytest.raises(TrackingError, match="no active MLflow run"):
        log_classifier(toy, input_example=example, metadata={}, registered_name="toy")
    with RunTracker(store, "models-test"):
        # Only what medvision can rebuild from its metadata is stored (issue 12: no pickled modules).
        with pytest.raises(TrackingError, match="cannot store a _Toy") as info:
            log_classifier(toy, input_example=example, metadata={"task": "toy"}, registered_name="toy")
        assert "create_model" in (info.value.fix or "")
        with pytest.raises(TrackingError) as info:
            log_classifier(
                logged["model"],
                input_example=np.zeros((1, 1, 32, 32), np.float32),
                metadata={"note": "worst case PAT-0001"},
                registered_name="toy",
                phi_guard=PhiGuard(["PAT-0001"]),
            )
        assert "PAT-0001" not in str(info.value)
    assert not logged["model"].training
    with pytest.raises(TrackingError, match="no registered model 'toy'"):
        load_classifier("models:/toy@candidate")


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/a@champion")["kind"] == "alias"
    assert parse_model_uri("models:/a/3")["version"] == "3"
    assert parse_model_uri("models:/a/latest")["kind"] == "latest"
    assert parse_model_uri("models:/m-abc")["model_id"] == "m-abc"
    assert parse_model_uri("runs:/r1")["path"] == "model"
    assert parse_model_uri(str(Path("x")))["kind"] == "other"
