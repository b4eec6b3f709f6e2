"""Private task head H_k: Linear d·m→2d, LayerNorm, GELU, Linear 2d→answers (the ViLT VQA head).

m is the number of images per example: 1, or 2 for NLVR2-style statements about an image pair,
whose pooled vectors arrive concatenated (ViLT's NLVR2 classifier: Linear 2d→2d first).
"""

from __future__ import annotations

from torch import nn


class TaskHead(nn.Sequential):
    def __init__(self, hidden: int, num_answers: int, images: int = 1):
        super().__init__(nn.Linear(images * hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(), nn.Linear(2 * hidden, num_answers))
        self.num_answers = num_answers
        self.images = images
        # The released FedDAT code decays every weight not named like "LayerNorm.weight", which
        # this LayerNorm's is not; train.decay_head_norm reproduces that (Method.optimizer).
        self[1].weight.head_norm = True


class AnswerReadout(nn.Module):
    """The "head" of an answer-decoder backbone: none. The decoder's token logits are the
    output, its vocabulary is every client's, so nothing per client needs training or keeping
    (an empty private head state); the adapters, in the encoder and the decoder, are what train."""

    num_answers = 0
    images = 1

    def forward(self, token_logits):
        return token_logits
