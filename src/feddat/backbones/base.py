"""What a backbone must expose to the rest of feddat.

A backbone is a frozen vision-language encoder split in two:
- `encode_images`: the frozen part below the first adapter that depends on the image only;
  its output is cached on disk and reused across rounds and methods;
- from those image features plus question tokens to a pooled vector, in three parts:
  `embed` (the token sequence entering the first block, and the block inputs),
  `blocks` (the transformer blocks, where adapter sites are inserted) and `pool`.

The loop over the blocks is not the backbone's: `forward` here runs it plainly, and the
adapted model (peft/model.py) runs it with adapter routing. Whatever else a block takes is
in `BlockInputs`, so whoever runs the loop can widen it when the batch fans out.

An *answer-decoder* backbone (BLIP, ALBEF's line) has more blocks after the encoder's: a text
decoder that reads the encoder's states through cross-attention and predicts the answer's
tokens. Its `blocks` list the encoder's then the decoder's, `decoder_start` is the index of the
first decoder block, and the loop calls `begin_decoding` there: the encoder's last hidden states
become the decoder's memory and the answer tokens its hidden states. Adapter sites, routing and
fan-out then work over both halves alike, and `pool` returns the decoder's token logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from feddat.answer_tokens import AnswerTokens  # noqa: F401  (an answer decoder's input; the data layer builds it)


#: minivl: how the image grid becomes tokens (minivl.py). Here, not in the package's __init__,
#: which builds the backbones: minivl importing it from there would close a circle.
PROJECTORS = ("aligned", "random")


class BlockInputs(NamedTuple):
    """What every block takes besides the hidden state, and what `pool` reads."""

    mask: torch.Tensor  # (B, L): 1 for the tokens to attend to (question padding is 0)
    attention: torch.Tensor | None  # the same mask in the form the blocks take (None: attend everywhere)
    # What the blocks cross-attend to, where they do (BLIP: the image's states in the encoder, the
    # encoder's states in the decoder), with its mask in the form the blocks take.
    memory: torch.Tensor | None = None  # (B, M, width)
    memory_attention: torch.Tensor | None = None

    def repeat(self, copies: int) -> "BlockInputs":
        """Each batch-shaped tensor repeated `copies` times along the batch: the inputs of a
        batch that fanned out into `copies` slices (one per adapter route)."""
        rows = self.mask.shape[0]

        def widen(t):
            if t is None or t.shape[0] != rows:  # None or broadcast over the batch: fits any batch
                return t
            return t.repeat(copies, *([1] * (t.ndim - 1)))

        return BlockInputs(*map(widen, self))


def load_hugging_face(model_class, path: str, name: str, hub_example: str):
    """(model, tokenizer) of a Hugging Face model class from `path`: a hub id (needs a network,
    or the hub cache) or a local folder with its config, weights and tokenizer; a clear error
    naming the backbone and the path otherwise."""
    from transformers import AutoTokenizer

    if not path:
        raise ValueError(f"the {name} backbone needs backbone.path: a hub id such as {hub_example} or a local folder")
    local = Path(path).is_dir()
    try:
        return model_class.from_pretrained(path, local_files_only=local), AutoTokenizer.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as err:  # a malformed hub id is a ValueError in huggingface_hub
        raise OSError(f"could not load {name} from '{path}': {err}") from err


def trim_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns that no row attends to (right padding), so that a batch of short
    questions runs at its longest question's length rather than at backbone.max_text_len.

    Only for backbones whose other tokens do not take their positions from the text's length
    (foundation, ViLT): masked keys get exactly zero attention there, so the outputs are the same
    up to float summation order. minivl numbers its image tokens after the padded text, so
    trimming would move them.
    """
    used = attention_mask.any(0).nonzero()
    width = int(used.max()) + 1 if len(used) else input_ids.shape[1]
    if width == input_ids.shape[1]:
        return input_ids, attention_mask
    return input_ids[:, :width], attention_mask[:, :width]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the hidden states over the real tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


