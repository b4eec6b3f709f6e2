"""Local-only: every client trains its own adapter and head on its own data; nothing travels.

The client's adapter lives in its private state; the deployed model is that adapter, so it is
reported in the 'global' column (there is no shared model to deploy).
"""

from __future__ import annotations

from feddat.algorithms.base import ClientUpdate, Tensors
from feddat.algorithms.fedavg import FedAvgAdapter
from feddat.data.clients import ClientData


class LocalOnly(FedAvgAdapter):
    name = "local"
    communicates = False

    def init_client_state(self, client: ClientData) -> Tensors:
        state = super().init_client_state(client)
        # Start from the same A_s initialisation as every other method.
        state.update({f"adapter.{k}": v for k, v in self.init_shared().items()})
        return state

    @staticmethod
    def own_adapter(state: Tensors) -> Tensors:
        return {k[8:]: v for k, v in state.items() if k.startswith("adapter.")}

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        update = super().client_update(self.own_adapter(state), state, client, round_)
        update.state.update({f"adapter.{k}": v for k, v in update.shared.items()})
        update.shared = {}
        return update

    def aggregate(self, shared: Tensors, updates: list[ClientUpdate]) -> Tensors:
        return shared  # nothing is shared

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        return super().evaluate(self.own_adapter(state), state, client)

