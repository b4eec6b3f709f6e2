"""FedDAT on LoRA: the dual-adapter teacher with LoRA modules in place of bottleneck adapters.

A_s, Â_s and A_c are three LoRA sets on the same attention projections; the Dual-Adapter
Teacher runs Â_s and A_c in `mean` mode (each contributes half its low-rank update, see
peft/lora.py). Every rule of docs/design.md §4 is FedDAT's own code; this file only swaps the PEFT
module.

Schedules: the fused one routes batch slices through bottleneck adapter sites, which LoRA
layers do not offer, so FedDAT-LoRA always runs the reference schedule. `feddat.schedule =
fused` (the default) asks for the fastest exact schedule, the same maths as the reference
(tests/test_feddat.py), so it is honoured by running the reference; `feddat.branch_site > 0`
asks for a path that is not exact and exists only in the fused schedule, so it is refused.
The run's configuration is left as the user wrote it.
"""

from __future__ import annotations

from feddat.algorithms.feddat.method import FedDAT
from feddat.config import ConfigError
from feddat.peft.lora import lora_view


class FedDATLoRA(FedDAT):
    name = "feddat_lora"

    def __init__(self, cfg, model, device):
        if cfg.feddat.branch_site:
            raise ConfigError(
                f"feddat.branch_site = {cfg.feddat.branch_site}: method feddat_lora runs the reference schedule, "
                "which has no branch site (LoRA layers cannot route batch slices); set feddat.branch_site = 0"
            )
        super().__init__(cfg, lora_view(model, cfg.peft), device)

    @classmethod
    def schedule(cls, cfg) -> str:
        return "reference"
