"""The published datasets of the paper's benchmarks (docs/design.md §6), read from the user's downloads.

`data.source = "public"`, `data.root = ROOT`; each dataset in its own folder under ROOT (docs/guide/public-datasets.md,
"Public datasets"). Named benchmarks: domain, function, scene, task (the paper's client lists),
and every single dataset, to split with data.partition. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from feddat.data.public import loaders as L
from feddat.data.public.common import UNKNOWN, Record, content_key, sample, to_raw
from feddat.data.types import DataError, RawSplit, Source
from feddat.runtime import derive_seed


@dataclass(frozen=True)
class Dataset:
    folder: str  # sub-folder of data.root
    read: Callable[[Path, str], list[Record]]
    task: str = "vqa"
    classes: tuple[str, ...] | None = None
    categories: tuple[str, ...] = ()
    soft: bool = False  # several annotator answers per question: VQA soft scores


# A dataset whose files may omit the category field declares UNKNOWN among its categories.
DATASETS: dict[str, Dataset] = {
    "vqav2": Dataset("vqav2", L.vqav2, categories=(*L.VQA_TYPES, UNKNOWN), soft=True),
    "vqa_abstract": Dataset("vqa_abstract", L.vqa_abstract, categories=(*L.VQA_TYPES, UNKNOWN), soft=True),
    "vizwiz": Dataset("vizwiz", L.vizwiz, categories=(*L.VIZWIZ_TYPES, UNKNOWN), soft=True),
    "gqa": Dataset("gqa", L.gqa, categories=(*L.GQA_TYPES, UNKNOWN)),
    "cocoqa": Dataset("cocoqa", L.cocoqa, categories=L.COCOQA_TYPES),
    "aqua": Dataset("aqua", L.aqua, categories=("visual", "knowledge", UNKNOWN)),
    "nlvr2": Dataset("nlvr2", L.nlvr2, task="nlvr2", classes=("true", "false")),
    "snli_ve": Dataset("snli_ve", L.snli_ve, task="entailment", classes=L.SNLI_VE_LABELS),
}
for _name in L.CLOVE_FUNCTIONS:
    DATASETS[f"clove_function_{_name}"] = Dataset("clove", partial(L.clove, kind="function", name=_name), soft=True, categories=(_name,))
for _name in L.CLOVE_SCENES:
    DATASETS[f"clove_scene_{_name}"] = Dataset("clove", partial(L.clove, kind="scene", name=_name), soft=True, categories=(_name,))

# benchmark -> [(client name, dataset)]; docs/design.md §6's client lists.
PUBLIC_BENCHMARKS: dict[str, list[tuple[str, str]]] = {
    "domain": [("aqua", "aqua"), ("vqa_abstract", "vqa_abstract"), ("vizwiz", "vizwiz"), ("cocoqa", "cocoqa"), ("gqa", "gqa")],
    "function": [(n, f"clove_function_{n}") for n in L.CLOVE_FUNCTIONS],
    "scene": [(n, f"clove_scene_{n}") for n in L.CLOVE_SCENES],
    "task": [("vqav2", "vqav2"), ("nlvr2", "nlvr2"), ("snli_ve", "snli_ve")],
    **{name: [(name, name)] for name in DATASETS if not name.startswith("clove_")},
    "clove_function": [(n, f"clove_function_{n}") for n in L.CLOVE_FUNCTIONS],
    "clove_scene": [(n, f"clove_scene_{n}") for n in L.CLOVE_SCENES],
}


def read_split(dataset: str, root: str | Path, split: str, n: int, seed: int, image_side: int, with_images: bool = True) -> RawSplit:
    """A seeded sample of n records (0: all) of one dataset's split, images loaded (unless not wanted)."""
    spec = DATASETS[dataset]
    records = sample(spec.read(Path(root) / spec.folder, split), n, derive_seed(seed, "public", dataset, split))
    check_categories(dataset, spec, records)
    return to_raw(records, image_side, content_key(dataset, split, records, image_side), spec.soft, with_images)


def check_categories(dataset: str, spec: Dataset, records: list[Record]) -> None:
    """Every record of a dataset with categories has one of them (a loader's promise, checked)."""
    if not spec.categories:
        return
    for r in records:
        if r.group not in spec.categories:
            raise DataError(f"{r.where}: category {r.group!r} is not one of {dataset}'s categories ({', '.join(spec.categories)})")


def public_sources(d, image_side: int, with_images: bool = True) -> list[Source]:
    def source(client: str, dataset: str) -> Source:
        spec = DATASETS[dataset]
        make = lambda split, n: read_split(dataset, d.root, split, n, d.seed, image_side, with_images)  # noqa: E731
        return Source(client, make, spec.task, spec.classes, spec.categories)

    return [source(client, dataset) for client, dataset in PUBLIC_BENCHMARKS[d.benchmark]]
