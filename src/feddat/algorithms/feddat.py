"""FedDAT: Federated Dual-Adapter Teacher (DESIGN §4, reference schedule).

Per minibatch, in this order:
1. z_DAT ← DAT(x), no gradient (adapters in mean mode: frozen copy Â_s and client A_c);
2. z_s ← student(x) (A_s alone); L_s = CE + α T² KL(z_DAT ‖ z_s); step A_s and H_k;
3. z_DAT ← DAT(x) with gradient; L_DAT = CE + β T² KL(z_s.detach() ‖ z_DAT); step A_c and H_k.
Only A_s travels; A_c and H_k stay with the client across rounds; Â_s is rebuilt every round.
"""

from __future__ import annotations

import torch

from feddat.algorithms.base import ClientUpdate, Method, Tensors
from feddat.data.clients import ClientData
from feddat.losses import distill, task_loss
from feddat.runtime import derive_seed

TEACHERS = {"dual": ("frozen", "client"), "client_only": ("client",), "frozen_only": ("frozen",)}


class FedDAT(Method):
    name = "feddat"
    personal = True

    def adapter_sets(self) -> tuple[str, ...]:
        return ("shared", "frozen", "client")

    @property
    def teacher(self) -> tuple[str, ...]:
        return TEACHERS[self.cfg.feddat.teacher]

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
        f = self.cfg.feddat
        head = self.load_client(shared, state, client)
        head_params = list(head.parameters())
        # Two optimisers: each moves only what its own loss touched (A_s+H_k, resp. A_c+H_k).
        opt_student = self.optimizer(self.model.adapter_parameters("shared") + head_params)
        teacher_params = self.model.adapter_parameters("client") if "client" in self.teacher else []
        opt_teacher = self.optimizer(teacher_params + head_params)
        sums = {"loss_student": 0.0, "loss_dat": 0.0, "kd_student": 0.0, "kd_dat": 0.0}
        steps = 0
        for batch in self.batches(client.train, self.name, round_, client.name):
            y = batch[3]
            # 1. the teacher's view of the batch, without gradient
            with torch.no_grad(), self.model.active(*self.teacher):
                z_dat = self.logits(head, batch)
            # 2. student step: A_s and H_k
            with self.model.active("shared"):
                z_s = self.logits(head, batch)
            kd_s = distill(z_s, z_dat, f.temperature) if f.kd != "none" else z_s.new_zeros(())
            loss_s = task_loss(z_s, y) + f.alpha * kd_s
            opt_student.zero_grad(set_to_none=True)
            loss_s.backward()
            opt_student.step()
            # 3. DAT step: A_c and H_k, distilled from the student's logits before its update
            with self.model.active(*self.teacher):
                z_dat = self.logits(head, batch)
            kd_d = distill(z_dat, z_s, f.temperature) if f.kd == "mutual" else z_dat.new_zeros(())
            loss_d = task_loss(z_dat, y) + f.beta * kd_d
            opt_teacher.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_teacher.step()
            for key, value in zip(sums, (loss_s, loss_d, kd_s, kd_d)):
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

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        head = self.load_client(shared, state, client)
        return {
            "global": self.score_split(client.test, head, ("shared",)),
            "personal": self.score_split(client.test, head, self.teacher),
        }
