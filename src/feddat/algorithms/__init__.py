"""Federated methods on one client/server interface (algorithms.base.Method)."""

from __future__ import annotations

from feddat.algorithms.base import ClientUpdate, Method, UpdateRejected, decodes
from feddat.algorithms.centralised import Centralised
from feddat.algorithms.fedavg import FedAvgAdapter
from feddat.algorithms.feddat import FedDAT, FedDATLoRA
from feddat.algorithms.head_only import HeadOnly
from feddat.algorithms.local import LocalOnly
from feddat.algorithms.ditto import Ditto
from feddat.algorithms.fedadam import FedAdam
from feddat.algorithms.fedavg_bitfit import FedAvgBitFit
from feddat.algorithms.fedavg_full import FedAvgFull
from feddat.algorithms.fedavg_lora import FedAvgLoRA
from feddat.algorithms.fedavg_prompt import FedAvgPrompt
from feddat.algorithms.fedavgm import FedAvgM
from feddat.algorithms.feddyn import FedDyn
from feddat.algorithms.fedprox import FedProx
from feddat.algorithms.fedrep import FedRep
from feddat.algorithms.moon import Moon
from feddat.algorithms.scaffold import Scaffold

# FedDAT and its LoRA form; PEFT kinds under FedAvg; client-drift and personalised FL on the
# adapter; server optimisers; the references (head only, local-only, centralised).
BASELINES: tuple[type[Method], ...] = (
    FedAvgFull, FedAvgLoRA, FedAvgPrompt, FedAvgBitFit,
    FedProx, Scaffold, FedDyn, Moon, Ditto, FedRep,
    FedAvgM, FedAdam,
)
METHODS: dict[str, type[Method]] = {m.name: m for m in (FedDAT, FedAvgAdapter, LocalOnly, Centralised, HeadOnly, FedDATLoRA, *BASELINES)}


def check_methods(names: list[str], key: str = "run.methods") -> None:
    """Refuse a method name this registry does not hold, as config.load refuses other values.
    The names are checked here, where the registry lives: config.py sits below the algorithms
    (they read a Config), so it cannot import them. Entry points call this before anything slow."""
    from feddat.config import ConfigError

    for name in names:
        if name not in METHODS:
            raise ConfigError(f"{key} = '{name}' is not one of: {', '.join(METHODS)}")


def build_method(name: str, cfg, model, device) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
    if decodes(model) and not METHODS[name].decodes_answers:
        able = ", ".join(n for n, m in METHODS.items() if m.decodes_answers)
        raise ValueError(f"method '{name}' needs a classifier head or a pooled representation, which an answer-decoder backbone (backbone.name = {cfg.backbone.name}) has not; on it use one of: {able}")
    return METHODS[name](cfg, model, device)


__all__ = ["METHODS", "build_method", "check_methods", "ClientUpdate", "Method", "UpdateRejected"]
