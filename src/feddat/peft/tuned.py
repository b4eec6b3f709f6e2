"""BitFit and full finetuning: the trained set is a subset of the backbone's own parameters.

- full:   every parameter of the adapted transformer blocks (the fusion encoder; the image
          tower below it is frozen and its output cached, docs/design.md §8, so it cannot train);
- bitfit: only the bias terms of those blocks (linear and LayerNorm biases).

Training these moves the backbone itself, so the view works on its own deep copy of the
model: other methods sharing the original backbone never see the tuned weights. There is a
single set, "shared"; its initial state is the pretrained values.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from feddat.answer_tokens import AnswerTokens
from feddat.peft.model import AdaptedModel
from feddat.peft.views import PeftView, Tensors, block_modules, view_for
from feddat.runtime import home_copy


def block_parameters(model: AdaptedModel, biases_only: bool) -> dict[str, nn.Parameter]:
    """Backbone parameters of the adapted blocks, keyed '<block>.<name>' (LoRA modules another
    method injected into the shared backbone are not backbone parameters and are skipped)."""
    out = {}
    for index, block in block_modules(model).items():
        for name, p in block.named_parameters():
            if "lora_" in name:
                continue
            if biases_only and not name.endswith("bias"):
                continue
            out[f"{index}.{name.replace('.base_layer', '')}"] = p
    return out


class TunedView(PeftView):
    def __init__(self, model: AdaptedModel, kind: str):
        # The copy trains its blocks, so it gets no cache: neither a copy of the rows nor of the
        # original's guests (a deepcopy returns what the memo maps an object's id to).
        tuned = copy.deepcopy(model, memo={id(model.prefix_cache): None, id(model.guests): []})
        super().__init__(tuned)
        self.kind = kind
        self.params = block_parameters(self.base, biases_only=kind == "bitfit")
        if not self.params:
            raise ValueError(f"{kind}: the adapted blocks hold no {'bias ' if kind == 'bitfit' else ''}parameters to train")
        # The initial shared state travels like any other: kept on the CPU (runtime.HOME).
        self.pretrained = {k: home_copy(v) for k, v in self.params.items()}

    def add_adapter(self, name: str, trainable: bool = True) -> None:
        if name != "shared":
            raise ValueError(f"{self.kind} tunes the backbone itself: it has one set, 'shared', not '{name}'")
        self.set_trainable(name, trainable)

    def new_adapter_state(self) -> Tensors:
        return {k: v.clone() for k, v in self.pretrained.items()}

    def set_tensors(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.trainable:
            raise KeyError(f"no {self.kind} set named '{name}'")
        return dict(self.params)

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, answers: AnswerTokens | None = None) -> torch.Tensor:
        # The tuned weights are always in place: "active" or not, this copy is the tuned model.
        return self.base(image_features, input_ids, attention_mask, answers)


def tuned_view(model: AdaptedModel, kind: str) -> TunedView:
    if kind not in ("full", "bitfit"):
        raise ValueError(f"unknown tuned kind '{kind}': full or bitfit")
    return view_for(model, (kind,), lambda: TunedView(model, kind))
