"""What the server accepts from a client, and robust ways to combine what it accepted.

Every update is checked before aggregation (issue: a flaky or hostile participant): a size
limit first (cheap, before anything is materialised), then exact names, shapes and dtypes,
finite values, and a bound on its distance from the round's A_s. A rejected update is
reported with the client and the reason; the round completes with the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from feddat.peft.model import check_state
from feddat.runtime import tensor_bytes

Tensors = dict[str, torch.Tensor]


@dataclass
class Rejection:
    client: str
    reason: str


def update_norm(update: Tensors, shared: Tensors) -> float:
    """‖A_s^k − A_s‖₂ over every tensor of the set: how far a client moved the shared module."""
    return float(torch.sqrt(sum(((update[k].double() - shared[k].double()) ** 2).sum() for k in shared)))


def problem_with(update_shared: Tensors, num_examples, shared: Tensors, fed) -> str:
    """Why the server must not aggregate this update ('' when it may)."""
    if fed.max_update_mib > 0 and tensor_bytes(update_shared) > fed.max_update_mib * 2**20:
        return f"oversized: {tensor_bytes(update_shared) / 2**20:.2f} MiB > federation.max_update_mib = {fed.max_update_mib}"
    problem = check_state(update_shared, shared)
    if problem:
        return problem
    for key, value in update_shared.items():
        if value.dtype != shared[key].dtype:
            return f"'{key}' has dtype {value.dtype}, expected {shared[key].dtype}"
    if not isinstance(num_examples, int) or num_examples < 0:
        return f"num_examples = {num_examples!r} is not a non-negative integer"
    if fed.max_update_norm > 0:
        norm = update_norm(update_shared, shared)
        if norm > fed.max_update_norm:
            return f"update norm {norm:.4g} exceeds federation.max_update_norm = {fed.max_update_norm}"
    return ""


def coordinatewise(values: list[torch.Tensor], how: str, trim_fraction: float) -> torch.Tensor:
    """Median or trimmed mean over clients, per coordinate (unweighted, as robust rules are)."""
    ordered = torch.stack([v.double() for v in values]).sort(dim=0).values
    n = ordered.shape[0]
    if how == "median":  # the mean of the two middle values when n is even
        return ordered[(n - 1) // 2 : n // 2 + 1].mean(dim=0)
    k = int(trim_fraction * n)
    return ordered[k : n - k].mean(dim=0)
