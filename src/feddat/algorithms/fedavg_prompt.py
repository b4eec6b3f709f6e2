"""FedAvg + prompt tuning: `peft.prompt_length` learned prompt tokens, inserted after [CLS],
are what trains and travels.

The client and server steps are FedAvg+Adapter's; only the PEFT module differs (a view with
the adapters' named-set interface, see peft/views.py), so the dict that travels and the bytes
counted per round are this module's tensors.
"""

from __future__ import annotations

from feddat.algorithms.fedavg import FedAvgAdapter
from feddat.peft.prompt import prompt_view


class FedAvgPrompt(FedAvgAdapter):
    name = "fedavg_prompt"
    decodes_answers = False  # an answer decoder reads two token embeddings (question, answer): which to prompt is open

    def __init__(self, cfg, model, device):
        super().__init__(cfg, prompt_view(model, cfg.peft), device)
