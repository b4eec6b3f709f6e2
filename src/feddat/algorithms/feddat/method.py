"""FedDAT (docs/design.md §4): the federated method around the step in step.py.

Only A_s travels; A_c and H_k stay with the client across rounds; Â_s is rebuilt every round
from the A_s the server sends.
"""

from __future__ import annotations

import dataclasses

import torch

from feddat.algorithms.base import ClientUpdate, Method, Tensors
from feddat.algorithms.feddat.config import PASSES, check_branch_site, teacher_path, teacher_sets
from feddat.algorithms.feddat.step import SCHEDULES, make_optimizers
from feddat.data.clients import ClientData
from feddat.runtime import derive_seed


class FedDAT(Method):
    name = "feddat"
    personal = True
    loss_metric = "loss_student"  # the loss of A_s + head, the model that travels: what engines print

    def __init__(self, cfg, model, device):
        super().__init__(cfg, model, device)
        check_branch_site(cfg.feddat, model)

    @classmethod
    def schedule(cls, cfg) -> str:
        """The schedule this method runs under `cfg`: feddat.schedule, except that the released
        code's single optimiser (feddat.optimizer = single) needs the reference schedule (see
        step.SingleOptimizer; FedDATLoRA always runs it)."""
        return "reference" if cfg.feddat.optimizer == "single" else cfg.feddat.schedule

    @classmethod
    def passes_per_step(cls, cfg) -> tuple[int, int]:
        return PASSES[cls.schedule(cfg)]

    def adapter_sets(self) -> tuple[str, ...]:
        return ("shared", "frozen", "client")

    @property
    def teacher(self) -> tuple[str, ...]:
        return teacher_sets(self.cfg.feddat)

    @property
    def teacher_path(self) -> dict:
        return teacher_path(self.cfg.feddat)

    def init_client_state(self, client: ClientData) -> Tensors:
        state = super().init_client_state(client)
        # feddat.client_init = same: one draw for every client, as the released code clones it
        own = (client.name,) if self.cfg.feddat.client_init == "per_client" else ()
        torch.manual_seed(derive_seed(self.cfg.run.seed, "client-adapter", *own))
        state.update({f"client.{k}": v for k, v in self.model.new_adapter_state().items()})
        return state

    def round_settings(self, round_: int):
        """The [feddat] settings a local update of `round_` trains with: the run's, without KD
        in the first feddat.kd_warmup_rounds rounds."""
        f = self.cfg.feddat
        return dataclasses.replace(f, kd="none") if round_ <= f.kd_warmup_rounds else f

    def load_client(self, shared: Tensors, state: Tensors, client: ClientData):
        """Put A_s, its frozen copy Â_s and A_c into the model; return the head."""
        self.model.load_adapter("shared", shared)
        self.model.load_adapter("frozen", shared)
        self.model.load_adapter("client", {k[7:]: v for k, v in state.items() if k.startswith("client.")})
        return self.load_head(state, client)

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        head = self.load_client(shared, state, client)
        opts = make_optimizers(self, head, self.local_steps(client.train), round_)
        schedule, f = SCHEDULES[self.schedule(self.cfg)], self.round_settings(round_)
        terms = ("loss_student", "loss_dat", "kd_student", "kd_dat")
        batches = self.batches(client.train, self.name, round_, client.name)
        metrics = self.train_steps(batches, lambda batch: dict(zip(terms, schedule(self, batch, head, opts, f))), terms)
        new_state = self.head_state(head)
        new_state.update({f"client.{k}": v for k, v in self.model.adapter_state("client").items()})
        if self.cfg.feddat.personal_frozen == "received":  # the released code's personal view keeps this Â_s
            new_state.update({f"frozen.{k}": v for k, v in shared.items()})
        return ClientUpdate(
            client=client.name,
            shared=self.model.adapter_state("shared"),
            num_examples=len(client.train),
            state=new_state,
            metrics=metrics,
        )

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        head = self.load_client(shared, state, client)
        self.model.load_adapter("frozen", personal_frozen(self.cfg, shared, state))
        return {
            **self.view_scores("global", client.test, head, ("shared",)),
            **self.view_scores("personal", client.test, head, self.teacher, **self.teacher_path),
        }


def personal_frozen(cfg, shared: Tensors, state: Tensors) -> Tensors:
    """Â_s of the personal view: the current A_s (docs/design.md §4), or with feddat.personal_frozen =
    received the A_s the client last received (in its state; the current one before it trained)."""
    kept = {k[7:]: v for k, v in state.items() if k.startswith("frozen.")}
    return kept if cfg.feddat.personal_frozen == "received" and kept else shared
