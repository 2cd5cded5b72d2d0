"""Config files, overrides and the messages that invalid settings produce."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training.config import CONFIG_DIR, Config, ConfigError, config_from_dict, load_config


@pytest.mark.parametrize("name", ["default", "real", "scratch", "tiny"])
def test_bundled_configs_load_and_validate(name: str) -> None:
    config = load_config(name)
    assert isinstance(config, Config)
    assert config.name
    assert load_config(CONFIG_DIR / f"{name}.yaml") == config


def test_overrides_set_nested_values_with_yaml_types() -> None:
    config = load_config(
        "tiny",
        ["train.epochs=7", "train.lr=0.01", "augment.crop_scale=[0.5, 0.9]", "data.root=/x"],
    )
    assert config.train.epochs == 7
    assert config.train.lr == 0.01
    assert config.augment.crop_scale == (0.5, 0.9)
    assert config.data.root == "/x"


def test_config_is_frozen() -> None:
    config = load_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 3  # type: ignore[misc]


def test_round_trip_through_plain_dict() -> None:
    config = load_config("default")
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epoch=3", "unknown key train.epoch (did you mean 'epochs'?)"),
        ("trian.epochs=3", "unknown key trian (did you mean 'train'?)"),
        ("train.epochs=many", "train.epochs must be a whole number"),
        ("train.epochs=0", "train.epochs=0 is out of range; use a value from 1 to 10000"),
        ("train.schedule=linear", "choose one of ['onecycle', 'cosine', 'step', 'constant']"),
        ("model.arch=vgg", "model.arch='vgg' is not valid"),
        ("augment.crop_scale=[0.9, 0.5]", "augment.crop_scale=[0.9, 0.5] must satisfy"),
        ("augment.crop_scale=0.5", "augment.crop_scale must be a list"),
        ("model.resize_size=64", "model.resize_size=64 must be at least model.input_size"),
        ("data.split_ratios=[0.5, 0.2, 0.2]", "must sum to 1"),
        ("export.threshold=best", "export.threshold"),
        ("wandb.mode=sometimes", "choose one of ['offline', 'online', 'disabled']"),
        ("train.early_stopping.metric=val_auc", "choose one of"),
        ("epochs", "must look like key.sub=value"),
        ("train=3", "train must be a mapping of keys"),
        ("name=has space", "name='has space' must be letters"),
        ("model.pretrained=true", "model.pretrained=true needs model.arch=efficientnet_lite0"),
    ],
)
def test_invalid_settings_say_what_is_valid(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("default", [override])
    assert expected in str(caught.value)


def test_missing_config_file_lists_the_bundled_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"bundled configs: \['default', 'real', 'scratch', 'tiny'\]"
    ):
        load_config(tmp_path / "nope.yaml")


def test_malformed_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(path)


def test_threshold_accepts_auto_or_a_probability() -> None:
    assert load_config("tiny", ["export.threshold=auto"]).export.threshold == "auto"
    assert load_config("tiny", ["export.threshold=0.3"]).export.threshold == 0.3
