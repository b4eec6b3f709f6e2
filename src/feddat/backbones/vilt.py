"""vilt: Hugging Face ViltModel (the paper's backbone, dandelin/vilt-b32-mlm) with adapters
after every block. Loads from a hub id or a local folder; the frozen image part cached here
is the resized image itself (ViLT's patch projection is cheap and inside the model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feddat.backbones.base import Backbone, BlockInputs, load_hugging_face, trim_padding


class ViLT(Backbone):
    feature_rank = 3  # cached features are the resized pixels, 3 x H x W
    def __init__(self, model: nn.Module, tokenizer, image_size: int = 384, max_text_len: int = 40, source: str = "config"):
        super().__init__()
        self.vilt = model
        self.tokenizer = tokenizer
        self.hidden_size = model.config.hidden_size
        self.image_size = image_size
        self.max_text_len = min(max_text_len, model.config.max_position_embeddings)
        self.source = source
        self.freeze()

    @classmethod
    def from_pretrained(cls, path: str, image_size: int = 384, max_text_len: int = 40) -> "ViLT":
        """`path`: a hub id (needs a network, or the hub cache) or a folder with config, weights and tokenizer."""
        from transformers import ViltModel

        model, tokenizer = load_hugging_face(ViltModel, path, "ViLT", "dandelin/vilt-b32-mlm")
        return cls(model, tokenizer, image_size=image_size, max_text_len=max_text_len, source=path)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.vilt.encoder.layer

    def cache_key(self) -> str:
        return f"vilt-{self.source.replace('/', '_')}-{self.image_size}px"

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8)  # uint8 keeps the cache 4x smaller than float

    def tokenize(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(questions, padding="max_length", truncation=True, max_length=self.max_text_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def embed(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, trim: bool = True) -> tuple[torch.Tensor, BlockInputs]:
        """What ViltModel does before its first layer: text and patch embeddings (it samples the
        patches from torch's global RNG) and the joint mask in the form its layers take."""
        from transformers.masking_utils import create_bidirectional_mask

        if trim:
            input_ids, attention_mask = trim_padding(input_ids, attention_mask)  # patches have positions of their own
        pixels = image_features.float() / 127.5 - 1.0  # ViLT's normalisation: mean 0.5, std 0.5
        pixel_mask = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long, device=pixels.device)
        hidden, mask = self.vilt.embeddings(input_ids, attention_mask, None, pixels, pixel_mask, None, None, image_token_type_idx=None)
        attention = create_bidirectional_mask(config=self.vilt.config, inputs_embeds=hidden, attention_mask=mask)
        return hidden, BlockInputs(mask, attention)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # ViltModel's pooler_output: the final LayerNorm, then the [CLS] token through its pooler.
        return self.vilt.pooler(self.vilt.layernorm(hidden))


def save_random_vilt(folder: str | Path, *, blocks: int = 2, hidden: int = 32, image_size: int = 32, seed: int = 0) -> str:
    """Save a randomly initialised ViLT of a small shape with the packaged MiniLM tokenizer (BERT
    uncased, ViLT's own vocabulary): `--backbone.name vilt --backbone.path FOLDER` then runs
    offline. The tests, benchmarks and `make gpu-check` train these; nothing they learn means
    anything, but every code path of a real ViLT runs."""
    from transformers import AutoTokenizer, ViltConfig, ViltModel

    from feddat.backbones.minivl import minilm_path

    torch.manual_seed(seed)
    config = ViltConfig(hidden_size=hidden, num_hidden_layers=blocks, num_attention_heads=2, intermediate_size=2 * hidden, image_size=image_size, patch_size=16, max_position_embeddings=16)
    ViltModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True).save_pretrained(folder)
    return str(folder)
