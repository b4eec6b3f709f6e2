"""FedAvgM: FedAvg+Adapter clients; the server applies momentum to the averaged update."""

from __future__ import annotations

from feddat.algorithms.base import ClientUpdate, Tensors
from feddat.algorithms.fedavg import FedAvgAdapter
from feddat.algorithms.server import ServerState, server_step


class FedAvgM(ServerState, FedAvgAdapter):
    name = "fedavgm"
    server_optimizer = "avgm"

    def aggregate(self, shared: Tensors, updates: list[ClientUpdate]) -> Tensors:
        if not updates:
            return shared
        return server_step(self, self.server_optimizer, shared, super().aggregate(shared, updates), self.cfg)
