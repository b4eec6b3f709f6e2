"""Pretraining examples: cached frozen tower features of the corpus images, and batches of
(masked) captions and matching / non-matching pairs.

Each batch is cut in two: the first part is masked-word prediction (true captions with some
words masked), the rest image-text matching (unmasked captions, half of them false). Keeping the
two apart means a mask never tells the matching head anything.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from feddat.backbones.foundation import cell_features
from feddat.pretrain import corpus as C
from feddat.runtime import load_tensors, save_tensors

IGNORE = -100


@dataclass
class Corpus:
    """Images as frozen per-cell tower features, and what describes each image."""

    features: torch.Tensor  # (N, cells, C) float16
    scenes: list | None = None  # synthetic corpus: each image's Scene (captions drawn per step)
    captions: list[str] | None = None  # folder corpus: each image's caption
    description: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, index) -> "Corpus":
        index = list(index)
        pick = lambda items: None if items is None else [items[i] for i in index]  # noqa: E731
        return Corpus(self.features[index], pick(self.scenes), pick(self.captions), {**self.description, "size": len(index)})

    @property
    def object_counts(self) -> np.ndarray:
        return np.array([len(s.objects) for s in self.scenes]) if self.scenes is not None else np.zeros(len(self), int)


def _cached(path: Path | None, compute, metadata: dict) -> torch.Tensor:
    if path is not None and path.is_file():
        try:
            return load_tensors(path)["features"]
        except Exception as err:  # a cache file is disposable
            print(f"feddat: ignoring unreadable feature cache {path}: {err}", file=sys.stderr)
    features = compute()
    if path is not None:
        save_tensors(path, {"features": features}, metadata={k: str(v) for k, v in metadata.items()})
    return features


def encode_images(tower, images_in_chunks, total: int, image_size: int, log, what: str) -> torch.Tensor:
    chunks, done = [], 0
    for images in images_in_chunks:
        with torch.no_grad():
            chunks.append(cell_features(tower, images, image_size).half().cpu())
        done += len(images)
        if log and (done == total or len(chunks) % 20 == 0):
            log(f"  {what}: {done}/{total} images encoded")
    return torch.cat(chunks)


def synthetic_corpus(size: int, seed: int, styles: list[str], max_objects: int, tower, tower_key: str, image_size: int, cache_dir: Path | None, log=print) -> Corpus:
    scenes = C.corpus_scenes(size, seed, max_objects)
    description = {"kind": "synthetic", "size": size, "seed": seed, "styles": list(styles), "max_objects": max_objects,
                   "shapes": list(C.ALL_SHAPES), "colours": list(C.ALL_COLOURS), "generator": "feddat.pretrain.corpus v1"}
    key = hashlib.sha256(json.dumps([description, tower_key, image_size], sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir / f"pretrain-{key}.safetensors" if cache_dir else None

    def chunks():
        for start in range(0, size, 256):
            yield C.render_corpus(scenes[start : start + 256], styles, seed, image_size, start)

    features = _cached(path, lambda: encode_images(tower, chunks(), size, image_size, log, "corpus"), description)
    return Corpus(features, scenes=scenes, description=description)


def folder_corpus(root: str, tower, tower_key: str, image_size: int, cache_dir: Path | None, log=print) -> Corpus:
    from feddat.pretrain.folder import load_pair_images, read_pairs

    paths, captions, wheres, digest = read_pairs(Path(root))
    description = {"kind": "folder", "root": str(root), "size": len(captions), "sha256": digest}
    key = hashlib.sha256(json.dumps([digest, tower_key, image_size]).encode()).hexdigest()[:24]
    path = cache_dir / f"pretrain-{key}.safetensors" if cache_dir else None

    def chunks():
        for start in range(0, len(paths), 64):
            yield load_pair_images(paths[start : start + 64], wheres[start : start + 64], image_size)

    features = _cached(path, lambda: encode_images(tower, chunks(), len(paths), image_size, log, "corpus"), description)
    return Corpus(features, captions=captions, description=description)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


@dataclass
class Batch:
    index: torch.Tensor  # (B,) which corpus images
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    mlm_labels: torch.Tensor  # (B, L): position in the MLM vocabulary, IGNORE where not masked
    itm_labels: torch.Tensor  # (B,): 1 match, 0 mismatch, IGNORE for MLM examples
    roles: list[list[str]] = field(default_factory=list)  # per example, per token (evaluation)


class Tokens:
    """Word -> word pieces for the synthetic vocabulary, and the MLM decoder's vocabulary."""

    def __init__(self, tokenizer, words: list[str] | None, max_len: int):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.cls, self.sep, self.mask, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id
        self.pieces = {w: tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w)) for w in (words or [])}
        self.vocab_ids: list[int] = sorted({i for ids in self.pieces.values() for i in ids})
        self.position = {t: i for i, t in enumerate(self.vocab_ids)}

    def set_vocab(self, ids: set[int]) -> None:
        self.vocab_ids = sorted(ids)
        self.position = {t: i for i, t in enumerate(self.vocab_ids)}

    def words(self, words: tuple[C.Word, ...]) -> tuple[list[int], list[str]]:
        ids, roles = [self.cls], [""]
        for word, role in words:
            piece = self.pieces[word]
            ids += piece
            roles += [role] * len(piece)
        ids, roles = ids[: self.max_len - 1] + [self.sep], roles[: self.max_len - 1] + [""]
        return ids, roles

    def text(self, caption: str) -> tuple[list[int], list[str]]:
        ids = self.tokenizer(caption, truncation=True, max_length=self.max_len)["input_ids"]
        return ids, ["" if i in (self.cls, self.sep) else "word" for i in ids]


def mask_tokens(ids: list[int], roles: list[str], rng: np.random.Generator, prob: float, tokens: Tokens) -> tuple[list[int], list[int]]:
    """BERT's masking over the words that carry a role: each with `prob` (at least one), then
    80 % [MASK], 10 % a random corpus word, 10 % unchanged. -> (input ids, labels)."""
    candidates = [i for i, r in enumerate(roles) if r and ids[i] in tokens.position]
    labels = [IGNORE] * len(ids)
    if not candidates:
        return ids, labels
    chosen = [i for i in candidates if rng.random() < prob] or [candidates[int(rng.integers(len(candidates)))]]
    out = list(ids)
    for i in chosen:
        labels[i] = tokens.position[ids[i]]
        u = rng.random()
        if u < 0.8:
            out[i] = tokens.mask
        elif u < 0.9:
            out[i] = tokens.vocab_ids[int(rng.integers(len(tokens.vocab_ids)))]
    return out, labels


@dataclass
class Schedule:
    """What a step draws: curriculum (fewer objects early) and the share of hard negatives."""

    steps: int
    curriculum: float  # fraction of steps drawing scenes of at most 2 objects
    hard_negatives: float  # final share of hard negatives among the negatives
    hard_warmup: float  # fraction of steps over which that share rises from 0

    def easy_only(self, step: int) -> bool:
        return step < self.curriculum * self.steps

    def hard_share(self, step: int) -> float:
        ramp = self.hard_warmup * self.steps
        return self.hard_negatives * (min(1.0, step / ramp) if ramp > 0 else 1.0)


class Batcher:
    def __init__(self, corpus: Corpus, tokens: Tokens, seed: int, batch_size: int, mlm_fraction: float, mask_prob: float, schedule: Schedule):
        self.corpus, self.tokens, self.seed = corpus, tokens, seed
        self.batch_size, self.mask_prob, self.schedule = batch_size, mask_prob, schedule
        self.n_mlm = int(round(batch_size * mlm_fraction))
        counts = corpus.object_counts
        self.pools = [np.flatnonzero(counts <= 2) if corpus.scenes is not None else np.arange(len(corpus)), np.arange(len(corpus))]
        if len(self.pools[0]) == 0:
            self.pools[0] = self.pools[1]
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, which: int, epoch: int) -> np.ndarray:
        key = (which, epoch)
        if key not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[key] = np.random.default_rng(np.random.SeedSequence([self.seed, 3, which, epoch])).permutation(len(self.pools[which]))
        return self._perms[key]

    def indices(self, step: int) -> np.ndarray:
        """The corpus images of `step`: consecutive slices of seeded per-epoch permutations."""
        which = 0 if self.schedule.easy_only(step) else 1
        pool = self.pools[which]
        start = (step - (0 if which == 0 else int(np.ceil(self.schedule.curriculum * self.schedule.steps)))) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            epoch, pos = divmod(p, len(pool))
            out.append(pool[self._perm(which, epoch)[pos]])
        return np.array(out)

    def batch(self, step: int) -> Batch:
        index = self.indices(step)
        rows, mlm_rows, itm = [], [], []
        for slot, i in enumerate(index):
            rng = C.caption_rng(self.seed, step, slot)
            is_mlm = slot < self.n_mlm
            ids, roles, label = self.example(int(i), rng, is_mlm, step)
            if is_mlm:
                ids, labels = mask_tokens(ids, roles, rng, self.mask_prob, self.tokens)
            else:
                labels = [IGNORE] * len(ids)
            rows.append((ids, roles))
            mlm_rows.append(labels)
            itm.append(IGNORE if is_mlm else label)
        return collate(index, rows, mlm_rows, itm, self.tokens.pad)

    def example(self, i: int, rng: np.random.Generator, is_mlm: bool, step: int) -> tuple[list[int], list[str], int]:
        """One caption for image i: (ids, roles, 1 if it matches the image else 0)."""
        want_negative = not is_mlm and rng.random() < 0.5
        corpus = self.corpus
        if corpus.scenes is None:  # a folder corpus: its own caption, or another image's
            j = i
            if want_negative and len(corpus) > 1:
                j = int(rng.integers(len(corpus) - 1))
                j += j >= i
            ids, roles = self.tokens.text(corpus.captions[j])
            return ids, roles, int(j == i)
        scene = corpus.scenes[i]
        caption = C.true_caption(scene, rng)
        if want_negative:
            hard = rng.random() < self.schedule.hard_share(step)
            others = [corpus.scenes[int(k)] for k in rng.integers(len(corpus), size=4)]
            negative = C.hard_negative(scene, caption, rng) if hard else C.easy_negative(scene, others, rng)
            if negative is not None:
                caption = negative
        ids, roles = self.tokens.words(caption.words)
        return ids, roles, int(not caption.changed)


def collate(index, rows, mlm_rows, itm, pad: int) -> Batch:
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for r, ((row, _), lab) in enumerate(zip(rows, mlm_rows)):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        labels[r, : len(lab)] = torch.tensor(lab)
    return Batch(torch.as_tensor(np.asarray(index)), ids, mask, labels, torch.tensor(itm, dtype=torch.long), [roles for _, roles in rows])
