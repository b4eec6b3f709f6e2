"""Bottleneck adapters (DESIGN §3) and the site that wraps a transformer block.

A site holds several named adapters and applies the active ones to the block's output z:
one active name gives z + A_x(z) ("single"), two give z + ½(A_x(z) + A_y(z)) ("mean").
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class BottleneckAdapter(nn.Module):
    """A(z) = W_up · act(W_down · z + b_down) + b_up."""

    def __init__(self, hidden: int, reduction_factor: int = 16, activation: str = "relu", init: str = "normal", init_std: float = 0.02):
        super().__init__()
        bottleneck = max(1, hidden // reduction_factor)
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, std=init_std)
            nn.init.zeros_(linear.bias)
        if init == "zero_up":
            nn.init.zeros_(self.up.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(z)))


class AdapterSite(nn.Module):
    """Wraps one transformer block; adapters act on the residual stream it outputs (Pfeiffer placement)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        if not self.active:
            return out
        hidden = out[0] if isinstance(out, tuple) else out
        delta = self.adapters[self.active[0]](hidden)
        for name in self.active[1:]:
            delta = delta + self.adapters[name](hidden)
        if len(self.active) > 1:
            delta = delta / len(self.active)
        hidden = hidden + delta
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
