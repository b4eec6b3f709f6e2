"""How FedDAT reads its `[feddat]` settings (feddat.config.FedDATConfig).

The settings themselves live with the run's configuration (feddat/config.py validates each
value on its own); this module turns them into what the method runs: which adapter sets make
the Dual-Adapter Teacher, where its path differs from the student's, and what a schedule costs.
"""

from __future__ import annotations

from feddat.config import ConfigError

#: feddat.teacher -> the adapter sets the Dual-Adapter Teacher runs (two: their mean, docs/design.md §3)
TEACHERS = {"dual": ("frozen", "client"), "client_only": ("client",), "frozen_only": ("frozen",)}

#: feddat.schedule -> (forward, backward) backbone passes per minibatch, in units of FedAvg's
#: batch: the reference runs DAT, student and DAT again, then two backwards; fused runs one
#: forward and one backward on a doubled batch.
PASSES = {"reference": (3, 2), "fused": (2, 2)}


def teacher_sets(f) -> tuple[str, ...]:
    return TEACHERS[f.teacher]


def teacher_path(f) -> dict:
    """Where the teacher's adapters differ by site: nowhere (docs/design.md §4; no keywords, which PEFT
    views such as FedDAT-LoRA's also accept), or, with feddat.branch_site = k > 0, the
    student's A_s below site k (no A_c there)."""
    k = f.branch_site
    return {"below": ("shared",), "branch": k} if k else {}


def check_branch_site(f, model) -> None:
    """Refuse a branch site the adapted model does not have (only bottleneck models have sites),
    or one under the reference schedule (checked here too, for configs built without `validate`:
    its teacher would train unbranched while `personal` scored the branched path)."""
    k = f.branch_site
    if k and f.schedule != "fused":
        raise ConfigError("feddat.branch_site > 0 is a variant of the fused schedule; the reference schedule is docs/design.md §4 exactly")
    if k and k >= len(model.sites):
        raise ConfigError(f"feddat.branch_site = {k} but the model has {len(model.sites)} adapter sites (0..{len(model.sites) - 1})")
