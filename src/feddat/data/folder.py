"""Your own data: one folder per client, each with train.jsonl and test.jsonl.

    ROOT/<client>/train.jsonl   {"image": "images/0001.png", "question": "...", "answer": "..."} per line
    ROOT/<client>/test.jsonl    image paths relative to the client's folder

Every problem is reported with the file (and line) it comes from.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from feddat.data import faults
from feddat.data.types import DataError, RawSplit

IMAGE_SIDE = 128


# How images are read (a part of every cache key over read images: a change of it re-reads them).
# v2: 16-bit greyscale scaled to 8 bits (not clipped to white); your own photos turned upright.
IMAGE_READING = "v2"


def load_image(path: Path, side: int = IMAGE_SIDE, upright: bool = False) -> np.ndarray:
    """An RGB uint8 array of side x side, or a DataError naming the file. `upright`: turned as
    its EXIF orientation says (a phone photo as it is shown; your own data, not the public
    datasets, which their reference pipelines read as stored)."""
    if not path.is_file():
        raise DataError(f"image file {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a batch
            return fit_image(img, side, upright)
    except Image.DecompressionBombError as err:  # a corrupt size field claiming billions of pixels
        raise DataError(f"image file {path} is corrupt or too large to decode: {err}") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"image file {path} is corrupt or not an image: {err}") from err


def fit_image(img: Image.Image, side: int, upright: bool = False) -> np.ndarray:
    """A decoded image as the data sources give it: turned upright (if asked), 8-bit, RGB,
    bicubic to side x side; `feddat predict` prepares a PIL image it is given with it too."""
    shown = ImageOps.exif_transpose(img) if upright else img
    return np.asarray(eight_bit(shown).convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.uint8)


def eight_bit(img: Image.Image) -> Image.Image:
    """16-bit greyscale ('I;16…', or 'I' holding 16-bit values) scaled to 8 bits: PIL's convert
    clips such values at 255, so every mid-grey would come out white."""
    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    values = np.asarray(img).astype(np.int64)
    if img.mode == "I" and values.max(initial=0) <= 255:
        return img.convert("L")
    return Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), mode="L")


def parse_record(line: bytes, where: str, fields: tuple[str, ...]) -> dict:
    """One jsonl line as a dict with non-empty string `fields`, or a DataError naming `where`
    (file:line) and what is wrong with which field."""
    try:
        # decoded here: json.loads would guess an encoding from the bytes (UTF-16 on a stray
        # byte pattern) and fail with a codec error that names no line. utf-8-sig: the byte-order
        # mark that Excel and Notepad put in front of a UTF-8 file is not part of the text.
        record = json.loads(line.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg})") from err
    problems = field_problems(record, fields)
    if problems:
        names = ", ".join(f"'{k}'" for k in fields[:-1]) + f" and '{fields[-1]}'"
        raise DataError(f"{where}: a record needs non-empty string fields {names}: {problems}")
    return record


def field_problems(record: object, fields: tuple[str, ...]) -> str:
    """What is wrong with `record`'s `fields` ("'image' is missing (its fields are 'img', ...)",
    "'answer' is the number 3, not a string"); "" when nothing is."""
    if not isinstance(record, dict):
        return f"the line holds {_json_kind(record)}, not a JSON object"
    problems = []
    for key in fields:
        value = record.get(key)
        if key not in record:
            problems.append(f"'{key}' is missing")
        elif not isinstance(value, str):
            problems.append(f"'{key}' is {_json_kind(value)}, not a string")
        elif not value.strip():
            problems.append(f"'{key}' is empty")
    missing = any(key not in record for key in fields)
    # the fields it does have show a misspelt name next to the expected one
    found = f" (its fields are {', '.join(repr(str(k)) for k in record) or 'none'})" if missing else ""
    return "; ".join(problems) + found


def _json_kind(value: object) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return {list: "a list", dict: "an object", str: "a string"}.get(type(value), type(value).__name__)


def read_record(line: bytes, path: Path, number: int, side: int = IMAGE_SIDE) -> tuple[dict, np.ndarray]:
    """One line of a client's jsonl and its image; any fault names the file and line."""
    where = f"{path}:{number}"
    record = parse_record(line, where, ("image", "question", "answer"))
    try:
        return record, load_image(path.parent / record["image"], side, upright=True)
    except DataError as err:
        raise DataError(f"{where}: {err}") from err


def read_split(path: Path, side: int = IMAGE_SIDE, n: int = 0, seed: int = 0) -> RawSplit:
    """A client's split with its images at side x side (the backbone's image_size). With n > 0
    and more than n records, a sample of n of them drawn with `seed`, in file order (only their
    images are read); else every record."""
    if not path.is_file():
        raise DataError(f"client '{path.parent.name}': its annotation file {path} does not exist (each client folder holds train.jsonl and test.jsonl)")
    with open(path, "rb") as f:
        lines = list(enumerate(f, 1))
    records = [(number, line) for number, line in lines if not _blank(line)]
    drawn = 0 < n < len(records)
    # as the public datasets are sampled (data/public/common.py): n indices without replacement, in file order
    chosen = [records[i] for i in np.sort(np.random.default_rng(seed).choice(len(records), size=n, replace=False))] if drawn else records
    digest = hashlib.sha256(f"{IMAGE_READING}|{side}".encode())
    if drawn:  # the sample's own key; a file read whole keeps the key it always had (its feature cache)
        digest.update(f"|sample of {n} from {len(records)}".encode())
    images, questions, answers = [], [], []
    for number, line in chosen if drawn else lines:
        digest.update(line)
        if _blank(line):
            continue
        try:
            record, image = read_record(line, path, number, side)
        except DataError as err:
            faults.current().bad(err)  # raises under the default policy; else the line is skipped
            continue
        images.append(image)
        digest.update((path.parent / record["image"]).read_bytes())
        questions.append(record["question"])
        answers.append(record["answer"].strip().lower())
    array = np.stack(images) if images else np.zeros((0, side, side, 3), np.uint8)
    return RawSplit(array, questions, answers, key=f"folder:{digest.hexdigest()}", available=len(records) if drawn else None, origin=str(path))


def _blank(line: bytes) -> bool:
    return not line.removeprefix(codecs.BOM_UTF8).strip()


# Folders under data.root that are no clients: hidden ones (.git, .ipynb_checkpoints) and the
# resource forks macOS's Finder puts in a zip archive.
NOT_CLIENTS = ("__MACOSX",)
_noted: set[tuple[str, ...]] = set()  # (root, skipped...) already named: the note is printed once


def client_folders(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    skipped = [p.name for p in subfolders if p.name.startswith(".") or p.name in NOT_CLIENTS]
    folders = [p for p in subfolders if p.name not in skipped]
    if skipped and (noted := (str(root), *skipped)) not in _noted:
        _noted.add(noted)
        print(f"feddat: data.root {root}: skipped {', '.join(skipped)} (hidden or macOS archive folders are not clients)", file=sys.stderr)
    if not folders:
        raise DataError(f"data.root {root} holds no client folders (expected ROOT/<client>/train.jsonl)")
    seen: dict[str, Path] = {}
    for folder in folders:  # on a case-insensitive disk (macOS, Windows) their files would be one
        other = seen.setdefault(folder.name.casefold(), folder)
        if other is not folder:
            raise DataError(f"data.root {root}: client folders '{other.name}' and '{folder.name}' differ only in case; rename one (their state files would collide on a case-insensitive disk)")
    return folders
