"""Configuration: TOML + overrides, typed, with clear errors for what does not exist."""

from __future__ import annotations

import re

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
    # config.py sits below the algorithms (docs/contributing.md, 'Layout'): the registry checks the names,
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


# --- values that would fail (or silently misbehave) later are refused by `validate` ---------------------------


def _float_keys():
    return [key for key, _, typ in config.iter_fields() if typ is float or typ == list[float]]


def test_every_float_key_is_covered_by_the_finite_check():
    # the check walks the dataclasses, so a float key added later is covered without a line here
    assert {"train.lr", "feddat.temperature", "feddat.beta", "data.alpha", "privacy.noise_multiplier", "privacy.clip_norm",
            "flower.round_timeout", "pretrain.lr", "federation.max_update_mib", "train.betas"} <= set(_float_keys())


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_nan_and_infinity_are_refused_for_every_float(key, bad):
    value = f"0.9,{bad}" if key == "train.betas" else bad
    with pytest.raises(ConfigError, match=rf"^{key} = .*{bad.lstrip('-')}.* is not a finite number"):
        config.load(overrides={key: value})


def test_nan_from_a_toml_file_is_refused(tmp_path):
    path = tmp_path / "nan.toml"
    path.write_text("[feddat]\nbeta = nan\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(path))}: feddat.beta = nan is not a finite number"):
        config.load(path)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.eps", "0", "train.eps must be positive, got 0.0"),
        ("train.weight_decay", "-0.01", "train.weight_decay must not be negative, got -0.01"),
        ("train.betas", "0.9,1.0", r"train.betas = \[0.9, 1.0\]: each must be in \[0, 1\), got 1.0"),
        ("train.betas", "-0.1,0.98", r"train.betas = \[-0.1, 0.98\]: each must be in \[0, 1\), got -0.1"),
        ("adapter.init_std", "-0.02", "adapter.init_std must not be negative, got -0.02"),
        ("peft.lora_alpha", "0", "peft.lora_alpha must be positive, got 0.0"),
        ("peft.prompt_init_std", "-1", "peft.prompt_init_std must not be negative, got -1.0"),
        ("feddat.alpha", "-1", "feddat.alpha must not be negative, got -1.0"),
        ("feddat.beta", "-0.5", "feddat.beta must not be negative, got -0.5"),
        ("federation.min_updates", "-1", r"federation.min_updates must not be negative \(0 counts as 1\), got -1"),
        ("federation.max_update_norm", "-1", r"federation.max_update_norm must not be negative \(0 = off\), got -1.0"),
        ("federation.max_update_mib", "-2", r"federation.max_update_mib must not be negative \(0 = off\), got -2.0"),
        ("pretrain.weight_decay", "-0.01", "pretrain.weight_decay must not be negative, got -0.01"),
        ("pretrain.itm_weight", "-1", "pretrain.itm_weight must not be negative, got -1.0"),
        ("pretrain.lora_alpha", "0", "pretrain.lora_alpha must be positive, got 0.0"),
    ],
)
def test_out_of_range_values_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        config.load(overrides={key: value})


