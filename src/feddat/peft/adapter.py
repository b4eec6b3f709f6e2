"""Bottleneck adapters (docs/design.md §3) and the site that wraps a transformer block.

A site holds several named adapters and applies the active ones to the block's output z:
one active name gives z + A_x(z) ("single"), two give z + ½(A_x(z) + A_y(z)) ("mean").
`adapt` also takes several *routes*: the batch is cut into equal slices and each slice gets
its own names, so several adapter paths share one batched pass through the frozen backbone.
Which routes a site runs, and where the batch fans out, is the adapted model's loop
(peft/model.py); the site only adds adapters.
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
        """The block, then the active adapters (what a plain loop over the blocks sees)."""
        out = self.block(*args, **kwargs)
        if not self.active:
            return out
        hidden = self.adapt(out[0] if isinstance(out, tuple) else out, (self.active,))
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def adapt(self, hidden: torch.Tensor, routes: tuple[tuple[str, ...], ...]) -> torch.Tensor:
        """The block's output plus the adapters of each route, route i on the i-th equal slice
        of the batch (one route: the whole batch; an empty route: no adapter)."""
        if len(routes) == 1:
            return hidden + self.delta(hidden, routes[0]) if routes[0] else hidden
        slices = hidden.chunk(len(routes), dim=0)
        return torch.cat([z + self.delta(z, names) for z, names in zip(slices, routes)])

    def delta(self, hidden: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        if not names:
            return torch.zeros_like(hidden)
        delta = self.adapters[names[0]](hidden)
        for name in names[1:]:
            delta = delta + self.adapters[name](hidden)
        return delta / len(names) if len(names) > 1 else delta
