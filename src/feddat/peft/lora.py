"""LoRA on the attention projections, through the `peft` library, as named sets.

Each set is one peft LoRA adapter (W x + (α/r)·B A x) on the target projections of every
adapted block. Several sets can act at once in `mean` mode: each contributes half its update,
W x + ½(α/r)(B_x A_x + B_y A_y) x, the LoRA analogue of docs/design.md §3's adapter mean, which is
what FedDAT's Dual-Adapter Teacher needs.

The LoRA layers are injected into the shared backbone once (peft keeps the frozen base layer
inside them); when no LoRA set is active they compute the base layer alone, so other methods
running on the same backbone are unaffected.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from feddat.peft.model import AdaptedModel
from feddat.peft.views import PeftView, Tensors, block_modules, view_for


class LoraView(PeftView):
    kind = "lora"
    supports_mean = True

    def __init__(self, model: AdaptedModel, rank: int, alpha: float, targets: list[str]):
        super().__init__(model)
        self.rank, self.alpha, self.targets = rank, alpha, list(targets)
        # peft adapter names are per view, so views with other ranks can share a backbone.
        self.tag = f"r{rank}a{alpha:g}t{'+'.join(self.targets)}".replace(".", "_")
        self.layers: dict[str, nn.Module] = {}  # state key prefix -> peft LoraLayer

    def peft_name(self, name: str) -> str:
        return f"{name}_{self.tag}"

    def add_adapter(self, name: str, trainable: bool = True) -> None:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=0.0, target_modules=self.targets, bias="none")
        for index, block in block_modules(self.base).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "multiple adapters in the model": intended
                try:
                    inject_adapter_in_model(config, block, adapter_name=self.peft_name(name))
                except ValueError as err:
                    raise ValueError(f"peft.lora_targets {self.targets} match no module in block {index}: {err}") from err
            for path, module in block.named_modules():
                # only layers holding this view's sets: another view may target other projections
                if isinstance(module, LoraLayer) and self.peft_name(name) in module.lora_A:
                    self.layers[f"{index}.{path}"] = module
                    self._to_base_device(module, self.peft_name(name))
        self.trainable[name] = trainable
        # Injection re-marks which LoRA weights train; put every set back as it should be.
        for other, flag in self.trainable.items():
            self.set_trainable(other, flag)
        self.switch(self.current)

    @staticmethod
    def _to_base_device(layer: nn.Module, key: str) -> None:
        """Put LoRA set `key` of `layer` where the frozen base layer computes. peft does this
        itself except when an earlier set of the layer sits on the `meta` device (it then leaves
        the new one on the CPU), so the view makes sure for every device alike."""
        device = layer.get_base_layer().weight.device
        layer.lora_A[key].to(device)
        layer.lora_B[key].to(device)

    def set_tensors(self, name: str) -> dict[str, torch.Tensor]:
        key = self.peft_name(name)
        out = {}
        for prefix, layer in self.layers.items():
            out[f"{prefix}.lora_A"] = layer.lora_A[key].weight
            out[f"{prefix}.lora_B"] = layer.lora_B[key].weight
        return out

    def new_adapter_state(self) -> Tensors:
        """peft's default LoRA initialisation (A Kaiming-uniform, B zero: the model starts as the
        backbone), drawn from torch's global RNG so that a seed fixes it."""
        state = {}
        for prefix, layer in self.layers.items():
            base = layer.get_base_layer()
            a = torch.empty(self.rank, base.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            state[f"{prefix}.lora_A"] = a
            state[f"{prefix}.lora_B"] = torch.zeros(base.out_features, self.rank)
        return state

    def switch(self, names: tuple[str, ...]) -> None:
        # Set peft's active adapters directly: its set_adapter() would also flip requires_grad,
        # and the frozen copy (FedDAT's Â_s) must stay frozen while it is active.
        active = [self.peft_name(n) for n in names]
        scale = self.alpha / self.rank / max(1, len(names))
        for layer in self.layers.values():
            layer._active_adapter = active
            for key in active:
                layer.scaling[key] = scale


def lora_view(model: AdaptedModel, peft_cfg) -> LoraView:
    key = ("lora", peft_cfg.lora_rank, float(peft_cfg.lora_alpha), tuple(peft_cfg.lora_targets))
    return view_for(model, key, lambda: LoraView(model, peft_cfg.lora_rank, peft_cfg.lora_alpha, peft_cfg.lora_targets))