def test_zero_keeps_its_documented_meaning():
    # 0 is "off" (max_update_norm, max_update_mib), "at least one" (min_updates: the round code
    # takes max(1, min_updates)), or simply a valid setting (a zero init, no KD, no weight decay)
    cfg = config.load(overrides={"federation.min_updates": "0", "federation.max_update_norm": "0", "federation.max_update_mib": "0", "adapter.init_std": "0",
                                 "peft.prompt_init_std": "0", "feddat.alpha": "0", "feddat.beta": "0", "train.weight_decay": "0", "train.betas": "0,0",
                                 "pretrain.weight_decay": "0", "pretrain.itm_weight": "0"})
    assert (cfg.federation.min_updates, cfg.federation.max_update_norm, cfg.train.betas) == (0, 0.0, [0.0, 0.0])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("run.methods", "feddat,feddat", r"run.methods names 'feddat' twice \(\['feddat', 'feddat'\]\)"),
        ("tracking.loggers", "tensorboard,tensorboard", r"tracking.loggers names 'tensorboard' twice"),
        ("run.methods", ["fedavg", "feddat", "fedavg"], r"run.methods names 'fedavg' twice"),
    ],
)
def test_a_list_option_names_each_thing_once(key, value, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        config.load(overrides={key: value})


def test_equal_betas_are_not_duplicates():
    assert config.load(overrides={"train.betas": "0.9,0.9"}).train.betas == [0.9, 0.9]


# --- the config file: named in every error about it -----------------------------------------------------------


def test_a_non_utf8_file_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[train]\nlr = 0.01 # \xff\xfe\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(bad))} is not UTF-8 text \(byte 0xff at offset 20\)"):
        config.load(bad)


def test_a_folder_is_not_said_to_be_missing(tmp_path):
    folder = tmp_path / "conf.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(folder))} is a folder, not a TOML file$"):
        config.load(folder)


def test_an_unknown_key_in_a_file_names_the_file(tmp_path):
    stored = tmp_path / "run" / "config.toml"
    stored.parent.mkdir()
    stored.write_text(config.Config().to_toml() + "\n[extra]\nfoo = 1\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(stored))}: unknown config key 'extra.foo'.*another feddat version"):
        config.load(stored)
    stored.write_text("[run]\nfoo = 1\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(stored))}: unknown config key 'run.foo'"):
        config.load(stored)
    stored.write_text("rounds = 3\n")  # a key outside any table
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(stored))}: unknown config key 'rounds'"):
        config.load(stored)
    # from the command line there is no file to name
    with pytest.raises(ConfigError, match=r"^unknown config key 'run.foo'; `feddat run --help` lists them all$"):
        config.load(overrides={"run.foo": "1"})


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[train]\nbatch_size = "many"\n')
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(path))}: config key 'train.batch_size': cannot read 'many' as int"):
        config.load(path)


