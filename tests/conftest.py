"""Shared fixtures: a tiny randomly initialised ViLT saved to disk (the real loading path,
offline), tiny client datasets, and a tiny configuration."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from feddat.config import Config
from feddat.data.clients import RawSplit, build_client

torch.set_num_threads(2)

TINY_IMAGE = 32


@pytest.fixture(scope="session")
def tiny_vilt_dir(tmp_path_factory):
    """A 2-block ViLT with hidden size 32 and the packaged MiniLM tokenizer (BERT uncased vocabulary)."""
    from transformers import AutoTokenizer, ViltConfig, ViltModel

    from feddat.backbones.minivl import minilm_path

    path = tmp_path_factory.mktemp("tiny-vilt")
    torch.manual_seed(0)
    config = ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=TINY_IMAGE, patch_size=16, max_position_embeddings=16)
    ViltModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True).save_pretrained(path)
    return str(path)


@pytest.fixture()
def tiny_backbone(tiny_vilt_dir):
    from feddat.backbones import build_backbone

    return build_backbone("vilt", tiny_vilt_dir, image_size=TINY_IMAGE, max_text_len=12)


def tiny_config(**overrides) -> Config:
    cfg = Config()
    cfg.backbone.name, cfg.backbone.image_size, cfg.backbone.max_text_len = "vilt", TINY_IMAGE, 12
    cfg.adapter.reduction_factor = 4
    cfg.train.batch_size, cfg.train.lr, cfg.train.local_epochs = 8, 1e-2, 1
    cfg.federation.rounds, cfg.federation.eval_every = 2, 1
    cfg.data.train_per_client, cfg.data.test_per_client = 16, 8
    cfg.run.threads = 2
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def raw_split(n: int, seed: int, answers=("red", "blue", "green")) -> RawSplit:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, TINY_IMAGE, TINY_IMAGE, 3), dtype=np.uint8)
    chosen = [answers[i % len(answers)] for i in range(n)]
    questions = [f"what colour is object {i}?" for i in range(n)]
    return RawSplit(images, questions, chosen, key=f"raw-{n}-{seed}-{answers}")


@pytest.fixture()
def tiny_clients(tiny_backbone):
    specs = [("alpha", ("red", "blue", "green")), ("beta", ("one", "two")), ("gamma", ("yes", "no", "maybe", "never"))]
    return [build_client(name, raw_split(16, i, a), raw_split(8, 100 + i, a), tiny_backbone, 100, None) for i, (name, a) in enumerate(specs)]
