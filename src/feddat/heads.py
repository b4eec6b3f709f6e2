"""Private task head H_k: Linear d→2d, LayerNorm, GELU, Linear 2d→answers (the ViLT VQA head)."""

from __future__ import annotations

from torch import nn


class TaskHead(nn.Sequential):
    def __init__(self, hidden: int, num_answers: int):
        super().__init__(nn.Linear(hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(), nn.Linear(2 * hidden, num_answers))
        self.num_answers = num_answers
