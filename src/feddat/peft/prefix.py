"""The frozen blocks below the lowest adapter site, run once per example and kept in memory.

Nothing trains below the lowest adapter site: what leaves that site's block (before its
adapters) depends on the example alone, its image features and question tokens. Training reads
every example once per epoch and evaluation reads the test examples every few rounds, so the
adapted model (peft/model.py) keeps those hidden states here and later passes start at the site.
With adapters in the top blocks only (`adapter.blocks`), the frozen blocks below cost nothing
after the first pass. A pass with no adapter active anywhere (a head on the frozen backbone,
`head_only`) is frozen all the way up: its pooled output is kept per example as well.

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
the cache. PEFT views that act inside the frozen part (LoRA in the blocks, prompt tokens at the
embedding; peft/views.py) are the model's *guests*: while one of their sets acts, every pass runs
uncached, and their own tensors are not part of the frozen state, because a guest with no set
active computes exactly the frozen model (so other methods on the same model keep the rows).
BitFit and full finetuning tune a copy of the model, which has no cache (peft/tuned.py).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from feddat.backbones.base import Backbone, BlockInputs

#: rows computed per frozen pass: a training batch's worth, enough for efficient matrix products
CHUNK = 32


@dataclass
class Store:
    """Rows of one kind, and the frozen state they were computed under."""

    pooled: bool  # the bare backbone's pooled output (hidden,), else the prefix's attended tokens (n, hidden)
    rows: dict[bytes, torch.Tensor] = field(default_factory=dict)
    state: tuple | None = None
    used: int = 0


class PrefixCache:
    def __init__(self, backbone: Backbone, blocks: list[nn.Module], depth: int, budget_mb: int, guests: list | None = None):
        self.backbone = backbone
        self.guests = [] if guests is None else guests  # the model's PEFT views: `acting`, `own_tensors()`
        self.all_blocks = blocks  # every raw frozen block, bottom up
        self.blocks = blocks[:depth]  # the prefix: up to the lowest site's block
        self.budget = budget_mb * 2**20
        self.prefix = Store(pooled=False)  # attended tokens leaving the prefix
        self.bare = Store(pooled=True)  # the bare backbone's output (no adapter active anywhere)
        self.full = False  # the budget was spent (warned once)
        self.outside: list[torch.Tensor] | None = None  # see frozen_tensors

    @property
    def depth(self) -> int:
        """How many blocks a cached pass skips."""
        return len(self.blocks)

    @property
    def used(self) -> int:
        return self.prefix.used + self.bare.used

    def frozen_tensors(self, depth: int) -> list[torch.Tensor]:
        """The parameters and buffers rows of `depth` blocks depend on: the backbone's outside its
        blocks (embeddings, projector; fixed, so listed once) and those of the blocks below
        `depth` (read on every call: a module injected into them changes the list), less the
        guests' own tensors (a LoRA set that is not active computes nothing)."""
        if self.outside is None:
            inside = {id(t) for block in self.backbone.blocks for t in (*block.parameters(), *block.buffers())}
            self.outside = [t for t in (*self.backbone.parameters(), *self.backbone.buffers()) if id(t) not in inside]
        guest = {id(t) for g in self.guests for t in g.own_tensors()}
        return [*self.outside, *(t for block in self.all_blocks[:depth] for t in (*block.parameters(), *block.buffers()) if id(t) not in guest)]

    def current_state(self, device: torch.device, depth: int) -> tuple | None:
        """The frozen part's identity now (None: a guest acts or something in it trains, so
        nothing is cached)."""
        if any(g.acting for g in self.guests):
            return None
        tensors = self.frozen_tensors(depth)
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
    def compute_rows(self, store: Store, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Examples through the frozen blocks, untrimmed: each one's attended tokens leaving the
        prefix (n, hidden), or its pooled output after every block (hidden,)."""
        hidden, inputs = self.backbone.embed(features, ids, mask, trim=False)
        for block in self.all_blocks if store.pooled else self.blocks:
            hidden = self.backbone.run_block(block, hidden, inputs)
        if store.pooled:
            return [row.clone() for row in self.backbone.pool(hidden, inputs.mask)]
        return [h[m.bool()] for h, m in zip(hidden, inputs.mask)]

    def fill(self, store: Store, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, missing: list[tuple[bytes, int]]) -> bool:
        """Compute and store the `missing` rows (key, row of the batch); False once the budget is spent."""
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start : start + CHUNK]
            index = torch.tensor([n for _, n in chunk] + [chunk[-1][1]] * (CHUNK - len(chunk)), device=features.device)
            rows = self.compute_rows(store, features[index], ids[index], mask[index])
            for (key, _), row in zip(chunk, rows):
                size = row.numel() * row.element_size()
                if self.used + size > self.budget:
                    if not self.full:
                        self.full = True
                        warnings.warn(f"run.prefix_cache_mb ({self.budget // 2**20} MiB) is full with {len(self.prefix.rows) + len(self.bare.rows)} examples: passes with examples beyond them run the frozen blocks again (and a resumed run may then differ from an uninterrupted one in the last bits); raise run.prefix_cache_mb to keep them all", stacklevel=2)
                    return False
                store.rows[key] = row  # a copy (boolean indexing, clone), not a view of the chunk
                store.used += size
        return True

    def lookup(self, store: Store, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor] | None:
        """The batch's rows in `store`, computing those not yet there; None when the batch must
        run uncached (something they depend on trains, or the budget is spent and a row is missing)."""
        state = self.current_state(features.device, len(self.all_blocks) if store.pooled else self.depth)
        if state is None:
            return None
        if state != store.state:
            store.rows.clear()
            store.used, store.state, self.full = 0, state, False
        host = [t.cpu() for t in (features, ids, mask)]
        keys = [self.key(f, i, m) for f, i, m in zip(*host)]
        missing = {}
        for n, key in enumerate(keys):
            if key not in store.rows:
                missing.setdefault(key, n)
        if missing and not self.fill(store, features, ids, mask, list(missing.items())):
            return None
        return [store.rows[k] for k in keys]

    def run(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, BlockInputs] | None:
        """The hidden states leaving the prefix for this batch, and the block inputs that go with
        them; None when the batch must run uncached."""
        rows = self.lookup(self.prefix, features, ids, mask)
        return None if rows is None else self.assemble(rows, mask.dtype)

    def run_bare(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The bare backbone's pooled output for this batch (B, hidden): with no adapter active
        anywhere (a head on the frozen backbone, `head_only`) every block is frozen, so each
        example runs through them once. None when the batch must run uncached."""
        rows = self.lookup(self.bare, features, ids, mask)
        return None if rows is None else torch.stack(rows)

    def assemble(self, rows: list[torch.Tensor], mask_dtype: torch.dtype) -> tuple[torch.Tensor, BlockInputs]:
        width = max(r.shape[0] for r in rows)
        hidden = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        mask = torch.zeros(len(rows), width, dtype=mask_dtype, device=hidden.device)
        for n, row in enumerate(rows):
            hidden[n, : row.shape[0]] = row
            mask[n, : row.shape[0]] = 1
        return hidden, self.backbone.block_inputs(hidden, mask)
