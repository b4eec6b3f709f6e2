"""Your own data: one folder per client, each with train.jsonl and test.jsonl.

    ROOT/<client>/train.jsonl   {"image": "images/0001.png", "question": "...", "answer": "..."} per line
    ROOT/<client>/test.jsonl    image paths relative to the client's folder

Every problem is reported with the file (and line) it comes from.
"""

from __future__ import annotations

import hashlib
import json
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
            shown = ImageOps.exif_transpose(img) if upright else img
            return np.asarray(eight_bit(shown).convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.uint8)
    except Image.DecompressionBombError as err:  # a corrupt size field claiming billions of pixels
        raise DataError(f"image file {path} is corrupt or too large to decode: {err}") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"image file {path} is corrupt or not an image: {err}") from err


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
    """One jsonl line as a dict with non-empty string `fields`, or a DataError naming `where` (file:line)."""
    try:
        # decoded here: json.loads would guess an encoding from the bytes (UTF-16 on a stray
        # byte pattern) and fail with a codec error that names no line
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg})") from err
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record[k].strip() for k in fields):
        names = ", ".join(f"'{k}'" for k in fields[:-1]) + f" and '{fields[-1]}'"
        raise DataError(f"{where}: a record needs non-empty string fields {names}")
    return record


def read_record(line: bytes, path: Path, number: int, side: int = IMAGE_SIDE) -> tuple[dict, np.ndarray]:
    """One line of a client's jsonl and its image; any fault names the file and line."""
    where = f"{path}:{number}"
    record = parse_record(line, where, ("image", "question", "answer"))
    try:
        return record, load_image(path.parent / record["image"], side, upright=True)
    except DataError as err:
        raise DataError(f"{where}: {err}") from err


def read_split(path: Path, side: int = IMAGE_SIDE) -> RawSplit:
    """A client's split with its images at side x side (the backbone's image_size)."""
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    images, questions, answers = [], [], []
    digest = hashlib.sha256(f"{IMAGE_READING}|{side}".encode())
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            digest.update(line)
            if not line.strip():
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
    return RawSplit(array, questions, answers, key=f"folder:{digest.hexdigest()}")


def client_folders(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"data.root {root} holds no client folders (expected ROOT/<client>/train.jsonl)")
    seen: dict[str, Path] = {}
    for folder in folders:  # on a case-insensitive disk (macOS, Windows) their files would be one
        other = seen.setdefault(folder.name.casefold(), folder)
        if other is not folder:
            raise DataError(f"data.root {root}: client folders '{other.name}' and '{folder.name}' differ only in case; rename one (their state files would collide on a case-insensitive disk)")
    return folders
