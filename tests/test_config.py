"""Configuration: TOML + overrides, typed, with clear errors for what does not exist."""

from __future__ import annotations

import pytest

from feddat import config
from feddat.config import ConfigError


def test_defaults_are_the_embedded_default():
    cfg = config.load()
    assert cfg.backbone.name == "foundation" and cfg.backbone.path == "" and cfg.data.benchmark == "domain"
    assert (cfg.data.train_per_client, cfg.train.local_epochs, cfg.federation.rounds) == (1024, 1, 5)
    assert cfg.run.methods == ["feddat", "fedavg"]
    assert (cfg.feddat.alpha, cfg.feddat.beta, cfg.feddat.temperature) == (1.0, 1.0, 3.0)


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[train]\nlr = 0.01\nbatch_size = 4\n[run]\nmethods = ["fedavg"]\n')
    cfg = config.load(path, {"train.batch_size": "16", "run.methods": "feddat,local"})
    assert cfg.train.lr == 0.01 and cfg.train.batch_size == 16 and cfg.run.methods == ["feddat", "local"]
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml())
    assert config.load(again) == cfg


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'.*'train.lr'"):
        config.load(overrides={"train.lrr": "1"})
    path = tmp_path / "bad.toml"
    path.write_text("[federation]\nroundz = 3\n")
    with pytest.raises(ConfigError, match="federation.roundz"):
        config.load(path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("backbone.name", "clip", "backbone.name = 'clip' is not one of"),
        ("run.methods", "", "run.methods is empty"),
        ("train.batch_size", "many", "cannot read 'many'"),
        ("federation.fraction", "1.5", "fraction"),
        ("feddat.kd", "sideways", "feddat.kd"),
    ],
)
def test_bad_values_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config.load(overrides={key: value})


def test_method_names_are_checked_where_the_registry_lives():
    # config.py sits below the algorithms (DESIGN, README 'Layout'): the registry checks the names,
    # with config.load's wording; `feddat run` calls it before anything slow (tests/test_cli.py).
    from feddat.algorithms import METHODS, check_methods

    cfg = config.load(overrides={"run.methods": "feddat,fedsgd"})
    with pytest.raises(ConfigError, match=f"run.methods = 'fedsgd' is not one of: {', '.join(METHODS)}$"):
        check_methods(cfg.run.methods)
    check_methods(list(METHODS))


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(broken)
