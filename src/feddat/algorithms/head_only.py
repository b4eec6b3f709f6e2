"""Head only: each client trains its private head on the frozen backbone; no adapter, nothing travels.

The floor every adapter method must beat (a probe of the frozen backbone): what a client's
head learns from its own data alone. On an answer-decoder backbone there is no head: the floor
is what the pretrained decoder answers before any finetuning. The gap from here to local-only is what the adapter
adds; the gap from local-only to centralised is what pooling the adapter's data adds.
"""

from __future__ import annotations

from feddat.algorithms.base import ClientUpdate, Method, Tensors
from feddat.data.clients import ClientData


class HeadOnly(Method):
    name = "head_only"
    communicates = False

    @classmethod
    def passes_per_step(cls, cfg) -> tuple[int, int]:
        return (1, 0)  # no gradient reaches the frozen backbone

    def adapter_sets(self) -> tuple[str, ...]:
        return ()

    def init_shared(self) -> Tensors:
        return {}  # no adapter: the run saves and reports an empty shared state

    def client_update(self, shared: Tensors, state: Tensors, client: ClientData, round_: int) -> ClientUpdate:
        head = self.load_head(state, client)
        params = list(head.parameters())
        if not params:  # an answer decoder: the control is the pretrained decoder as it is
            metrics = {"loss": 0.0, "steps": 0}
        else:
            step = self.task_step(head, self.optimizer(params, self.local_steps(client.train)))
            with self.model.active():  # the bare backbone
                metrics = self.train_steps(self.batches(client.train, self.name, round_, client.name), step, terms=("loss",))
        return ClientUpdate(
            client=client.name,
            shared={},
            num_examples=len(client.train),
            state=self.head_state(head),
            metrics=metrics,
        )

    def aggregate(self, shared: Tensors, updates: list[ClientUpdate]) -> Tensors:
        return shared  # nothing is shared

    def evaluate(self, shared: Tensors, state: Tensors, client: ClientData) -> dict[str, float]:
        return self.view_scores("global", client.test, self.load_head(state, client), ())
