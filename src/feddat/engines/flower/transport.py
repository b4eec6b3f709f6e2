"""How feddat data travels through Flower: tensors as ArrayRecord, metrics as MetricRecord,
the resolved feddat configuration as one run-config string, per-host paths as node config."""

from __future__ import annotations

import tomllib
from typing import Any, Mapping

import tomli_w
import torch
from flwr.app import ArrayRecord

from feddat import config as config_mod
from feddat.config import Config

RUN_CONFIG_KEY = "feddat-config"  # the resolved feddat config as TOML text
# Node config keys (flower-supernode --node-config): which client the node is, and where
# this host keeps its data, backbone weights, feature cache and private state.
PARTITION_KEY = "partition"
NODE_PATHS = {"data-root": "data.root", "cache-dir": "data.cache_dir", "backbone-path": "backbone.path"}
STATE_DIR_KEY = "state-dir"
DEFAULT_STATE_DIR = "feddat-node-state"

Tensors = dict[str, torch.Tensor]


def to_record(tensors: Tensors) -> ArrayRecord:
    return ArrayRecord(torch_state_dict=dict(tensors))


def from_record(record: ArrayRecord) -> Tensors:
    return dict(record.to_torch_state_dict())


def run_config_text(cfg: Config) -> str:
    """The run-config file `flwr run --run-config FILE` reads: one key holding the feddat TOML."""
    return tomli_w.dumps({RUN_CONFIG_KEY: cfg.to_toml()})


def config_from_run(run_config: Mapping[str, Any]) -> Config:
    text = str(run_config.get(RUN_CONFIG_KEY, ""))
    if not text.strip():
        raise config_mod.ConfigError(f"the Flower run carries no '{RUN_CONFIG_KEY}'; submit it with `feddat flower submit` or `flwr run --run-config FILE` (README, Running across machines)")
    data = tomllib.loads(text)
    overrides = {f"{section}.{key}": value for section, values in data.items() for key, value in values.items()}
    return config_mod.load(None, overrides)


def apply_node_config(cfg: Config, node_config: Mapping[str, Any]) -> Config:
    """Per-host paths from the SuperNode's node config override the run's (hosts differ)."""
    for node_key, cfg_key in NODE_PATHS.items():
        if node_key in node_config:
            config_mod.apply(cfg, cfg_key, str(node_config[node_key]))
    return cfg
