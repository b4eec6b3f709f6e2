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

# test_flower.py runs one Flower federation after another (its docstring says why) and takes
# longest: `make test` hands it to a worker first, and the rest of the suite fills the other.
LONGEST_FILE = "test_flower.py"


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name != LONGEST_FILE)  # stable: each file keeps its order


@pytest.fixture(scope="session")
def tiny_vilt_dir(tmp_path_factory):
    """A 2-block ViLT with hidden size 32 and the packaged MiniLM tokenizer (BERT uncased vocabulary)."""
    from feddat.backbones.vilt import save_random_vilt

    return save_random_vilt(tmp_path_factory.mktemp("tiny-vilt"), image_size=TINY_IMAGE)


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory):
    """A BlipForQuestionAnswering with 2 encoder and 2 decoder blocks of hidden size 32 and BLIP's
    tokenizer built offline (MiniLM's vocabulary plus [DEC] and [ENC]): an answer decoder."""
    from feddat.backbones.blip import save_random_blip

    return save_random_blip(tmp_path_factory.mktemp("tiny-blip"), image_size=TINY_IMAGE)


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
    # float32 everywhere, so that "equal to float tolerance" means the same on every CPU; the
    # bf16 autocast that run.precision auto picks on AMX CPUs has tests of its own (test_engine.py).
    cfg.run.precision = "fp32"
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


def write_folder_clients(root, clients: dict, sizes: dict, side: int, seed: int = 0):
    """Clients in the folder format (README, Your own data): <root>/<client>/{train,test}.jsonl
    and random PNG files of `side` px; `clients`: name -> its answers, `sizes`: split -> count."""
    import json

    from PIL import Image

    rng = np.random.default_rng(seed)
    for client, answers in clients.items():
        (root / client / "img").mkdir(parents=True)
        for split, n in sizes.items():
            lines = []
            for i in range(n):
                image = f"img/{split}{i}.png"
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / client / image)
                lines.append(json.dumps({"image": image, "question": f"what is object {i}?", "answer": answers[i % len(answers)]}))
            (root / client / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root
