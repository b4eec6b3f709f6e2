"""What every public-dataset loader shares: records, file reading with errors that name the file
and the record, answer normalisation (the official VQA processing, data/vqa_eval.py), categories
that are never silently empty, seeded sub-sampling and image loading."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from feddat.data import faults
from feddat.data.types import DataError, RawSplit
from feddat.data.vqa_eval import normalise_answer


@dataclass(frozen=True)
class Record:
    images: tuple[Path, ...]  # one image, or two for NLVR2
    question: str  # question, or the statement to judge
    answer: str  # the answer (the annotators' most common one where there are several)
    where: str  # "file: record i (id)", for error messages
    answers: tuple[str, ...] | None = None  # every annotator's answer, normalised (VQA v2, VizWiz, CLOVE: 10)
    group: str = ""  # the record's category (answer type, question type, ...); "" only where the dataset has none
    raw_answers: tuple[str, ...] | None = None  # the annotators' answers as the file has them: the official accuracy's input


def missing(path: Path, dataset: str) -> DataError:
    return DataError(f"{dataset}: {path} does not exist; download the dataset and lay it out as docs/guide/public-datasets.md shows")


def read_json(path: Path, dataset: str) -> Any:
    if not path.is_file():
        raise missing(path, dataset)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def read_jsonl(path: Path, dataset: str) -> Iterator[tuple[str, dict]]:
    """(where, record) for every non-empty line; `where` is "file:line"."""
    if not path.is_file():
        raise missing(path, dataset)
    found = False
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataError(f"{where}: not valid JSON ({err})") from err
            if not isinstance(record, dict):
                raise DataError(f"{where}: a record must be a JSON object")
            found = True
            yield where, record
    if not found:
        raise DataError(f"{path}: the file holds no records")


def records_of(data: Any, path: Path, key: str | None) -> list:
    """The list of records in a JSON file: data[key] (VQA) or data itself (VizWiz, AQUA, CLOVE)."""
    items = data.get(key) if key is not None and isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DataError(f"{path}: expected {'a list under ' + repr(key) if key else 'a JSON list of records'}")
    if not items:
        raise DataError(f"{path}: {'the list under ' + repr(key) if key else 'the list of records'} is empty")
    return items


def field(record: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """record[name], checked to be of `kind` (a non-empty string for str)."""
    value = record.get(name) if isinstance(record, dict) else None
    ok = isinstance(value, kind) and not isinstance(value, bool) and (value != "" if isinstance(value, str) else True)
    if not ok:
        wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field '{name}' is missing or not a {'non-empty ' if kind is str else ''}{wanted}")
    return value


def normalise(answer: str) -> str:
    """An answer as the official VQA evaluation processes it ('A Dog.' and 'dog' are one answer,
    'two' is '2', '2.5' and '10:30' stay): the vocabulary and the training targets use it.
    An answer the processing empties (AQUA's "the") stays itself, lower-cased: never a class ''."""
    return normalise_answer(answer) or " ".join(answer.lower().split())


UNKNOWN = "unknown"  # the category of a record whose file does not say it (declared by every dataset that has categories)


class MissingCategory(UserWarning):
    """Records whose file gives no category field (some releases and trimmed copies omit it)."""


def category(item: Any, name: str, allowed: Sequence[str], where: str) -> str:
    """record[name] if it is one of `allowed`; UNKNOWN when the field is absent (counted by
    `warn_unknown`); a value of another kind or outside `allowed` stops the run."""
    if not isinstance(item, dict) or name not in item or item[name] is None:
        return UNKNOWN
    value = item[name]
    if not isinstance(value, str) or value not in allowed:
        raise DataError(f"{where}: field '{name}' is {value!r}, not one of {', '.join(allowed)}")
    return value


def warn_unknown(records: Sequence["Record"], path: Path, name: str) -> None:
    """One warning per file for the records that got the UNKNOWN category, naming the field."""
    count = sum(r.group == UNKNOWN for r in records)
    if count:
        warnings.warn(f"{path}: {count} of {len(records)} record(s) have no '{name}'; their category is '{UNKNOWN}'", MissingCategory, stacklevel=3)


def most_common(answers: Sequence[str]) -> str:
    """The annotators' majority answer; ties go to the alphabetically first (reproducible)."""
    counts = Counter(answers)
    return min(counts, key=lambda a: (-counts[a], a))


def annotator_answers(items: Any, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """VQA-style [{"answer": ...}, ...] (or plain strings, as CLOVE writes them) -> (normalised
    answers, for the vocabulary and the soft targets; the answers as written, for the official
    accuracy, which processes them itself)."""
    if not isinstance(items, list) or not items:
        raise DataError(f"{where}: field 'answers' is missing or not a non-empty list")
    raw = []
    for item in items:
        text = item.get("answer") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise DataError(f"{where}: every entry of 'answers' needs an 'answer' string")
        raw.append(text)
    return tuple(normalise(text) for text in raw), tuple(raw)


def sample(records: list[Record], n: int, seed: int) -> list[Record]:
    """n records drawn without replacement under `seed`, in file order; all when n is 0 or too big."""
    if n <= 0 or n >= len(records):
        return list(records)
    keep = np.sort(np.random.default_rng(seed).choice(len(records), size=n, replace=False))
    return [records[i] for i in keep]


def to_raw(records: list[Record], image_side: int, key: str, soft: bool, with_images: bool = True) -> RawSplit:
    """Load the records' images (errors name the record) and build the split.

    Without images (`feddat data describe`) every image is a 1x1 placeholder and the key says
    so, so such a split can never fill the feature cache.
    """
    from feddat.data.folder import load_image

    if not records:
        raise DataError(f"no records to load for {key}")
    columns: list[list[np.ndarray]] = [[] for _ in records[0].images]
    placeholder = np.zeros((1, 1, 3), np.uint8)
    kept = []
    for record in records:
        if len(record.images) != len(columns):
            raise DataError(f"{record.where}: expected {len(columns)} image(s), got {len(record.images)}")
        try:
            pictures = [load_image(path, image_side) if with_images else placeholder for path in record.images]
        except DataError as err:
            faults.current().bad(DataError(f"{record.where}: {err}"))  # raises unless data.on_bad_record = skip
            continue
        for column, picture in zip(columns, pictures):
            column.append(picture)
        kept.append(record)
    if not kept:
        raise DataError(f"every record of {key} was skipped as bad")
    records = kept
    key = key if with_images else f"{key}|no-images"
    return RawSplit(
        images=np.stack(columns[0]),
        questions=[r.question for r in records],
        answers=[r.answer for r in records],
        key=key,
        answer_lists=[list(r.answers or (r.answer,) * 3) for r in records] if soft else None,
        eval_answers=[list(r.raw_answers or (r.answer,)) for r in records] if soft else None,
        images2=np.stack(columns[1]) if len(columns) > 1 else None,
        groups=[r.group for r in records],
    )


def content_key(dataset: str, split: str, records: list[Record], image_side: int) -> str:
    """Identifies the sampled content for the feature cache: images (path, size, mtime) and text."""
    import hashlib

    from feddat.data.folder import IMAGE_READING

    digest = hashlib.sha256(f"{dataset}|{split}|{image_side}|{IMAGE_READING}".encode())
    for r in records:
        for path in r.images:
            stat = path.stat() if path.is_file() else None
            digest.update(f"{path}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}|".encode())
        digest.update(f"{r.question}|{r.answer}\n".encode())
    return f"public:{dataset}:{split}:{digest.hexdigest()}"
