"""FedAvg + Adapter: each client trains the shared adapter A_s and its private head H_k."""

from __future__ import annotations

from feddat.algorithms.base import ClientUpdate, Method, Tensors
from feddat.data.clients import ClientData


class FedAvgAdapter(Method):
    name = "fedavg"

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        self.model.load_adapter("shared", shared)
        head = self.load_head(state, client)
        opt = self.optimizer(self.model.adapter_parameters("shared") + list(head.parameters()))
        with self.model.active("shared"):
            losses = self.fit(head, opt, client.train, self.name, round_, client.name)
        return ClientUpdate(
            client=client.name,
            shared=self.model.adapter_state("shared"),
            num_examples=len(client.train),
            state=self.head_state(head),
            metrics={"loss": sum(losses) / max(1, len(losses)), "steps": len(losses)},
        )
