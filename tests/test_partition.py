"""Partitioners (category, IID, Dirichlet, quantity skew) and `feddat data describe`."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import raw_split, tiny_config
from feddat.cli import main
from feddat.data.clients import DataError, RawClient
from feddat.data.describe import heatmap, heterogeneity, summary
from feddat.data.partition import partition
from feddat.data.sources import raw_clients

LABELS = [f"a{i % 10}" for i in range(1000)]
TEST_LABELS = [f"a{i % 11}" for i in range(300)]  # a10 never occurs in training


def covers_exactly(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_partitions_are_seeded_disjoint_and_complete(scheme):
    first = partition(scheme, LABELS, TEST_LABELS, k=8, alpha=0.5, seed=3, min_train=5)
    again = partition(scheme, LABELS, TEST_LABELS, k=8, alpha=0.5, seed=3, min_train=5)
    other = partition(scheme, LABELS, TEST_LABELS, k=8, alpha=0.5, seed=4, min_train=5)
    assert all(np.array_equal(a, b) for a, b in zip(first.train + first.test, again.train + again.test))
    assert any(not np.array_equal(a, b) for a, b in zip(first.train, other.train))
    assert covers_exactly(first.train, len(LABELS)) and covers_exactly(first.test, len(TEST_LABELS))
    assert len(first.names) == 8 and min(len(t) for t in first.train) >= 5


def shares(part, labels):
    labels = np.asarray(labels)
    return np.array([[np.mean(labels[idx] == f"a{c}") if len(idx) else 0 for c in range(10)] for idx in part.train])


def test_dirichlet_skew_grows_as_alpha_shrinks_and_test_follows_train():
    def mean_js(alpha):
        part = partition("dirichlet", LABELS, TEST_LABELS, k=10, alpha=alpha, seed=0, min_train=1)
        clients = [RawClient(n, raw_split(0, 0), raw_split(0, 0)) for n in part.names]
        for client, idx in zip(clients, part.train):
            client.train.answers = [LABELS[i] for i in idx]
        return heterogeneity(clients)["mean_pairwise_js"], part

    skewed, part = mean_js(0.1)
    flat, _ = mean_js(100.0)
    assert skewed > 0.5 > 0.05 > flat
    # each client's most common training answer is also over-represented in its test split
    test = np.asarray(TEST_LABELS)
    for idx_train, idx_test in zip(part.train, part.test):
        if len(idx_train) > 50 and len(idx_test) > 10:
            top = max(set(np.asarray(LABELS)[idx_train]), key=list(np.asarray(LABELS)[idx_train]).count)
            assert np.mean(test[idx_test] == top) > 0.2


def test_quantity_skew_changes_sizes_not_labels():
    part = partition("quantity", LABELS, TEST_LABELS, k=5, alpha=0.3, seed=1, min_train=1)
    sizes = sorted(len(t) for t in part.train)
    assert sizes[-1] > 3 * sizes[0]


def test_impossible_minimum_is_refused():
    with pytest.raises(DataError, match="cannot give each of 50 clients 100"):
        partition("dirichlet", LABELS, TEST_LABELS, k=50, alpha=0.5, seed=0, min_train=100)


def test_category_partition_of_the_synthetic_pool():
    cfg = tiny_config(**{"data.benchmark": "shapes", "data.partition": "category", "data.train_per_client": 6, "data.test_per_client": 3})
    clients = raw_clients(cfg)
    assert [c.name for c in clients] == ["attribute", "count", "logic", "object", "spatial"]
    assert all(set(c.train.groups) == {c.name} for c in clients)
    assert sum(len(c.train) for c in clients) == 30


def test_dirichlet_partition_of_a_twin_and_its_description(tmp_path):
    cfg = tiny_config(**{"data.benchmark": "shapes", "data.partition": "dirichlet", "data.num_clients": 4, "data.alpha": 0.2, "data.train_per_client": 16, "data.test_per_client": 4, "data.min_per_client": 2})
    clients = raw_clients(cfg)
    assert [c.name for c in clients] == ["client0", "client1", "client2", "client3"]
    assert sum(len(c.train) for c in clients) == 64 and [len(c.train) for c in clients] == [len(c.train) for c in raw_clients(cfg)]
    stats = summary(clients)
    assert stats["heterogeneity"]["mean_pairwise_js"] > 0.2
    old_umask = os.umask(0o022)
    try:
        png = heatmap(clients, tmp_path / "map.png")
    finally:
        os.umask(old_umask)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_mode & 0o777 == 0o644 and [p.name for p in tmp_path.iterdir()] == ["map.png"]  # whole, shareable, no temporary left


def test_describe_command_prints_skew_and_saves_the_picture(tmp_path, capsys):
    png, js = tmp_path / "skew.png", tmp_path / "skew.json"
    args = ["data", "describe", "--data.benchmark", "shapes", "--data.partition", "dirichlet", "--data.num_clients", "3", "--data.alpha", "0.3",
            "--data.train_per_client", "12", "--data.test_per_client", "4", "--data.min_per_client", "2", "--plot", str(png), "--json", str(js)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "client0" in out and "client2" in out and "Jensen-Shannon" in out and str(png) in out
    assert png.is_file() and js.is_file()
    assert main(["data", "describe", "--data.partition", "dirichlet"]) == 2  # num_clients missing: a config error
    capsys.readouterr()
    assert main([*args[:-4], "--plot", str(tmp_path / "skew.jpg")]) == 2 and "the heat map is a PNG" in capsys.readouterr().err
    assert main([*args[:-4], "--json", str(tmp_path)]) == 2 and f"--json {tmp_path} is a folder" in capsys.readouterr().err
    assert not (tmp_path / "skew.jpg").exists()


def test_partition_settings_that_would_be_ignored_are_refused():
    from feddat.config import ConfigError, load

    with pytest.raises(ConfigError, match="data.num_clients applies to the iid, dirichlet and quantity"):
        load(None, {"data.num_clients": 10})
    with pytest.raises(ConfigError, match="needs data.num_clients >= 2"):
        load(None, {"data.partition": "iid"})
    with pytest.raises(ConfigError, match="data.train_per_client must be positive, got 0"):
        load(None, {"data.train_per_client": 0})  # 0 = all only for finite (public, folder) data
