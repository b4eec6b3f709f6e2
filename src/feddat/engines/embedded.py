"""The embedded engine: one process, clients one after another, deterministic under a seed."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch

from feddat.algorithms import build_method
from feddat.algorithms.base import Method, Tensors
from feddat.config import Config
from feddat.data.clients import ClientData
from feddat.engines.state import ClientStateStore
from feddat.peft.model import AdaptedModel
from feddat.runtime import derive_seed, save_tensors


def tensor_bytes(tensors: Tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def sample_clients(clients: list[ClientData], fraction: float, seed: int, round_: int) -> list[ClientData]:
    """A seeded fraction of the clients (at least one), in their original order."""
    k = max(1, math.ceil(fraction * len(clients)))
    if k == len(clients):
        return list(clients)
    g = torch.Generator().manual_seed(derive_seed(seed, "sample", round_))
    picked = sorted(torch.randperm(len(clients), generator=g)[:k].tolist())
    return [clients[i] for i in picked]


class MetricsLog:
    """Append-only JSONL; one flushed line per record, so a crash loses at most the line in flight."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()


def run_method(name: str, cfg: Config, model: AdaptedModel, clients: list[ClientData], run_dir: Path, device: torch.device, log: Callable[[str], None] = print) -> dict:
    """Train one method for cfg.federation.rounds rounds; returns its summary."""
    method = build_method(name, cfg, model, device)
    fed = cfg.federation
    store = ClientStateStore(run_dir / "state" / name)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    shared = method.init_shared()
    bytes_per_client = tensor_bytes(shared) if method.communicates else 0
    times = {"train": 0.0, "eval": 0.0, "steps": 0}
    started = time.perf_counter()
    for round_ in range(1, fed.rounds + 1):
        t0 = time.perf_counter()
        participants = sample_clients(clients, fed.fraction, cfg.run.seed, round_)
        shared, train_metrics = train_round(method, shared, participants, store, round_)
        times["train"] += time.perf_counter() - t0
        times["steps"] += sum(int(m.get("steps", 0)) for m in train_metrics.values())
        for client, m in train_metrics.items():
            metrics.write({"method": name, "round": round_, "client": client, "kind": "train", **m})
        line = f"  [{name}] round {round_}/{fed.rounds}  {time.perf_counter() - t0:6.1f}s  loss " + " ".join(f"{m.get('loss', m.get('loss_student', 0)):.3f}" for m in train_metrics.values())
        if round_ % fed.eval_every == 0 or round_ == fed.rounds:
            t1 = time.perf_counter()
            scores = evaluate_all(method, shared, clients, store)
            times["eval"] += time.perf_counter() - t1
            for client, s in scores.items():
                metrics.write({"method": name, "round": round_, "client": client, "kind": "eval", **s})
            line += f"  | mean global {mean(s['global'] for s in scores.values()):.3f}"
            if method.personal:
                line += f"  personal {mean(s['personal'] for s in scores.values()):.3f}"
        log(line)
    save_tensors(run_dir / name / "shared_adapter.safetensors", shared, metadata={"method": name, "rounds": str(fed.rounds)})
    return {
        "method": name,
        "wall_s": time.perf_counter() - started,
        "train_s": times["train"],
        "eval_s": times["eval"],
        "local_steps": times["steps"],
        "s_per_local_step": times["train"] / max(1, times["steps"]),
        "shared_params": sum(t.numel() for t in shared.values()),
        "bytes_up_per_round": bytes_per_client * len(sample_clients(clients, fed.fraction, cfg.run.seed, 1)),
    }


def train_round(method: Method, shared: Tensors, participants: list[ClientData], store: ClientStateStore, round_: int) -> tuple[Tensors, dict[str, dict]]:
    if method.pooled:
        states = {c.name: load_state(method, store, c) for c in participants}
        shared, new_states, m = method.pooled_update(shared, states, participants, round_)
        for client, state in new_states.items():
            store.save(client, state)
        return shared, {"all": m}
    updates = []
    for client in participants:
        update = method.client_update(shared, load_state(method, store, client), client, round_)
        store.save(client.name, update.state)
        updates.append(update)
    return method.aggregate(shared, updates), {u.client: u.metrics for u in updates}


def load_state(method: Method, store: ClientStateStore, client: ClientData) -> Tensors:
    state = store.load(client.name)
    return state if state is not None else method.init_client_state(client)


def evaluate_all(method: Method, shared: Tensors, clients: list[ClientData], store: ClientStateStore) -> dict[str, dict[str, float]]:
    return {c.name: method.evaluate(shared, load_state(method, store, c), c) for c in clients}


def mean(values) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")
