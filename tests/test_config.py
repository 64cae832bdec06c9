"""Config files, overrides and their error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, SegmentConfig, StorageConfig, load_config

BASE = ["input=/in", "model=/m", "output=/out"]


def test_yaml_then_options_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("input: s3://bucket/in\nmodel: /m\noutput: /o\nbatch_size: 8\nactors:\n  max: 2\n")
    cfg = load_config(SegmentConfig, path, ["actors.max=4", "actors.cpus=1.5"], {"batch_size": 32, "output": "/x"})
    assert cfg.input == "s3://bucket/in"
    assert cfg.batch_size == 32 and cfg.output == "/x"
    assert cfg.actors.max == 4 and cfg.actors.cpus == 1.5 and cfg.actors.min == 1


def test_values_with_yaml_special_characters_stay_strings() -> None:
    cfg = load_config(SegmentConfig, None, ["model=/m", "output=/o", "run_id=2026-11-23"], {"input": "/data/#1: raw"})
    assert cfg.input == "/data/#1: raw"
    assert cfg.run_id == "2026-11-23"


def test_unknown_key_names_the_key_and_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'actors\.maxx'.*max"):
        load_config(SegmentConfig, None, [*BASE, "actors.maxx=3"])


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="'batch_size' expects int"):
        load_config(SegmentConfig, None, [*BASE, "batch_size=lots"])


def test_missing_required_url_says_how_to_give_it() -> None:
    with pytest.raises(ConfigError, match="'model' is not set; give --model"):
        load_config(SegmentConfig, None, ["input=/in", "output=/out"])


def test_invalid_pool_bounds_stop_early() -> None:
    with pytest.raises(ConfigError, match="actors.max=1 is below actors.min=2"):
        load_config(SegmentConfig, None, [*BASE, "actors.min=2"])


def test_override_syntax_error() -> None:
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_config(SegmentConfig, None, [*BASE, "batch_size"])


def test_bad_yaml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(SegmentConfig, path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(SegmentConfig, tmp_path / "missing.yaml")


def test_credentials_are_redacted_everywhere() -> None:
    cfg = load_config(SegmentConfig, None, [*BASE, "storage.key=AKIASECRETKEY", "storage.secret=hunter2"])
    text = f"{cfg!r} {cfg.to_public_dict()}"
    assert "AKIASECRETKEY" not in text and "hunter2" not in text
    assert cfg.storage.fsspec_options("s3")["secret"] == "hunter2"


def test_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert StorageConfig().fsspec_options("s3")["endpoint_url"] == "http://127.0.0.1:9"
    assert StorageConfig(endpoint_url="http://x:1").fsspec_options("s3")["endpoint_url"] == "http://x:1"
    assert StorageConfig().fsspec_options("file") == {}


def test_every_declared_choice_is_checked_with_the_key_named() -> None:
    from pipeline.config import ImportConfig, ObjectsConfig, OptimConfig

    with pytest.raises(ConfigError, match="blend='linear': choose gaussian or constant"):
        SegmentConfig(input="i", model="m", output="o", blend="linear")
    with pytest.raises(ConfigError, match="objects.connectivity=6: choose 4 or 8"):
        ObjectsConfig(connectivity=6)
    with pytest.raises(ConfigError, match="optim.loss='focal': choose ce, dice or ce\\+dice"):
        OptimConfig(loss="focal")
    with pytest.raises(ConfigError, match="normalization='zscore': choose scale or minmax"):
        ImportConfig(keras="k.keras", output="o", classes="a,b", normalization="zscore")
    assert ImportConfig(keras="k.keras", output="o", classes="a,b").scale == ""  # an unset default means "decide"
    with pytest.raises(ConfigError, match="tiling='tiles'"):
        load_config(SegmentConfig, options={"input": "i", "model": "m", "output": "o"}, overrides=["tiling=tiles"])
