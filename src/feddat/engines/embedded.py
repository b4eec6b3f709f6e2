"""The embedded engine: one process, clients one after another, deterministic under a seed."""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from feddat.algorithms import build_method, privacy
from feddat.algorithms.base import Method, Tensors
from feddat.config import Config
from feddat.data.clients import ClientData
from feddat.engines.state import Checkpoint, ClientStateStore, Progress
from feddat.peft.model import AdaptedModel
from feddat.runtime import derive_seed, save_tensors, tensor_bytes, write_text
from feddat import progress, tracking
from feddat.progress import Ticker  # noqa: F401  (the engine's throttled lines; imported from here by older code)


class Clock:
    """Seconds spent per kind of work, to show where a round's time goes (DESIGN §8)."""

    KINDS = ("compute", "aggregate", "evaluate", "state_io", "data")

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] += time.perf_counter() - t0

    def split(self) -> dict[str, float]:
        return {k: round(self.seconds[k], 4) for k in self.KINDS}


def sample_clients(clients: Sequence[ClientData], fraction: float, seed: int, round_: int) -> list[ClientData]:
    """A seeded fraction of the clients (at least one), in their original order."""
    k = max(1, math.ceil(fraction * len(clients)))
    if k == len(clients):
        return list(clients)
    g = torch.Generator().manual_seed(derive_seed(seed, "sample", round_))
    picked = sorted(torch.randperm(len(clients), generator=g)[:k].tolist())
    return [clients[i] for i in picked]


class MetricsLog:
    """Append-only JSONL, flushed and fsynced per write, so a crash loses at most the lines in flight."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def keep(self, predicate: Callable[[dict], bool]) -> None:
        """Rewrite the log (atomically) with only the records `predicate` accepts; a torn last line goes."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a kill cut short
            if predicate(record):
                kept.append(line + "\n")
        write_text(self.path, "".join(kept))


def run_method(name: str, cfg: Config, model: AdaptedModel, clients: Sequence[ClientData], run_dir: Path, device: torch.device, log: Callable[[str], None] = print, resume: bool = False) -> dict:
    """Train one method for cfg.federation.rounds rounds; returns its summary.

    Every round ends with a checkpoint (A_s, the method's server state, counters) committed
    atomically after the clients' new state files; `resume=True` continues from the last
    committed round and reproduces an uninterrupted run exactly. `clients` may be a list or a
    lazy sequence (data.lazy.LazyClients) so memory does not grow with their number.
    """
    method = build_method(name, cfg, model, device)
    fed = cfg.federation
    store = ClientStateStore(run_dir / "state" / name)
    checkpoint = Checkpoint(run_dir / "checkpoint" / name)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    clock = Clock()
    counters = {"train_s": 0.0, "steps": 0, "wall_s": 0.0}
    committed = checkpoint.load() if resume else None
    if committed is not None:
        shared = committed.shared
        method.load_server_state(committed.server)
        counters.update({k: v for k, v in committed.counters.items() if k in counters})
        clock.seconds.update(committed.counters.get("clock", {}))
        first_round = committed.round + 1
    else:
        shared = method.init_shared()
        first_round = 1
    if resume:
        store.discard_after(first_round - 1)
        store.compact()
        metrics.keep(lambda r: r.get("method") != name or int(r.get("round", 0)) < first_round)
        if first_round > 1:
            log(f"  [{name}] resuming after round {first_round - 1}")
    accountant = None
    if privacy.enabled(cfg.privacy) and method.communicates:
        accountant = privacy.Accountant(cfg.privacy, len(sample_clients(range(len(clients)), fed.fraction, cfg.run.seed, 1)) / len(clients))
        accountant.replay(first_round - 1)
    started = time.perf_counter() - counters["wall_s"]
    shown = progress.display(cfg.run.progress, log)
    log = shown.log  # on a terminal, lines are written above the bars
    with progress.use(shown), shown.rounds(fed.rounds, first_round - 1, name) as round_done, tracking.trackers(cfg, run_dir, name, resume) as tracker:
        for round_ in range(first_round, fed.rounds + 1):
            t0 = time.perf_counter()
            with clock("data"):
                participants = sample_clients(clients, fed.fraction, cfg.run.seed, round_)
            ticker = shown.counter(f"  [{name}] round {round_}/{fed.rounds}  ...")
            shared, train_metrics = train_round(method, shared, participants, store, round_, clock, ticker)
            ticker.close()
            counters["train_s"] += time.perf_counter() - t0
            counters["steps"] += sum(int(m.get("steps", 0)) for m in train_metrics.values())
            records = [{"method": name, "round": round_, "client": c, "kind": "train", **m} for c, m in train_metrics.items()]
            for client, m in train_metrics.items():
                if "rejected" in m:
                    log(f"  [{name}] round {round_}: update from client '{client}' rejected: {m['rejected']}")
            line = f"  [{name}] round {round_}/{fed.rounds}  {time.perf_counter() - t0:6.1f}s  loss " + " ".join(f"{m.get('loss', m.get('loss_student', 0)):.3f}" for m in list(train_metrics.values())[:8])
            if accountant is not None:
                epsilon = accountant.step()
                records.append({"method": name, "round": round_, "client": "all", "kind": "privacy", "epsilon": epsilon, "delta": cfg.privacy.delta})
                line += f"  ε={epsilon:.2f} (δ={cfg.privacy.delta:g})"
            if round_ % fed.eval_every == 0 or round_ == fed.rounds:
                scores = evaluate_all(method, shared, clients, store, clock, fed.eval_fraction, cfg.run.seed)
                records += [{"method": name, "round": round_, "client": c, "kind": "eval", **s} for c, s in scores.items()]
                line += f"  | mean global {mean(s['global'] for s in scores.values()):.3f}"
                if method.personal:
                    line += f"  personal {mean(s['personal'] for s in scores.values()):.3f}"
            # Metrics first, then the commit: a crash in between replays this round (its lines are dropped on resume).
            metrics.write_many(records)
            counters["wall_s"] = time.perf_counter() - started
            checkpoint.save(Progress(round_, shared, method.server_state(), {**counters, "clock": dict(clock.seconds)}))
            store.prune()
            tracker.log_records(records)
            log(line)
            round_done()
        summary = method_summary(name, method, shared, clients, cfg, counters, clock, time.perf_counter() - started)
        tracker.log_summary(summary)
    save_tensors(run_dir / name / "shared_adapter.safetensors", shared, metadata={"method": name, "rounds": str(fed.rounds)})
    return summary


