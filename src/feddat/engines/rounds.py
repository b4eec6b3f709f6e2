"""One round of a method, the same under every engine (docs/design.md §7).

`Rounds` decides which clients train in a round (a seeded fraction), whether the round
evaluates and whom (a fixed seeded sample), and turns what came back into the metrics.jsonl
records, the round's log line and, at the end, the summary.json entry; it also keeps the
privacy accountant. The engines differ only in how they reach the clients: the embedded
engine (embedded.py) calls them one after another in its process, the Flower engine
(flower/server_app.py) sends them messages. Neither special-cases a method: what an engine
needs to know of one, it asks through the method interface (algorithms/base.py).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, TypeVar

import torch

from feddat.algorithms import privacy
from feddat.algorithms.base import ClientUpdate, Method, Tensors
from feddat.algorithms.validation import Rejection
from feddat.config import Config
from feddat.runtime import derive_seed, tensor_bytes

T = TypeVar("T")
# The fields of a metrics.jsonl record that say what it is; a metric of the same name never
# overwrites them (`Rounds.record`). "rejected" is set by the server step alone.
RECORD_FIELDS = ("method", "round", "client", "kind")
RESERVED_METRICS = (*RECORD_FIELDS, "rejected")


def sample_clients(clients: Sequence[T], fraction: float, seed: int, round_: int | str) -> list[T]:
    """A seeded fraction of the clients (at least one), in their original order."""
    k = max(1, math.ceil(fraction * len(clients)))
    if k == len(clients):
        return list(clients)
    g = torch.Generator().manual_seed(derive_seed(seed, "sample", round_))
    picked = sorted(torch.randperm(len(clients), generator=g)[:k].tolist())
    return [clients[i] for i in picked]


def mean(values) -> float:
    """The mean of the values that are numbers (NaN, a client without a score, is left out)."""
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


class Rounds:
    """The rounds of one method over `num_clients` ordered clients: schedule, records, summary.

    An engine calls, per round: `participants`, then `trained` with the updates its server
    step took in (and those it rejected); when `evaluates` says so, `evaluated` with the
    scores of the `evaluation_sample`; and `summary` once at the end.
    """

    def __init__(self, method: Method, cfg: Config, num_clients: int, log: Callable[[str], None] = print):
        self.method, self.cfg, self.num_clients, self.log = method, cfg, num_clients, log
        method.num_clients = num_clients  # the N of server rules such as SCAFFOLD's (Method.participation)
        self.name = method.name
        fed = cfg.federation
        # Clients per round: the same in every round (a fixed fraction of a fixed list).
        self.per_round = len(sample_clients(range(num_clients), fed.fraction, cfg.run.seed, 1))
        self.accountant = privacy.Accountant(cfg.privacy, self.per_round / num_clients) if privacy.enabled(cfg.privacy) and method.communicates else None
        self.steps = 0  # local optimiser steps so far, over all clients
        self.first_round_s: float | None = None  # how long this process's first round took (time_left)
        # With a validation split (data.validation_per_client), evaluated rounds score it and the
        # test split is scored once, at the end, on the model of the round federation.select_round picks.
        self.validates = cfg.data.validation_per_client > 0
        self.best: tuple[int, float] | None = None  # (round, mean global validation score) of the best so far

    def resume(self, finished_rounds: int, steps: int) -> None:
        """Continue after `finished_rounds` committed rounds that took `steps` local steps."""
        self.steps = steps
        if self.accountant is not None:
            self.accountant.replay(finished_rounds)

    # ---- schedule --------------------------------------------------------------------------
    def participants(self, clients: Sequence[T], round_: int) -> list[T]:
        """The clients that train in `round_`: from the engine's ordered list (`clients` are
        ClientData or names, the same order either way, so both engines pick the same)."""
        return sample_clients(clients, self.cfg.federation.fraction, self.cfg.run.seed, round_)

    def evaluates(self, round_: int) -> bool:
        fed = self.cfg.federation
        return round_ % fed.eval_every == 0 or round_ == fed.rounds

    def evaluation_sample(self) -> list[int]:
        """Indices of the clients evaluated: a fixed seeded sample, the same one each time."""
        return sample_clients(range(self.num_clients), self.cfg.federation.eval_fraction, self.cfg.run.seed, "eval")

    # ---- what comes back -------------------------------------------------------------------
    def trained(self, round_: int, updates: list[ClientUpdate], rejected: list[Rejection], seconds: float) -> tuple[list[dict], str]:
        """The round's train records (and privacy record) and its log line; rejections are logged."""
        reasons = {r.client: r.reason for r in rejected}
        for client, reason in reasons.items():  # the round went on without them; the log says who and why
            self.log(f"  [{self.name}] round {round_}: update from client '{client}' rejected: {reason}")
        records = [self.record(round_, u.client, "train", {**u.metrics, **({"rejected": reasons[u.client]} if u.client in reasons else {})}) for u in updates]
        self.steps += sum(int(u.metrics.get("steps", 0)) for u in updates)
        line = f"  [{self.name}] round {round_}/{self.cfg.federation.rounds}  {seconds:6.1f}s  loss " + " ".join(f"{self.method.train_loss(u.metrics):.3f}" for u in updates[:8])
        if self.accountant is not None:
            epsilon = self.accountant.step()
            records.append(self.record(round_, "all", "privacy", {"epsilon": epsilon, "delta": self.cfg.privacy.delta}))
            line += f"  ε={epsilon:.2f} (δ={self.cfg.privacy.delta:g})"
        return records, line

    def evaluated(self, round_: int, scores: dict[str, dict[str, float]], kind: str = "eval", **fields) -> tuple[list[dict], str]:
        """The round's eval records (of `kind`, with `fields` added), and the scores for its log
        line ('mean global …')."""
        records = [self.record(round_, client, kind, {**s, **fields}) for client, s in scores.items()]
        text = f"mean global {100 * mean(s['global'] for s in scores.values()):.1f}%"  # in % as the tables
        if self.method.personal:
            text += f"  personal {100 * mean(s['personal'] for s in scores.values()):.1f}%"
        return records, text

    def validated(self, round_: int, scores: dict[str, dict[str, float]]) -> tuple[list[dict], str, bool]:
        """The round's validation records (kind "validation": the test split is not scored), its
        log text, and whether this round is now the selected one: every round under
        federation.select_round = last; under best, a round whose mean global validation score
        beats every earlier one (a tie keeps the earlier round)."""
        records, text = self.evaluated(round_, scores, "validation")
        improved = self.consider(round_, mean(s["global"] for s in scores.values()))  # kept under "last" too, for the summary
        return records, "validation " + text, self.cfg.federation.select_round == "last" or improved

    def consider(self, round_: int, score: float) -> bool:
        """Whether `round_`, validated to `score`, is the best so far (kept in `best`); a tie
        keeps the earlier round, a NaN (no client scored) is never the best."""
        improved = score == score and (self.best is None or score > self.best[1])
        if improved:
            self.best = (round_, score)
        return improved

    def recall_validation(self, records: list[dict]) -> None:
        """On resume: the best validated round among the committed ones, from the validation
        records of this method that metrics.jsonl kept (as `validated` found it then)."""
        by_round: dict[int, dict[str, dict]] = {}
        for r in records:
            if r.get("method") == self.name and r.get("kind") == "validation":
                by_round.setdefault(int(r["round"]), {})[r["client"]] = r
        self.best = None
        for round_, scores in sorted(by_round.items()):
            self.consider(round_, mean(s["global"] for s in scores.values()))

    def selected_round(self) -> int:
        """The round whose model the test split scores: the last, or the best validated one."""
        if self.cfg.federation.select_round == "best" and self.best is not None:
            return self.best[0]
        return self.cfg.federation.rounds

    def tested(self, scores: dict[str, dict[str, float]]) -> tuple[list[dict], str]:
        """The one test evaluation of a run with a validation split: eval records under the
        selected round (so the tables read them as the run's final scores), marked with the rule."""
        round_ = self.selected_round()
        records, text = self.evaluated(round_, scores, select_round=self.cfg.federation.select_round)
        return records, f"  [{self.name}] test split, once, on the model of round {round_} ({self.selection_text()}): {text}"

    def selection_text(self) -> str:
        if self.cfg.federation.select_round == "last":
            return "the last round, federation.select_round = last"
        return "the best mean global validation score, federation.select_round = best"

    def selection_summary(self) -> dict:
        """What summary.json records of the selection (nothing without a validation split)."""
        if not self.validates:
            return {}
        return {"select_round": self.cfg.federation.select_round, "selected_round": self.selected_round(), "best_validation_round": self.best[0] if self.best else None,
                "best_validation_global": self.best[1] if self.best else None}

    def time_left(self, round_: int, first_round: int, elapsed_s: float) -> str:
        """'  ~3 min left' for the log line of a round that is not the last: the rounds still to
        run, at the pace of the rounds run since this process's first (or, after the first
        alone, at its pace). The first round is no guide to the others: it fills the caches of
        the frozen backbone (peft/prefix.py), and a bare backbone's later rounds cost almost
        nothing."""
        remaining, done = self.cfg.federation.rounds - round_, round_ - first_round + 1
        if round_ == first_round:
            self.first_round_s = elapsed_s
        if remaining <= 0 or done <= 0:
            return ""
        if done == 1 or self.first_round_s is None:
            left = elapsed_s / done * remaining
        else:
            left = (elapsed_s - self.first_round_s) / (done - 1) * remaining
        return f"  ~{left:.0f} s left" if left < 90 else f"  ~{left / 60:.0f} min left"

    def record(self, round_: int, client: str, kind: str, values: dict) -> dict:
        """One metrics.jsonl record: its own fields (RECORD_FIELDS), then `values`; a value
        named like one of those fields does not replace it (an engine refuses such metric names
        from a client before this: flower/server_app.py)."""
        own = {"method": self.name, "round": round_, "client": client, "kind": kind}
        return {**own, **{k: v for k, v in values.items() if k not in own}}

    def summary(self, shared: Tensors, wall_s: float, train_s: float, eval_s: float, compute_s: float, **extra) -> dict:
        """What summary.json records for the method: times, steps, parameters and bytes (`extra`:
        what one engine measures beyond these)."""
        return {
            "method": self.name,
            "wall_s": wall_s,
            "train_s": train_s,
            "eval_s": eval_s,
            "local_steps": self.steps,
            "s_per_local_step": compute_s / max(1, self.steps),
            "shared_params": sum(t.numel() for t in shared.values()),
            "bytes_up_per_round": tensor_bytes(shared) * self.per_round if self.method.communicates else 0,
            **self.selection_summary(),
            **extra,
        }
