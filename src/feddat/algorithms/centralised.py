"""Centralised: all clients' data pooled, one shared adapter, private heads (upper reference).

Each round is local_epochs passes over the union of the clients' training sets, minibatches
drawn from one client at a time (each client keeps its own answer space and head), in an
order shuffled across clients.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from feddat.algorithms.base import ClientStates, ClientUpdate, Method, Tensors
from feddat.data.clients import ClientData
from feddat.runtime import generator


class Centralised(Method):
    name = "centralised"
    pooled = True
    communicates = False

    def train_clients(self, shared: Tensors, clients: Sequence[ClientData], states: ClientStates, round_: int, progress: Callable[[int, int, str], None] | None = None) -> list[ClientUpdate]:
        """The round over the participants' pooled data: one update, from client 'all', that
        carries the new shared adapter (`aggregate` takes it as it is); the heads are saved
        per client. `progress` is told after every step."""
        loaded = {c.name: states.load(c) for c in clients}
        new_shared, new_states, metrics = self.pooled_update(shared, loaded, list(clients), round_, progress)
        for name, state in new_states.items():
            states.save(name, state)
        return [ClientUpdate(client="all", shared=new_shared, num_examples=sum(len(c.train) for c in clients), state={}, metrics=metrics)]

    def aggregate(self, shared: Tensors, updates: list[ClientUpdate]) -> Tensors:
        return updates[0].shared if updates else shared  # the pooled round's adapter: nothing to average

    def pooled_update(self, shared: Tensors, states: dict[str, Tensors], clients: list[ClientData], round_: int, progress: Callable[[int, int, str], None] | None = None) -> tuple[Tensors, dict[str, Tensors], dict[str, float]]:
        """One round over the pooled data; `progress(done, total, unit)` is told after every step."""
        self.model.load_adapter("shared", shared)
        heads = {c.name: self.load_head(states[c.name], c) for c in clients}
        params = self.model.adapter_parameters("shared") + [p for h in heads.values() for p in h.parameters()]
        queue = [(c, batch) for c in clients for batch in self.batches(c.train, self.name, round_, c.name)]
        opt = self.optimizer(params, len(queue))
        order = torch.randperm(len(queue), generator=generator(self.cfg.run.seed, self.name, round_, "pool"))

        def step(item):
            client, batch = item
            loss = self.task_loss(self.logits(heads[client.name], batch), batch.targets)
            opt.zero_grad(set_to_none=True)  # heads of other clients get no gradient, so do not move
            loss.backward()
            opt.step()
            return {"loss": loss}

        told = None if progress is None else (lambda done: progress(done, len(queue), "steps"))
        with self.model.active("shared"):
            metrics = self.train_steps((queue[i] for i in order.tolist()), step, terms=("loss",), after_step=told)
        new_states = {name: self.head_state(h) for name, h in heads.items()}
        return self.model.adapter_state("shared"), new_states, metrics
