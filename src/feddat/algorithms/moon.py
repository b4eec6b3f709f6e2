"""MOON + Adapter (Li et al., 2021): model-contrastive learning on the pooled representation.

Per minibatch, z is the backbone's pooled representation with the local A_s being trained,
z_glob the same with the A_s received this round (frozen) and z_prev with this client's A_s
from the end of its previous participation (frozen; the received one at first):

    ℓ_con = −log( e^{cos(z, z_glob)/τ} / (e^{cos(z, z_glob)/τ} + e^{cos(z, z_prev)/τ}) )
    L = CE + μ·ℓ_con

pulling the local representation towards the global model's and away from its own stale one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from feddat.algorithms.common import AdapterClient, prefixed, with_prefix

PREV = "prev"


def contrastive(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor, temperature: float) -> torch.Tensor:
    z, z_glob, z_prev = (t.float() for t in (z, z_glob, z_prev))
    sims = torch.stack([F.cosine_similarity(z, z_glob, dim=-1), F.cosine_similarity(z, z_prev, dim=-1)], dim=1) / temperature
    return F.cross_entropy(sims, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))


class Moon(AdapterClient):
    name = "moon"
    decodes_answers = False  # its rule reads pooled representations

    @classmethod
    def passes_per_step(cls, cfg) -> tuple[int, int]:
        return (3, 1)  # local, global and previous representations; one backward

    def adapter_sets(self) -> tuple[str, ...]:
        return ("shared", "frozen", PREV)

    def trainable_state(self) -> tuple[str, ...]:
        return ("head",)  # PREV is the previous round's adapter: kept, not trained

    def begin(self, shared, state, client, params):
        ctx = super().begin(shared, state, client, params)
        self.model.load_adapter("frozen", shared)
        previous = prefixed(state, PREV)
        self.model.load_adapter(PREV, previous if previous else shared)
        return ctx

    def local_loss(self, head, batch, params, ctx):
        with torch.no_grad():
            with self.model.active("frozen"):
                z_glob = self.represent(batch)
            with self.model.active(PREV):
                z_prev = self.represent(batch)
        z = self.represent(batch)  # under the caller's active("shared")
        ce = self.task_loss(self.head_logits(head, z), batch.targets)
        con = contrastive(z, z_glob, z_prev, self.cfg.baselines.moon_temperature)
        return ce + self.cfg.baselines.moon_mu * con, {"ce": ce, "contrastive": con}

    def finish(self, params, ctx, steps):
        return with_prefix(self.model.adapter_state("shared"), PREV), {}
