"""FedProx + Adapter: the local loss adds μ/2·‖A_s − A_s^global‖² (Li et al., 2020).

The proximal term keeps each client's shared adapter near the one it received, limiting
client drift; the head is private and not regularised.
"""

from __future__ import annotations

from feddat.algorithms.common import AdapterClient, squared_distance


class FedProx(AdapterClient):
    name = "fedprox"

    def begin(self, shared, state, client, params):
        return self.anchored(super().begin(shared, state, client, params), params)

    def local_loss(self, head, batch, params, ctx):
        loss, terms = super().local_loss(head, batch, params, ctx)
        prox = squared_distance(params, ctx["anchor"])
        return loss + self.cfg.baselines.fedprox_mu / 2 * prox, {**terms, "prox": prox}
