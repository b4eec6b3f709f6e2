"""FedRep-style + Adapter (Collins et al., 2021): the private head and the shared adapter
are trained in alternation, never together.

Each local update first trains the head alone for `baselines.fedrep_head_epochs` epochs with
A_s frozen, then trains A_s alone for `train.local_epochs` epochs with the head frozen. Only
A_s travels. While A_s is frozen the representations do not change, so the head phase
computes them once (one forward pass over the local data) and trains the head on them.
"""

from __future__ import annotations

import torch

from feddat.algorithms.base import ClientUpdate, Method, Tensors, shuffled
from feddat.config import Config
from feddat.data.clients import ClientData, Split
from feddat.runtime import generator


class FedRep(Method):
    name = "fedrep"
    decodes_answers = False  # its rule reads pooled representations

    @classmethod
    def passes_per_round(cls, cfg: Config) -> float:
        return 1.0 if cfg.baselines.fedrep_head_epochs else 0.0  # the representations, once per round

    @torch.no_grad()
    def representations(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        reps, targets = [], []
        size = self.cfg.train.eval_batch_size
        with self.model.active("shared"):
            for i in range(0, len(split), size):
                batch = split.batch(torch.arange(i, min(i + size, len(split))), self.device)
                reps.append(self.represent(batch).float())
                targets.append(batch.targets)
        return torch.cat(reps), torch.cat(targets)

    def train_head(self, head, client: ClientData, round_: int) -> tuple[int, float]:
        epochs = self.cfg.baselines.fedrep_head_epochs
        if epochs == 0:
            return 0, 0.0
        self.seed_forward(self.name, "representations", round_, client.name)  # ViLT draws patches from torch's RNG
        reps, targets = self.representations(client.train)
        opt = self.optimizer(list(head.parameters()), self.local_steps(client.train, epochs), per_epoch=self.local_steps(client.train, 1))
        g = generator(self.cfg.run.seed, self.name, "head", round_, client.name)

        def step(idx):
            loss = self.task_loss(self.head_logits(head, reps[idx]), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss}

        batches = (idx.to(reps.device) for idx in shuffled(len(targets), self.cfg.train.batch_size, epochs, g))
        metrics = self.train_steps(batches, step, terms=("loss",))
        return metrics["steps"], metrics["loss"]

    def train_adapter(self, head, client: ClientData, round_: int) -> tuple[int, float]:
        head.requires_grad_(False)
        opt = self.optimizer(self.model.adapter_parameters("shared"), self.local_steps(client.train))

        step = self.task_step(head, opt)

        with self.model.active("shared"):
            metrics = self.train_steps(self.batches(client.train, self.name, round_, client.name), step, terms=("loss",))
        head.requires_grad_(True)
        return metrics["steps"], metrics["loss"]

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        self.model.load_adapter("shared", shared)
        head = self.load_head(state, client)
        head_steps, head_loss = self.train_head(head, client, round_)
        body_steps, body_loss = self.train_adapter(head, client, round_)
        # the head phase costs one forward over the local data, in units of a training minibatch
        rep_passes = len(client.train) / self.cfg.train.batch_size if head_steps else 0.0
        return ClientUpdate(
            client=client.name,
            shared=self.model.adapter_state("shared"),
            num_examples=len(client.train),
            state=self.head_state(head),
            metrics={"loss": body_loss, "head_loss": head_loss, "steps": body_steps, "head_steps": head_steps, "passes": 2 * body_steps + rep_passes},
        )
