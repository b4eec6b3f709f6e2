"""FedDAT: Federated Dual-Adapter Teacher (docs/design.md §4), one folder as in Hugging Face peft.

- config.py: how the method reads its [feddat] settings (teacher sets, branch path, pass counts);
- step.py:   one minibatch: the two losses, the optimiser split, the reference and fused schedules;
- method.py: `FedDAT`, the federated method (client update, client state, evaluation);
- lora.py:   `FedDATLoRA`, the same method on LoRA sets.

`feddat.schedule = "fused"` (default) computes docs/design.md §4 exactly with one batched backbone
pass; "reference" runs its three passes literally and is what tests compare with.
`feddat.branch_site = k > 0` (fused only, opt-in) is faster and not exact: the teacher reuses
the student's A_s at the lowest k sites and has A_c only above them.
"""

from feddat.algorithms.feddat.config import TEACHERS
from feddat.algorithms.feddat.lora import FedDATLoRA
from feddat.algorithms.feddat.method import FedDAT
from feddat.algorithms.feddat.step import Optimizers

__all__ = ["FedDAT", "FedDATLoRA", "Optimizers", "TEACHERS"]
