"""Ditto + Adapter (Li et al., 2021): a global adapter by FedAvg, plus a personal adapter.

Each round a client (1) runs FedAvg's local update of A_s and its head H_k, which travels as
usual, and (2) trains its personal adapter v_k and personal head on

    CE(v_k) + λ/2·‖v_k − A_s‖²,   A_s as received this round,

for the same number of local epochs. v_k and the personal head never leave the client.
Evaluation: global = A_s + H_k; personal = v_k + personal head.
"""

from __future__ import annotations

from feddat.algorithms.base import ClientUpdate, Tensors
from feddat.algorithms.common import AdapterClient, prefixed, squared_distance, with_prefix
from feddat.data.clients import ClientData
from feddat.heads import TaskHead

PERSONAL = "personal"


class Ditto(AdapterClient):
    name = "ditto"
    personal = True

    @classmethod
    def passes_per_step(cls, cfg) -> tuple[int, int]:
        return (2, 2)  # a global and a personal step per minibatch (counted by AdapterClient)

    def adapter_sets(self) -> tuple[str, ...]:
        return ("shared", PERSONAL)

    def trainable_state(self) -> tuple[str, ...]:
        return ("head", PERSONAL, "phead")  # the personal adapter v_k and its own head

    def init_client_state(self, client: ClientData) -> Tensors:
        state = super().init_client_state(client)
        # v_k starts where the global model starts (A_s at round 0, the same head), as in Ditto.
        personal = self.init_shared()
        return {**state, **with_prefix(personal, PERSONAL), **with_prefix(prefixed(state, "head"), "phead")}

    def personal_head(self, state: Tensors, client: ClientData) -> TaskHead:
        head = self.load_head({f"head.{k}": v for k, v in prefixed(state, "phead").items()}, client)
        return head

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        update = super().client_update(shared, state, client, round_)  # the global model, as FedAvg
        self.model.load_adapter(PERSONAL, prefixed(state, PERSONAL))
        head = self.personal_head(state, client)
        params = self.model.adapter_parameters(PERSONAL)
        anchor = [shared[k].to(self.device) for k in self.model.adapter_state(PERSONAL)]
        opt = self.optimizer(params + list(head.parameters()), self.local_steps(client.train))
        lam = self.cfg.baselines.ditto_lambda

        def step(batch):
            prox = squared_distance(params, anchor)
            loss = self.task_loss(self.logits(head, batch), batch.targets) + lam / 2 * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"personal_loss": loss, "personal_prox": prox}

        with self.model.active(PERSONAL):
            batches = self.batches(client.train, self.name, "personal", round_, client.name)
            metrics = self.train_steps(batches, step, terms=("personal_loss", "personal_prox"))
        update.state.update(with_prefix(self.model.adapter_state(PERSONAL), PERSONAL))
        update.state.update(with_prefix(head.state_dict(), "phead"))
        metrics.pop("steps")  # the same count as the global update's
        update.metrics.update(metrics)
        return update

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        scores = super().evaluate(shared, state, client)
        self.model.load_adapter(PERSONAL, prefixed(state, PERSONAL))
        scores.update(self.view_scores("personal", client.test, self.personal_head(state, client), (PERSONAL,)))
        return scores
