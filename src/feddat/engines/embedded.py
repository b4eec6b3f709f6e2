"""The embedded engine: one process, clients one after another, deterministic under a seed.

It drives the rounds of rounds.py (the same as the Flower engine's) with the clients in this
process, keeps their private state on disk (state.py) and commits a checkpoint every round.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from feddat.algorithms import build_method
from feddat.algorithms.base import ClientUpdate, Method, Tensors
from feddat.algorithms.validation import Rejection
from feddat.config import Config
from feddat.data.clients import ClientData
from feddat.engines.rounds import Rounds, mean, sample_clients  # noqa: F401  (sample_clients, mean: imported from here by older code)
from feddat.engines.rundir import MetricsLog, config_fingerprint, save_shared
from feddat.engines.selection import BestSnapshots, Snapshot, ValidationViews
from feddat.engines.state import Checkpoint, ClientStateStore, Progress, checked_client_state
from feddat.peft.model import AdaptedModel
from feddat import progress, tracking
from feddat.progress import Ticker  # noqa: F401  (the engine's throttled lines; imported from here by older code)


class Clock:
    """Seconds spent per kind of work, to show where a round's time goes (docs/design.md §8). Timed
    spans may nest: a second is counted once, under the innermost kind running then."""

    KINDS = ("compute", "aggregate", "evaluate", "state_io", "data")

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._nested: list[float] = []  # per open span: seconds of the spans inside it

    @contextmanager
    def __call__(self, kind: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            self.seconds[kind] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def split(self) -> dict[str, float]:
        return {k: round(self.seconds[k], 4) for k in self.KINDS}


class StoredStates:
    """The participants' private states for `Method.train_clients`: from the store (else fresh),
    saved there as written in `round_`; reading and writing count as state I/O."""

    def __init__(self, method: Method, store: ClientStateStore, round_: int, clock: Clock):
        self.method, self.store, self.round, self.clock = method, store, round_, clock

    def load(self, client: ClientData) -> Tensors:
        with self.clock("state_io"):
            return load_state(self.method, self.store, client)

    def save(self, client: str, state: Tensors) -> None:
        with self.clock("state_io"):
            self.store.save(client, state, self.round)


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
    checkpoint = Checkpoint(run_dir / "checkpoint" / name, config_fingerprint(cfg))
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    best = BestSnapshots(run_dir / "checkpoint" / name)  # the best validated round's model (federation.select_round = best)
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
        # the rounds to run again go; with a validation split, so does the one test evaluation (made again at the end)
        metrics.keep(lambda r: r.get("method") != name or (int(r.get("round", 0)) < first_round and not (cfg.data.validation_per_client and r.get("kind") == "eval")))
        best.restore(first_round - 1)
        if first_round > 1:
            log(f"  [{name}] resuming after round {first_round - 1}")
    started = time.perf_counter() - counters["wall_s"]
    shown = progress.display(cfg.run.progress, log)
    log = shown.log  # on a terminal, lines are written above the bars
    rounds = Rounds(method, cfg, len(clients), log)
    rounds.resume(first_round - 1, int(counters["steps"]))
    if resume and rounds.validates and metrics.path.is_file():
        from feddat.reporting import read_metrics

        rounds.recall_validation(read_metrics(metrics.path))
    with progress.use(shown), shown.rounds(fed.rounds, first_round - 1, name) as round_done, tracking.trackers(cfg, run_dir, name, resume) as tracker:
        loop_start = time.perf_counter()
        for round_ in range(first_round, fed.rounds + 1):
            t0 = time.perf_counter()
            with clock("data"):
                participants = rounds.participants(clients, round_)
            ticker = shown.counter(f"  [{name}] round {round_}/{fed.rounds}  ...")
            shared, updates, rejected = train_round(method, shared, participants, store, round_, clock, ticker)
            ticker.close()
            counters["train_s"] += time.perf_counter() - t0
            records, line = rounds.trained(round_, updates, rejected, time.perf_counter() - t0)
            counters["steps"] = rounds.steps
            snapshot = None
            if rounds.evaluates(round_) and rounds.validates:
                evaluated, scores, selected = rounds.validated(round_, evaluate_all(method, shared, ValidationViews(clients), store, clock, rounds.evaluation_sample()))
                if selected and fed.select_round == "best":
                    snapshot = model_at(method, shared, clients, store, clock, rounds.evaluation_sample(), round_, rounds.best[1])
                records += evaluated
                line += f"  | {scores}"
            elif rounds.evaluates(round_):
                evaluated, scores = rounds.evaluated(round_, evaluate_all(method, shared, clients, store, clock, rounds.evaluation_sample()))
                records += evaluated
                line += f"  | {scores}"
            line += rounds.time_left(round_, first_round, time.perf_counter() - loop_start)
            # Metrics first, then the commit: a crash in between replays this round (its lines are dropped on resume).
            metrics.write_many(records)
            counters["wall_s"] = time.perf_counter() - started
            if snapshot is not None:  # before the commit: a committed round's snapshot is on disk
                with clock("state_io"):
                    best.save(snapshot)
            checkpoint.save(Progress(round_, shared, method.server_state(), {**counters, "clock": dict(clock.seconds)}))
            best.committed(round_)
            store.prune()
            tracker.log_records(records)
            log(line)
            round_done()
        selected = None  # the best validated round's model, where that is what the test scored
        if rounds.validates:
            scores, selected = test_selected(method, shared, clients, store, clock, rounds, best)
            tested, line = rounds.tested(scores)
            metrics.write_many(tested)
            tracker.log_records(tested)
            log(line)
        split = clock.split()
        summary = rounds.summary(
            shared, wall_s=time.perf_counter() - started, train_s=counters["train_s"], eval_s=split["evaluate"], compute_s=split["compute"],
            time_split_s=split,
            # everything in the training rounds that is not the clients' own compute
            engine_overhead=(counters["train_s"] - split["compute"]) / counters["train_s"] if counters["train_s"] > 0 else 0.0,
        )
        tracker.log_summary(summary)
    if selected is not None:  # what predict and export serve is the model the test scored
        save_shared(run_dir, name, selected.shared, cfg, selected_round=str(selected.round))
    else:
        save_shared(run_dir, name, shared, cfg)
    return summary


def train_round(method: Method, shared: Tensors, participants: list[ClientData], store: ClientStateStore, round_: int, clock: Clock | None = None, ticker: Callable[[int, int, str], None] | None = None) -> tuple[Tensors, list[ClientUpdate], list[Rejection]]:
    """One round's training: the clients' half in this process, then the server step.
    Returns the new A_s, the updates the server step saw and those it rejected. A client whose
    update was rejected keeps the private state it started the round with."""
    clock = clock or Clock()
    with clock("compute"):  # the clients' own work; their state I/O inside is counted as state_io
        updates = method.train_clients(shared, participants, StoredStates(method, store, round_, clock), round_, ticker)
    with clock("aggregate"):
        shared, rejected = method.server_round(shared, updates, round_)
    with clock("state_io"):
        for r in rejected:
            store.revert(r.client, round_)
    return shared, updates, rejected


def model_at(method: Method, shared: Tensors, clients: Sequence[ClientData], store: ClientStateStore, clock: Clock, sample: Sequence[int], round_: int, score: float) -> Snapshot:
    """The model of `round_` as its evaluation saw it: A_s and the evaluated clients' states."""
    states = {}
    for i in sample:
        client = clients[i]
        with clock("state_io"):
            states[client.name] = load_state(method, store, client)
    return Snapshot(round_, score, {k: v.detach().cpu().clone() for k, v in shared.items()}, states)


