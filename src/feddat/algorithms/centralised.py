"""Centralised: all clients' data pooled, one shared adapter, private heads (upper reference).

Each round is local_epochs passes over the union of the clients' training sets, minibatches
drawn from one client at a time (each client keeps its own answer space and head), in an
order shuffled across clients.
"""

from __future__ import annotations

from typing import Callable

import torch

from feddat.algorithms.base import Method, Tensors
from feddat.data.clients import ClientData
from feddat.losses import task_loss
from feddat.runtime import generator


class Centralised(Method):
    name = "centralised"
    pooled = True
    communicates = False

    def pooled_update(self, shared: Tensors, states: dict[str, Tensors], clients: list[ClientData], round_: int, progress: Callable[[int, int, str], None] | None = None) -> tuple[Tensors, dict[str, Tensors], dict[str, float]]:
        """One round over the pooled data; `progress(done, total, unit)` is told after every step."""
        self.model.load_adapter("shared", shared)
        heads = {c.name: self.load_head(states[c.name], c) for c in clients}
        params = self.model.adapter_parameters("shared") + [p for h in heads.values() for p in h.parameters()]
        queue = [(c, batch) for c in clients for batch in self.batches(c.train, self.name, round_, c.name)]
        opt = self.optimizer(params, len(queue))
        order = torch.randperm(len(queue), generator=generator(self.cfg.run.seed, self.name, round_, "pool"))
        losses = []
        with self.model.active("shared"):
            for i in order.tolist():
                client, batch = queue[i]
                loss = task_loss(self.logits(heads[client.name], batch), batch[3])
                opt.zero_grad(set_to_none=True)  # heads of other clients get no gradient, so do not move
                loss.backward()
                opt.step()
                losses.append(loss.item())
                if progress is not None:
                    progress(len(losses), len(queue), "steps")
        new_states = {name: self.head_state(h) for name, h in heads.items()}
        return self.model.adapter_state("shared"), new_states, {"loss": sum(losses) / max(1, len(losses)), "steps": len(losses)}
