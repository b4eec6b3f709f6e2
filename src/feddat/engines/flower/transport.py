"""How feddat data travels through Flower: tensors as ArrayRecord, metrics as MetricRecord,
the resolved feddat configuration as one run-config string, per-host paths as node config.

Light on purpose (no torch at import): the ClientApp process imports it for every message.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import tomli_w
from flwr.app import ArrayRecord

from feddat import config as config_mod
from feddat.config import Config

if TYPE_CHECKING:
    import torch

RUN_CONFIG_KEY = "feddat-config"  # the resolved feddat config as TOML text
RESUME_KEY = "feddat-resume"  # "true": continue the run named in the config from its last committed round
# Node config keys (flower-supernode --node-config): which client the node is, and where
# this host keeps its data, backbone weights, feature cache and private state.
PARTITION_KEY = "partition"
NODE_PATHS = {"data-root": "data.root", "cache-dir": "data.cache_dir", "backbone-path": "backbone.path"}
STATE_DIR_KEY = "state-dir"
WORKER_KEY = "worker"  # the node's warm feddat worker: its Unix socket (worker.py)
# In a train or evaluate message's config: the rounds in which the server rejected this client's
# update ("2,5"). Its node takes back the private state it wrote in them (client_node), so a
# rejected client keeps what it had, as on the embedded engine; saying it again is harmless.
REJECTED_KEY = "rejected-rounds"

Tensors = "dict[str, torch.Tensor]"


def to_record(tensors: Tensors) -> ArrayRecord:
    return ArrayRecord(torch_state_dict=dict(tensors))


def from_record(record: ArrayRecord) -> Tensors:
    return dict(record.to_torch_state_dict())


def rejected_config(rounds: list[int]) -> dict[str, str]:
    """The REJECTED_KEY entry of a message's config ({} when there is none to tell)."""
    return {REJECTED_KEY: ",".join(str(r) for r in rounds)} if rounds else {}


def rejected_rounds(config: Mapping[str, Any]) -> list[int]:
    """The rounds a message's config says were rejected (REJECTED_KEY)."""
    return [int(t) for t in str(config.get(REJECTED_KEY, "") or "").split(",") if t.strip().isdigit()]


def run_config_text(cfg: Config, resume: bool = False) -> str:
    """The run-config file `flwr run --run-config FILE` reads: one key holding the feddat TOML
    (and whether the run continues an interrupted one)."""
    return tomli_w.dumps({RUN_CONFIG_KEY: cfg.to_toml(), RESUME_KEY: "true" if resume else ""})


def resumes(run_config: Mapping[str, Any]) -> bool:
    return str(run_config.get(RESUME_KEY, "")).lower() == "true"


def config_from_run(run_config: Mapping[str, Any]) -> Config:
    text = str(run_config.get(RUN_CONFIG_KEY, ""))
    if not text.strip():
        raise config_mod.ConfigError(f"the Flower run carries no '{RUN_CONFIG_KEY}'; write it with `feddat flower app DIR` and submit with `flwr run DIR/feddat-flower <superlink> --run-config DIR/run-config.toml`, or use `feddat flower local` (docs/guide/flower.md)")
    data = tomllib.loads(text)
    overrides = {f"{section}.{key}": value for section, values in data.items() for key, value in values.items()}
    return config_mod.load(None, overrides)


def run_key(cfg: Config, run_id: int) -> str:
    """What names a feddat run on every host: its run name (kept by a resumed run, whose
    Flower run id is new), else the Flower run id."""
    return cfg.run.name or f"flower-run-{run_id}"


def node_state_root(cfg: Config, node_config: Mapping[str, Any], run_id: int, client: str) -> Path:
    """Where a node keeps its client's private state for this run: under the node config's
    'state-dir' (each host its own), else in the run directory (one machine: simulation)."""
    if node_config.get(STATE_DIR_KEY):
        return Path(str(node_config[STATE_DIR_KEY])) / run_key(cfg, run_id)
    return Path(cfg.run.out_dir) / run_key(cfg, run_id) / "node-state" / client


def apply_node_config(cfg: Config, node_config: Mapping[str, Any]) -> Config:
    """Per-host paths from the SuperNode's node config override the run's (hosts differ)."""
    for node_key, cfg_key in NODE_PATHS.items():
        if node_key in node_config:
            config_mod.apply(cfg, cfg_key, str(node_config[node_key]))
    return cfg
