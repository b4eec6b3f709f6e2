"""The one client/server interface every method implements; it knows nothing of the engine.

An engine (embedded loop, Flower app) owns the rounds: it asks a method for the initial
shared parameters, gives each sampled client the current shared parameters and that
client's private state, stores the returned private state, and hands the updates to
`aggregate`. Everything is plain dicts of tensors so engines can store or send them.
What an engine needs to know of a method it asks here, never by the method's name: whether it
has a personal view (`personal`), sends anything (`communicates`), needs every participant's
data in one process (`pooled`), which metric is its training loss (`train_loss`); an engine
holding every participant in its process runs a round's client half with `train_clients`.

Every tensor that crosses that boundary (shared parameters, updates, client state, server
state) lives on the CPU, `runtime.HOME`: a client moves what it needs onto its compute device
inside its update and hands back CPU copies, so the server side never mixes devices, whatever
device the clients train on (tests/test_device_home.py runs every method with the model on
another device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

import torch
from torch import nn

from feddat.config import Config
from feddat.data.clients import ClientData, Split, decodes as backbone_decodes
from feddat.data.types import Batch
from feddat.answer_tokens import AnswerTokens
from feddat.backbones.base import greedy_decode
from feddat.heads import AnswerReadout, TaskHead
from feddat.losses import answer_log_likelihood, task_loss
from feddat.reporting import GENERATED
from feddat import progress
import feddat.algorithms.privacy as privacy
from feddat.algorithms.validation import Rejection, coordinatewise, problem_with
from feddat.peft.model import AdaptedModel, check_state
from feddat.runtime import at_home, autocast, derive_seed, generator

Tensors = dict[str, torch.Tensor]
B = TypeVar("B")  # a minibatch: a Batch, or what a method iterates instead (FedRep: representations)


@dataclass
class ClientUpdate:
    client: str
    shared: Tensors  # what travels to the server (empty for methods that share nothing)
    num_examples: int
    state: Tensors  # private state, kept by the client
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # What leaves a client's compute goes home (runtime.HOME), whichever method built it.
        self.shared, self.state = at_home(self.shared), at_home(self.state)


class UpdateRejected(ValueError):
    """A client update the server will not aggregate; the message names the client."""


class ClientStates(Protocol):
    """The participants' private states, as an engine keeps them (`Method.train_clients`)."""

    def load(self, client: ClientData) -> Tensors:
        """The client's state: the one last saved, else `init_client_state`."""

    def save(self, client: str, state: Tensors) -> None: ...


