"""A frozen backbone with adapter sites: named adapter sets, activation modes, state in and out.

An adapter *set* is one named adapter at every site (e.g. "shared" = A_s, "frozen" = Â_s,
"client" = A_c). Its state is a flat dict "<site>.<param>" -> tensor, the unit that travels
between server and clients or is stored per client.

`forward` is the one loop over the backbone's blocks (backbones/base.py: embed, blocks,
pool). It owns routing: which adapters each site runs, and where a routed batch fans out
into one slice per adapter path, after which every block, adapted or not, gets the widened
block inputs. With `cache_prefix` on (a training run), the loop starts above the frozen blocks
below the lowest adapter site, whose output is kept per example (peft/prefix.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from feddat.answer_tokens import AnswerTokens
from feddat.backbones.base import Backbone
from feddat.backbones.state import check_state, copy_checked  # noqa: F401  (re-exported: the adapters' states are checked the same way)
from feddat.peft.adapter import AdapterSite, BottleneckAdapter
from feddat.peft.prefix import PrefixCache
from feddat.runtime import home_copy

Routes = tuple[tuple[str, ...], ...]  # adapter names per equal slice of the batch


@dataclass(frozen=True)
class Routing:
    """A routed pass (AdaptedModel.routed): slice i of the batch runs adapters routes[i]."""

    routes: Routes
    share_prefix: bool  # the batch enters once and fans out at the branch site
    branch: int  # position (bottom up) of the site where it fans out


class AdaptedModel(nn.Module):
    def __init__(self, backbone: Backbone, reduction_factor: int = 16, activation: str = "relu", blocks: list[int] | None = None, init: str = "normal", init_std: float = 0.02):
        super().__init__()
        self.backbone = backbone
        self.adapter_kwargs = dict(reduction_factor=reduction_factor, activation=activation, init=init, init_std=init_std)
        n_blocks = len(backbone.blocks)
        indices = sorted(set(blocks)) if blocks else list(range(n_blocks))
        bad = [i for i in indices if not 0 <= i < n_blocks]
        if bad:
            raise ValueError(f"adapter.blocks {bad} out of range: the backbone has {n_blocks} blocks (0..{n_blocks - 1})")
        self.sites: dict[str, AdapterSite] = {}
        for i in indices:
            site = AdapterSite(backbone.blocks[i])
            backbone.blocks[i] = site
            self.sites[str(i)] = site
        self.routing: Routing | None = None  # set inside `routed`
        self.prefix_cache: PrefixCache | None = None  # off until `cache_prefix`
        self.guests: list = []  # PEFT views acting inside the frozen part (peft/views.py), which the cache must know

    def cache_prefix(self, budget_mb: int) -> None:
        """Keep the frozen blocks' output below the lowest adapter site per example, and the bare
        backbone's pooled output for passes with no adapter active, in up to `budget_mb` MiB
        (peft/prefix.py); 0, a backbone that cannot, or no site: off."""
        self.prefix_cache = None
        if budget_mb > 0 and self.sites and self.backbone.prefix_cacheable:
            raw = [b.block if isinstance(b, AdapterSite) else b for b in self.backbone.blocks]
            self.prefix_cache = PrefixCache(self.backbone, raw, min(map(int, self.sites)) + 1, budget_mb, self.guests)

    @classmethod
    def from_config(cls, backbone: Backbone, a, prefix_cache_mb: int = 0) -> "AdaptedModel":
        """Adapter sites on `backbone` as a run's `[adapter]` section (config.AdapterConfig)
        describes; a training run also passes its `run.prefix_cache_mb` (`cache_prefix`)."""
        model = cls(backbone, a.reduction_factor, a.activation, a.blocks or None, a.init, a.init_std)
        model.cache_prefix(prefix_cache_mb)
        return model

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    def add_adapter(self, name: str, trainable: bool = True) -> None:
        for site in self.sites.values():
            adapter = BottleneckAdapter(self.hidden_size, **self.adapter_kwargs).to(self.device)
            adapter.requires_grad_(trainable)
            site.adapters[name] = adapter

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def adapter_names(self) -> list[str]:
        return list(next(iter(self.sites.values())).adapters.keys()) if self.sites else []

    def ordered_sites(self) -> list[AdapterSite]:
        """The adapter sites from the bottom of the backbone to the top."""
        return [self.sites[k] for k in sorted(self.sites, key=int)]

    def _check_names(self, *groups: tuple[str, ...]) -> None:
        missing = sorted({n for names in groups for n in names} - set(self.adapter_names()))
        if missing:
            raise KeyError(f"no adapter named {missing}; have {self.adapter_names()}")

    def _check_branch(self, branch: int) -> None:
        if not 0 <= branch < max(1, len(self.sites)):
            raise ValueError(f"branch site {branch} out of range: the model has {len(self.sites)} adapter sites (0..{len(self.sites) - 1})")

    def activate(self, *names: str, below: tuple[str, ...] = (), branch: int = 0) -> None:
        """One name: single mode; several: their mean (docs/design.md §3). No name: the bare backbone.

        With `branch` > 0 the sites below position `branch` (bottom up) run `below` instead:
        a path that shares its lower part with another one (FedDAT's branched teacher).
        """
        self._check_names(names, below)
        self._check_branch(branch)
        for i, site in enumerate(self.ordered_sites()):
            site.active = tuple(below) if i < branch else tuple(names)

    @contextmanager
    def active(self, *names: str, below: tuple[str, ...] = (), branch: int = 0) -> Iterator[None]:
        sites = self.ordered_sites()
        previous = [site.active for site in sites]
        self.activate(*names, below=below, branch=branch)
        try:
            yield
        finally:
            for site, names_before in zip(sites, previous):
                site.active = names_before

    @contextmanager
    def routed(self, *routes: tuple[str, ...], share_prefix: bool = False, branch: int = 0) -> Iterator[None]:
        """Run len(routes) adapter paths (e.g. FedDAT's student and teacher) in one batched pass:
        slice i of the batch runs with adapters routes[i].

        Without `share_prefix` the caller repeats the inputs len(routes) times. With it, the
        caller passes the batch once: everything below the first adapter site (embeddings,
        the blocks before it, the first block itself) runs once, and the batch fans out there
        to one copy per route (after the last block if the model has no site). The output
        then has len(routes) x B rows.

        `branch` > 0 (with `share_prefix`) moves the fan-out up to that site: the sites below
        it run routes[0] once for all paths, and the other paths receive a detached copy, so
        their losses train nothing below the branch and their backward stops there.
        """
        self._check_names(*routes)
        self._check_branch(branch)
        if branch and not share_prefix:
            raise ValueError("a branch site needs share_prefix: the paths share what runs below it")
        previous, self.routing = self.routing, Routing(tuple(tuple(names) for names in routes), share_prefix, branch)
        try:
            yield
        finally:
            self.routing = previous

    def plan(self) -> list[tuple[Routes | None, int]]:
        """Per block, bottom up: (the routes its adapter site runs, None where it has no site;
        the copies the batch fans out to after this block's output, 1 for none)."""
        blocks = range(len(self.backbone.blocks))
        position = {int(k): n for n, k in enumerate(sorted(self.sites, key=int))}  # block -> site position
        r = self.routing
        if r is None:
            return [((self.sites[str(i)].active,) if i in position else None, 1) for i in blocks]
        fan_block = -1
        if r.share_prefix:
            fan_block = next((i for i, n in position.items() if n == r.branch), blocks[-1])
        plan = []
        for i in blocks:
            n = position.get(i)
            routes = None if n is None else ((r.routes[0],) if r.share_prefix and n < r.branch else r.routes)
            plan.append((routes, len(r.routes) if i == fan_block else 1))
        return plan

    def new_adapter_state(self) -> dict[str, torch.Tensor]:
        """Freshly initialised adapter-set state (from torch's global RNG), not inserted anywhere."""
        return {f"{i}.{k}": v for i in self.sites for k, v in BottleneckAdapter(self.hidden_size, **self.adapter_kwargs).state_dict().items()}

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for site in self.sites.values() for p in site.adapters[name].parameters()]

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """A detached copy of adapter set `name` on the CPU (runtime.HOME, where everything that
        crosses the client/server boundary lives), keyed '<block>.<param>'."""
        return {f"{i}.{k}": home_copy(v) for i, site in self.sites.items() for k, v in site.adapters[name].state_dict().items()}

    def load_adapter(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Copy `state` into adapter set `name`; every key and shape must match exactly."""
        expected = {f"{i}.{k}": v for i, site in self.sites.items() for k, v in site.adapters[name].state_dict().items()}
        copy_checked(state, expected, f"adapter state for '{name}'")

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, answers: AnswerTokens | None = None) -> torch.Tensor:
        """-> pooled representations: (B, hidden), or (copies x B, hidden) inside `routed`.
        An answer-decoder backbone decodes `answers` (N of them) after its encoder and returns
        their token logits: (N, T, vocabulary), or (copies x N, ...) inside `routed`."""
        backbone = self.backbone
        if (backbone.decoder_start is None) != (answers is None):
            raise ValueError(f"{type(backbone).__name__} {'takes no answers to decode' if answers is not None else 'decodes answers: pass them'}")
        if self.prefix_cache and self.routing is None and not any(site.active for site in self.sites.values()):
            pooled = self.prefix_cache.run_bare(image_features, input_ids, attention_mask)
            if pooled is not None:  # the bare backbone, every block frozen
                return pooled
        cached = self.prefix_cache.run(image_features, input_ids, attention_mask) if self.prefix_cache else None
        hidden, inputs = cached or backbone.embed(image_features, input_ids, attention_mask)
        skip = self.prefix_cache.depth if cached else 0  # blocks whose output came from the cache
        for i, (block, (routes, copies)) in enumerate(zip(backbone.blocks, self.plan())):
            site = block if isinstance(block, AdapterSite) else None
            if i == backbone.decoder_start:  # the encoder's states become the decoder's memory
                batch = input_ids.shape[0]
                hidden, inputs = backbone.begin_decoding(hidden, inputs, answers.widened(batch, hidden.shape[0] // batch))
            if i >= skip:
                hidden = backbone.run_block(site.block if site else block, hidden, inputs)
            if copies > 1:
                # Copies after the first are detached: a path branching off here trains nothing
                # below it (a no-op at the first site, where nothing below is trainable). Every
                # block from here on sees the widened batch, so its inputs widen with it.
                hidden = torch.cat([hidden] + [hidden.detach()] * (copies - 1))
                inputs = inputs.repeat(copies)
            if site is not None:
                hidden = site.adapt(hidden, routes)
        return backbone.pool(hidden, inputs.mask)
