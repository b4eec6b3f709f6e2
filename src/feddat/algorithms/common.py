"""What the adapter baselines share: FedAvg's client loop with hooks, and pass counting.

`AdapterClient.client_update` is FedAvg+Adapter's local update (A_s and the private head on
the task loss; fedavg.py is this class unchanged) with hooks, so that each baseline file holds
only its defining rule:
- `begin`: per-update context from the received A_s and the client's state (`anchored` adds
  a copy of the received parameters, for the methods that pull towards them);
- `local_loss`: the loss of one minibatch (FedProx, FedDyn, MOON add their terms here);
- `after_backward`: gradients before the optimiser step (SCAFFOLD corrects them here);
- `finish`: private state to keep and anything extra to upload.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from feddat.algorithms.base import ClientUpdate, Method, Tensors
from feddat.data.clients import ClientData


def prefixed(state: Tensors, prefix: str) -> Tensors:
    """The entries of `state` under 'prefix.', with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def with_prefix(state: Tensors, prefix: str) -> Tensors:
    return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in state.items()}


def squared_distance(params: list[nn.Parameter], anchor: list[torch.Tensor]) -> torch.Tensor:
    """‖w − a‖² over a list of parameters (the anchor is constant)."""
    return sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))


class AdapterClient(Method):
    """FedAvg+Adapter's client step, open to extension (see the module docstring)."""

    def begin(self, shared: Tensors, state: Tensors, client: ClientData, params: list[nn.Parameter]) -> dict[str, Any]:
        return {}

    @staticmethod
    def anchored(ctx: dict[str, Any], params: list[nn.Parameter]) -> dict[str, Any]:
        """`ctx` plus 'anchor': the parameters as received, before any local step."""
        return {**ctx, "anchor": [p.detach().clone() for p in params]}

    def local_loss(self, head: nn.Module, batch: tuple[torch.Tensor, ...], params: list[nn.Parameter], ctx: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.task_loss(self.logits(head, batch), batch.targets)
        return loss, {"ce": loss}

    def after_backward(self, params: list[nn.Parameter], ctx: dict[str, Any]) -> None:
        pass

    def finish(self, params: list[nn.Parameter], ctx: dict[str, Any], steps: int) -> tuple[Tensors, Tensors]:
        """(extra private state, extra uploaded tensors) after the local epochs."""
        return {}, {}

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        self.model.load_adapter("shared", self.model_part(shared))
        head = self.load_head(state, client)
        params = self.model.adapter_parameters("shared")
        ctx = self.begin(shared, state, client, params)
        opt = self.optimizer(params + list(head.parameters()), self.local_steps(client.train))

        def step(batch):
            loss, terms = self.local_loss(head, batch, params, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            self.after_backward(params, ctx)
            opt.step()
            return {"loss": loss, **terms}

        with self.model.active("shared"):
            metrics = self.train_steps(self.batches(client.train, self.name, round_, client.name), step)
        steps = metrics["steps"]
        extra_state, extra_upload = self.finish(params, ctx, steps)
        return ClientUpdate(
            client=client.name,
            shared={**self.model.adapter_state("shared"), **extra_upload},
            num_examples=len(client.train),
            state={**self.head_state(head), **extra_state},
            metrics={**metrics, "passes": steps * sum(self.passes_per_step(self.cfg))},
        )

    def model_part(self, shared: Tensors) -> Tensors:
        """The adapter inside what the server sends (SCAFFOLD sends its control variate too)."""
        return shared

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        return super().evaluate(self.model_part(shared), state, client)
