"""Tests of ImageNet weights handling (medvision.models.weights) and the ``weights`` CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medvision.cli import app
from medvision.errors import ConfigError, WeightsError
from medvision.models import create_model, registry
from medvision.models.registry import BackboneSpec, get_spec
from medvision.models.weights import (
    adapt_input_conv,
    cache_dir,
    cached_weights_path,
    channel_stats,
    import_weights,
    is_cached,
    load_checkpoint,
    remap_legacy_keys,
)


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No network, and a torch hub cache in the test's temporary folder."""
    monkeypatch.setenv("MEDVISION_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def to_legacy_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``denselayerN.norm1`` to the old ``denselayerN.norm.1`` as in torchvision's files.

    Those files predate BatchNorm's ``num_batches_tracked``, so it is dropped too.
    """
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    return {pattern.sub(r"\1.\2.", k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    spec = get_spec(name)
    return spec.builder(weights=None, num_classes=spec.num_categories).state_dict()


def patch_spec_prefix(monkeypatch: pytest.MonkeyPatch, name: str, file: Path) -> BackboneSpec:
    """Make the registry expect ``file``'s real sha256 prefix for ``name``."""
    prefix = hashlib.sha256(file.read_bytes()).hexdigest()[:8]
    spec = dataclasses.replace(get_spec(name), weights_file=f"{name}-{prefix}.pth", sha256_prefix=prefix)
    monkeypatch.setitem(registry._REGISTRY, name, spec)
    return spec


# --- cache location ------------------------------------------------------------------------------


def test_cache_dir_honours_torch_home(offline_hub: Path) -> None:
    assert cache_dir() == offline_hub
    assert cached_weights_path("densenet121") == offline_hub / "densenet121-a639ec97.pth"
    assert not is_cached("densenet121")


# --- first convolution and normalisation ---------------------------------------------------------


def test_adapt_input_conv_one_channel_sums() -> None:
    weight = torch.randn(8, 3, 7, 7)
    adapted = adapt_input_conv(weight, 1)
    assert adapted.shape == (8, 1, 7, 7)
    torch.testing.assert_close(adapted, weight.sum(dim=1, keepdim=True))


def test_adapt_input_conv_three_channels_unchanged_copy() -> None:
    weight = torch.randn(8, 3, 3, 3)
    adapted = adapt_input_conv(weight, 3)
    torch.testing.assert_close(adapted, weight)
    assert adapted.data_ptr() != weight.data_ptr()


@pytest.mark.parametrize("k", [2, 4, 5])
def test_adapt_input_conv_k_channels_tiles_mean(k: int) -> None:
    weight = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    adapted = adapt_input_conv(weight, k)
    assert adapted.shape == (8, k, 3, 3)
    expected = weight.mean(dim=1, keepdim=True).repeat(1, k, 1, 1) * (3.0 / k)
    torch.testing.assert_close(adapted, expected)
    # A grey image copied to k channels meets the same response as with the summed kernel.
    grey = torch.randn(1, 1, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(grey.expand(-1, k, -1, -1), adapted),
        torch.nn.functional.conv2d(grey, weight.sum(dim=1, keepdim=True)),
    )


def test_adapt_input_conv_keeps_dtype_and_refuses_bad_shapes() -> None:
    assert adapt_input_conv(torch.randn(4, 3, 3, 3).half(), 1).dtype == torch.float16
    with pytest.raises(ValueError, match="RGB kernel"):
        adapt_input_conv(torch.randn(4, 1, 3, 3), 1)
    with pytest.raises(ValueError, match="in_channels"):
        adapt_input_conv(torch.randn(4, 3, 3, 3), 0)


def test_channel_stats() -> None:
    spec = get_spec("resnet18")
    assert channel_stats(spec, 3) == (spec.mean, spec.std)
    mean, std = channel_stats(spec, 1)
    assert mean == pytest.approx((sum(spec.mean) / 3,))
    assert std == pytest.approx((sum(spec.std) / 3,))
    assert mean == pytest.approx((0.449,)) and std == pytest.approx((0.226,))
    assert channel_stats(spec, 2)[0] == mean * 2


# --- legacy DenseNet keys --------------------------------------------------------------------------


def test_remap_legacy_keys_densenet() -> None:
    spec = get_spec("densenet121")
    current = {
        "features.denseblock1.denselayer1.norm1.weight": torch.ones(1),
        "features.conv0.weight": torch.ones(1),
    }
    legacy = to_legacy_densenet_keys(current)
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    remapped = remap_legacy_keys(spec, legacy)
    assert set(remapped) == set(current)
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy  # the input is not modified


def test_remap_legacy_keys_resnet_is_a_copy() -> None:
    state = {"conv1.weight": torch.ones(1)}
    remapped = remap_legacy_keys(get_spec("resnet18"), state)
    assert remapped == state and remapped is not state


# --- checkpoints -----------------------------------------------------------------------------------


def test_load_checkpoint_unwraps_and_strips_module_prefix(tmp_path: Path) -> None:
    file = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module.a": torch.ones(2)}, "epoch": 3}, file)
    state = load_checkpoint(file)
    assert list(state) == ["a"]


def test_load_checkpoint_refuses_non_state_dict(tmp_path: Path) -> None:
    file = tmp_path / "list.pt"
    torch.save([1, 2, 3], file)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        load_checkpoint(file)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read as a PyTorch checkpoint"):
        load_checkpoint(garbage)


# --- import_weights --------------------------------------------------------------------------------


def test_import_refuses_sha256_mismatch(tmp_path: Path, offline_hub: Path) -> None:
    file = tmp_path / "downloaded.pth"
    torch.save(random_state("resnet18"), file)
    actual = hashlib.sha256(file.read_bytes()).hexdigest()[:8]
    with pytest.raises(WeightsError) as info:
        import_weights(file, "resnet18")
    message = str(info.value)
    assert "f37072fd" in message
    assert actual in message
    assert str(file) in message
    assert not (offline_hub / "resnet18-f37072fd.pth").exists()


def test_import_accepts_matching_file(tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "downloaded.pth"
    state = random_state("resnet18", seed=1)
    torch.save(state, file)
    spec = patch_spec_prefix(monkeypatch, "resnet18", file)

    destination = import_weights(file, "resnet18")

    assert destination == offline_hub / spec.weights_file
    assert destination.read_bytes() == file.read_bytes()
    assert sorted(p.name for p in offline_hub.iterdir()) == [spec.weights_file]  # no temporary left
    assert is_cached("resnet18")
    # create_model now finds it in the cache.
    model = create_model("resnet18", weights="imagenet", in_channels=3)
    assert model.weights_source == f"imagenet:ResNet18_Weights.IMAGENET1K_V1 sha256:{spec.sha256_prefix}"
    torch.testing.assert_close(model.backbone.conv1.weight, state["conv1.weight"], rtol=0, atol=0)


def test_import_densenet_with_legacy_keys(tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "densenet121.pth"
    torch.save(to_legacy_densenet_keys(random_state("densenet121")), file)
    spec = patch_spec_prefix(monkeypatch, "densenet121", file)
    assert import_weights(file, "densenet121") == offline_hub / spec.weights_file


def test_import_refuses_wrong_architecture(tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "resnet34.pth"
    torch.save(random_state("resnet34"), file)
    patch_spec_prefix(monkeypatch, "resnet18", file)
    with pytest.raises(WeightsError, match="do not fit the torchvision resnet18 architecture"):
        import_weights(file, "resnet18")
    assert not offline_hub.exists() or not any(offline_hub.iterdir())


def test_import_missing_file_and_unknown_arch(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        import_weights(tmp_path / "absent.pth", "resnet18")
    with pytest.raises(ConfigError, match="model.backbone"):
        import_weights(tmp_path / "absent.pth", "vgg16")


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_import_and_list(tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "downloaded.pth"
    torch.save(random_state("resnet18", seed=2), file)
    spec = patch_spec_prefix(monkeypatch, "resnet18", file)
    runner = CliRunner()

    result = runner.invoke(app, ["weights", "import", str(file), "--arch", "resnet18"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(offline_hub / spec.weights_file)

    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["backbone", "weights", "file", "cached"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert sorted(rows) == sorted(registry.list_models())
    assert rows["resnet18"][2:] == [spec.weights_file, "yes"]
    assert rows["densenet121"][2:] == ["densenet121-a639ec97.pth", "no"]
    assert lines[-1] == f"cache folder: {offline_hub}"


def test_cli_import_mismatch_exits_3(tmp_path: Path) -> None:
    file = tmp_path / "downloaded.pth"
    torch.save(random_state("resnet18"), file)
    actual = hashlib.sha256(file.read_bytes()).hexdigest()[:8]
    result = CliRunner().invoke(app, ["weights", "import", str(file), "--arch", "resnet18"])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "f37072fd" in result.stderr and actual in result.stderr


def test_cli_unknown_arch_exits_3(tmp_path: Path) -> None:
    file = tmp_path / "x.pth"
    file.write_bytes(b"x")
    result = CliRunner().invoke(app, ["weights", "import", str(file), "--arch", "vgg16"])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: model.backbone: unknown backbone 'vgg16'")
