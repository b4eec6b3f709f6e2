"""FedAvg + BitFit: only the bias terms of the adapted transformer blocks train and travel.

The client and server steps are FedAvg+Adapter's; only the PEFT module differs (a view with
the adapters' named-set interface, see peft/views.py), so the dict that travels and the bytes
counted per round are this module's tensors.
"""

from __future__ import annotations

from feddat.algorithms.fedavg import FedAvgAdapter
from feddat.peft.tuned import tuned_view


class FedAvgBitFit(FedAvgAdapter):
    name = "fedavg_bitfit"

    def __init__(self, cfg, model, device):
        super().__init__(cfg, tuned_view(model, "bitfit"), device)
