"""What pretraining trains: the image projector, the text encoder (LoRA or in full) and two heads.

- masked-word prediction (MLM): BERT's transform (dense, GELU, LayerNorm) and a decoder tied to
  the frozen word embeddings of the corpus's vocabulary only (a few hundred words, not 30,522);
- image-text matching (ITM): a linear classifier on the [CLS] state, which is what the
  foundation backbone pools by default.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from feddat.backbones.foundation import IMAGE_POSITION, LORA_TARGETS, ImageProjector, fuse


def grid_positions(cells: int, hidden: int, scale: float = 0.5) -> torch.Tensor:
    """2-d sine-cosine codes of a square grid's cells (half the channels for the row, half for
    the column), as MAE's; `scale` puts them near the size of the projector's output."""
    import math

    side = int(round(math.sqrt(cells)))
    quarter = hidden // 4
    freq = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / max(1, quarter)))
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64), indexing="ij")
    parts = [f(c.reshape(-1, 1) * freq) for c in (rows, cols) for f in (torch.sin, torch.cos)]
    codes = torch.cat(parts, 1)
    codes = torch.cat([codes, torch.zeros(cells, hidden - codes.shape[1], dtype=codes.dtype)], 1)
    return (scale * codes).float()


class MLMHead(nn.Module):
    def __init__(self, hidden: int, vocab_embeddings: torch.Tensor):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.register_buffer("decoder", vocab_embeddings.detach().clone(), persistent=False)
        self.bias = nn.Parameter(torch.zeros(len(vocab_embeddings)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(hidden))) @ self.decoder.to(hidden.dtype).T + self.bias


class PretrainModel(nn.Module):
    def __init__(self, encoder: nn.Module, feature_dim: int, cells: int, vocab_ids: list[int], tune: str, lora_rank: int, lora_alpha: float):
        super().__init__()
        hidden = encoder.config.hidden_size
        if IMAGE_POSITION + cells > encoder.config.max_position_embeddings:
            raise ValueError(f"the text encoder has {encoder.config.max_position_embeddings} positions; image tokens need {IMAGE_POSITION} + {cells} (a smaller pretrain.image_size, or an encoder with more positions)")
        self.tune = tune
        self.lora = {"rank": lora_rank, "alpha": lora_alpha, "targets": LORA_TARGETS}
        encoder.requires_grad_(False)
        if tune == "lora":
            from peft import LoraConfig, get_peft_model

            # LoRA layers are injected in place: `encoder` itself now runs them.
            with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to act on
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                self.peft = [get_peft_model(encoder, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0, bias="none"))]
            for name, p in encoder.named_parameters():
                if "LayerNorm" in name or "token_type_embeddings" in name:
                    p.requires_grad_(True)
        else:
            for name, p in encoder.named_parameters():
                p.requires_grad_("word_embeddings" not in name and "position_embeddings" not in name)
        self.encoder = encoder
        self.projector = ImageProjector(feature_dim, hidden, cells)
        with torch.no_grad():  # where a cell is, from the first step: smooth in row and column
            self.projector.cell.copy_(grid_positions(cells, hidden))
        self.vocab_ids = list(vocab_ids)
        self.mlm = MLMHead(hidden, encoder.embeddings.word_embeddings.weight[self.vocab_ids])
        self.itm = nn.Linear(hidden, 2)

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden, _ = fuse(self.encoder, input_ids, attention_mask, self.projector(features))
        return hidden

    def encoder_delta(self) -> dict[str, torch.Tensor]:
        """What the foundation checkpoint stores of the encoder: LoRA factors plus the other
        trained tensors ('lora.' / 'encoder.' keys), or every encoder tensor when tuned in full."""
        out: dict[str, torch.Tensor] = {}
        if self.tune == "lora":
            from peft import get_peft_model_state_dict

            out |= {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.peft[0]).items()}
            trained = {k: v for k, v in self.encoder.named_parameters() if v.requires_grad and "lora_" not in k}
        else:
            trained = dict(self.encoder.named_parameters())
        return out | {f"encoder.{k}": v for k, v in trained.items()}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        heads = {f"heads.mlm.{k}": v for k, v in self.mlm.state_dict().items()} | {f"heads.itm.{k}": v for k, v in self.itm.state_dict().items()}
        projector = {f"projector.{k}": v for k, v in self.projector.state_dict().items()}
        return {k: v.detach().float().contiguous().cpu() for k, v in (self.encoder_delta() | projector | heads).items()}

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}
