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


# ---- clients without training data, impossible sizes, empty test splits -----------------------


def clients_answering(**answers):
    clients = [RawClient(name, raw_split(0, 0), raw_split(0, 0)) for name in answers]
    for client, given in zip(clients, answers.values()):
        client.train.answers = list(given)
    return clients


def test_a_client_without_training_data_is_left_out_of_js_and_tv_and_named():
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import variation

    from feddat.data.describe import report

    full = clients_answering(a=["cat"] * 3 + ["dog"], b=["dog"] * 2 + ["fish"] * 2 + ["cat"], c=["bird"] * 6)
    empty = clients_answering(a=["cat"] * 3 + ["dog"], b=["dog"] * 2 + ["fish"] * 2 + ["cat"], c=["bird"] * 6, d=[])
    # the standard definitions, over a, b, c: JS base 2 over all pairs, TV to the pooled distribution
    p = np.array([[3, 1, 0, 0], [1, 2, 2, 0], [0, 0, 0, 6]]) / np.array([[4], [5], [6]])  # cat, dog, fish, bird
    pooled = np.array([4, 3, 2, 6]) / 15
    js = np.mean([jensenshannon(p[i], p[j], base=2) ** 2 for i, j in [(0, 1), (0, 2), (1, 2)]])
    tv = np.mean(0.5 * np.abs(p - pooled).sum(1))
    for clients in (full, empty):
        h = heterogeneity(clients)
        assert h["mean_pairwise_js"] == pytest.approx(js) and h["mean_tv_to_pooled"] == pytest.approx(tv)
    assert heterogeneity(empty)["size_cv"] == pytest.approx(variation([4, 5, 6, 0]))  # population std (ddof=0), d's 0 counts
    stats = summary(empty)
    assert [r["effective_answers"] for r in stats["clients"]][3] is None and stats["heterogeneity"]["left_out"] == ["d"]
    text = report(stats)
    assert "| d | vqa | 0 | 0 | 0 | — |" in text and "warning: client 'd' has no training examples" in text
    assert "over the 3 of 4 clients with training examples" in text and "population std / mean over all 4 clients" in text
    # the reviewer's case: every answer "x", one client empty: nothing is heterogeneous
    same = heterogeneity(clients_answering(a=["x", "x"], b=["x"], c=[]))
    assert same["mean_pairwise_js"] == 0 and same["mean_tv_to_pooled"] == 0 and same["left_out"] == ["c"]
    # no two clients with data: no pair to average over, not "identical"
    lone = heterogeneity(clients_answering(a=["x"], b=[]))
    assert lone["mean_pairwise_js"] is None and lone["mean_tv_to_pooled"] == 0
    nothing = heterogeneity(clients_answering(a=[], b=[]))
    assert nothing["mean_pairwise_js"] is nothing["mean_tv_to_pooled"] is nothing["size_cv"] is None and nothing["left_out"] == ["a", "b"]


def test_describe_command_marks_a_client_without_training_data(tmp_path, capsys):
    import json

    from PIL import Image

    for client, train in (("a", ["x", "y"]), ("b", ["x"]), ("c", [])):
        (tmp_path / "data" / client / "img").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / client / "img" / "0.png")
        for split, answers in (("train", train), ("test", ["x"])):
            lines = [json.dumps({"image": "img/0.png", "question": "q", "answer": a}) for a in answers]
            (tmp_path / "data" / client / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    js = tmp_path / "c.json"
    assert main(["data", "describe", "--data.benchmark", "folder", "--data.root", str(tmp_path / "data"), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| c | vqa | 0 | 1 | 0 | — |" in out and "warning: client 'c' has no training examples" in out
    assert "Jensen-Shannon divergence 0.311" in out  # a = {x, y} against b = {x} only: JS = H(3/4, 1/4) - 1/2 = 1.5 - 0.75 log2(3)
    stats = json.loads(js.read_text())
    assert stats["clients"][2]["effective_answers"] is None and stats["heterogeneity"]["left_out"] == ["c"]
    assert stats["heterogeneity"]["mean_pairwise_js"] == pytest.approx(1.5 - 0.75 * np.log2(3))


@pytest.mark.parametrize("scheme", ["dirichlet", "quantity"])
def test_an_impossible_minimum_is_refused_before_any_draw(scheme):
    from feddat.data import partition as P

    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    with pytest.raises(DataError) as err:
        if scheme == "dirichlet":
            P.dirichlet(LABELS, TEST_LABELS, 50, 0.5, rng, 100)
        else:
            P.quantity(len(LABELS), len(TEST_LABELS), 50, 0.5, rng, 100)
    assert rng.bit_generator.state == before  # not a single redraw
    message = str(err.value)
    assert "cannot give each of 50 clients 100 of 1000 training examples" in message and "50 x 100 = 5000" in message
    assert "whatever data.alpha" in message and "raise data.alpha" not in message
    assert "lower data.min_per_client to 20 or less, or pool more training data (data.train_per_client)" in message
    with pytest.raises(DataError, match="cannot give each of 8 clients 1 of 5 training examples: .*; lower data.num_clients to 5 or less, or pool"):
        partition(scheme, LABELS[:5], TEST_LABELS, k=8, alpha=0.5, seed=0, min_train=1)
    with pytest.raises(DataError, match="needs at least one test example for each of 8 clients, but the pooled test split has 5; lower data.num_clients to 5 or less"):
        partition(scheme, LABELS, TEST_LABELS[:5], k=8, alpha=0.5, seed=0, min_train=5)


def digest(part):
    import hashlib

    return hashlib.sha256(np.concatenate([*part.train, *part.test]).astype(np.int64).tobytes()).hexdigest()[:12]


@pytest.mark.parametrize("scheme, unchanged", [("dirichlet", {4: "1fd8c93ea130", 5: "f373e093f674"}), ("quantity", {1: "dc7cb31c7415", 3: "425acfab635b"})])
def test_only_draws_that_leave_a_client_without_test_data_change(scheme, unchanged):
    """Seeds whose draw was complete before give the very same indices (digests from the old code)."""
    for seed in range(6):
        part = partition(scheme, LABELS, TEST_LABELS[:24], k=8, alpha=0.3, seed=seed, min_train=5)
        assert min(len(t) for t in part.test) >= 1 and min(len(t) for t in part.train) >= 5
        assert covers_exactly(part.train, len(LABELS)) and covers_exactly(part.test, 24)
        if seed in unchanged:
            assert digest(part) == unchanged[seed]


def test_the_final_error_names_the_split_that_fell_short():
    with pytest.raises(DataError) as err:  # min 0: every training split will do; 8 test examples for 8 very skewed clients will not
        partition("quantity", LABELS, TEST_LABELS[:8], k=8, alpha=0.05, seed=0, min_train=0)
    assert "of 1000 draws, all 1000 left a client with no test example" in str(err.value)
    assert "raise data.alpha, raise data.test_per_client, or lower data.num_clients" in str(err.value)
    with pytest.raises(DataError) as err:
        partition("dirichlet", LABELS, TEST_LABELS[:10], k=10, alpha=0.05, seed=0, min_train=60)
    message = str(err.value)
    assert "cannot give each of 10 clients 60 of 1000 training examples and one of 10 test examples: of 1000 draws, " in message
    assert "left a client with fewer than 60 training examples and the other" in message and "lower data.min_per_client" in message
