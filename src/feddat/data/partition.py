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
_MAX_DRAWS = 1000  # redraws of a skewed partition before giving up on the minimum client sizes


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
    """Quantity skew: client sizes ∝ Dirichlet(α·1_K); labels stay IID within each client.

    Drawn again until every client holds at least `min_train` training and one test example.
    """
    _check_feasible("quantity", n_train, n_test, k, min_train)
    short_test = 0  # draws whose training split was big enough but whose test split was not
    for _ in range(_MAX_DRAWS):
        shares = rng.dirichlet(np.full(k, alpha))
        train = split_by_shares(rng.permutation(n_train), shares)
        if min(len(t) for t in train) < min_train:
            continue
        test = split_by_shares(rng.permutation(n_test), shares)
        if min(len(t) for t in test) >= 1:
            return Partition(client_names(k), train, test)
        short_test += 1
    raise _fell_short("quantity skew", alpha, k, min_train, n_train, n_test, short_test)


def dirichlet(train_labels: Sequence[str], test_labels: Sequence[str], k: int, alpha: float, rng: np.random.Generator, min_train: int) -> Partition:
    """Label skew: for every answer, its examples are shared over clients ∝ Dirichlet(α·1_K).

    Small α gives each client a few dominant answers; large α approaches IID. Drawn again until
    every client holds at least `min_train` training examples and one test example. Test
    examples follow the same per-answer proportions; an answer unseen in training goes to a
    uniformly random client.
    """
    train, test = _groups(train_labels), _groups(test_labels)  # once: each draw then costs O(N + labels·K)
    n_train, n_test = len(train_labels), len(test_labels)
    _check_feasible("Dirichlet", n_train, n_test, k, min_train)
    short_test = 0  # draws whose training split was big enough but whose test split was not
    for _ in range(_MAX_DRAWS):
        props = {label: rng.dirichlet(np.full(k, alpha)) for label, _ in train}
        parts = _split_groups(train, props, k, rng)
        if min(len(p) for p in parts) < min_train:
            continue
        tests = _split_groups(test, props, k, rng)
        if min(len(t) for t in tests) >= 1:
            return Partition(client_names(k), parts, tests)
        short_test += 1
    raise _fell_short("a Dirichlet partition", alpha, k, min_train, n_train, n_test, short_test)


def _check_feasible(scheme: str, n_train: int, n_test: int, k: int, min_train: int) -> None:
    """Refuse at once the sizes no draw can meet: k·min_train > n_train, or fewer test examples than clients."""
    if k * min_train > n_train:
        # fewer clients shrink a pool of data.train_per_client x clients as well: advised only where the data ran out
        changes = [f"lower data.min_per_client to {n_train // k} or less" if n_train >= k else f"lower data.num_clients to {n_train} or less"]
        changes.append("pool more training data (data.train_per_client)")
        raise DataError(
            f"the {scheme} partition cannot give each of {k} clients {min_train} of {n_train} training examples: "
            f"data.min_per_client = {min_train} needs {k} x {min_train} = {k * min_train}, whatever data.alpha; {_either(changes)}"
        )
    if n_test < k:
        changes = [f"lower data.num_clients to {n_test} or less"] if n_test >= 2 else []
        changes.append("pool more test data (data.test_per_client)")
        raise DataError(f"the {scheme} partition needs at least one test example for each of {k} clients, but the pooled test split has {n_test}; {_either(changes)}")


def _either(changes: list[str]) -> str:
    return changes[0] if len(changes) == 1 else ", ".join(changes[:-1]) + ", or " + changes[-1]


def _fell_short(what: str, alpha: float, k: int, min_train: int, n_train: int, n_test: int, short_test: int) -> DataError:
    """Why _MAX_DRAWS draws of a skewed partition all failed: which split fell short, and what to change."""
    if short_test == 0:
        return DataError(
            f"{what} with alpha={alpha} cannot give each of {k} clients {min_train} of {n_train} training examples "
            f"(none of {_MAX_DRAWS} draws did); raise data.alpha or lower data.min_per_client"
        )
    short_train = _MAX_DRAWS - short_test
    under = "no training example" if min_train == 1 else f"fewer than {min_train} training examples"
    why = (f"{short_train} left a client with {under} and the other {short_test}" if short_train else f"all {short_test}") + " left a client with no test example"
    changes = ["raise data.alpha", *(["lower data.min_per_client"] if short_train else []), "raise data.test_per_client", "lower data.num_clients"]
    return DataError(
        f"{what} with alpha={alpha} cannot give each of {k} clients {min_train} of {n_train} training examples and one of {n_test} test examples: "
        f"of {_MAX_DRAWS} draws, {why}; {_either(changes)}"
    )


def _groups(labels: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(label, ascending indices of its examples) for every label, in sorted order of the labels."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return []
    values, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # stable: each label's indices stay ascending
    return list(zip(values.tolist(), np.split(order, np.cumsum(np.bincount(inverse, minlength=len(values)))[:-1])))


def _split_groups(groups: list[tuple[str, np.ndarray]], props: dict[str, np.ndarray], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    pieces: list[list[np.ndarray]] = [[] for _ in range(k)]
    for label, indices in groups:
        members = rng.permutation(indices)
        shares = props.get(label)
        if shares is None:  # unseen in training: any client may be asked about it
            shares = np.eye(k)[rng.integers(k)]
        for client, piece in enumerate(split_by_shares(members, shares)):
            pieces[client].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in pieces]


def _split_labels(labels: np.ndarray, props: dict[str, np.ndarray], k: int, rng: np.random.Generator) -> list[np.ndarray]:
    return _split_groups(_groups(labels), props, k, rng)


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
