"""The packaged foundation checkpoint: small enough to ship, rebuilt by today's defaults, loads
offline as the default backbone, and its weights ground words in images — measured here on fresh
scenes through its own matching head, not read from its card."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from feddat.backbones.foundation import CARD_FILE, Foundation, load_checkpoint, packaged_checkpoint
from feddat.config import BackboneConfig, PretrainConfig
from feddat.pretrain import corpus as C
from feddat.pretrain.train import NOT_RECIPE

FOLDER = packaged_checkpoint()
SHIPPED = ("card.json", "foundation.safetensors", "recipe.toml")


def test_the_checkpoint_ships_small_and_complete():
    assert FOLDER.is_dir(), f"{FOLDER} missing: build it with the command in docs/guide/backbones.md, 'The foundation backbone and feddat pretrain'"
    assert sorted(p.name for p in FOLDER.iterdir()) == sorted(SHIPPED)
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 5 * 2**20


def test_the_defaults_are_the_recipe_it_was_built_from():
    """`feddat pretrain` with no flags rebuilds the packaged checkpoint: its recipe is today's defaults."""
    card = load_checkpoint(FOLDER).card
    defaults = dataclasses.asdict(PretrainConfig())
    recipe = card["recipe"]
    # threads and precision "auto" are the machine's: the recipe records the ones the build ran with
    differ = {k: (recipe.get(k), v) for k, v in defaults.items() if k not in NOT_RECIPE + ("threads", "precision") and recipe.get(k) != v}
    assert not differ, f"PretrainConfig defaults drifted from {FOLDER / CARD_FILE}: {differ}"
    assert defaults["precision"] == "auto" and recipe["precision"] in ("bf16", "fp32")
    assert BackboneConfig().path == ""  # backbone.name foundation with no path loads this folder
    assert "feddat pretrain --config" in card["rebuild"]


def test_its_card_passes_the_grounding_gate():
    """docs/guide/backbones.md, 'The held-out report': real images must beat shuffled ones by far on the pretraining styles."""
    held = load_checkpoint(FOLDER).card["heldout"]["pretraining styles"]
    for role in ("colour", "shape", "size"):
        assert held["mlm"][role] >= 80 and held["mlm"][role] >= held["mlm_shuffled"][role] + 20, (role, held)
    assert held["mlm"]["count"] >= 80  # "there are two ..." is partly guessable from the text alone
    assert held["itm"]["match"] >= 85, held["itm"]


@pytest.fixture(scope="module")
def backbone():
    return Foundation(max_text_len=32)  # the packaged checkpoint, offline; captions as long as in pretraining


def test_its_matching_head_tells_true_captions_from_false_on_fresh_scenes(backbone):
    scenes = C.corpus_scenes(48, seed=2026)  # not the corpus's seed, nor its held-out sets'
    images = C.render_corpus(scenes, list(C.CORPUS_STYLES), 2026, backbone.image_size)
    texts, labels = [], []
    for i, s in enumerate(scenes):
        rng = C.caption_rng(2026, 0, i)
        true = C.true_caption(s, rng)
        false = C.hard_negative(s, true, rng) or C.easy_negative(s, scenes[i + 1 :] + scenes[:i], rng)
        texts += [true.text, false.text]
        labels += [1, 0]
    itm = load_checkpoint(FOLDER).part("heads.itm.")
    tokens = backbone.encode_images(images).float().repeat_interleave(2, dim=0)
    ids, mask = backbone.tokenize(texts)
    def matches(image_tokens):
        with torch.no_grad():
            cls = backbone(image_tokens, ids, mask)
        assert np.isfinite(cls.numpy()).all()
        return (cls @ itm["weight"].float().T + itm["bias"].float()).argmax(-1)

    pred = matches(tokens)
    accuracy = float((pred == torch.tensor(labels)).float().mean())
    assert accuracy >= 0.7, accuracy  # chance 0.5 (half the negatives change a single word)
    # the same true captions against the next scene's image: mostly rejected
    true_rows = torch.arange(0, len(texts), 2)
    own, other = float(pred[true_rows].float().mean()), float(matches(tokens.roll(2, dims=0))[true_rows].float().mean())
    assert own >= other + 0.3, (own, other)


def test_the_fused_image_tower_gives_the_pretraining_towers_features(backbone):
    """Fine-tuning encodes with the BatchNorm-folded tower (fuse_for_inference), pretraining with
    the library's own: the image tokens must agree up to float rounding, and the feature cache
    must keep the two apart."""
    from feddat.backbones.foundation import EfficientNetStages, cell_features

    assert backbone.tower.fused and backbone.cache_key().endswith("-fused")
    scenes = C.corpus_scenes(16, seed=7)
    images = C.render_corpus(scenes, list(C.CORPUS_STYLES), 7, backbone.image_size)
    with torch.no_grad():
        plain = cell_features(EfficientNetStages().eval(), images, backbone.image_size)
        fused = cell_features(backbone.tower, images, backbone.image_size)
    assert plain.shape == fused.shape
    assert (fused - plain).abs().max() <= 1e-4 * plain.abs().max(), float((fused - plain).abs().max())
    net = backbone.tower.net  # the stem and the blocks (what feature_maps runs) keep no BatchNorm
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in [net._bn0, *net._blocks.modules()])