class Method:
    """Base: FedAvg-style server (weighted mean of shared adapters), helpers for clients."""

    name = "base"
    personal = False  # has a personal (client-specific) evaluation path
    # Its round trains on every participant's data at once, in one process (`train_clients`;
    # centralised): an engine that keeps the clients apart (Flower) cannot run it.
    pooled = False
    communicates = True  # clients send A_s to the server each round
    loss_metric = "loss"  # the metric of an update that is its training loss (`train_loss`)
    # Runs on an answer-decoder backbone (token logits, no per-client head); a method whose rule
    # needs a classifier head or a pooled representation (FedRep, MOON) says False.
    decodes_answers = True
    num_clients: int | None = None  # the federation's N, set by the engine's rounds (engines/rounds.py)

    def __init__(self, cfg: Config, model: AdaptedModel, device: torch.device):
        self.cfg = cfg
        self.model = model
        self.device = device
        for adapter in self.adapter_sets():
            if adapter not in model.adapter_names():
                model.add_adapter(adapter, trainable=adapter != "frozen")

    def adapter_sets(self) -> tuple[str, ...]:
        return ("shared",)

    def participation(self, accepted: int) -> float:
        """|S|/N of the server rules that need it (SCAFFOLD's c, FedDyn's h): the updates the
        server step accepted over the federation's clients; federation.fraction where no engine
        said N (a method driven by hand)."""
        return accepted / self.num_clients if self.num_clients else self.cfg.federation.fraction

    @classmethod
    def passes_per_step(cls, cfg: Config) -> tuple[int, int]:
        """(forward, backward) backbone passes per local minibatch under `cfg`, in units of
        FedAvg's batch: the unit of compute in which `feddat compare` matches methods."""
        return (1, 1)

    @classmethod
    def passes_per_round(cls, cfg: Config) -> float:
        """Backbone forward passes a client spends per round besides its local steps, in passes
        over its training data (FedRep's representation pass before its head epochs: 1)."""
        return 0.0

    def trainable_state(self) -> tuple[str, ...]:
        """The prefixes (before the first '.') of the private state entries a client trains,
        as opposed to what it only keeps (control variates, the previous round's adapter, a
        copy of its adapter): the head, and each private adapter set the method adds. A method
        whose private adapter set is kept, not trained (MOON's), says so here."""
        return ("head", *(a for a in self.adapter_sets() if a not in ("shared", "frozen")))

    def trainable_parameters(self, client: ClientData) -> int:
        """Parameters one client trains: the shared PEFT module plus its trainable private state."""
        shared = sum(p.numel() for p in self.model.adapter_parameters("shared")) if "shared" in self.adapter_sets() else 0
        state = self.init_client_state(client)
        return shared + sum(v.numel() for k, v in state.items() if k.split(".")[0] in self.trainable_state())

    def train_loss(self, metrics: dict[str, float]) -> float:
        """The training loss in one update's metrics, as the engines print it each round:
        metrics[loss_metric]; without that key, the first metric named 'loss…' (0 if none)."""
        if self.loss_metric in metrics:
            return float(metrics[self.loss_metric])
        return float(next((v for k, v in metrics.items() if k.startswith("loss")), 0.0))

    # ---- server side -------------------------------------------------------------------
    def init_shared(self) -> Tensors:
        """A_s at round 0: the same for every method under one seed, for a fair comparison."""
        torch.manual_seed(derive_seed(self.cfg.run.seed, "shared-init"))
        return at_home(self.model.new_adapter_state())

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
        how = self.cfg.federation.aggregation
        if how != "mean":
            return {k: coordinatewise([u.shared[k] for u in updates], how, self.cfg.federation.trim_fraction).to(shared[k].dtype) for k in shared}
        total = sum(weights)
        if total <= 0:
            raise UpdateRejected("all client updates carry zero examples")
        return {k: sum(w / total * u.shared[k].double() for w, u in zip(weights, updates)).to(shared[k].dtype) for k in shared}

    def client_side(self, shared: Tensors, update: ClientUpdate) -> ClientUpdate:
        """What a client does to its update before sending it: DP clipping when configured."""
        if self.communicates and privacy.enabled(self.cfg.privacy):
            update.shared = privacy.clip_update(shared, update.shared, self.cfg.privacy.clip_norm)
        return update

    def server_round(self, shared: Tensors, updates: list[ClientUpdate], round_: int = 0) -> tuple[Tensors, list[Rejection]]:
        """The server step every engine calls: drop the updates that fail validation (each
        reported with its client and reason), then `aggregate` the rest (with DP: their
        equal-weight mean plus calibrated Gaussian noise, seeded by the round)."""
        new_shared, rejected = self._server_round(shared, updates, round_)
        return at_home(new_shared), rejected

    def _server_round(self, shared: Tensors, updates: list[ClientUpdate], round_: int) -> tuple[Tensors, list[Rejection]]:
        if not self.communicates:
            return self.aggregate(shared, updates), []
        fed = self.cfg.federation
        accepted, rejected = [], []
        for u in updates:
            problem = problem_with(u.shared, u.num_examples, shared, fed)
            if problem:
                rejected.append(Rejection(u.client, problem))
            else:
                accepted.append(u)
        if updates and len(accepted) < max(1, fed.min_updates):
            reasons = "; ".join(f"'{r.client}': {r.reason}" for r in rejected)
            raise UpdateRejected(f"round cannot complete: {len(accepted)} acceptable update(s) of {len(updates)}, federation.min_updates = {fed.min_updates} ({reasons})")
        if privacy.enabled(self.cfg.privacy):
            if type(self).aggregate is not Method.aggregate:
                raise ValueError(f"privacy.clip_norm is set, but method '{self.name}' aggregates in its own way; DP is available for methods that average A_s (feddat, fedavg, ...)")
            return privacy.noisy_mean(shared, [u.shared for u in accepted], self.cfg.privacy, self.cfg.run.seed, round_), rejected
        return self.aggregate(shared, accepted), rejected

    def server_state(self) -> Tensors:
        """Server-side state beyond A_s that must survive a restart (momentum, control variates)."""
        return {}

    def load_server_state(self, state: Tensors) -> None:
        if state:
            raise ValueError(f"method '{self.name}' keeps no server state, but a checkpoint holds {sorted(state)[:3]}")

    # ---- client side -------------------------------------------------------------------
    def init_client_state(self, client: ClientData) -> Tensors:
        """Private state at first participation: the task head (and client adapters in subclasses)."""
        torch.manual_seed(derive_seed(self.cfg.run.seed, "head", client.name))
        head = self.new_head(client)
        return at_home({f"head.{k}": v for k, v in head.state_dict().items()})

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        raise NotImplementedError

    def train_clients(self, shared: Tensors, clients: Sequence[ClientData], states: ClientStates, round_: int, progress: Callable[[int, int, str], None] | None = None) -> list[ClientUpdate]:
        """The clients' half of a round, for an engine that holds every participant in its
        process (embedded): each client in turn runs its update (`client_update`, then
        `client_side`) from `shared` and its state, and its new state is saved at once. An
        engine that keeps the clients apart (Flower) makes the same two calls on each
        client's node instead. `progress(done, total, unit)` is told after every client.
        A `pooled` method overrides this (centralised)."""
        updates = []
        for client in clients:
            update = self.client_side(shared, self.client_update(shared, states.load(client), client, round_))
            states.save(client.name, update.state)
            updates.append(update)
            if progress is not None:
                progress(len(updates), len(clients), "clients trained")
        return updates

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        """Scores on the client's held-out split: 'global' (and 'personal' where the method has one)."""
        head = self.load_head(state, client)
        self.model.load_adapter("shared", shared)
        return self.view_scores("global", client.test, head, ("shared",))

    # ---- helpers shared by the methods -------------------------------------------------
    @property
    def decodes(self) -> bool:
        """Whether the backbone answers with a decoder (token logits, answers to decode as targets)."""
        return decodes(self.model)

    def backbone(self):
        return backbone_of(self.model)

    def new_head(self, client: ClientData) -> TaskHead | AnswerReadout:
        """The client's head for its task: its answer space, and the pooled width of its images
        (an answer decoder needs none: AnswerReadout)."""
        if self.decodes:
            if client.images_per_example != 1:
                raise ValueError(f"client '{client.name}': an answer-decoder backbone reads one image per question; task '{client.task}' has {client.images_per_example}")
            return AnswerReadout()
        return TaskHead(self.model.hidden_size, client.num_answers, client.images_per_example)

    def load_head(self, state: Tensors, client: ClientData) -> TaskHead:
        head = self.new_head(client)
        head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        return head.to(self.device)

    @staticmethod
    def head_state(head: nn.Module) -> Tensors:
        return {f"head.{k}": v.detach().cpu().clone() for k, v in head.state_dict().items()}

    def optimizer(self, params: list[nn.Parameter], steps: int | None = None, *, per_epoch: int | None = None, clock: tuple[int, int] = (1, 0)) -> torch.optim.Optimizer:
        """AdamW; no weight decay on biases and LayerNorm weights (every 1-d parameter; with
        train.decay_head_norm, the task head's LayerNorm weight is decayed, as the released code's
        name filter leaves it), and the local update's learning-rate schedule attached.

        `steps`: how many times this local update will step it. `per_epoch`: minibatches in one
        epoch of the loop it serves (default: steps / train.local_epochs). `clock` = (ticks,
        offset): under the official schedule the released code's one scheduler advances `ticks`
        times per minibatch and this optimiser steps at tick `offset` of them (FedDAT's two
        losses: 2 ticks, A_s's side at 0, A_c's at 1). A fresh optimiser per local update
        rebuilds the schedule every round, as the released code does.
        """
        t = self.cfg.train
        decay = [p for p in params if p.ndim >= 2 or (t.decay_head_norm and is_head_norm(p))]
        chosen = {id(p) for p in decay}
        no_decay = [p for p in params if id(p) not in chosen]
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), eps=t.eps)
        if t.lr_schedule != "constant" and steps is None:
            raise ValueError(f"method '{self.name}' built an optimiser without its step count; train.lr_schedule = {t.lr_schedule} needs it")
        if t.lr_schedule == "warmup_decay":
            attach_schedule(opt, lambda n: warmup_decay_factor(n, steps, t.warmup_fraction))
        elif t.lr_schedule == "official":
            per_epoch = per_epoch if per_epoch is not None else max(1, steps // t.local_epochs)
            ticks, offset = clock
            horizon = per_epoch * t.schedule_epochs
            attach_schedule(opt, lambda n: warmup_decay_factor(offset + ticks * n, horizon, t.warmup_fraction))
        return opt

    def local_steps(self, split: Split, epochs: int | None = None) -> int:
        """Optimiser steps of a local update over `split` (`batches` yields this many minibatches)."""
        epochs = self.cfg.train.local_epochs if epochs is None else epochs
        return epochs * math.ceil(len(split) / self.cfg.train.batch_size)

    def seed_forward(self, *parts) -> None:
        """Seed torch's global RNG before a client's forward passes.

        Backbones may draw from it inside forward (ViLT samples its image patches, and their
        order changes float rounding), so without this a client update would depend on what the
        process did before it: no exact resume and no equality between engines.
        """
        torch.manual_seed(derive_seed(self.cfg.run.seed, "forward", *parts))

    def batches(self, split: Split, *seed_parts) -> Iterator[Batch]:
        """Shuffled minibatches for local_epochs epochs, in an order fixed by the seed parts."""
        g = generator(self.cfg.run.seed, *seed_parts)
        self.seed_forward("train", *seed_parts)
        # The run's display (feddat.progress): a bar of this client's local steps on a terminal.
        with progress.current().steps(self.local_steps(split), f"  {seed_parts[-1] if seed_parts else ''} steps") as step_done:
            for index in shuffled(len(split), self.cfg.train.batch_size, self.cfg.train.local_epochs, g):
                yield split.batch(index, self.device)
                step_done()

    @staticmethod
    def train_steps(batches: Iterable[B], step: Callable[[B], dict[str, torch.Tensor]], terms: tuple[str, ...] = (), after_step: Callable[[int], None] | None = None) -> dict[str, float]:
        """The minibatch loop of every method: `step(batch)` computes its losses, steps its
        optimisers and returns the terms to report; -> each term's mean over the steps, and
        'steps'. `batches` is usually `self.batches(...)` (shuffled, seeded, shown). `terms`
        are reported (as 0) even without a step; `after_step(steps so far)` follows each step."""
        sums = dict.fromkeys(terms, 0.0)
        steps = 0
        for batch in batches:
            for key, value in step(batch).items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
            steps += 1
            if after_step is not None:
                after_step(steps)
        return {**{k: v / max(1, steps) for k, v in sums.items()}, "steps": steps}

    def task_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The task loss every method minimises (losses.task_loss, of kind train.task_loss)."""
        return task_loss(logits, targets, self.cfg.train.task_loss)

    def task_step(self, head: nn.Module, opt: torch.optim.Optimizer) -> Callable[[Batch], dict[str, torch.Tensor]]:
        """A `train_steps` step that minimises the task loss alone with `opt`."""
        def step(batch: Batch) -> dict[str, torch.Tensor]:
            loss = self.task_loss(self.logits(head, batch), batch.targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss}
        return step

    def represent(self, batch: Batch) -> torch.Tensor:
        """The pooled representation of a batch (its targets are not read); on an answer decoder,
        the token logits of the answers its targets hold."""
        features, ids, mask = batch.inputs
        if isinstance(batch.targets, AnswerTokens):  # an answer decoder: the answers' token logits
            with autocast(self.device, self.cfg.run.precision):
                return self.model(features, ids, mask, batch.targets)
        pair = features.ndim == self.feature_rank() + 2
        with autocast(self.device, self.cfg.run.precision):
            if not pair:
                return self.model(features, ids, mask)
            # Two images per example (NLVR2): the statement is read with each image in turn and the
            # two pooled vectors are concatenated, as ViLT does; the head takes the doubled width.
            b, m = features.shape[:2]
            pooled = self.model(features.flatten(0, 1), ids.repeat_interleave(m, 0), mask.repeat_interleave(m, 0))
            return pooled.reshape(-1, m * pooled.shape[-1])  # -1: a routed pass may return k copies of b

    def feature_rank(self) -> int:
        """Dimensions of one image's cached features, from the backbone inside the (maybe wrapped) model."""
        if getattr(self, "_feature_rank", None) is None:
            self._feature_rank = getattr(getattr(self.model, "backbone", None), "feature_rank", -1)
        return self._feature_rank

    def head_logits(self, head: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.cfg.run.precision):
            return head(pooled).float()

    def logits(self, head: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.head_logits(head, self.represent(batch))

    def answer_scores(self, head: nn.Module, split: Split, index: torch.Tensor) -> torch.Tensor:
        """(B, answers) the score of each answer of the split's vocabulary for the questions at
        `index`, the highest being the prediction: the head's logits, or for an answer decoder
        each candidate answer's log-likelihood (ALBEF's ranking of the answer list)."""
        if split.candidates is None:
            return self.logits(head, split.batch(index, self.device))
        batch = split.ranking_batch(index, self.device)
        return answer_log_likelihood(self.logits(head, batch), batch.targets).view(len(index), -1)

    def generate(self, split: Split, index: torch.Tensor) -> list[str]:
        """An answer decoder's greedy answers (text) to the questions at `index`, through the
        model with its active adapters: the open-ended answer, which may be outside the list."""
        features, ids, mask = split.inputs(index, self.device)
        backbone = self.backbone()

        def next_logits(answers: AnswerTokens) -> torch.Tensor:
            with autocast(self.device, self.cfg.run.precision):
                return self.model(features, ids, mask, answers).float()

        tokens = greedy_decode(next_logits, len(index), backbone, self.cfg.backbone.max_answer_len - 1, self.device)
        return backbone.decode_answers(tokens.cpu())

    def eval_batch_size(self, split: Split) -> int:
        """train.eval_batch_size questions; for an answer decoder, as many as keep the token
        logits of every candidate (questions x answers x tokens x vocabulary) near 256 MiB."""
        size = self.cfg.train.eval_batch_size
        if split.candidates is None:
            return size
        answers, tokens = split.candidates[0].shape
        return max(1, min(size, (256 * 2**20) // (4 * answers * tokens * self.backbone().vocab_size)))

    @torch.no_grad()
    def view_scores(self, view: str, split: Split, head: nn.Module, adapters: tuple[str, ...], **path) -> dict[str, float]:
        """{view: mean score of `head` on `split`} with `adapters` active (`path`: see
        AdaptedModel.activate), plus {"view/category": mean} per category where the split's
        examples have one (question kind, VQA answer type). The score is the official VQA
        accuracy where the data have ten annotators' answers, else exact match (Split.score)."""
        if len(split) == 0:
            return {view: float("nan")}
        size = self.eval_batch_size(split)
        self.seed_forward("eval")
        chunks, generated = [], []
        with self.model.active(*adapters, **path):
            for i in range(0, len(split), size):
                index = torch.arange(i, min(i + size, len(split)))
                chunks.append(split.score(self.answer_scores(head, split, index), index))  # official VQA accuracy or exact match
                if split.candidates is not None:
                    generated.append(split.score_generated(self.generate(split, index), index))
        per_example = torch.cat(chunks)
        scores = {view: float(per_example.mean())}
        if generated:  # an answer decoder's open-ended answers, scored as free text
            scores[f"{view}{GENERATED}"] = float(torch.cat(generated).mean())
        if split.groups is not None:
            for group in sorted(set(split.groups) - {""}):
                members = torch.tensor([g == group for g in split.groups])
                scores[f"{view}/{group}"] = float(per_example[members].mean())
        return scores


def backbone_of(model: nn.Module):
    """The backbone inside a (maybe wrapped: peft/views.py) adapted model."""
    return getattr(model, "backbone", None) or getattr(getattr(model, "base", None), "backbone", None)


def decodes(model: nn.Module) -> bool:
    """Whether the model's backbone answers with a decoder (backbones.base.Backbone.decoder_start)."""
    return backbone_decodes(backbone_of(model))


def shuffled(n: int, size: int, epochs: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Indices of `n` examples in minibatches of `size`, for `epochs` epochs, each epoch in a
    fresh order drawn from `g`."""
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, len(order), size):
            yield order[i : i + size]


def warmup_decay_factor(step: int, total: int, warmup_fraction: float) -> float:
    """The learning-rate factor before scheduler step `step` (from 0) of a horizon of `total`:
    transformers' get_polynomial_decay_schedule_with_warmup with power 1 and lr_end 0 and
    num_warmup_steps = int(total * warmup_fraction), as the released code builds it. Linear
    from 0 up to 1 over the warm-up, then linear down to 0 at `total`, and 0 beyond."""
    warmup = int(total * warmup_fraction)
    if step < warmup:
        return step / max(1, warmup)
    if step >= total:
        return 0.0
    return (total - step) / (total - warmup)


def attach_schedule(opt: torch.optim.Optimizer, factor: Callable[[int], float]) -> None:
    """Set `opt`'s learning rate to lr · factor(n) before its n-th step (from 0): a LambdaLR
    advanced by a hook after every `opt.step()`, so the callers' loops stay as they are."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    opt.register_step_post_hook(lambda *_: scheduler.step())
    opt.lr_scheduler = scheduler  # kept alive with the optimiser, and inspectable


def is_head_norm(p: torch.Tensor) -> bool:
    """Whether `p` is a task head's LayerNorm weight (heads.TaskHead marks it)."""
    return getattr(p, "head_norm", False)
