"""Client datasets as tensors ready for training: cached frozen image features, token ids, targets."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from feddat.backbones.base import Backbone
from feddat.runtime import derive_seed, load_tensors, save_tensors


class DataError(ValueError):
    """A dataset cannot be used as given; the message names the client or file."""


@dataclass
class Split:
    image_features: torch.Tensor  # (N, ...) output of backbone.encode_images
    input_ids: torch.Tensor  # (N, L)
    attention_mask: torch.Tensor  # (N, L)
    targets: torch.Tensor  # (N,) class index, -1 for an answer outside the vocabulary

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
        return tuple(t[index].to(device, non_blocking=True) for t in (self.image_features, self.input_ids, self.attention_mask, self.targets))


@dataclass
class ClientData:
    name: str
    answers: list[str]
    train: Split
    test: Split

    @property
    def num_answers(self) -> int:
        return len(self.answers)


@dataclass
class RawSplit:
    """What a data source yields before encoding: images as uint8 arrays, questions, answers."""

    images: np.ndarray  # (N, H, W, 3) uint8
    questions: list[str]
    answers: list[str]
    key: str  # identifies the content, for the feature cache


def answer_vocabulary(answers: Sequence[str], max_answers: int) -> list[str]:
    """The most frequent answers, ties broken alphabetically so the order is reproducible."""
    counts = Counter(answers)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_answers]]


def encode_split(raw: RawSplit, backbone: Backbone, vocab: list[str], cache_dir: Path | None, drop_unknown: bool) -> Split:
    index = {a: i for i, a in enumerate(vocab)}
    targets = torch.tensor([index.get(a, -1) for a in raw.answers], dtype=torch.long)
    keep = targets >= 0 if drop_unknown else torch.ones_like(targets, dtype=torch.bool)
    features = cached_features(raw, backbone, cache_dir)
    ids, mask = backbone.tokenize(raw.questions)
    return Split(features[keep], ids[keep], mask[keep], targets[keep])


def cached_features(raw: RawSplit, backbone: Backbone, cache_dir: Path | None, batch: int = 64) -> torch.Tensor:
    """Frozen image-tower outputs, computed once per (backbone, images) and kept on disk."""
    key = hashlib.sha256(f"{backbone.cache_key()}|{raw.key}".encode()).hexdigest()[:24]
    path = cache_dir / f"{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return load_tensors(path)["features"]
        except Exception as err:  # a cache file is disposable: recompute rather than fail
            print(f"feddat: ignoring unreadable feature cache {path}: {err}", file=sys.stderr)
    chunks = [backbone.encode_images(raw.images[i : i + batch]) for i in range(0, len(raw.images), batch)]
    features = torch.cat(chunks) if chunks else torch.empty(0)
    if path is not None:
        save_tensors(path, {"features": features}, metadata={"backbone": backbone.cache_key(), "data": raw.key})
    return features


def build_client(name: str, train: RawSplit, test: RawSplit, backbone: Backbone, max_answers: int, cache_dir: Path | None) -> ClientData:
    if len(train.answers) == 0:
        raise DataError(f"client '{name}' has an empty training set")
    if len(test.answers) == 0:
        raise DataError(f"client '{name}' has an empty test set")
    vocab = answer_vocabulary(train.answers, max_answers)
    return ClientData(
        name=name,
        answers=vocab,
        train=encode_split(train, backbone, vocab, cache_dir, drop_unknown=True),
        test=encode_split(test, backbone, vocab, cache_dir, drop_unknown=False),
    )


def synthetic_split(spec, n: int, seed: int, split: str, benchmark: str, max_objects: int) -> RawSplit:
    from feddat.data.benchmarks import GENERATOR_VERSION
    from feddat.data.synthetic import generate

    split_seed = derive_seed(seed, benchmark, spec.name, split)
    samples = generate(n, spec.style_weights, spec.kind_weights, seed=split_seed, image_size=128, max_objects=max_objects)
    images = np.stack([s.image for s in samples]) if samples else np.zeros((0, 128, 128, 3), np.uint8)
    key = json.dumps(["synthetic", GENERATOR_VERSION, benchmark, spec.name, split, n, seed, max_objects], separators=(",", ":"))
    return RawSplit(images, [s.question for s in samples], [s.answer for s in samples], key)


def load_clients(cfg, backbone: Backbone, log: Callable[[str], None] = print) -> list[ClientData]:
    """The benchmark's clients, encoded with `backbone` (features cached under data.cache_dir)."""
    d = cfg.data
    cache_dir = Path(d.cache_dir) if d.cache_dir else None
    clients = []
    for name, make_split in _sources(d):
        client = build_client(name, make_split("train"), make_split("test"), backbone, d.max_answers, cache_dir)
        log(f"  client {client.name:<10} train {len(client.train):>5}  test {len(client.test):>5}  answers {client.num_answers}")
        clients.append(client)
    return clients


def _sources(d) -> list[tuple[str, Callable[[str], RawSplit]]]:
    """(client name, split -> RawSplit) for the configured benchmark."""
    if d.benchmark == "folder":
        from feddat.data.folder import client_folders, read_split

        return [(folder.name, lambda split, folder=folder: read_split(folder / f"{split}.jsonl")) for folder in client_folders(d.root)]
    from feddat.data.benchmarks import client_specs

    sizes = {"train": d.train_per_client, "test": d.test_per_client}
    return [(spec.name, lambda split, spec=spec: synthetic_split(spec, sizes[split], d.seed, split, d.benchmark, d.max_objects)) for spec in client_specs(d.benchmark)]
