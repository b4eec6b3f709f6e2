"""Client datasets as tensors ready for training: cached frozen image features, token ids, targets."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from feddat.answer_tokens import AnswerTokens
from feddat.data.types import Batch, DataError, Encoder, RawClient, RawSplit
from feddat.data.vqa_eval import accuracy_table, normalise_answer, vqa_accuracy
from feddat.losses import score
from feddat.runtime import derive_seed, load_tensors, save_tensors, write_json

# DataError, RawSplit and RawClient live in data/types.py (shared by the whole data layer); they
# stay importable from here.
__all__ = [
    "Batch", "ClientData", "DataError", "RawClient", "RawSplit", "Split",
    "CLIENTS_FILE", "answer_vocabulary", "build_client", "cached_features", "client_record", "client_vocabulary", "data_notes", "data_record",
    "encode_split", "encode_targets", "hold_out_validation", "in_vocabulary", "load_clients", "outside_vocabulary", "soft_scores", "validation_view",
    "write_client_index",
]


@dataclass
class Split:
    image_features: torch.Tensor  # (N, ...) output of backbone.encode_images; (N, 2, ...) for two-image tasks
    input_ids: torch.Tensor  # (N, L)
    attention_mask: torch.Tensor  # (N, L)
    # (N,) class index, -1 for an answer outside the vocabulary; or (N, answers) float VQA soft
    # scores where the dataset has several annotator answers per question (losses.task_loss/score).
    targets: torch.Tensor
    # Each example's category where the data have one (question kind, VQA answer type): scores
    # are also reported per category.
    groups: list[str] | None = None
    # (N, answers) float64: each vocabulary answer's official VQA accuracy (data/vqa_eval.py), where
    # the data have ten annotators' answers. Evaluation reads it; training uses `targets`.
    accuracy: torch.Tensor | None = None
    # For an answer-decoder backbone: the answer vocabulary as the decoder reads it, (ids, mask),
    # each (answers, T) (Encoder.tokenize_answers). Batches then carry answers to decode.
    candidates: tuple[torch.Tensor, torch.Tensor] | None = None
    # For an answer decoder: each question's answers as given (its annotators', or its one), what
    # a generated answer is scored against (score_generated).
    answer_texts: list[list[str]] | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def inputs(self, index: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """The model's inputs of the examples at `index`: image features, question ids and mask."""
        return [t[index].to(device, non_blocking=True) for t in (self.image_features, self.input_ids, self.attention_mask)]

    def batch(self, index: torch.Tensor, device: torch.device) -> Batch:
        """The examples at `index`; for an answer decoder, with their target answers to decode."""
        if self.candidates is None:
            return Batch(*self.inputs(index, device), self.targets[index].to(device, non_blocking=True))
        return Batch(*self.inputs(index, device), target_answers(self.targets[index], self.candidates).to(device))

    def ranking_batch(self, index: torch.Tensor, device: torch.device) -> Batch:
        """An answer decoder's evaluation batch: every candidate answer for each question, to be
        ranked by the decoder's likelihood (ALBEF's VQA inference over the answer list)."""
        ids, mask = self.candidates
        b, c = len(index), len(ids)
        owner = torch.arange(b).repeat_interleave(c)
        answers = AnswerTokens(ids.repeat(b, 1), mask.repeat(b, 1), owner)
        return Batch(*self.inputs(index, device), answers.to(device))

    def score_generated(self, answers: list[str], index: torch.Tensor) -> torch.Tensor:
        """Per-example score (float64) of answers an answer decoder generated, free text that need
        not be in the vocabulary, for the examples at `index`: the official VQA accuracy against
        the annotators' answers where there are several, else exact match after the official
        answer processing (vqa_eval.normalise_answer)."""
        given = [self.answer_texts[i] for i in index.tolist()]
        if self.accuracy is not None:
            return torch.tensor([vqa_accuracy(a, annotators) for a, annotators in zip(answers, given)], dtype=torch.float64)
        return torch.tensor([float(normalise_answer(a) == normalise_answer(g[0])) for a, g in zip(answers, given)], dtype=torch.float64)

    def score(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Per-example evaluation score (float64, on the CPU) of the arg-max answer for the
        examples at `index`: the official VQA accuracy where the data have annotators' answers,
        else losses.score of the targets (exact match; the soft score for soft targets built
        without annotators' answers, as the synthetic twins' tests do)."""
        if self.accuracy is None:
            return score(logits, self.targets[index].to(logits.device)).double().cpu()
        predicted = logits.argmax(dim=-1).cpu()
        return self.accuracy[index].gather(1, predicted.unsqueeze(1)).squeeze(1)


@dataclass
class ClientData:
    name: str
    answers: list[str]
    train: Split
    test: Split
    task: str = "vqa"  # vqa | entailment | nlvr2 | match (data/tasks.py): picks the head's input and output
    images_per_example: int = 1  # 2 for NLVR2-style statements about an image pair
    # Questions whose answer is outside `answers` (data.max_answers): the training ones were
    # dropped, the test ones are in `test` and count as wrong. Reported when the run starts.
    train_outside_vocabulary: int = 0
    test_outside_vocabulary: int = 0
    # How many questions the capped splits were drawn from (data.train_per_client /
    # test_per_client on your own folders); None: every question is here.
    train_available: int | None = None
    test_available: int | None = None
    # Questions held out of the training ones (data.validation_per_client), scored like `test`
    # (those outside `answers` count as wrong); None: no validation split.
    validation: Split | None = None

    @property
    def num_answers(self) -> int:
        return len(self.answers)


def validation_view(client: ClientData) -> ClientData:
    """`client` with its validation questions in place of its test ones: what a method's
    `evaluate` (which scores `test`) scores to validate, without a second evaluation path."""
    if client.validation is None:
        raise ValueError(f"client '{client.name}' has no validation split (data.validation_per_client = 0)")
    return dataclasses.replace(client, test=client.validation)


def hold_out_validation(name: str, train: RawSplit, n: int, seed: int) -> tuple[RawSplit, RawSplit]:
    """(the training questions left, the `n` validation questions): a draw seeded by `seed`
    (data.seed) and the client's name, so the same data and seed hold out the same questions."""
    if n >= len(train):
        raise DataError(f"client '{name}' has {len(train)} training questions: data.validation_per_client = {n} would leave none to train on")
    g = torch.Generator().manual_seed(derive_seed(seed, "validation", name))
    order = torch.randperm(len(train), generator=g)
    held, rest = sorted(order[:n].tolist()), sorted(order[n:].tolist())
    tag = f"validation:{n}:{seed}"
    kept = train.subset(rest, f"minus-{tag}")
    kept.available = train.available
    return kept, train.subset(held, tag)


def answer_vocabulary(answers: Sequence[str], max_answers: int) -> list[str]:
    """The most frequent answers, ties broken alphabetically so the order is reproducible."""
    counts = Counter(answers)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_answers]]


