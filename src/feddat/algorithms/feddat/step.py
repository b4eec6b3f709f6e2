"""One FedDAT minibatch (docs/design.md §4): the two losses, the optimiser split and both schedules.

Per minibatch, in this order:
1. z_DAT ← DAT(x), no gradient (adapters in mean mode: frozen copy Â_s and client A_c);
2. z_s ← student(x) (A_s alone); L_s = CE + α T² KL(z_DAT ‖ z_s); step A_s and H_k;
3. z_DAT ← DAT(x) with gradient; L_DAT = CE + β T² KL(z_s.detach() ‖ z_DAT); step A_c and H_k.

`reference_step` runs the three passes literally and is what tests compare with;
`fused_step` computes the same with one batched backbone pass. Both take the method `m` for
its model, its teacher and its forward helpers (algorithms/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from feddat.losses import distill, task_loss


@dataclass
class Optimizers:
    """The optimisers of one local update, by the part each moves (docs/design.md §4: separate)."""

    shared: torch.optim.Optimizer
    student_head: torch.optim.Optimizer | None  # None where the head has no parameters (an answer decoder's)
    client: torch.optim.Optimizer | None  # None when the teacher has no client adapter, or A_c does not train this round
    teacher_head: torch.optim.Optimizer | None  # None with feddat.head_update = student

    def zero_grad(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) is not None:
                getattr(self, name).zero_grad(set_to_none=True)

    def step(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) is not None:
                getattr(self, name).step()


@dataclass
class SingleOptimizer:
    """The released code's one AdamW over A_s, A_c and H_k (feddat.optimizer = single), with the
    interface of `Optimizers`: whichever parts a call names, the one optimiser zeroes or steps
    them all. Gradients are zeroed, not set to None (`optimizer.zero_grad()` under the torch
    1.10 and accelerate of its time), so from its
    second step on AdamW moves every parameter it holds, by momentum and weight decay where the
    current loss left a zero gradient. Only the reference schedule can run it: the fused one
    steps the head before the adapters' gradients exist."""

    opt: torch.optim.Optimizer

    def zero_grad(self, *names: str) -> None:
        self.opt.zero_grad(set_to_none=False)

    def step(self, *names: str) -> None:
        self.opt.step()


def client_adapter_trains(f, round_: int) -> bool:
    """Whether A_c trains in `round_` (from 1): every round, or the first feddat.client_adapter_rounds."""
    return f.client_adapter_rounds == 0 or round_ <= f.client_adapter_rounds


