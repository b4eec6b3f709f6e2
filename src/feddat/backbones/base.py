"""What a backbone must expose to the rest of feddat.

A backbone is a frozen vision-language encoder split in two:
- `encode_images`: the frozen part below the first adapter that depends on the image only;
  its output is cached on disk and reused across rounds and methods;
- `forward`: from those image features plus question tokens to a pooled vector, passing
  through `blocks`, the transformer blocks where adapter sites are inserted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn


class Backbone(nn.Module, ABC):
    hidden_size: int
    #: Dimensions of one image's `encode_images` output (minivl: tokens x channels). A batch with
    #: one dimension more holds two images per example (two-image tasks, algorithms/base.py).
    feature_rank: int = 2

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks; adapter sites replace entries of this list."""

    @abstractmethod
    def cache_key(self) -> str:
        """Identifies everything `encode_images` depends on (weights, image size)."""

    @abstractmethod
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 images -> frozen per-image features (N, ...)."""

    @abstractmethod
    def tokenize(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions -> (input_ids, attention_mask), both (N, max_text_len)."""

    @abstractmethod
    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """-> pooled representation (B, hidden_size)."""

    def freeze(self) -> "Backbone":
        """Frozen end to end and in eval mode: no dropout, so teacher and student paths are deterministic."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        # The backbone stays in eval mode; only adapters and heads train, and they have no dropout.
        return super().train(False)