def test_a_value_the_whole_config_refuses_names_the_file_that_set_it(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("[train]\nwarmup_fraction = 1.5\nlr = 0.001\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(path))}: train.warmup_fraction must be in \[0, 1\), got 1.5$"):
        config.load(path)
    # the same value from the command line, over a file that sets other keys: the file is not to blame
    path.write_text("[train]\nlr = 0.001\nwarmup_fraction = 0.1\n")
    with pytest.raises(ConfigError, match=r"^train.warmup_fraction must be in \[0, 1\), got 1.5$"):
        config.load(path, {"train.warmup_fraction": "1.5"})
    # a key that only begins with the file's key is not the file's
    path.write_text("[train]\nlr = 0.001\n")
    with pytest.raises(ConfigError, match=r"^train.lr_schedule = 'bogus' is not one of"):
        config.load(path, {"train.lr_schedule": "bogus"})


# --- paths: `~` is expanded once, where the value is set ------------------------------------------------------


PATH_KEYS = ["data.root", "data.cache_dir", "run.out_dir", "backbone.path", "pretrain.root", "pretrain.out", "pretrain.cache_dir", "pretrain.text_encoder", "pretrain.vision_tower"]


def test_the_path_keys_are_marked():
    assert sorted(key for key, f, _ in config.iter_fields() if f.metadata["path"]) == sorted(PATH_KEYS)


def test_a_tilde_is_expanded_in_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "exp.toml"
    path.write_text('[data]\nroot = "~/pub"\ncache_dir = "~/cache"\n[run]\nout_dir = "~/runs"\nname = "~keep"\n')
    cfg = config.load(path, {"pretrain.out": "~/ckpt", "backbone.path": "~"})
    assert (cfg.data.root, cfg.data.cache_dir, cfg.run.out_dir) == (str(tmp_path / "pub"), str(tmp_path / "cache"), str(tmp_path / "runs"))
    assert (cfg.pretrain.out, cfg.backbone.path) == (str(tmp_path / "ckpt"), str(tmp_path))
    assert cfg.run.name == "~keep"  # a name, not a path
    for key in PATH_KEYS:  # every path key, also through `apply` (the Flower node config's route)
        fresh = config.Config()
        config.apply(fresh, key, "~/x")
        section, _, name = key.partition(".")
        assert getattr(getattr(fresh, section), name) == str(tmp_path / "x"), key
    # a hub id or a relative path is left alone
    assert config.load(overrides={"pretrain.text_encoder": "sentence-transformers/x", "data.cache_dir": ".cache/f"}).data.cache_dir == ".cache/f"


# --- types: a TOML value of the wrong kind is refused, a command-line string is parsed --------------------------


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[federation]\nrounds = true", r"config key 'federation.rounds' must be int, not bool \(True\)"),
        ("[train]\nlr = false", r"config key 'train.lr' must be float, not bool \(False\)"),
        ("[flower]\nsecure_aggregation = 1", r"config key 'flower.secure_aggregation' must be bool, not int \(1\)"),
        ("[flower]\nsecure_aggregation = 0.0", r"config key 'flower.secure_aggregation' must be bool, not float \(0.0\)"),
        ('[data]\nroot = ["a", "b"]', r"config key 'data.root' must be str, not list \(\['a', 'b'\]\)"),
        ("[run]\nname = true", r"config key 'run.name' must be str, not bool \(True\)"),
        ("[data]\nroot = {a = 1}", r"config key 'data.root' must be str, not dict"),
        ("[train]\nbetas = [0.9, true]", r"config key 'train.betas': item 2 of \[0.9, True\], True \(a bool\), cannot be read as float"),
        ("[run]\nmethods = 3", r"config key 'run.methods' must be list of str, not int \(3\)"),
        ("[federation]\nrounds = 2.5", r"config key 'federation.rounds': cannot read 2.5 as int"),
    ],
)
def test_a_toml_value_of_the_wrong_type_is_refused(tmp_path, toml, message):
    path = tmp_path / "typed.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(path))}: {message}"):
        config.load(path)


def test_command_line_strings_are_still_parsed(tmp_path):
    cfg = config.load(overrides={"federation.rounds": "3", "flower.secure_aggregation": "1", "train.lr": " 0.5 ", "train.betas": "0.8, 0.9,",
                                 "data.root": "x", "run.methods": "feddat,", "adapter.blocks": ""})
    assert (cfg.federation.rounds, cfg.flower.secure_aggregation, cfg.train.lr, cfg.train.betas) == (3, True, 0.5, [0.8, 0.9])
    assert (cfg.run.methods, cfg.adapter.blocks) == (["feddat"], [])
    assert config.load(overrides={"flower.secure_aggregation": "off"}).flower.secure_aggregation is False
    # a typed value of the right kind (the Python API, a stored config) works as before
    path = tmp_path / "typed.toml"
    path.write_text('[federation]\nrounds = 4.0\n[train]\nlr = 1\n[run]\nname = 2024\n[flower]\nsecure_aggregation = true\n')
    cfg = config.load(path)
    assert (cfg.federation.rounds, cfg.train.lr, cfg.run.name, cfg.flower.secure_aggregation) == (4, 1.0, "2024", True)
    assert type(cfg.train.lr) is float and type(cfg.federation.rounds) is int


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.betas", "0.9,abc", r"config key 'train.betas': item 2 of '0.9,abc', 'abc', cannot be read as float"),
        ("adapter.blocks", "0,1,x", r"config key 'adapter.blocks': item 3 of '0,1,x', 'x', cannot be read as int"),
        ("train.betas", "0.9,true", r"config key 'train.betas': item 2 of '0.9,true', 'true', cannot be read as float"),
    ],
)
def test_a_bad_list_item_is_named(key, value, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        config.load(overrides={key: value})