def client_vocabulary(train: RawSplit, max_answers: int, classes: Sequence[str] | None = None) -> list[str]:
    """A client's answers: its fixed classes, else its `max_answers` most frequent training answers."""
    return list(classes) if classes else answer_vocabulary(train.answers, max_answers)


def outside_vocabulary(raw: RawSplit, vocab: list[str]) -> int:
    """Questions none of whose answers is in `vocab` (training drops them; a test counts them wrong)."""
    return int((~encode_targets(raw, vocab)[1]).sum())


def in_vocabulary(raw: RawClient, max_answers: int) -> RawClient:
    """`raw` as a run trains on it (build_client's vocabulary and cut, without a backbone), for
    `feddat data describe`: training questions outside the vocabulary dropped and counted, test
    questions kept and the ones outside counted."""
    vocab = client_vocabulary(raw.train, max_answers, raw.classes)
    known = encode_targets(raw.train, vocab)[1]
    train = raw.train if bool(known.all()) else raw.train.subset(torch.nonzero(known).flatten().numpy(), f"vocab:{max_answers}")
    train.available = raw.train.available
    return dataclasses.replace(
        raw, train=train, train_outside_vocabulary=int((~known).sum()), test_outside_vocabulary=outside_vocabulary(raw.test, vocab)
    )


def soft_scores(answer_lists: Sequence[Sequence[str]], vocab: list[str]) -> torch.Tensor:
    """VQA soft targets (docs/design.md §6): min(#annotators giving the answer / 3, 1) per vocabulary answer."""
    index = {a: i for i, a in enumerate(vocab)}
    targets = torch.zeros(len(answer_lists), len(vocab))
    for row, answers in enumerate(answer_lists):
        for answer, count in Counter(answers).items():
            if answer in index:
                targets[row, index[answer]] = min(count / 3.0, 1.0)
    return targets


