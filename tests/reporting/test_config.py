"""The report's one validated config (``ReportConfig``) and the report package's layering.

Checked: the checks ``run_report`` once made by hand are pydantic validators raising the same
``ConfigError`` (``--device``, ``--image-format``, ``--batch-size``); unknown keys are refused; a config file,
the options given over it and ``$MLFLOW_TRACKING_URI`` below both are merged and validated once; the salt is
never read from a file nor shown; the CLI keeps exit status 3 for a bad value; and the report's modules
import each other one way (models / rows / cache / output <- radiographs / volumes <- batch).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from medvision.config import ReportConfig, load_report_config
from medvision.errors import ConfigError


def _config(**values) -> ReportConfig:
    return ReportConfig(input="in", out="out", **values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"device": "gpu"}, "--device: unknown device 'gpu'; use cpu or cuda"),
        ({"image_format": "gif"}, "--image-format: unknown format 'gif'; use png or jpeg"),
        ({"batch_size": 0}, "--batch-size: must be an integer >= 1, got 0; use e.g. 8"),
        ({"batch_size": True}, "--batch-size: must be an integer >= 1, got True; use e.g. 8"),
        ({"batch_size": 2.5}, "--batch-size: must be an integer >= 1, got 2.5; use e.g. 8"),
    ],
)
def test_bad_values_raise_the_config_error_run_report_raised(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(**values)
    assert info.value.one_line() == message
    cfg = _config()
    with pytest.raises(ConfigError, match="unknown device"):  # assignments are validated too
        cfg.device = "tpu"


def test_cuda_without_a_cuda_device_is_refused() -> None:
    import torch

    if torch.cuda.is_available():
        assert _config(device="cuda:0").device == "cuda:0"
        return
    with pytest.raises(ConfigError) as info:
        _config(device="cuda")
    assert info.value.one_line() == "--device: cuda was asked for but no CUDA device is available; use --device cpu"


def test_defaults_paths_and_the_salt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _config(deidentify={"enabled": True, "salt": "secret-salt"})
    assert (cfg.input, cfg.out) == (tmp_path / "in", tmp_path / "out")  # absolute, as run_report used them
    assert (cfg.device, cfg.batch_size, cfg.image_format, cfg.secondary_capture) == ("cpu", 8, "png", False)
    assert cfg.title == "medvision batch report" and cfg.classifier is None and cfg.tracking_uri is None
    assert cfg.deidentify.salt is not None and cfg.deidentify.salt.get_secret_value() == "secret-salt"
    assert "secret-salt" not in repr(cfg) and "secret-salt" not in str(cfg.model_dump())
    assert _config(deidentify={"salt": ""}).deidentify.salt is None  # an empty salt is no salt
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        _config(deid_salt="x")


def test_file_options_and_environment_are_merged_and_validated_once(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "image_format: jpeg\nbatch_size: 4\ntracking_uri: sqlite:///file.db\n"
        "deidentify: {enabled: true, clean_descriptors: true}\n"
    )
    given = {"input": "in", "out": "out", "batch_size": 2, "device": None,
             "deidentify": {"enabled": None, "retain_dates": False, "salt": "s"}}  # fmt: skip
    cfg = load_report_config(path, given, defaults={"tracking_uri": "sqlite:///env.db"})
    assert (cfg.image_format, cfg.batch_size, cfg.device) == ("jpeg", 2, "cpu")  # an option given wins
    assert cfg.tracking_uri == "sqlite:///file.db"  # the file's store wins over the environment's
    deid = cfg.deidentify
    assert (deid.enabled, deid.clean_descriptors, deid.retain_dates) == (True, True, False)
    assert load_report_config(None, {"input": "i", "out": "o"}, defaults={"tracking_uri": "x"}).tracking_uri == "x"

    path.write_text("batch_size: 0\n")
    with pytest.raises(ConfigError, match="--batch-size: must be an integer >= 1, got 0"):
        load_report_config(path, {"input": "in", "out": "out"})
    path.write_text("deidentify: {enabled: true, salt: s}\n")
    with pytest.raises(ConfigError, match=r"deidentify\.salt: the salt is never read from a config file"):
        load_report_config(path, {"input": "in", "out": "out"})
    path.write_text("deidentify: true\n")
    with pytest.raises(ConfigError, match="deidentify: bad value True"):  # not hidden by the options' mapping
        load_report_config(path, {"input": "in", "out": "out", "deidentify": {"enabled": None}})
    with pytest.raises(ConfigError, match="report options: out: required key is missing"):
        load_report_config(None, {"input": "in"})


def test_cli_bad_config_value_is_one_line_with_exit_status_3(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medvision.cli import app

    (tmp_path / "in").mkdir()
    config = tmp_path / "r.yaml"
    config.write_text("device: gpu\n")
    args = ["report", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--config", str(config)]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == "error: --device: unknown device 'gpu'; use cpu or cuda"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- layering

_REPORTING = Path(__file__).resolve().parents[2] / "medvision" / "reporting"
_LOWER = {
    "models": set(),
    "rows": set(),
    "cache": {"models", "rows"},
    "output": {"cache"},
    "radiographs": {"models", "rows", "cache"},
    "volumes": {"models", "rows", "cache"},
    "batch": {"models", "rows", "cache", "output", "radiographs", "volumes"},
}


def _reporting_imports(name: str) -> set[str]:
    tree = ast.parse((_REPORTING / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):  # lazy imports inside functions count too
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medvision.reporting."):
            found.add(node.module.rsplit(".", 1)[1])
    return found & set(_LOWER)


@pytest.mark.parametrize("name", sorted(_LOWER))
def test_each_report_module_says_what_it_owns_and_imports_only_below_it(name: str) -> None:
    tree = ast.parse((_REPORTING / f"{name}.py").read_text())
    assert ast.get_docstring(tree), name
    assert _reporting_imports(name) <= _LOWER[name], name


def test_a_deidentified_report_is_not_filed_into_a_pacs(tmp_path) -> None:
    from medvision.config import ReportConfig
    from medvision.errors import ConfigError

    with pytest.raises(ConfigError, match="--store") as info:
        ReportConfig(input=tmp_path, out=tmp_path / "out", store="dimse://ORTHANC@127.0.0.1:4242",
                     deidentify={"enabled": True})  # fmt: skip
    assert "belong to no study" in info.value.reason
