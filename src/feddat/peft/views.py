"""PEFT views: the named-set interface of `AdaptedModel` over other kinds of PEFT module.

Every method talks to its model through a small interface (add_adapter, adapter_names,
active / activate, new_adapter_state, backbone, adapter_parameters, adapter_state, load_adapter,
hidden_size, device, calling it). `AdaptedModel` implements it for bottleneck adapters; a
view implements it for LoRA, prompt tokens, BitFit or full finetuning on top of the same
AdaptedModel, so that FedAvg (or FedDAT) runs unchanged on any of them and still exchanges
a flat dict of tensors: whatever `adapter_state("shared")` holds is what travels and what
the engine counts as bytes per round.

Views are cached per model and settings (`view_for`), so building a method many times (one
per run in a comparison, or per round in an engine) neither re-injects modules nor copies
the backbone again.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from feddat.answer_tokens import AnswerTokens
from feddat.peft.model import AdaptedModel, copy_checked
from feddat.runtime import home_copy

Tensors = dict[str, torch.Tensor]


class PeftView:
    """Base: named sets over an AdaptedModel whose bottleneck adapters stay switched off."""

    kind = "base"
    supports_mean = False  # can two sets run at once as the mean of their updates (docs/design.md §3)

    def __init__(self, model: AdaptedModel):
        self.base = model
        # LoRA and prompts change what the frozen part computes while one of their sets acts, and
        # a switch of set is invisible to the cache's checks of the frozen tensors: the cache asks
        # its guests (peft/prefix.py), so that it serves other methods and skips this one's passes.
        model.guests.append(self)
        self.trainable: dict[str, bool] = {}  # set name -> trainable
        self.current: tuple[str, ...] = ()

    # ---- what AdaptedModel offers --------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.base.hidden_size

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def backbone(self) -> nn.Module:
        return self.base.backbone

    def adapter_names(self) -> list[str]:
        return list(self.trainable)

    def add_adapter(self, name: str, trainable: bool = True) -> None:
        raise NotImplementedError

    def new_adapter_state(self) -> Tensors:
        raise NotImplementedError

    def set_tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The live tensors (parameters) of set `name`, by state key."""
        raise NotImplementedError

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.set_tensors(name).values())

    def adapter_state(self, name: str) -> Tensors:
        """A detached CPU copy of set `name` (runtime.HOME), as AdaptedModel.adapter_state."""
        return {k: home_copy(v) for k, v in self.set_tensors(name).items()}

    def load_adapter(self, name: str, state: Tensors) -> None:
        copy_checked(state, self.set_tensors(name), f"{self.kind} state for '{name}'")

    def activate(self, *names: str) -> None:
        missing = [n for n in names if n not in self.trainable]
        if missing:
            raise KeyError(f"no {self.kind} set named {missing}; have {self.adapter_names()}")
        if len(names) > 1 and not self.supports_mean:
            raise ValueError(f"{self.kind} cannot run two sets at once (mean mode); asked for {names}")
        self.current = tuple(names)
        self.switch(self.current)

    def switch(self, names: tuple[str, ...]) -> None:
        """Make `names` the sets that act in the next forward pass (none: the bare backbone)."""

    @contextmanager
    def active(self, *names: str) -> Iterator[None]:
        previous = self.current
        self.activate(*names)
        try:
            yield
        finally:
            self.activate(*previous)

    def __call__(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, answers: AnswerTokens | None = None) -> torch.Tensor:
        with self.base.active():  # bottleneck adapters off: this view's modules alone adapt the model
            return self.forward(image_features, input_ids, attention_mask, answers)

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, answers: AnswerTokens | None = None) -> torch.Tensor:
        return self.base(image_features, input_ids, attention_mask, answers)

    @property
    def acting(self) -> bool:
        """Whether one of this view's sets acts in the next forward pass."""
        return bool(self.current)

    def own_tensors(self) -> list[torch.Tensor]:
        """Every set's tensors: while no set acts they change nothing the model computes."""
        return [t for name in self.trainable for t in self.set_tensors(name).values()]

    def set_trainable(self, name: str, trainable: bool) -> None:
        self.trainable[name] = trainable
        for p in self.set_tensors(name).values():
            p.requires_grad_(trainable)


_VIEWS: "weakref.WeakKeyDictionary[AdaptedModel, dict[tuple, PeftView]]" = weakref.WeakKeyDictionary()


def view_for(model: AdaptedModel, key: tuple, build: Callable[[], PeftView]) -> PeftView:
    """The view of `model` for settings `key`, built once."""
    views = _VIEWS.setdefault(model, {})
    if key not in views:
        views[key] = build()
    return views[key]


def block_modules(model: AdaptedModel) -> dict[str, nn.Module]:
    """The transformer blocks that carry adapter sites (adapter.blocks), keyed by block index;
    the PEFT kinds use the same blocks, so that every kind adapts the same part of the model."""
    return {i: site.block for i, site in model.sites.items()}
