"""FedAvg + LoRA: LoRA (through the `peft` library) on the attention projections of every
adapted block (`peft.lora_targets`, rank `peft.lora_rank`) is what trains and travels.

The client and server steps are FedAvg+Adapter's; only the PEFT module differs (a view with
the adapters' named-set interface, see peft/views.py), so the dict that travels and the bytes
counted per round are this module's tensors.
"""

from __future__ import annotations

from feddat.algorithms.fedavg import FedAvgAdapter
from feddat.peft.lora import lora_view


class FedAvgLoRA(FedAvgAdapter):
    name = "fedavg_lora"

    def __init__(self, cfg, model, device):
        super().__init__(cfg, lora_view(model, cfg.peft), device)
