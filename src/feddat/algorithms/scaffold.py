"""SCAFFOLD + Adapter (Karimireddy et al., 2020): control variates correct client drift.

The server keeps a control variate c for A_s and sends it with A_s (both travel, so both
count as bytes); each client keeps its own c_i in its private state. Locally every gradient
of A_s is corrected, g ← g − c_i + c, before the optimiser step. After the local epochs

    c_i⁺ = mean over the local steps of the uncorrected minibatch gradients g_i(y_k),

which is the paper's option II, c_i − c + (x − y)/(Kη), written without the learning rate:
under SGD the two are the same number, and this form stays meaningful under AdamW. The
client uploads y_i and Δc_i = c_i⁺ − c_i; the server sets x ← weighted mean of y_i and
c ← c + (|S|/N)·mean Δc_i, i.e. Σ_S Δc_i / N over the accepted updates (Method.participation).
"""

from __future__ import annotations

import torch

from feddat.algorithms.base import ClientUpdate, Tensors
from feddat.algorithms.common import AdapterClient, prefixed, with_prefix
from feddat.data.clients import ClientData

CONTROL = "control"


class Scaffold(AdapterClient):
    name = "scaffold"

    def init_shared(self) -> Tensors:
        adapter = super().init_shared()
        return {**adapter, **with_prefix({k: torch.zeros_like(v) for k, v in adapter.items()}, CONTROL)}

    def model_part(self, shared: Tensors) -> Tensors:
        return {k: v for k, v in shared.items() if not k.startswith(CONTROL + ".")}

    def init_client_state(self, client: ClientData) -> Tensors:
        state = super().init_client_state(client)
        zeros = {k: torch.zeros_like(v) for k, v in self.model.new_adapter_state().items()}
        return {**state, **with_prefix(zeros, CONTROL)}

    def begin(self, shared, state, client, params):
        keys = list(self.model.adapter_state("shared"))
        dev = self.device
        c = prefixed(shared, CONTROL)
        c_i = prefixed(state, CONTROL)
        return {
            "keys": keys,
            "c_i": [c_i[k].to(dev) for k in keys],
            "correction": [(c[k] - c_i[k]).to(dev) for k in keys],
            "grad_sum": [torch.zeros_like(p) for p in params],
        }

    def after_backward(self, params, ctx):
        for p, corr, acc in zip(params, ctx["correction"], ctx["grad_sum"]):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            acc += p.grad  # uncorrected: the client's own gradient, for c_i⁺
            p.grad += corr

    def finish(self, params, ctx, steps):
        new_c = [g / max(1, steps) for g in ctx["grad_sum"]]
        keys = ctx["keys"]
        delta = {k: n - old for k, n, old in zip(keys, new_c, ctx["c_i"])}
        return with_prefix(dict(zip(keys, new_c)), CONTROL), with_prefix(delta, CONTROL)

    def aggregate(self, shared: Tensors, updates: list[ClientUpdate]) -> Tensors:
        if not updates:
            return shared
        mean = super().aggregate(shared, updates)  # checks every update; weighted mean of all keys
        out = {k: v for k, v in mean.items() if not k.startswith(CONTROL + ".")}
        fraction = self.participation(len(updates))
        for key in shared:
            if key.startswith(CONTROL + "."):
                delta = sum(u.shared[key].double() for u in updates) / len(updates)
                out[key] = (shared[key].double() + fraction * delta).to(shared[key].dtype)
        return out