def test_selected(method: Method, shared: Tensors, clients: Sequence[ClientData], store: ClientStateStore, clock: Clock, rounds: Rounds, best: BestSnapshots) -> tuple[dict[str, dict[str, float]], Snapshot | None]:
    """The one test evaluation of a run with a validation split, on the selected round's model:
    the model now (the last round's; no snapshot returned), or the best validated round's
    snapshot (returned, to be the run's deployed model)."""
    sample = rounds.evaluation_sample()
    if rounds.cfg.federation.select_round == "last" or rounds.best is None:  # no round validated to a number: the last
        return evaluate_all(method, shared, clients, store, clock, sample), None
    selected = rounds.selected_round()
    with clock("state_io"):
        snapshot = best.load()
    if snapshot is None or snapshot.round != selected:
        raise RuntimeError(f"the model of round {selected}, the best validated one, is not in {best.root} (found {snapshot.round if snapshot else 'none'}); was the folder edited?")
    scores = {}
    for i in sample:
        client = clients[i]
        with clock("evaluate"):
            scores[client.name] = method.evaluate(snapshot.shared, snapshot.states[client.name], client)
    return scores, snapshot


def load_state(method: Method, store: ClientStateStore, client: ClientData) -> Tensors:
    versions = store.versions(client.name)
    if not versions:
        return method.init_client_state(client)
    path = versions[-1][1]
    return checked_client_state(method, client, store.load_version(client.name, path), path)


def evaluate_all(method: Method, shared: Tensors, clients: Sequence[ClientData], store: ClientStateStore, clock: Clock | None = None, sample: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """Scores of every client, or of the clients at the indices `sample` (Rounds.evaluation_sample)."""
    clock = clock or Clock()
    scores = {}
    for i in range(len(clients)) if sample is None else sample:
        with clock("data"):
            client = clients[i]
        with clock("state_io"):
            state = load_state(method, store, client)
        with clock("evaluate"):
            scores[client.name] = method.evaluate(shared, state, client)
    return scores
