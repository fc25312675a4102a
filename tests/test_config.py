"""Config validation: unknown keys and bad values name the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medvision.config import load_config, parse_config, to_yaml
from medvision.errors import ConfigError

BASE = {"task": "classification", "experiment": "t", "data": {"format": "csv", "path": "m.csv"}}


@pytest.mark.parametrize("path", sorted(Path("configs").glob("pneumonia_*.yaml")))
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.task == "classification" and cfg.tracking.register_as == "pneumonia-classifier"


def test_overrides_parse_yaml_values() -> None:
    cfg = parse_config(
        BASE, overrides=["train.epochs=3", "data.format=kermany", "train.early_stop=null", "data.split.val=0.2"]
    )
    assert (cfg.train.epochs, cfg.data.format, cfg.train.early_stop, cfg.data.split.val) == (3, "kermany", None, 0.2)


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.optimzer=sgd", ["train.optimzer", "unknown key", "optimizer"]),
        ("data.format=xml", ["data.format", "'xml'", "'csv'", "'kermany'"]),
        ("model.backbone=vgg16", ["model.backbone", "vgg16", "densenet121", "resnet50"]),
        ("train.epochs=0", ["train.epochs", "greater than or equal to 1"]),
        ("nonsense", ["--set nonsense", "key=value"]),
    ],
)
def test_bad_keys_and_values_are_named(override: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE, overrides=[override])
    for needle in needles:
        assert needle in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_resolved_yaml_round_trips() -> None:
    cfg = parse_config(BASE, overrides=["train.lr=0.01"])
    again = parse_config(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg
