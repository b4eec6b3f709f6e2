"""Your own image-caption pairs for `feddat pretrain --pretrain.corpus folder`.

    ROOT/captions.jsonl   {"image": "images/0001.jpg", "caption": "a dog on a red sofa"} per line

(or ROOT itself a .jsonl file); image paths are relative to the file's folder. Every problem
names the file and line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from feddat.data.types import DataError
from feddat.data.folder import IMAGE_READING, parse_record

CAPTIONS_FILE = "captions.jsonl"


def captions_file(root: Path) -> Path:
    path = root / CAPTIONS_FILE if root.is_dir() else root
    if not path.is_file():
        raise DataError(f"pretrain.root {root}: no {CAPTIONS_FILE} (one {{\"image\": ..., \"caption\": ...}} record per line)")
    return path


def read_pairs(root: Path) -> tuple[list[Path], list[str], list[str], str]:
    """(image paths, captions, where each record is "file:line", sha256 of the file and every image)."""
    path = captions_file(root)
    paths, captions, wheres = [], [], []
    digest = hashlib.sha256(IMAGE_READING.encode())  # how the images are read is part of the data
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            digest.update(line)
            if not line.strip():
                continue
            where = f"{path}:{number}"
            record = parse_record(line, where, ("image", "caption"))
            image = path.parent / record["image"]
            if not image.is_file():
                raise DataError(f"{where}: image file {image} {'is a folder, not a file' if image.is_dir() else 'does not exist'}")
            digest.update(image.read_bytes())
            paths.append(image)
            captions.append(record["caption"].strip())
            wheres.append(where)
    if len(captions) < 2:
        raise DataError(f"{path}: {len(captions)} image-caption pair(s); pretraining needs at least 2 (matching draws another image's caption as a negative)")
    return paths, captions, wheres, digest.hexdigest()


def load_pair_images(paths: list[Path], wheres: list[str], side: int):
    """The images as one uint8 array; a corrupt file fails with its record named."""
    import numpy as np

    from feddat.data.folder import load_image

    images = []
    for path, where in zip(paths, wheres):
        try:
            images.append(load_image(path, side, upright=True))
        except DataError as err:
            raise DataError(f"{where}: {err}") from err
    return np.stack(images)
