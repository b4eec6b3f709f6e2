"""FedAvg + full finetuning: every parameter of the adapted transformer blocks trains and
travels (the image tower below them stays frozen: its output is cached).

The client and server steps are FedAvg+Adapter's; only the PEFT module differs (a view with
the adapters' named-set interface, see peft/views.py), so the dict that travels and the bytes
counted per round are this module's tensors.
"""

from __future__ import annotations

from feddat.algorithms.fedavg import FedAvgAdapter
from feddat.peft.tuned import tuned_view


class FedAvgFull(FedAvgAdapter):
    name = "fedavg_full"

    def __init__(self, cfg, model, device):
        super().__init__(cfg, tuned_view(model, "full"), device)
