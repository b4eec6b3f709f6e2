"""Server optimisers on the aggregated update, and where a method keeps server-side state.

FedOpt (Reddi et al., 2021) view: the clients' weighted mean x̄ defines a pseudo-gradient
Δ = x̄ − x, and the server takes an optimiser step along it:
- avg:  x ← x + Δ                                     (plain FedAvg)
- avgm: v ← β v + Δ;  x ← x + η v                      (FedAvgM, Hsu et al., 2019)
- adam: m ← β₁m + (1−β₁)Δ;  v ← β₂v + (1−β₂)Δ²;  x ← x + η m / (√v + τ)   (FedAdam)

Server state (momentum, moments; FedDyn's h) is a dict of tensors held by the Method object,
not by an engine: the embedded engine and a Flower strategy both call the same `aggregate`,
and an engine that checkpoints can save `server_state()` (safetensors) and give it back with
`load_server_state()` on resume. Engines that ignore the two calls still get the right
maths for the life of one Method object.
"""

from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]


class ServerState:
    """Mixin: named server-side tensors, saved and restored as one flat dict."""

    def _server_store(self) -> Tensors:
        if not hasattr(self, "_server_tensors"):
            self._server_tensors: Tensors = {}
        return self._server_tensors

    def server_state(self) -> Tensors:
        return {k: v.detach().clone() for k, v in self._server_store().items()}

    def load_server_state(self, state: Tensors) -> None:
        store = self._server_store()
        store.clear()
        store.update({k: v.detach().clone() for k, v in state.items()})

    def server_tensor(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """Server tensor `key`, zeros shaped like `like` the first time."""
        store = self._server_store()
        if key not in store:
            store[key] = torch.zeros_like(like, dtype=torch.float64)
        return store[key]

    def set_server_tensor(self, key: str, value: torch.Tensor) -> None:
        self._server_store()[key] = value


def server_step(owner: ServerState, kind: str, shared: Tensors, averaged: Tensors, cfg) -> Tensors:
    """x_new from x = `shared` and the clients' mean `averaged`, with server optimiser `kind`."""
    if kind == "avg":
        return averaged
    s = cfg.server
    out = {}
    for key, x in shared.items():
        delta = averaged[key].double() - x.double()
        if kind == "avgm":
            v = s.momentum * owner.server_tensor(f"momentum.{key}", x) + delta
            owner.set_server_tensor(f"momentum.{key}", v)
            new = x.double() + s.avgm_lr * v
        elif kind == "adam":
            m = s.beta1 * owner.server_tensor(f"m.{key}", x) + (1 - s.beta1) * delta
            v = s.beta2 * owner.server_tensor(f"v.{key}", x) + (1 - s.beta2) * delta**2
            owner.set_server_tensor(f"m.{key}", m)
            owner.set_server_tensor(f"v.{key}", v)
            new = x.double() + s.adam_lr * m / (v.sqrt() + s.tau)
        else:
            raise ValueError(f"unknown server optimiser '{kind}': avg, avgm or adam")
        out[key] = new.to(x.dtype)
    return out
