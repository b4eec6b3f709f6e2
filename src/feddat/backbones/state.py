"""Checking a state dict against the tensors it is to replace: names, shapes, finiteness.

Adapter states (peft/model.py, algorithms) and a foundation checkpoint's tensors
(backbones/foundation.py) are checked alike; it lives here, below both.
"""

from __future__ import annotations

import torch


def copy_checked(state: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], what: str) -> None:
    """Copy `state` into the tensors `targets` after check_state; refuse, naming `what`, if it does not fit."""
    problems = check_state(state, targets)
    if problems:
        raise ValueError(f"{what} does not fit this model: {problems}")
    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(state[key])


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """Why `state` cannot replace `expected` ('' when it can): names, shapes, finiteness."""
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    if missing or unknown:
        return f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unknown {unknown[:3]}{'...' if len(unknown) > 3 else ''}"
    for key, target in expected.items():
        value = state[key]
        if tuple(value.shape) != tuple(target.shape):
            return f"'{key}' has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
        if not value.is_floating_point():
            return f"'{key}' has dtype {value.dtype}, expected a float tensor"
        if not torch.isfinite(value).all():
            return f"'{key}' holds NaN or infinite values"
    return ""
