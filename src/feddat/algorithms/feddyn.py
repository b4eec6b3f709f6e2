"""FedDyn + Adapter (Acar et al., 2021): a dynamic regulariser aligns local and global optima.

Client k keeps g_k (the gradient of its local loss at its last local solution; zero at first)
and minimises, from the received θ,

    L_k(w) − ⟨g_k, w⟩ + α/2·‖w − θ‖²,   then   g_k ← g_k − α (w_k − θ).

The server keeps h (zero at first; server state, it never travels):

    h ← h − α·(|S|/N)·mean_k (w_k − θ),   θ ← mean_k w_k − h / α,

with |S|/N the accepted updates over the federation's clients (Method.participation) and the
mean weighted as in FedAvg.
"""

from __future__ import annotations

import torch

from feddat.algorithms.base import ClientUpdate, Tensors
from feddat.algorithms.common import AdapterClient, prefixed, squared_distance, with_prefix
from feddat.algorithms.server import ServerState
from feddat.data.clients import ClientData

GRAD = "dyn"


class FedDyn(ServerState, AdapterClient):
    name = "feddyn"

    def init_client_state(self, client: ClientData) -> Tensors:
        state = super().init_client_state(client)
        zeros = {k: torch.zeros_like(v) for k, v in self.model.new_adapter_state().items()}
        return {**state, **with_prefix(zeros, GRAD)}

    def begin(self, shared, state, client, params):
        ctx = self.anchored(super().begin(shared, state, client, params), params)
        keys = list(self.model.adapter_state("shared"))
        g = prefixed(state, GRAD)
        ctx.update(keys=keys, g=[g[k].to(self.device) for k in keys])
        return ctx

    def local_loss(self, head, batch, params, ctx):
        loss, terms = super().local_loss(head, batch, params, ctx)
        alpha = self.cfg.baselines.feddyn_alpha
        linear = sum((p * g).sum() for p, g in zip(params, ctx["g"]))
        prox = squared_distance(params, ctx["anchor"])
        return loss - linear + alpha / 2 * prox, {**terms, "linear": linear, "prox": prox}

    def finish(self, params, ctx, steps):
        alpha = self.cfg.baselines.feddyn_alpha
        new_g = {k: g - alpha * (p.detach() - a) for k, g, p, a in zip(ctx["keys"], ctx["g"], params, ctx["anchor"])}
        return with_prefix(new_g, GRAD), {}

    def aggregate(self, shared: Tensors, updates: list[ClientUpdate]) -> Tensors:
        if not updates:
            return shared
        mean = super().aggregate(shared, updates)
        alpha, fraction = self.cfg.baselines.feddyn_alpha, self.participation(len(updates))
        out = {}
        for key, theta in shared.items():
            h = self.server_tensor(f"h.{key}", theta) - alpha * fraction * (mean[key].double() - theta.double())
            self.set_server_tensor(f"h.{key}", h)
            out[key] = (mean[key].double() - h / alpha).to(theta.dtype) if alpha > 0 else mean[key]
        return out
