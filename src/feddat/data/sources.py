"""Where clients' raw data come from: synthetic twins, public datasets, your folders; then partitions.

A `Source` (data/types.py) makes one dataset's train or test split of a requested size. A
benchmark is a list of sources; with `data.partition = natural` each source is one client,
otherwise the sources are pooled and re-split over clients (data/partition.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from feddat.data.types import DataError, RawClient, RawSplit, Source
from feddat.runtime import derive_seed

SYNTHETIC_IMAGE_SIDE = 128


def synthetic_split(spec, n: int, seed: int, split: str, benchmark: str, max_objects: int) -> RawSplit:
    """n deterministic synthetic examples of one twin client (data/benchmarks.py)."""
    from feddat.data.benchmarks import GENERATOR_VERSION

    split_seed = derive_seed(seed, benchmark, spec.name, split)
    samples = spec.generate(n, split_seed, SYNTHETIC_IMAGE_SIDE, max_objects)
    key = ["synthetic", GENERATOR_VERSION, benchmark, spec.name, split, n, seed, max_objects]
    if spec.extra_key:  # the first twins' keys stay as they were, so their feature caches stay valid
        key.append(spec.extra_key)
    empty = np.zeros((0, SYNTHETIC_IMAGE_SIDE, SYNTHETIC_IMAGE_SIDE, 3), np.uint8)
    images = np.stack([s.image for s in samples]) if samples else empty
    pair = bool(samples) and getattr(samples[0], "image2", None) is not None  # two-image tasks only
    return RawSplit(
        images,
        [s.question for s in samples],
        [s.answer for s in samples],
        key=json.dumps(key, separators=(",", ":")),
        images2=np.stack([s.image2 for s in samples]) if pair else None,
        groups=[s.kind for s in samples],
    )


def synthetic_sources(d) -> list[Source]:
    from feddat.data.benchmarks import client_specs

    def source(spec) -> Source:
        return Source(
            spec.name,
            lambda split, n: synthetic_split(spec, n, d.seed, split, d.benchmark, d.max_objects),
            spec.task,
            spec.classes,
            spec.categories,
        )

    return [source(spec) for spec in client_specs(d.benchmark)]


def folder_sources(d, image_side: int) -> list[Source]:
    from feddat.data.folder import client_folders, read_split

    def make(folder: Path, split: str, n: int) -> RawSplit:
        # data.train_per_client / test_per_client cap your clients as they cap public data: a
        # sample seeded by data.seed (0, or a cap at or above a client's size: all of it)
        return read_split(folder / f"{split}.jsonl", image_side, n, derive_seed(d.seed, "folder", folder.name, split))

    return [Source(folder.name, lambda split, n, folder=folder: make(folder, split, n)) for folder in client_folders(d.root)]


def image_reading(cfg) -> tuple[int, bool]:
    """How the data sources of `cfg` read an image file: (side, upright). Your folders and public
    data are read at the tower's size (backbone.image_size), generated images drawn at
    SYNTHETIC_IMAGE_SIDE; your photos are turned upright as their EXIF says, the public datasets
    read as stored (as their reference pipelines read them). `feddat predict` reads a file with
    it, so that a model sees an image as its evaluation did."""
    if cfg.data.benchmark == "folder":
        return cfg.backbone.image_size, True
    if cfg.data.source == "public":
        return cfg.backbone.image_size, False
    return SYNTHETIC_IMAGE_SIDE, True


def benchmark_sources(cfg, with_images: bool = True) -> list[Source]:
    d = cfg.data
    side, _ = image_reading(cfg)
    if d.benchmark == "folder":
        return folder_sources(d, image_side=side)
    if d.source == "public":
        from feddat.data.public import public_sources

        return public_sources(d, image_side=side, with_images=with_images)
    return synthetic_sources(d)


def raw_clients(cfg, with_images: bool = True) -> list[RawClient]:
    """Every client's raw train and test split under the configured benchmark and partition.

    `with_images=False` lets `describe` skip reading public images (placeholders instead).
    """
    d = cfg.data
    sources = benchmark_sources(cfg, with_images)
    if d.partition == "natural":
        return [RawClient(s.name, s.make("train", d.train_per_client), s.make("test", d.test_per_client), s.task, s.classes) for s in sources]
    return partitioned(sources, d)


def partitioned(sources: list[Source], d) -> list[RawClient]:
    """Pool the sources' data and split it over clients with data.partition."""
    from feddat.data.partition import partition

    tasks = {(s.task, s.classes) for s in sources}
    if len(tasks) > 1:
        raise DataError(f"data.partition = {d.partition} pools the benchmark's clients, but they pose different tasks ({', '.join(sorted(t for t, _ in tasks))}); use a benchmark with one task")
    if d.partition == "category" and not any(s.categories for s in sources):
        raise DataError(f"data.partition = category: the {d.benchmark} data carry no categories to split by")
    k = len({c for s in sources for c in s.categories}) if d.partition == "category" else d.num_clients
    if k < 1:
        raise DataError(f"data.partition = {d.partition} needs data.num_clients (how many clients to split the data over)")
    pools = {split: _pool(sources, split, per_client * k) for split, per_client in (("train", d.train_per_client), ("test", d.test_per_client))}
    train, test = pools["train"], pools["test"]
    plan = partition(d.partition, train.answers, test.answers, k, d.alpha, d.seed, d.min_per_client, train.groups, test.groups)
    clients = []
    for name, tr, te in zip(plan.names, plan.train, plan.test):
        tag = f"{d.partition}:{k}:{d.alpha}:{d.seed}:{name}"
        clients.append(RawClient(name, train.subset(tr, _digest(tag, tr)), test.subset(te, _digest(tag, te)), sources[0].task, sources[0].classes))
    return clients


def _pool(sources: list[Source], split: str, total: int) -> RawSplit:
    per_source = math.ceil(total / len(sources)) if total > 0 else 0
    parts = [s.make(split, per_source) for s in sources]
    return RawSplit.concat(parts, key="pool|" + "|".join(p.key for p in parts))


def _digest(tag: str, index: np.ndarray) -> str:
    """Names a subset in the feature cache: the partition's parameters and the exact indices."""
    return f"{tag}:{hashlib.sha256(np.ascontiguousarray(index, dtype=np.int64).tobytes()).hexdigest()[:16]}"


def check_inputs(cfg) -> None:
    """Refuse data that cannot be read before anything slow starts (the backbone loads in tens of
    seconds): data.root must be a folder, and hold the client folders (folder benchmark) or each
    dataset's folder (public data). The records themselves are checked when they are read."""
    d = cfg.data
    if d.benchmark == "folder":
        from feddat.data.folder import client_folders

        client_folders(d.root)  # names data.root when it is missing or holds no client folder
        return
    if d.source != "public":
        return
    from feddat.data.public import DATASETS, PUBLIC_BENCHMARKS

    root = Path(d.root)  # a leading ~ was expanded when the config was loaded
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder: data.source = public reads your downloads from ROOT/<dataset>/ (docs/guide/public-datasets.md)")
    for client, dataset in PUBLIC_BENCHMARKS[d.benchmark]:
        folder = root / DATASETS[dataset].folder
        if not folder.is_dir():
            raise DataError(f"{client}: {folder} does not exist; download the {dataset} files into it (docs/guide/public-datasets.md lists the layout)")