def method_summary(name: str, method: Method, shared: Tensors, clients: Sequence[ClientData], cfg: Config, counters: dict, clock: Clock, wall_s: float) -> dict:
    """What summary.json records for one method: times, steps, parameters and bytes."""
    split = clock.split()
    fed = cfg.federation
    return {
        "method": name,
        "wall_s": wall_s,
        "train_s": counters["train_s"],
        "eval_s": split["evaluate"],
        "local_steps": counters["steps"],
        "s_per_local_step": split["compute"] / max(1, counters["steps"]),
        "shared_params": sum(t.numel() for t in shared.values()),
        "bytes_up_per_round": tensor_bytes(shared) * len(sample_clients(range(len(clients)), fed.fraction, cfg.run.seed, 1)) if method.communicates else 0,
        "time_split_s": split,
        # everything in the training rounds that is not the clients' own compute
        "engine_overhead": (counters["train_s"] - split["compute"]) / counters["train_s"] if counters["train_s"] > 0 else 0.0,
    }


def train_round(method: Method, shared: Tensors, participants: list[ClientData], store: ClientStateStore, round_: int, clock: Clock | None = None, ticker: Callable[[int, int, str], None] | None = None) -> tuple[Tensors, dict[str, dict]]:
    clock = clock or Clock()
    ticker = ticker or (lambda done, total, unit: None)
    if method.pooled:
        with clock("state_io"):
            states = {c.name: load_state(method, store, c) for c in participants}
        with clock("compute"):
            shared, new_states, m = method.pooled_update(shared, states, participants, round_, ticker)
        with clock("state_io"):
            for client, state in new_states.items():
                store.save(client, state, round_)
        return shared, {"all": m}
    updates = []
    for client in participants:
        with clock("state_io"):
            state = load_state(method, store, client)
        with clock("compute"):
            update = method.client_side(shared, method.client_update(shared, state, client, round_))
        with clock("state_io"):
            store.save(client.name, update.state, round_)
        updates.append(update)
        ticker(len(updates), len(participants), "clients trained")
    with clock("aggregate"):
        shared, rejected = method.server_round(shared, updates, round_)
    metrics = {u.client: u.metrics for u in updates}
    for r in rejected:  # the round went on without them; the log says who and why
        metrics[r.client] = {**metrics[r.client], "rejected": r.reason}
    return shared, metrics


def load_state(method: Method, store: ClientStateStore, client: ClientData) -> Tensors:
    state = store.load(client.name)
    return state if state is not None else method.init_client_state(client)


def evaluate_all(method: Method, shared: Tensors, clients: Sequence[ClientData], store: ClientStateStore, clock: Clock | None = None, fraction: float = 1.0, seed: int = 0) -> dict[str, dict[str, float]]:
    """Scores of every client, or of a fixed seeded sample of them (the same one each time)."""
    clock = clock or Clock()
    scores = {}
    for i in sample_clients(range(len(clients)), fraction, seed, "eval"):
        with clock("data"):
            client = clients[i]
        with clock("state_io"):
            state = load_state(method, store, client)
        with clock("evaluate"):
            scores[client.name] = method.evaluate(shared, state, client)
    return scores


def mean(values) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")
