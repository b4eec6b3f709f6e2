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
from PIL import Image, UnidentifiedImageError

from feddat.data import faults
from feddat.data.types import DataError, RawSplit

IMAGE_SIDE = 128


def load_image(path: Path, side: int = IMAGE_SIDE) -> np.ndarray:
    """An RGB uint8 array of side x side, or a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"image file {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a batch
            return np.asarray(img.convert("RGB").resize((side, side), Image.BICUBIC), dtype=np.uint8)
    except Image.DecompressionBombError as err:  # a corrupt size field claiming billions of pixels
        raise DataError(f"image file {path} is corrupt or too large to decode: {err}") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"image file {path} is corrupt or not an image: {err}") from err


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


def read_record(line: bytes, path: Path, number: int) -> tuple[dict, np.ndarray]:
    """One line of a client's jsonl and its image; any fault names the file and line."""
    where = f"{path}:{number}"
    record = parse_record(line, where, ("image", "question", "answer"))
    try:
        return record, load_image(path.parent / record["image"])
    except DataError as err:
        raise DataError(f"{where}: {err}") from err


def read_split(path: Path) -> RawSplit:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    images, questions, answers = [], [], []
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            digest.update(line)
            if not line.strip():
                continue
            try:
                record, image = read_record(line, path, number)
            except DataError as err:
                faults.current().bad(err)  # raises under the default policy; else the line is skipped
                continue
            images.append(image)
            digest.update((path.parent / record["image"]).read_bytes())
            questions.append(record["question"])
            answers.append(record["answer"].strip().lower())
    array = np.stack(images) if images else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)
    return RawSplit(array, questions, answers, key=f"folder:{digest.hexdigest()}")


def client_folders(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"data.root {root} holds no client folders (expected ROOT/<client>/train.jsonl)")
    return folders