def target_answers(targets: torch.Tensor, candidates: tuple[torch.Tensor, torch.Tensor]) -> AnswerTokens:
    """The answers an answer decoder learns for questions with `targets`: the answer of a class
    index (weight 1), or every answer with a soft score, weighted by its share of the question's
    scores (the annotators' votes, capped as VQA caps them at 3)."""
    ids, mask = candidates
    if not targets.is_floating_point():
        known = targets >= 0  # training drops the others; a test question outside the vocabulary has no target
        rows = known.nonzero().squeeze(1)
        answer = targets[rows]
        return AnswerTokens(ids[answer], mask[answer], rows, torch.ones(len(rows)))
    rows, answer = targets.nonzero(as_tuple=True)
    scores = targets[rows, answer]
    return AnswerTokens(ids[answer], mask[answer], rows, scores / targets.sum(1)[rows])


def encode_targets(raw: RawSplit, vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, known): soft scores where there are several answers per question, else class indices."""
    if raw.answer_lists is not None:
        targets = soft_scores(raw.answer_lists, vocab)
        return targets, targets.sum(1) > 0
    index = {a: i for i, a in enumerate(vocab)}
    targets = torch.tensor([index.get(a, -1) for a in raw.answers], dtype=torch.long)
    return targets, targets >= 0


def encode_split(raw: RawSplit, backbone: Encoder, vocab: list[str], cache_dir: Path | None, drop_unknown: bool, candidates: tuple[torch.Tensor, torch.Tensor] | None = None) -> Split:
    """Tensors for one split; training drops questions none of whose answers is in the vocabulary.
    `candidates`: an answer decoder's tokens of `vocab` (`answer_candidates`), None for a classifier."""
    targets, known = encode_targets(raw, vocab)
    keep = known if drop_unknown else torch.ones_like(known)
    features = cached_features(raw, backbone, cache_dir)
    if raw.images2 is not None:
        second = RawSplit(raw.images2, raw.questions, raw.answers, key=f"{raw.key}|image2")
        features = torch.stack([features, cached_features(second, backbone, cache_dir)], dim=1)
    ids, mask = backbone.tokenize(raw.questions)
    warn_if_cut(raw, backbone)
    groups = None if raw.groups is None else [g for g, k in zip(raw.groups, keep.tolist()) if k]
    accuracy = None if raw.eval_answers is None else accuracy_table(raw.eval_answers, vocab)[keep]
    texts = None
    if candidates is not None:
        given = raw.eval_answers if raw.eval_answers is not None else [[a] for a in raw.answers]
        texts = [list(g) for g, k in zip(given, keep.tolist()) if k]
    return Split(features[keep], ids[keep], mask[keep], targets[keep], groups, accuracy, candidates, texts)