class Backbone(nn.Module, ABC):
    hidden_size: int
    #: Dimensions of one image's `encode_images` output (minivl: tokens x channels). A batch with
    #: one dimension more holds two images per example (two-image tasks, algorithms/base.py).
    feature_rank: int = 2
    #: `embed` is a pure function of its inputs and the blocks take no positions of their own, so
    #: the frozen blocks below the lowest adapter site can be run once per example and kept
    #: (peft/prefix.py); such a backbone implements `block_inputs`.
    prefix_cacheable: bool = False
    #: The index in `blocks` of an answer decoder's first block; None for an encoder that ends
    #: in `pool`'s vector (every classifier backbone). A decoder also says which tokens start,
    #: end and pad an answer (`start_token_id`, `end_token_id`, `pad_token_id`) and how many
    #: tokens its logits score (`vocab_size`).
    decoder_start: int | None = None

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

    def too_long(self, questions: list[str]) -> list[int]:
        """Indices of the questions with more than max_text_len tokens: `tokenize` cuts them."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None:
            return []
        lengths = [len(ids) for ids in tokenizer(list(questions), truncation=False)["input_ids"]]
        return [i for i, n in enumerate(lengths) if n > self.max_text_len]

    @abstractmethod
    def embed(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, trim: bool = True) -> tuple[torch.Tensor, BlockInputs]:
        """-> (the hidden states entering the first block (B, L, hidden_size), the block inputs).
        `trim`: drop the question padding that no row attends to (backbones.base.trim_padding),
        where the backbone can; False keeps every row at backbone.max_text_len."""

    @abstractmethod
    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last block's hidden states (B, L, hidden_size) -> pooled representation (B, hidden_size)."""

    def block_inputs(self, hidden: torch.Tensor, mask: torch.Tensor) -> BlockInputs:
        """The block inputs for hidden states (B, L, hidden_size) whose attended tokens are `mask`
        (a batch rebuilt from cached rows, peft/prefix.py)."""
        raise NotImplementedError(f"{type(self).__name__} does not rebuild block inputs (prefix_cacheable is False)")

    def begin_decoding(self, hidden: torch.Tensor, inputs: BlockInputs, answers: AnswerTokens) -> tuple[torch.Tensor, BlockInputs]:
        """An answer decoder's start, between the encoder's last block and `blocks[decoder_start]`:
        the encoder's hidden states (B, L, hidden_size) and inputs -> the decoder's hidden states
        for the answer tokens (N, T, hidden_size) and its block inputs (the answers' causal mask;
        memory: the encoder's states of each answer's question, hidden[answers.owner])."""
        raise NotImplementedError(f"{type(self).__name__} has no answer decoder")

    def decode_answers(self, tokens: torch.Tensor) -> list[str]:
        """An answer decoder's token ids (N, T) -> the answers' text, special tokens left out."""
        raise NotImplementedError(f"{type(self).__name__} has no answer decoder")

    def tokenize_answers(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """An answer decoder's inputs for answers: (ids, mask), both (N, max_answer_len), each
        beginning with the decoder's start token and ending with its end token."""
        raise NotImplementedError(f"{type(self).__name__} has no answer decoder")

    @staticmethod
    def run_block(block: nn.Module, hidden: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        """One block on the hidden states (Hugging Face blocks return a tensor or a tuple)."""
        out = block(hidden, inputs.attention)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """-> pooled representation (B, hidden_size), every block run as it is."""
        hidden, inputs = self.embed(image_features, input_ids, attention_mask)
        for block in self.blocks:
            hidden = self.run_block(block, hidden, inputs)
        return self.pool(hidden, inputs.mask)

    def freeze(self) -> "Backbone":
        """Frozen end to end and in eval mode: no dropout, so teacher and student paths are deterministic."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Backbone":
        # The backbone stays in eval mode; only adapters and heads train, and they have no dropout.
        return super().train(False)


@torch.no_grad()
def greedy_decode(next_logits: Callable[[AnswerTokens], torch.Tensor], rows: int, backbone: Backbone, steps: int, device: torch.device) -> torch.Tensor:
    """Greedy decoding -> (rows, 1 + steps at most) token ids: the start token, then each step's
    most likely token, padding after a row's end token; fewer steps when every row has ended.
    `next_logits(answers)`: the token logits (rows, T, vocabulary) of the answers so far, whatever
    runs the decoder (the plain loop, or the adapted model with its active adapters). Each step
    reruns the decoder on the whole prefix (no key/value cache): answers are a few tokens."""
    owner = torch.arange(rows, device=device)
    tokens = torch.full((rows, 1), backbone.start_token_id, dtype=torch.long, device=device)
    ended = torch.zeros(rows, dtype=torch.bool, device=device)
    for _ in range(steps):
        step = next_logits(AnswerTokens(tokens, torch.ones_like(tokens), owner))[:, -1].argmax(-1)
        step = step.masked_fill(ended, backbone.pad_token_id)
        tokens = torch.cat([tokens, step[:, None]], dim=1)
        ended |= step == backbone.end_token_id
        if ended.all():
            break
    return tokens
