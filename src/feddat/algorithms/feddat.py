"""FedDAT: Federated Dual-Adapter Teacher (DESIGN §4, reference schedule).

Per minibatch, in this order:
1. z_DAT ← DAT(x), no gradient (adapters in mean mode: frozen copy Â_s and client A_c);
2. z_s ← student(x) (A_s alone); L_s = CE + α T² KL(z_DAT ‖ z_s); step A_s and H_k;
3. z_DAT ← DAT(x) with gradient; L_DAT = CE + β T² KL(z_s.detach() ‖ z_DAT); step A_c and H_k.
Only A_s travels; A_c and H_k stay with the client across rounds; Â_s is rebuilt every round.

`feddat.schedule = "fused"` (default) computes exactly this with one batched backbone pass
(see `fused_step`); "reference" runs the three passes literally and is what tests compare with.
`feddat.branch_site = k > 0` (fused only, opt-in) is faster and not exact: the teacher reuses
the student's A_s at the lowest k sites and has A_c only above them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from feddat.algorithms.base import ClientUpdate, Method, Tensors
from feddat.config import ConfigError
from feddat.data.clients import ClientData
from feddat.losses import distill, task_loss
from feddat.runtime import derive_seed

@dataclass
class Optimizers:
    shared: torch.optim.Optimizer
    student_head: torch.optim.Optimizer
    client: torch.optim.Optimizer | None  # None when the teacher has no client adapter
    teacher_head: torch.optim.Optimizer

    def zero_grad(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) is not None:
                getattr(self, name).zero_grad(set_to_none=True)

    def step(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) is not None:
                getattr(self, name).step()


TEACHERS = {"dual": ("frozen", "client"), "client_only": ("client",), "frozen_only": ("frozen",)}


class FedDAT(Method):
    name = "feddat"
    personal = True

    def __init__(self, cfg, model, device):
        super().__init__(cfg, model, device)
        k = cfg.feddat.branch_site
        if k and k >= len(model.sites):
            raise ConfigError(f"feddat.branch_site = {k} but the model has {len(model.sites)} adapter sites (0..{len(model.sites) - 1})")

    @staticmethod
    def passes_per_step(cfg) -> tuple[int, int]:
        """(forward, backward) backbone passes per minibatch, in units of FedAvg's batch."""
        return (2, 2) if cfg.feddat.schedule == "fused" else (3, 2)

    def adapter_sets(self) -> tuple[str, ...]:
        return ("shared", "frozen", "client")

    @property
    def teacher(self) -> tuple[str, ...]:
        return TEACHERS[self.cfg.feddat.teacher]

    @property
    def teacher_path(self) -> dict:
        """Where the teacher's adapters differ by site: nowhere (DESIGN §4, no keywords, which
        PEFT views such as FedDAT-LoRA's also accept), or, with feddat.branch_site = k > 0,
        the student's A_s below site k (no A_c there)."""
        k = self.cfg.feddat.branch_site
        return {"below": ("shared",), "branch": k} if k else {}

    def init_client_state(self, client: ClientData) -> Tensors:
        state = super().init_client_state(client)
        torch.manual_seed(derive_seed(self.cfg.run.seed, "client-adapter", client.name))
        state.update({f"client.{k}": v for k, v in self.model.new_adapter_state().items()})
        return state

    def load_client(self, shared: Tensors, state: Tensors, client: ClientData):
        """Put A_s, its frozen copy Â_s and A_c into the model; return the head."""
        self.model.load_adapter("shared", shared)
        self.model.load_adapter("frozen", shared)
        self.model.load_adapter("client", {k[7:]: v for k, v in state.items() if k.startswith("client.")})
        return self.load_head(state, client)

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        head = self.load_client(shared, state, client)
        opts = self.optimizers(head, self.local_steps(client.train))
        step = self.fused_step if self.cfg.feddat.schedule == "fused" else self.reference_step
        sums = {"loss_student": 0.0, "loss_dat": 0.0, "kd_student": 0.0, "kd_dat": 0.0}
        steps = 0
        for batch in self.batches(client.train, self.name, round_, client.name):
            for key, value in zip(sums, step(batch, head, opts)):
                sums[key] += float(value.detach())
            steps += 1
        new_state = self.head_state(head)
        new_state.update({f"client.{k}": v for k, v in self.model.adapter_state("client").items()})
        return ClientUpdate(
            client=client.name,
            shared=self.model.adapter_state("shared"),
            num_examples=len(client.train),
            state=new_state,
            metrics={**{k: v / max(1, steps) for k, v in sums.items()}, "steps": steps},
        )

    def optimizers(self, head: torch.nn.Module, steps: int) -> Optimizers:
        """The reference's two optimisers (A_s+H_k, A_c+H_k), each split by parameter.

        AdamW is elementwise, so stepping A_s and H_k with separate instances is identical to
        one instance over both; the split lets the fused step update the head before the
        adapters' gradients exist. Each optimiser moves only what its own loss touched, and each
        steps once per minibatch: `steps` times in the local update.
        """
        head_params = list(head.parameters())
        client = self.model.adapter_parameters("client") if "client" in self.teacher else []
        return Optimizers(
            shared=self.optimizer(self.model.adapter_parameters("shared"), steps),
            student_head=self.optimizer(head_params, steps),
            client=self.optimizer(client, steps) if client else None,
            teacher_head=self.optimizer(head_params, steps),
        )

    def losses(self, z_s: torch.Tensor, z_dat_teacher: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Student loss: CE + α·T²·KL(DAT ‖ student) (kd terms are zero when switched off), times
        feddat.loss_scale (0.5: the reference code's ½(CE + KL))."""
        f = self.cfg.feddat
        kd = distill(z_s, z_dat_teacher, f.temperature) if f.kd != "none" else z_s.new_zeros(())
        return f.loss_scale * (task_loss(z_s, y) + f.alpha * kd), kd

    def dat_losses(self, z_dat: torch.Tensor, z_s: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DAT loss: CE + β·T²·KL(student ‖ DAT), the student's logits taken before its update,
        times feddat.loss_scale."""
        f = self.cfg.feddat
        kd = distill(z_dat, z_s, f.temperature) if f.kd == "mutual" else z_dat.new_zeros(())
        return f.loss_scale * (task_loss(z_dat, y) + f.beta * kd), kd

    def reference_step(self, batch, head, opts: Optimizers):
        """DESIGN §4 as written: three forward and two backward passes through the backbone."""
        y = batch[-1]
        # 1. the teacher's view of the batch, without gradient
        with torch.no_grad(), self.model.active(*self.teacher):
            z_dat = self.logits(head, batch)
        # 2. student step: A_s and H_k
        with self.model.active("shared"):
            z_s = self.logits(head, batch)
        loss_s, kd_s = self.losses(z_s, z_dat, y)
        opts.zero_grad("shared", "student_head")
        loss_s.backward()
        opts.step("shared", "student_head")
        # 3. DAT step: A_c and H_k, distilled from the student's logits before its update
        with self.model.active(*self.teacher):
            z_dat = self.logits(head, batch)
        loss_d, kd_d = self.dat_losses(z_dat, z_s, y)
        opts.zero_grad("client", "teacher_head")
        loss_d.backward()
        opts.step("client", "teacher_head")
        return loss_s, loss_d, kd_s, kd_d

    def fused_step(self, batch, head, opts: Optimizers):
        """The reference's maths with one batched forward and one backward through the backbone.

        The DAT passes of steps 1 and 3 see the same Â_s and A_c (only the head moves in
        between), so the backbone runs once for [student slice; DAT slice] with the adapters
        routed per slice, and everything below the first adapter runs once for both. The head-level losses are computed on detached pooled vectors, the
        head is stepped as in the reference, and the pooled gradients of both losses then go
        back through the backbone together: A_s gets only the student's, A_c only the DAT's.
        """
        y = batch[-1]
        # Below the first adapter both paths are the same: the backbone runs that part once
        # (with feddat.branch_site = k, everything below site k: a deliberate difference).
        with self.model.routed(("shared",), self.teacher, share_prefix=True, branch=self.cfg.feddat.branch_site):
            pooled = self.represent(batch)
        pooled_s, pooled_dat = (p.detach().requires_grad_() for p in pooled.chunk(2))
        # 1. the teacher's logits, with the head as it was before this batch
        with torch.no_grad():
            z_dat = self.head_logits(head, pooled_dat)
        # 2. student loss: step H_k now; A_s waits for the backbone's backward below
        z_s = self.head_logits(head, pooled_s)
        loss_s, kd_s = self.losses(z_s, z_dat, y)
        opts.zero_grad("student_head")
        loss_s.backward()
        opts.step("student_head")
        # 3. DAT loss with the updated head
        z_dat = self.head_logits(head, pooled_dat)
        loss_d, kd_d = self.dat_losses(z_dat, z_s, y)
        opts.zero_grad("teacher_head")
        loss_d.backward()
        opts.step("teacher_head")
        # Both slices' gradients through the frozen backbone in one pass.
        opts.zero_grad("shared", "client")
        pooled.backward(torch.cat([pooled_s.grad, pooled_dat.grad]).to(pooled.dtype))
        opts.step("shared", "client")
        return loss_s, loss_d, kd_s, kd_d

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        head = self.load_client(shared, state, client)
        return {
            **self.view_scores("global", client.test, head, ("shared",)),
            **self.view_scores("personal", client.test, head, self.teacher, **self.teacher_path),
        }
