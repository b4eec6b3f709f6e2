"""FedDAT on LoRA: the dual-adapter teacher with LoRA modules in place of bottleneck adapters.

A_s, Â_s and A_c are three LoRA sets on the same attention projections; the Dual-Adapter
Teacher runs Â_s and A_c in `mean` mode (each contributes half its low-rank update, see
peft/lora.py). Every rule of DESIGN §4 is FedDAT's own code; this file only swaps the PEFT
module. It runs the reference schedule: the fused one routes batch slices through bottleneck
adapter sites, which LoRA layers do not offer.
"""

from __future__ import annotations

import copy

from feddat.algorithms.feddat import FedDAT
from feddat.peft.lora import lora_view


class FedDATLoRA(FedDAT):
    name = "feddat_lora"
    passes_per_step = (3, 2)  # the reference schedule: three forward and two backward passes

    def __init__(self, cfg, model, device):
        cfg = copy.deepcopy(cfg)
        cfg.feddat.schedule = "reference"
        cfg.feddat.branch_site = 0  # a variant of the fused schedule only
        super().__init__(cfg, lora_view(model, cfg.peft), device)
