"""Bottleneck adapters (DESIGN §3) and the site that wraps a transformer block.

A site holds several named adapters and applies the active ones to the block's output z:
one active name gives z + A_x(z) ("single"), two give z + ½(A_x(z) + A_y(z)) ("mean").
A site can also be *routed*: the batch is cut into equal slices and each slice gets its own
active names, so several adapter paths share one batched pass through the frozen backbone.
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
        self.routes: tuple[tuple[str, ...], ...] = ()  # per equal batch slice; overrides `active`
        # Shared prefix: the first routed site receives the batch once and fans it out to one
        # copy per route ("expand"); later sites widen the block's other batch-shaped inputs
        # (attention masks) to match ("widen").
        self.fan_out: str = ""

    def forward(self, *args, **kwargs):
        if self.fan_out == "widen":
            args, kwargs = widen_batch(args, kwargs, len(self.routes))
        out = self.block(*args, **kwargs)
        if not self.active and not self.routes:
            return out
        hidden = out[0] if isinstance(out, tuple) else out
        if self.fan_out == "expand":
            # Copies after the first are detached: a path branching off here trains nothing
            # below it (a no-op at the first site, where nothing below is trainable).
            hidden = torch.cat([hidden] + [hidden.detach()] * (len(self.routes) - 1))
        if self.routes:
            slices = hidden.chunk(len(self.routes), dim=0)
            hidden = torch.cat([z + self.delta(z, names) for z, names in zip(slices, self.routes)])
        else:
            hidden = hidden + self.delta(hidden, self.active)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def delta(self, hidden: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        if not names:
            return torch.zeros_like(hidden)
        delta = self.adapters[names[0]](hidden)
        for name in names[1:]:
            delta = delta + self.adapters[name](hidden)
        return delta / len(names) if len(names) > 1 else delta


def widen_batch(args: tuple, kwargs: dict, copies: int) -> tuple[tuple, dict]:
    """Repeat every batch-shaped tensor input (attention masks) to match a fanned-out hidden state.

    The hidden state (first argument) already has copies x B rows; a tensor of two or more
    dimensions whose first dimension is B is repeated; anything else (1-d positions, None) is
    left alone.
    """
    hidden, rest = args[0], args[1:]
    small = hidden.shape[0] // copies

    def widen(x):
        if isinstance(x, torch.Tensor) and x.ndim >= 2 and x.shape[0] == small and small != hidden.shape[0]:
            return x.repeat(copies, *([1] * (x.ndim - 1)))
        return x

    return (hidden, *map(widen, rest)), {k: widen(v) for k, v in kwargs.items()}
