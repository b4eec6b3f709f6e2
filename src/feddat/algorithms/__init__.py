"""Federated methods on one client/server interface (algorithms.base.Method)."""

from __future__ import annotations

from feddat.algorithms.base import ClientUpdate, Method, UpdateRejected
from feddat.algorithms.centralised import Centralised
from feddat.algorithms.fedavg import FedAvgAdapter
from feddat.algorithms.feddat import FedDAT
from feddat.algorithms.local import LocalOnly

METHODS: dict[str, type[Method]] = {m.name: m for m in (FedDAT, FedAvgAdapter, LocalOnly, Centralised)}


def build_method(name: str, cfg, model, device) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}': choose one of {', '.join(METHODS)}")
    return METHODS[name](cfg, model, device)


__all__ = ["METHODS", "build_method", "ClientUpdate", "Method", "UpdateRejected"]