def answer_candidates(name: str, train: RawSplit, backbone: Encoder, vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An answer decoder's tokens of a client's answer list (None for a classifier backbone);
    every answer must fit the decoder: a cut one would be learnt wrong."""
    if not decodes(backbone):
        return None
    try:
        return backbone.tokenize_answers(vocab)
    except ValueError as err:
        raise DataError(f"client '{name}'{f' ({train.origin})' if train.origin else ''}: {err}") from err


def decodes(backbone: Encoder) -> bool:
    """Whether `backbone` answers with a decoder (backbones.base.Backbone.decoder_start)."""
    return getattr(backbone, "decoder_start", None) is not None


class QuestionsCut(UserWarning):
    """Questions longer than backbone.max_text_len tokens, cut to it."""


def warn_if_cut(raw: RawSplit, backbone: Encoder) -> None:
    """One warning per split whose questions do not fit backbone.max_text_len (they are cut)."""
    cut = backbone.too_long(raw.questions)
    if cut:
        warnings.warn(
            f"{len(cut)} of {len(raw.questions)} questions of {raw.key[:80]} are longer than backbone.max_text_len = {backbone.max_text_len} tokens "
            f"and are cut (e.g. {raw.questions[cut[0]][:80]!r}); raise --backbone.max_text_len to keep them whole",
            QuestionsCut,
            stacklevel=2,
        )


def cached_features(raw: RawSplit, backbone: Encoder, cache_dir: Path | None, batch: int = 64) -> torch.Tensor:
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


def build_client(
    name: str,
    train: RawSplit,
    test: RawSplit,
    backbone: Encoder,
    max_answers: int,
    cache_dir: Path | None,
    task: str = "vqa",
    classes: Sequence[str] | None = None,
    validation: RawSplit | None = None,
) -> ClientData:
    for split, what in ((train, "training"), (test, "test")):
        if len(split.answers) == 0:  # the file, where the split came from one (folder data)
            raise DataError(f"client '{name}' has an empty {what} set" + (f": {split.origin} holds no record to read (only blank lines, or none; or every record was skipped as bad)" if split.origin else ""))
    vocab = client_vocabulary(train, max_answers, classes)
    candidates = answer_candidates(name, train, backbone, vocab)
    return ClientData(
        name=name,
        answers=vocab,
        train=encode_split(train, backbone, vocab, cache_dir, drop_unknown=True, candidates=candidates),
        test=encode_split(test, backbone, vocab, cache_dir, drop_unknown=False, candidates=candidates),
        task=task,
        images_per_example=1 if train.images2 is None else 2,
        train_outside_vocabulary=outside_vocabulary(train, vocab),
        test_outside_vocabulary=outside_vocabulary(test, vocab),
        train_available=train.available,
        test_available=test.available,
        validation=None if validation is None else encode_split(validation, backbone, vocab, cache_dir, drop_unknown=False, candidates=candidates),
    )


CLIENTS_FILE = "clients.json"  # in a run directory: every client's answer vocabulary and task


def client_record(client: ClientData) -> dict:
    """What a deployed head needs to turn logits into answers (feddat.inference reads it)."""
    return {
        "name": client.name,
        "answers": list(client.answers),
        "task": client.task,
        "images_per_example": client.images_per_example,
        # Soft VQA targets train with binary cross-entropy: each answer's probability is a sigmoid.
        "soft_targets": bool(client.train.targets.is_floating_point()),
    }


def data_record(client: ClientData) -> dict:
    """The questions a client's numbers come from: how many, how many fell outside its answers,
    and (where a cap drew a sample) how many there were."""
    record = {
        "name": client.name,
        "train": len(client.train),
        "test": len(client.test),
        "train_outside_vocabulary": client.train_outside_vocabulary,  # dropped from training
        "test_outside_vocabulary": client.test_outside_vocabulary,  # in `test`, counted wrong
    }
    for split, available in (("train", client.train_available), ("test", client.test_available)):
        if available is not None:
            record[f"{split}_available"] = available
    if client.validation is not None:  # held out of the training questions (not counted in "train")
        record["validation"] = len(client.validation)
    return record


def write_client_index(run_dir: Path, clients: Sequence[ClientData]) -> None:
    """RUN_DIR/clients.json: written when the data are loaded, read by inference.load and the
    report. "data" holds each client's question counts (kept apart: "clients" is what a deployed
    head needs, and exports copy it)."""
    write_json(Path(run_dir) / CLIENTS_FILE, {"clients": [client_record(c) for c in clients], "data": [data_record(c) for c in clients]})


def data_notes(record: dict, max_answers: int) -> list[str]:
    """What a run (and `describe`) says about a client's questions beyond its sizes, from its
    `data_record`: a sample drawn under a cap, questions outside the answer vocabulary."""
    name, notes = record["name"], []
    read = {"train": record["train"] + record["train_outside_vocabulary"], "test": record["test"]}
    drawn = [f"{read[split]} of its {record[f'{split}_available']} {what} questions (data.{split}_per_client)"
             for split, what in (("train", "training"), ("test", "test")) if f"{split}_available" in record]
    if drawn:
        notes.append(f"client '{name}': {' and '.join(drawn)}, a sample seeded by data.seed (0 uses all)")
    if record["train_outside_vocabulary"] or record["test_outside_vocabulary"]:
        notes.append(
            f"client '{name}': {record['train_outside_vocabulary']} training questions whose answer is outside its {max_answers} most frequent answers "
            f"(data.max_answers) are dropped; {record['test_outside_vocabulary']} test questions outside them are kept and counted wrong"
        )
    return notes


def load_clients(cfg, backbone: Encoder, log: Callable[[str], None] = print, raw: Sequence[RawClient] | None = None) -> list[ClientData]:
    """The benchmark's clients, encoded with `backbone` (features cached under data.cache_dir).
    `raw`: the clients as raw_clients(cfg) read them already (a run reads and checks its data
    before the backbone loads); else they are read here."""
    from feddat.data import faults
    from feddat.data.sources import raw_clients

    d = cfg.data
    cache_dir = Path(d.cache_dir) if d.cache_dir else None
    clients = []
    with faults.applied(d.on_bad_record, log):
        for one in raw_clients(cfg) if raw is None else raw:
            train, validation = hold_out_validation(one.name, one.train, d.validation_per_client, d.seed) if d.validation_per_client else (one.train, None)
            client = build_client(one.name, train, one.test, backbone, d.max_answers, cache_dir, one.task, one.classes, validation)
            held = "" if validation is None else f"  validation {len(client.validation):>4}"
            log(f"  client {client.name:<10} train {len(client.train):>5}{held}  test {len(client.test):>5}  answers {client.num_answers}  task {client.task}")
            for note in data_notes(data_record(client), d.max_answers):
                log(f"    {note}")
            clients.append(client)
    return clients
