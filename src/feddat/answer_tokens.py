"""The answers an answer decoder reads: a leaf type, so that the losses (which score them), the
data layer (which builds them) and the backbones (which decode them) can all name it."""

from __future__ import annotations

from typing import NamedTuple

import torch


class AnswerTokens(NamedTuple):
    """Answers to decode against a batch of B questions: N token sequences, answer n read
    against question owner[n] (a question may have several: its annotators' answers when
    training, every candidate when ranking)."""

    ids: torch.Tensor  # (N, T) the decoder's input: begins with its start token, right-padded
    mask: torch.Tensor  # (N, T) 1 for real tokens
    owner: torch.Tensor  # (N,) long, in [0, B)
    # (N,) each answer's weight in its question's loss, summing to 1 per question (an annotator's
    # answer: its share of the annotators' votes, as ALBEF and BLIP weight them); None: ranking.
    weights: torch.Tensor | None = None

    def labels(self) -> torch.Tensor:
        """(N, T) the token each position predicts: ids shifted left by one; -100 (ignored)
        for padding and the last position."""
        labels = self.ids.masked_fill(self.mask == 0, -100).roll(-1, dims=1)
        labels[:, -1] = -100
        return labels

    def widened(self, batch: int, copies: int) -> "AnswerTokens":
        """The same answers for a batch of B questions that fanned out into `copies` slices of B
        rows each (one per adapter route): each slice's answers read their own slice's rows."""
        if copies == 1:
            return self
        offsets = torch.arange(copies, device=self.owner.device).repeat_interleave(len(self.owner)) * batch
        weights = None if self.weights is None else self.weights.repeat(copies)
        return AnswerTokens(self.ids.repeat(copies, 1), self.mask.repeat(copies, 1), self.owner.repeat(copies) + offsets, weights)

    def to(self, device: torch.device) -> "AnswerTokens":
        return AnswerTokens(*(None if t is None else t.to(device, non_blocking=True) for t in self))
