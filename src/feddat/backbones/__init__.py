"""Backbones: frozen vision-language encoders behind one small interface (base.Backbone)."""

from __future__ import annotations

from feddat.backbones.base import PROJECTORS, Backbone

BACKBONES = ("foundation", "minivl", "vilt", "blip")
#: The backbones that answer with a decoder (base.Backbone.decoder_start): no classifier head.
DECODERS = ("blip",)


def build_backbone(name: str, path: str = "", image_size: int = 128, max_text_len: int = 20, projector: str = "random", max_answer_len: int = 10) -> Backbone:
    if name == "foundation":
        from feddat.backbones.foundation import Foundation

        return Foundation(path, image_size=image_size, max_text_len=max_text_len)
    if name == "minivl":
        from feddat.backbones.minivl import MiniVL

        return MiniVL(image_size=image_size, max_text_len=max_text_len, projector=projector)
    if name == "vilt":
        from feddat.backbones.vilt import ViLT

        return ViLT.from_pretrained(path, image_size=image_size, max_text_len=max_text_len)
    if name == "blip":
        from feddat.backbones.blip import BLIP

        return BLIP.from_pretrained(path, image_size=image_size, max_text_len=max_text_len, max_answer_len=max_answer_len)
    raise ValueError(f"unknown backbone '{name}': choose one of {', '.join(BACKBONES)}")


def backbone_identity(b) -> dict[str, str]:
    """What the adapters and heads trained on the backbone `b` (config.BackboneConfig) fit: its
    name and, for foundation, its checkpoint's sha256 (the feature-cache key's). Trained models
    record it (the shared adapter's metadata, an export's feddat_model.json), and loading them
    on another backbone is refused."""
    identity = {"name": b.name}
    if b.name == "foundation":
        from feddat.backbones.foundation import packaged_checkpoint, read_card

        identity["checkpoint_sha256"] = str(read_card(b.path or packaged_checkpoint()).get("sha256"))
    return identity


def backbone_from_config(b) -> Backbone:
    """The backbone a run's `[backbone]` section (config.BackboneConfig) describes."""
    return build_backbone(b.name, b.path, b.image_size, b.max_text_len, b.projector, b.max_answer_len)
