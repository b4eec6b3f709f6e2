"""Split one pool of examples over many clients: by category, IID, Dirichlet label skew, quantity skew.

Every scheme is a pure function of the labels and a numpy Generator, so the same seed gives the
same partition. Train and test are split with the *same* per-client label (or size) proportions,
so each client is evaluated on data distributed like its own training data, as in the
label-skew FL literature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from feddat.data.types import DataError

SCHEMES = ("natural", "category", "iid", "dirichlet", "quantity")
_MAX_DRAWS = 1000  # redraws of a skewed partition before giving up on the minimum client size


@dataclass
class Partition:
    names: list[str]
    train: list[np.ndarray]  # per client: indices into the pooled training split
    test: list[np.ndarray]  # per client: indices into the pooled test split


def client_names(k: int) -> list[str]:
    width = len(str(k - 1))
    return [f"client{i:0{width}d}" for i in range(k)]


def by_category(train_groups: Sequence[str], test_groups: Sequence[str]) -> Partition:
    """One client per category (question type, scene, ...), in sorted order of the category."""
    names = sorted(set(train_groups))
    if not names:
        raise DataError("the category partition needs examples with a category; this data has none")
    train, test = np.asarray(train_groups), np.asarray(test_groups)
    return Partition(names, [np.flatnonzero(train == g) for g in names], [np.flatnonzero(test == g) for g in names])


def iid(n_train: int, n_test: int, k: int, rng: np.random.Generator) -> Partition:
    """Uniformly random, equal-sized shards."""
    return Partition(client_names(k), np.array_split(rng.permutation(n_train), k), np.array_split(rng.permutation(n_test), k))


def split_by_shares(order: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    """Cut `order` into len(shares) consecutive pieces proportional to `shares`."""
    cuts = np.round(np.cumsum(shares)[:-1] * len(order)).astype(int)
    return np.split(order, cuts)


def quantity(n_train: int, n_test: int, k: int, alpha: float, rng: np.random.Generator, min_train: int) -> Partition:
    """Quantity skew: client sizes ∝ Dirichlet(α·1_K); labels stay IID within each client."""
    for _ in range(_MAX_DRAWS):
        shares = rng.dirichlet(np.full(k, alpha))
        train = split_by_shares(rng.permutation(n_train), shares)
        if min(len(t) for t in train) >= min_train:
            return Partition(client_names(k), train, split_by_shares(rng.permutation(n_test), shares))
    raise DataError(f"quantity skew with alpha={alpha} cannot give each of {k} clients {min_train} of {n_train} training examples; raise data.alpha or lower data.min_per_client")


def dirichlet(train_labels: Sequence[str], test_labels: Sequence[str], k: int, alpha: float, rng: np.random.Generator, min_train: int) -> Partition:
    """Label skew: for every answer, its examples are shared over clients ∝ Dirichlet(α·1_K).

    Small α gives each client a few dominant answers; large α approaches IID. Drawn again until
    every client holds at least `min_train` training examples. Test examples follow the same
    per-answer proportions; an answer unseen in training goes to a uniformly random client.
    """
    train, test = np.asarray(train_labels), np.asarray(test_labels)
    labels = sorted(set(train.tolist()))
    for _ in range(_MAX_DRAWS):
        props = {label: rng.dirichlet(np.full(k, alpha)) for label in labels}
        parts = _split_labels(train, props, k, rng)
        if min(len(p) for p in parts) >= min_train:
            return Partition(client_names(k), parts, _split_labels(test, props, k, rng))
    raise DataError(f"a Dirichlet partition with alpha={alpha} cannot give each of {k} clients {min_train} of {len(train)} training examples; raise data.alpha or lower data.min_per_client")


def _split_labels(labels: np.ndarray, props: dict[str, np.ndarray], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    pieces: list[list[np.ndarray]] = [[] for _ in range(k)]
    for label in sorted(set(labels.tolist())):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = props.get(label)
        if shares is None:  # unseen in training: any client may be asked about it
            shares = np.eye(k)[rng.integers(k)]
        for client, piece in enumerate(split_by_shares(members, shares)):
            pieces[client].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in pieces]


def partition(
    scheme: str,
    train_labels: Sequence[str],
    test_labels: Sequence[str],
    k: int,
    alpha: float,
    seed: int,
    min_train: int = 1,
    train_groups: Sequence[str] | None = None,
    test_groups: Sequence[str] | None = None,
) -> Partition:
    """The clients' shares of a pooled train and test split under `scheme` (see SCHEMES)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, SCHEMES.index(scheme), k]))
    if scheme == "category":
        if train_groups is None or test_groups is None:
            raise DataError("the category partition needs data whose examples carry a category")
        return by_category(train_groups, test_groups)
    if k < 2:
        raise DataError(f"the {scheme} partition needs data.num_clients >= 2, got {k}")
    if scheme == "iid":
        return iid(len(train_labels), len(test_labels), k, rng)
    if scheme == "quantity":
        return quantity(len(train_labels), len(test_labels), k, alpha, rng, min_train)
    if scheme == "dirichlet":
        return dirichlet(train_labels, test_labels, k, alpha, rng, min_train)
    raise DataError(f"unknown partition '{scheme}': choose one of {', '.join(SCHEMES)}")
