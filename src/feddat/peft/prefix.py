"""The frozen blocks below the lowest adapter site, run once per example and kept in memory.

Nothing trains below the lowest adapter site: what leaves that site's block (before its
adapters) depends on the example alone, its image features and question tokens. Training reads
every example once per epoch and evaluation reads the test examples every few rounds, so the
adapted model (peft/model.py) keeps those hidden states here and later passes start at the site.
With adapters in the top blocks only (`adapter.blocks`), the frozen blocks below cost nothing
after the first pass.

A stored row must not depend on which batch first needed it, or a resumed run would differ from
an uninterrupted one in the last bits. So the rows missing from a batch are computed untrimmed
(every question at backbone.max_text_len, so every attention sum has one length) in chunks of a
fixed CHUNK rows (the last one filled up with copies): every row goes through matrix products of
one shape, and a product's row depends on no other row.

A row holds the example's attended tokens only (question padding dropped). A batch is rebuilt by
packing each row from the left ([CLS] stays first) and padding with masked zeros. This gives the
uncached pass's result up to float summation order: positions enter at the embedding, not inside
the blocks; masked keys get no attention; pooling reads [CLS] or the mean over the mask.

The rows are valid while the frozen part stays as it was: a parameter changed in place (its
version counter moves), a module added to it, or a different device or autocast setting empties
the cache. Where something trains below the site (LoRA, prompts, BitFit, full finetuning) the
model's PEFT view switches the cache off (peft/views.py).
"""

from __future__ import annotations

import hashlib
import warnings

import torch
from torch import nn

from feddat.backbones.base import Backbone, BlockInputs

#: rows computed per frozen pass: a training batch's worth, enough for efficient matrix products
CHUNK = 32


class PrefixCache:
    def __init__(self, backbone: Backbone, blocks: list[nn.Module], budget_mb: int):
        self.backbone = backbone
        self.blocks = blocks  # the raw frozen blocks, bottom up, the lowest site's block last
        self.budget = budget_mb * 2**20
        self.used = 0
        self.rows: dict[bytes, torch.Tensor] = {}
        self.state: tuple | None = None  # what the stored rows were computed under
        self.full = False  # the budget was spent (warned once)
        self.outside: list[torch.Tensor] | None = None  # see frozen_tensors

    @property
    def depth(self) -> int:
        """How many blocks a cached pass skips."""
        return len(self.blocks)

    def frozen_tensors(self) -> list[torch.Tensor]:
        """The parameters and buffers the cached rows depend on: the backbone's outside its blocks
        (embeddings, projector; fixed, so listed once) and the prefix blocks' (read on every call:
        a module injected into them, such as LoRA, changes the list)."""
        if self.outside is None:
            inside = {id(t) for block in self.backbone.blocks for t in (*block.parameters(), *block.buffers())}
            self.outside = [t for t in (*self.backbone.parameters(), *self.backbone.buffers()) if id(t) not in inside]
        return [*self.outside, *(t for block in self.blocks for t in (*block.parameters(), *block.buffers()))]

    def current_state(self, device: torch.device) -> tuple | None:
        """The frozen part's identity now (None: something in it trains, so nothing is cached)."""
        tensors = self.frozen_tensors()
        if any(t.requires_grad for t in tensors):
            return None
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        return (str(device), autocast, tuple((id(t), t._version) for t in tensors))

    @staticmethod
    def key(features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        for t in (features, ids, mask):
            digest.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.digest()

    @torch.no_grad()
    def compute_rows(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Examples through the frozen prefix, untrimmed: each one's attended tokens (n, hidden)."""
        hidden, inputs = self.backbone.embed(features, ids, mask, trim=False)
        for block in self.blocks:
            hidden = self.backbone.run_block(block, hidden, inputs)
        return [h[m.bool()] for h, m in zip(hidden, inputs.mask)]

    def fill(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, missing: list[tuple[bytes, int]]) -> bool:
        """Compute and store the `missing` rows (key, row of the batch); False once the budget is spent."""
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start : start + CHUNK]
            index = torch.tensor([n for _, n in chunk] + [chunk[-1][1]] * (CHUNK - len(chunk)), device=features.device)
            rows = self.compute_rows(features[index], ids[index], mask[index])
            for (key, _), row in zip(chunk, rows):
                size = row.numel() * row.element_size()
                if self.used + size > self.budget:
                    if not self.full:
                        self.full = True
                        warnings.warn(f"run.prefix_cache_mb ({self.budget // 2**20} MiB) is full with {len(self.rows)} examples: passes with examples beyond them run the frozen blocks again (and a resumed run may then differ from an uninterrupted one in the last bits); raise run.prefix_cache_mb to keep them all", stacklevel=2)
                    return False
                self.rows[key] = row  # a copy (boolean indexing), not a view of the chunk
                self.used += size
        return True

    def run(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, BlockInputs] | None:
        """The hidden states leaving the prefix for this batch, and the block inputs that go with
        them; None when the batch must run uncached (something below the site trains, or the
        memory budget is spent and a row of it is missing)."""
        state = self.current_state(features.device)
        if state is None:
            return None
        if state != self.state:
            self.rows.clear()
            self.used, self.state, self.full = 0, state, False
        host = [t.cpu() for t in (features, ids, mask)]
        keys = [self.key(f, i, m) for f, i, m in zip(*host)]
        missing = {}
        for n, key in enumerate(keys):
            if key not in self.rows:
                missing.setdefault(key, n)
        if missing and not self.fill(features, ids, mask, list(missing.items())):
            return None
        return self.assemble([self.rows[k] for k in keys], mask.dtype)

    def assemble(self, rows: list[torch.Tensor], mask_dtype: torch.dtype) -> tuple[torch.Tensor, BlockInputs]:
        width = max(r.shape[0] for r in rows)
        hidden = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        mask = torch.zeros(len(rows), width, dtype=mask_dtype, device=hidden.device)
        for n, row in enumerate(rows):
            hidden[n, : row.shape[0]] = row
            mask[n, : row.shape[0]] = 1
        return hidden, self.backbone.block_inputs(hidden, mask)