def make_optimizers(m, head: torch.nn.Module, steps: int, round_: int) -> Optimizers | SingleOptimizer:
    """docs/design.md §4's two optimisers (A_s+H_k, A_c+H_k), each split by parameter; or, with
    feddat.optimizer = single, the released code's one over everything.

    AdamW is elementwise, so stepping A_s and H_k with separate instances is identical to
    one instance over both; the split lets the fused step update the head before the
    adapters' gradients exist. Each optimiser moves only what its own loss touched, and each
    steps once per minibatch: `steps` times in the local update. Under the official lr schedule
    the released code's scheduler ticks twice per minibatch (after each loss's step): the
    student side steps at the first tick, the DAT side at the second.
    """
    head_params = list(head.parameters())
    trains_client = "client" in m.teacher and client_adapter_trains(m.cfg.feddat, round_)
    if "client" in m.teacher:
        # A frozen A_c (feddat.client_adapter_rounds) takes no gradient: none piles up on the
        # model's shared parameters from client to client, and its backward is skipped.
        for p in m.model.adapter_parameters("client"):
            p.requires_grad_(trains_client)
            p.grad = None
    client = m.model.adapter_parameters("client") if trains_client else []
    if m.cfg.feddat.optimizer == "single":
        params = [*m.model.adapter_parameters("shared"), *client, *head_params]
        for p in params:  # as the released code's fresh model: no gradient before the first loss
            p.grad = None
        # stepped twice per minibatch: each step is one tick of the released code's scheduler
        return SingleOptimizer(m.optimizer(params, 2 * steps, per_epoch=max(1, steps // m.cfg.train.local_epochs)))
    return Optimizers(
        shared=m.optimizer(m.model.adapter_parameters("shared"), steps, clock=(2, 0)),
        student_head=m.optimizer(head_params, steps, clock=(2, 0)) if head_params else None,
        client=m.optimizer(client, steps, clock=(2, 1)) if client else None,
        teacher_head=m.optimizer(head_params, steps, clock=(2, 1)) if head_params and m.cfg.feddat.head_update == "both" else None,
    )


def student_loss(f, z_s: torch.Tensor, z_dat: torch.Tensor, y: torch.Tensor, kind: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, kd): CE + α·T²·KL(DAT ‖ student) (kd is zero when switched off), times
    feddat.loss_scale (0.5: the reference code's ½(CE + KL)). `f`: the [feddat] settings;
    `kind`: train.task_loss."""
    kd = distill(z_s, z_dat, f.temperature, y) if f.kd != "none" else z_s.new_zeros(())
    return f.loss_scale * (task_loss(z_s, y, kind) + f.alpha * kd), kd


def dat_loss(f, z_dat: torch.Tensor, z_s: torch.Tensor, y: torch.Tensor, kind: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, kd): CE + β·T²·KL(student ‖ DAT), the student's logits taken before its update,
    times feddat.loss_scale."""
    kd = distill(z_dat, z_s, f.temperature, y) if f.kd == "mutual" else z_dat.new_zeros(())
    return f.loss_scale * (task_loss(z_dat, y, kind) + f.beta * kd), kd


def reference_step(m, batch, head, opts: Optimizers, f=None):
    """docs/design.md §4 as written: three forward and two backward passes through the backbone.
    `f`: the [feddat] settings of this round (FedDAT.round_settings; default the run's)."""
    f, y = f or m.cfg.feddat, batch.targets
    # 1. the teacher's view of the batch, without gradient
    with torch.no_grad(), m.model.active(*m.teacher):
        z_dat = m.logits(head, batch)
    # 2. student step: A_s and H_k
    with m.model.active("shared"):
        z_s = m.logits(head, batch)
    loss_s, kd_s = student_loss(f, z_s, z_dat, y, m.cfg.train.task_loss)
    opts.zero_grad("shared", "student_head")
    loss_s.backward()
    opts.step("shared", "student_head")
    # 3. DAT step: A_c and H_k, distilled from the student's logits before its update
    with m.model.active(*m.teacher):
        z_dat = m.logits(head, batch)
    loss_d, kd_d = dat_loss(f, z_dat, z_s, y, m.cfg.train.task_loss)
    opts.zero_grad("client", "teacher_head")
    loss_d.backward()
    opts.step("client", "teacher_head")
    return loss_s, loss_d, kd_s, kd_d


def fused_step(m, batch, head, opts: Optimizers, f=None):
    """The reference's maths with one batched forward and one backward through the backbone.

    The DAT passes of steps 1 and 3 see the same Â_s and A_c (only the head moves in
    between), so the backbone runs once for [student slice; DAT slice] with the adapters
    routed per slice, and everything below the first adapter runs once for both. The
    head-level losses are computed on detached pooled vectors, the head is stepped as in the
    reference, and the pooled gradients of both losses then go back through the backbone
    together: A_s gets only the student's, A_c only the DAT's.
    """
    f, y = f or m.cfg.feddat, batch.targets
    # Below the first adapter both paths are the same: the model runs that part once (with
    # feddat.branch_site = k, everything below site k: a deliberate difference).
    with m.model.routed(("shared",), m.teacher, share_prefix=True, branch=f.branch_site):
        pooled = m.represent(batch)
    pooled_s, pooled_dat = (p.detach().requires_grad_() for p in pooled.chunk(2))
    # 1. the teacher's logits, with the head as it was before this batch
    with torch.no_grad():
        z_dat = m.head_logits(head, pooled_dat)
    # 2. student loss: step H_k now; A_s waits for the backbone's backward below
    z_s = m.head_logits(head, pooled_s)
    loss_s, kd_s = student_loss(f, z_s, z_dat, y, m.cfg.train.task_loss)
    opts.zero_grad("student_head")
    loss_s.backward()
    opts.step("student_head")
    # 3. DAT loss with the updated head
    z_dat = m.head_logits(head, pooled_dat)
    loss_d, kd_d = dat_loss(f, z_dat, z_s, y, m.cfg.train.task_loss)
    opts.zero_grad("teacher_head")
    loss_d.backward()
    opts.step("teacher_head")
    # Both slices' gradients through the frozen backbone in one pass.
    opts.zero_grad("shared", "client")
    pooled.backward(torch.cat([pooled_s.grad, pooled_dat.grad]).to(pooled.dtype))
    opts.step("shared", "client")
    return loss_s, loss_d, kd_s, kd_d


SCHEDULES = {"reference": reference_step, "fused": fused_step}
