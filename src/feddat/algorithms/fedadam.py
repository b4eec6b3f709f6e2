"""FedAdam: FedAvg+Adapter clients; the server takes an Adam step along the averaged update."""

from __future__ import annotations

from feddat.algorithms.fedavgm import FedAvgM


class FedAdam(FedAvgM):
    name = "fedadam"
    server_optimizer = "adam"
