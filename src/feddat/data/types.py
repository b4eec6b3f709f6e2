"""The data layer's shared types, so that its modules import them from here and not each other.

- `DataError`: a dataset cannot be used as given (every loader and partition raises it);
- `RawSplit`, `RawClient`: what a data source yields before encoding (images as arrays, text);
- `Source`: one dataset's split maker (data/sources.py lists a benchmark's sources);
- `Encoder`: what the data need of a backbone to encode a split (backbones.base.Backbone has it);
- `Batch`: the tensors of one minibatch, as `Split.batch` (data/clients.py) gives them.

This module imports nothing from feddat but the leaf answer_tokens: every part of the data layer, and the layers above it,
can import it without a circle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch

from feddat.answer_tokens import AnswerTokens


class DataError(ValueError):
    """A dataset cannot be used as given; the message names the client or file."""


@dataclass
class RawSplit:
    """What a data source yields before encoding: images as uint8 arrays, questions, answers."""

    images: np.ndarray  # (N, H, W, 3) uint8
    questions: list[str]  # the question, or the statement of an entailment / true-false task
    answers: list[str]  # one answer per example (the most common one where annotators differ)
    key: str  # identifies the content, for the feature cache
    # Every annotator's answer (VQA v2, VizWiz: 10) where the dataset has several: soft targets.
    answer_lists: list[list[str]] | None = None
    images2: np.ndarray | None = None  # the second image of two-image tasks (NLVR2), (N, H, W, 3)
    groups: list[str] | None = None  # each example's category (question type ...): partitions, describe
    # The annotators' answers as the files have them (public 10-answer data): what the official
    # VQA accuracy is computed from. One answer per example: exact match.
    eval_answers: list[list[str]] | None = None
    # Where a cap (data.train_per_client / test_per_client) drew these examples from more: how
    # many there were (your own folder data; the run and `describe` say so). None: all are here.
    available: int | None = None
    # The file these examples were read from (your own folder data): what an error about them names.
    origin: str | None = None

    def __len__(self) -> int:
        return len(self.answers)

    def subset(self, index: Sequence[int], tag: str) -> "RawSplit":
        """The examples at `index`, keyed by this split's key and `tag` (which must name the choice)."""
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda items: None if items is None else [items[i] for i in idx]  # noqa: E731
        return RawSplit(
            images=self.images[idx],
            questions=pick(self.questions),
            answers=pick(self.answers),
            key=f"{self.key}|{tag}",
            answer_lists=pick(self.answer_lists),
            images2=None if self.images2 is None else self.images2[idx],
            groups=pick(self.groups),
            eval_answers=pick(self.eval_answers),
        )

    @staticmethod
    def concat(parts: Sequence["RawSplit"], key: str) -> "RawSplit":
        """One split holding all `parts` in order. Answer lists and categories are filled in where
        only some parts have them; one-image and two-image parts cannot be pooled."""
        if len({p.answer_lists is None for p in parts}) > 1:
            # One answer counted three times has soft score 1: exact match, in the soft format.
            parts = [p if p.answer_lists is not None else dataclasses.replace(p, answer_lists=[[a] * 3 for a in p.answers]) for p in parts]
        if len({p.groups is None for p in parts}) > 1:
            parts = [p if p.groups is not None else dataclasses.replace(p, groups=[""] * len(p)) for p in parts]
        if len({p.eval_answers is None for p in parts}) > 1:  # a single answer is scored by exact match
            parts = [p if p.eval_answers is not None else dataclasses.replace(p, eval_answers=[[a] for a in p.answers]) for p in parts]
        if len({p.images2 is None for p in parts}) > 1:
            raise DataError("cannot pool one-image and two-image data sources")
        first = parts[0]
        join = lambda name: None if getattr(first, name) is None else [x for p in parts for x in getattr(p, name)]  # noqa: E731
        return RawSplit(
            images=np.concatenate([p.images for p in parts]),
            questions=join("questions"),
            answers=join("answers"),
            key=key,
            answer_lists=join("answer_lists"),
            images2=None if first.images2 is None else np.concatenate([p.images2 for p in parts]),
            groups=join("groups"),
            eval_answers=join("eval_answers"),
        )


@dataclass
class RawClient:
    """A client's data before encoding, and the task it poses."""

    name: str
    train: RawSplit
    test: RawSplit
    task: str = "vqa"
    classes: tuple[str, ...] | None = None  # a fixed output space (entailment: 3 labels), else the top answers
    # Questions whose answer is outside the answer vocabulary (data.clients.in_vocabulary sets
    # them, for `describe`): training ones are dropped, test ones kept and counted wrong.
    train_outside_vocabulary: int = 0
    test_outside_vocabulary: int = 0


@dataclass
class Source:
    """One dataset's train or test split of a requested size (a benchmark is a list of them)."""

    name: str
    make: Callable[[str, int], RawSplit]  # (split "train"/"test", n) -> n examples; n = 0: all of a finite source
    task: str = "vqa"
    classes: tuple[str, ...] | None = None  # fixed output space, else the most frequent answers
    categories: tuple[str, ...] = field(default=())  # what RawSplit.groups may hold (category partition)


class Encoder(Protocol):
    """What the data need of a backbone to turn a RawSplit into tensors (data/clients.py).

    backbones.base.Backbone has these methods; the data layer names only this protocol, so it
    does not import the backbones (which sit above it).
    """

    def cache_key(self) -> str:
        """Identifies everything `encode_images` depends on (weights, image size)."""
        ...

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 images -> frozen per-image features (N, ...)."""
        ...

    def tokenize(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions -> (input_ids, attention_mask), both (N, max_text_len)."""
        ...

    def too_long(self, questions: list[str]) -> list[int]:
        """Indices of the questions that `tokenize` cuts to max_text_len tokens."""
        ...


class Batch(NamedTuple):
    """One minibatch on the training device. A tuple too: `batch[:3]` is the model's input and
    `batch[-1]` the targets, for code that still indexes it."""

    image_features: torch.Tensor  # (B, ...) backbone.encode_images output; (B, 2, ...) for two-image tasks
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    # (B,) class indices (-1: outside the vocabulary) or (B, answers) soft scores; for an answer
    # decoder, the answers to decode (Split.candidates): the targets when training, every
    # candidate when ranking (Split.ranking_batch).
    targets: torch.Tensor | AnswerTokens

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image_features, input_ids, attention_mask): what the model takes."""
        return self.image_features, self.input_ids, self.attention_mask
