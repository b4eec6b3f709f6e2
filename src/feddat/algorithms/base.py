"""The one client/server interface every method implements; it knows nothing of the engine.

An engine (embedded loop, Flower app) owns the rounds: it asks a method for the initial
shared parameters, gives each sampled client the current shared parameters and that
client's private state, stores the returned private state, and hands the updates to
`aggregate`. Everything is plain dicts of tensors so engines can store or send them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from feddat.config import Config
from feddat.data.clients import ClientData, Split
from feddat.heads import TaskHead
from feddat.losses import score
from feddat.peft.model import AdaptedModel, check_state
from feddat.runtime import autocast, derive_seed, generator

Tensors = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    client: str
    shared: Tensors  # what travels to the server (empty for methods that share nothing)
    num_examples: int
    state: Tensors  # private state, kept by the client
    metrics: dict[str, float] = field(default_factory=dict)


class UpdateRejected(ValueError):
    """A client update the server will not aggregate; the message names the client."""


class Method:
    """Base: FedAvg-style server (weighted mean of shared adapters), helpers for clients."""

    name = "base"
    personal = False  # has a personal (client-specific) evaluation path
    pooled = False  # trains on all clients' data at once (centralised)
    communicates = True  # clients send A_s to the server each round

    def __init__(self, cfg: Config, model: AdaptedModel, device: torch.device):
        self.cfg = cfg
        self.model = model
        self.device = device
        for adapter in self.adapter_sets():
            if adapter not in model.adapter_names():
                model.add_adapter(adapter, trainable=adapter != "frozen")

    def adapter_sets(self) -> tuple[str, ...]:
        return ("shared",)

    # ---- server side -------------------------------------------------------------------
    def init_shared(self) -> Tensors:
        """A_s at round 0: the same for every method under one seed, for a fair comparison."""
        torch.manual_seed(derive_seed(self.cfg.run.seed, "shared-init"))
        return self.model.new_adapter_state()

    def aggregate(self, shared: Tensors, updates: list[ClientUpdate]) -> Tensors:
        """A_s ← Σ_k w_k A_s^k, w_k ∝ n_k (or uniform, as the reference code)."""
        if not updates:
            return shared
        for u in updates:
            problem = check_state(u.shared, shared)
            if problem:
                raise UpdateRejected(f"update from client '{u.client}' rejected: {problem}")
        if self.cfg.federation.weighting == "uniform":
            weights = [1.0] * len(updates)
        else:
            weights = [float(u.num_examples) for u in updates]
        total = sum(weights)
        if total <= 0:
            raise UpdateRejected("all client updates carry zero examples")
        return {k: sum(w / total * u.shared[k].double() for w, u in zip(weights, updates)).to(shared[k].dtype) for k in shared}

    # ---- client side -------------------------------------------------------------------
    def init_client_state(self, client: ClientData) -> Tensors:
        """Private state at first participation: the task head (and client adapters in subclasses)."""
        torch.manual_seed(derive_seed(self.cfg.run.seed, "head", client.name))
        head = TaskHead(self.model.hidden_size, client.num_answers)
        return {f"head.{k}": v for k, v in head.state_dict().items()}

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        raise NotImplementedError

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        """Scores on the client's held-out split: 'global' (and 'personal' where the method has one)."""
        head = self.load_head(state, client)
        self.model.load_adapter("shared", shared)
        return {"global": self.score_split(client.test, head, ("shared",))}

    # ---- helpers shared by the methods -------------------------------------------------
    def load_head(self, state: Tensors, client: ClientData) -> TaskHead:
        head = TaskHead(self.model.hidden_size, client.num_answers)
        head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        return head.to(self.device)

    @staticmethod
    def head_state(head: nn.Module) -> Tensors:
        return {f"head.{k}": v.detach().cpu().clone() for k, v in head.state_dict().items()}

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW; no weight decay on biases and LayerNorm weights (every 1-d parameter)."""
        t = self.cfg.train
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps)

    def batches(self, split: Split, *seed_parts) -> Iterator[tuple[torch.Tensor, ...]]:
        """Shuffled minibatches for local_epochs epochs, in an order fixed by the seed parts."""
        g = generator(self.cfg.run.seed, *seed_parts)
        size = self.cfg.train.batch_size
        for _ in range(self.cfg.train.local_epochs):
            order = torch.randperm(len(split), generator=g)
            for i in range(0, len(order), size):
                yield split.batch(order[i : i + size], self.device)

    def logits(self, head: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        features, ids, mask, _ = batch
        with autocast(self.device):
            return head(self.model(features, ids, mask)).float()

    @torch.no_grad()
    def score_split(self, split: Split, head: nn.Module, adapters: tuple[str, ...]) -> float:
        if len(split) == 0:
            return float("nan")
        total = 0.0
        size = self.cfg.train.eval_batch_size
        with self.model.active(*adapters):
            for i in range(0, len(split), size):
                batch = split.batch(torch.arange(i, min(i + size, len(split))), self.device)
                total += float(score(self.logits(head, batch), batch[3]).sum())
        return total / len(split)
