"""Prompt tuning: P learned prompt tokens inserted into the input sequence, as named sets.

The question's token ids get P placeholder positions right after [CLS] (so a [CLS]-pooled
backbone such as ViLT still pools the [CLS] token), and a forward hook on the backbone's word
embedding writes the active set's P learned vectors into those positions. Everything after
the word embedding (position and type embeddings, LayerNorm, every block) is the frozen
backbone; the P x d prompt is all that trains and travels.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from feddat.answer_tokens import AnswerTokens
from feddat.peft.model import AdaptedModel
from feddat.peft.views import PeftView, Tensors, view_for


def word_embedding(model: AdaptedModel) -> nn.Embedding:
    found = [m for name, m in model.backbone.named_modules() if name.endswith("word_embeddings") and isinstance(m, nn.Embedding)]
    if len(found) != 1:
        raise ValueError(f"prompt tuning needs exactly one word-embedding module in the backbone, found {len(found)}")
    return found[0]


def max_positions(model: AdaptedModel) -> int | None:
    sizes = [m.num_embeddings for name, m in model.backbone.named_modules() if name.endswith("position_embeddings") and isinstance(m, nn.Embedding)]
    return min(sizes) if sizes else None


class PromptView(PeftView):
    kind = "prompt"

    def __init__(self, model: AdaptedModel, length: int, init_std: float):
        super().__init__(model)
        self.length, self.init_std = length, init_std
        self.prompts = nn.ParameterDict()
        self.inject: torch.Tensor | None = None  # the prompt the hook writes in this forward pass
        self.embedding = word_embedding(model)
        # A plain function holding a weak reference, not a bound method: deep copies of the
        # backbone (BitFit, full finetuning) then share the function instead of copying this view.
        ref = weakref.ref(self)
        self.embedding.register_forward_hook(lambda module, inputs, output: ref().write_prompt(module, inputs, output) if ref() else None)

    def add_adapter(self, name: str, trainable: bool = True) -> None:
        self.prompts[name] = nn.Parameter(self.new_adapter_state()["prompt"].to(self.device))
        self.set_trainable(name, trainable)

    def new_adapter_state(self) -> Tensors:
        return {"prompt": torch.randn(self.length, self.hidden_size) * self.init_std}

    def set_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompts[name]}

    def write_prompt(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if self.inject is None:
            return None  # another method's forward pass: leave the embedding alone
        p = self.inject.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :1], p, output[:, 1 + self.length :]], dim=1)

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, answers: AnswerTokens | None = None) -> torch.Tensor:
        if not self.current:
            return self.base(image_features, input_ids, attention_mask, answers)
        limit = max_positions(self.base)
        if limit is not None and input_ids.shape[1] + self.length > limit:
            raise ValueError(f"{input_ids.shape[1]} question tokens + {self.length} prompt tokens exceed the backbone's {limit} text positions: lower peft.prompt_length or backbone.max_text_len")
        b = input_ids.shape[0]
        # Placeholder ids (the [CLS] id) hold the prompt positions; the hook overwrites their embeddings.
        ids = torch.cat([input_ids[:, :1], input_ids[:, :1].expand(b, self.length), input_ids[:, 1:]], dim=1)
        mask = torch.cat([attention_mask[:, :1], attention_mask.new_ones(b, self.length), attention_mask[:, 1:]], dim=1)
        self.inject = self.prompts[self.current[0]]
        try:
            return self.base(image_features, ids, mask, answers)
        finally:
            self.inject = None


def prompt_view(model: AdaptedModel, peft_cfg) -> PromptView:
    key = ("prompt", peft_cfg.prompt_length, float(peft_cfg.prompt_init_std))
    return view_for(model, key, lambda: PromptView(model, peft_cfg.prompt_length, peft_cfg.prompt_init_std))
