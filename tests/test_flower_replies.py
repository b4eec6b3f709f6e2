"""What the Flower ServerApp makes of its clients' replies, without Flower's daemons: the
strategy's methods called directly with hand-built messages. A faulty train reply is rejected
and named (client and node), the round goes on as the embedded server step would; a faulty
evaluate reply stops the run, naming the client and node, with nothing committed; a client's
metric never overwrites a record's own fields; a resumed run's wall time and configuration
are those of the run it continues."""

from __future__ import annotations

import copy
import json
import math
import time

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from test_flower import data_root, make_config  # noqa: F401  (data_root: a fixture)
from test_flower_worker import as_server
from feddat.algorithms import UpdateRejected, build_method
from feddat.algorithms.base import ClientUpdate
from feddat.engines import rounds as rounds_mod
from feddat.engines.flower import server_app, transport
from feddat.engines.flower.partitions import build_model
from feddat.engines.flower.server_app import FlowerRunError, MethodStrategy, Roster
from feddat.engines.rundir import MetricsLog, config_fingerprint
from feddat.engines.state import Checkpoint

NODES = {"alpha": 11, "beta": 12, "gamma": 13}
NUM_TRAIN = 12  # what each node said when it was identified
CPU = torch.device("cpu")


class FakeGrid:
    """The Grid as `Roster.refresh` sees it: every node already known, nothing to ask."""

    def get_node_ids(self):
        return list(NODES.values())


@pytest.fixture(scope="module")
def cfg(tiny_vilt_dir, data_root, tmp_path_factory):  # noqa: F811
    return make_config(tiny_vilt_dir, data_root, tmp_path_factory.mktemp("replies"), "replies", **{"federation.fraction": 1.0, "federation.eval_fraction": 1.0})


@pytest.fixture(scope="module")
def model(cfg):
    return build_model(cfg, CPU)


def strategy_for(cfg, model, run_dir, log=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    roster = Roster(list(NODES), timeout=1.0, log=lambda s: None)
    roster.nodes, roster.sizes = dict(NODES), {c: NUM_TRAIN for c in NODES}
    lines = [] if log is None else log
    method = build_method("feddat", cfg, model, CPU)
    return MethodStrategy(method, cfg, roster, MetricsLog(run_dir / "metrics.jsonl"), Checkpoint(run_dir / "checkpoint" / "feddat", config_fingerprint(cfg)), lines.append)


def moved(shared, by: float):
    return {k: v + by for k, v in shared.items()}


def train_reply(msg: Message, client: str, shared, *, drop=(), info=None, metrics=None) -> Message:
    content = {
        "shared": transport.to_record(shared),
        "metrics": MetricRecord({"loss": 0.5, "steps": 2} if metrics is None else metrics),
        "info": ConfigRecord({"client": client, "num-examples": NUM_TRAIN} if info is None else info),
    }
    return Message(RecordDict({k: v for k, v in content.items() if k not in drop}), reply_to=msg)


def eval_reply(msg: Message, client: str, scores=None, *, drop=()) -> Message:
    content = {"metrics": MetricRecord({"global": 0.5, "personal": 0.75} if scores is None else scores), "info": ConfigRecord({"client": client})}
    return Message(RecordDict({k: v for k, v in content.items() if k not in drop}), reply_to=msg)


def train_round(strategy, bad_alpha=None):
    """Round 1's train phase: alpha answers with `bad_alpha(msg, shared)` (else well), the others well."""
    as_server()
    shared = dict(strategy.shared)
    msgs = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    replies = []
    for msg in msgs:
        client = {n: c for c, n in NODES.items()}[msg.metadata.dst_node_id]
        step = {"alpha": 0.01, "beta": 0.02, "gamma": 0.04}[client]
        if client == "alpha" and bad_alpha is not None:
            replies.append(bad_alpha(msg, moved(shared, step)))
        else:
            replies.append(train_reply(msg, client, moved(shared, step)))
    strategy.aggregate_train(1, replies)
    return shared


def records(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# ---- 1. train replies: every field checked; a faulty one is rejected, named ---------------

BAD_TRAIN = {
    "no info": lambda m, s: train_reply(m, "alpha", s, drop=("info",)),
    "no shared": lambda m, s: train_reply(m, "alpha", s, drop=("shared",)),
    "no metrics": lambda m, s: train_reply(m, "alpha", s, drop=("metrics",)),
    "float num-examples": lambda m, s: train_reply(m, "alpha", s, info={"client": "alpha", "num-examples": 3.5}),
    "bool num-examples": lambda m, s: train_reply(m, "alpha", s, info={"client": "alpha", "num-examples": True}),
    "string num-examples": lambda m, s: train_reply(m, "alpha", s, info={"client": "alpha", "num-examples": "12"}),
    "zero num-examples": lambda m, s: train_reply(m, "alpha", s, info={"client": "alpha", "num-examples": 0}),
    "more examples than it has": lambda m, s: train_reply(m, "alpha", s, info={"client": "alpha", "num-examples": 10**9}),
    "no num-examples": lambda m, s: train_reply(m, "alpha", s, info={"client": "alpha"}),
    "another client's name": lambda m, s: train_reply(m, "alpha", s, info={"client": "beta", "num-examples": NUM_TRAIN}),
    "list metric": lambda m, s: train_reply(m, "alpha", s, metrics={"loss": [0.5, 0.4], "steps": 2}),
    "float steps": lambda m, s: train_reply(m, "alpha", s, metrics={"loss": 0.5, "steps": 2.5}),
    "shared as config": lambda m, s: Message(RecordDict({"shared": ConfigRecord({"x": 1}), "metrics": MetricRecord({"loss": 0.5}), "info": ConfigRecord({"client": "alpha", "num-examples": 12})}), reply_to=m),
}


@pytest.mark.parametrize("fault", list(BAD_TRAIN))
def test_a_faulty_train_reply_is_rejected_naming_client_and_node_and_the_round_goes_on(cfg, model, tmp_path, fault):
    log = []
    strategy = strategy_for(cfg, model, tmp_path / "run", log)
    before = train_round(strategy, BAD_TRAIN[fault])
    rejected = [line for line in log if "rejected" in line]
    assert len(rejected) == 1 and "client 'alpha'" in rejected[0] and "(node 11)" in rejected[0], log
    by_client = {r["client"]: r for r in records(tmp_path / "run")}
    assert by_client.keys() == {"alpha", "beta", "gamma"} and "(node 11)" in by_client["alpha"]["rejected"]
    assert "rejected" not in by_client["beta"] and "rejected" not in by_client["gamma"]
    # the new A_s is beta's and gamma's mean alone (equal num-examples)
    for k, v in strategy.shared.items():
        assert torch.allclose(v, before[k] + 0.03, atol=1e-6), k


def test_good_train_replies_give_the_embedded_server_step(cfg, model, tmp_path):
    log = []
    strategy = strategy_for(cfg, model, tmp_path / "run", log)
    reference = build_method("feddat", cfg, model, CPU)
    before = train_round(strategy)
    updates = [ClientUpdate(c, moved(before, step), NUM_TRAIN, {}, {"loss": 0.5, "steps": 2}) for c, step in (("alpha", 0.01), ("beta", 0.02), ("gamma", 0.04))]
    want, rejected = reference.server_round(before, updates, 1)
    assert not rejected and not any("rejected" in line for line in log)
    for k in want:
        assert torch.equal(strategy.shared[k], want[k]), k
    rounds = rounds_mod.Rounds(reference, cfg, 3)
    assert records(tmp_path / "run") == [rounds.record(1, u.client, "train", u.metrics) for u in updates]


def test_when_every_train_reply_is_faulty_the_round_fails_as_embedded_naming_them(cfg, model, tmp_path):
    strategy = strategy_for(cfg, model, tmp_path / "run")
    as_server()
    msgs = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    replies = [train_reply(m, c, strategy.shared, drop=("info",)) for m, c in zip(msgs, NODES)]
    with pytest.raises(UpdateRejected, match=r"round cannot complete: 0 acceptable update\(s\) of 3.*'alpha': \(node 11\) the reply has no 'info'"):
        strategy.aggregate_train(1, replies)


def test_a_faulty_identify_reply_stops_the_run_naming_the_node():
    class Asking(FakeGrid):
        def get_node_ids(self):
            return [21]

        def send_and_receive(self, messages, timeout=None):
            return [Message(RecordDict({"info": ConfigRecord({"client": "alpha", "num-train": 2.5})}), reply_to=m) for m in messages]

    as_server()
    roster = Roster(list(NODES), timeout=1.0, log=lambda s: None)
    with pytest.raises(FlowerRunError, match=r"SuperNode 21 \(client 'alpha'\).*num-train = 2.5"):
        roster.refresh(Asking())


# ---- 2. a client's metric never overwrites a record's own fields ----------------------------


def test_record_fields_win_over_metrics_of_the_same_name_and_good_records_are_unchanged(cfg, model):
    rounds = rounds_mod.Rounds(build_method("feddat", cfg, model, CPU), cfg, 3)
    got = rounds.record(2, "alpha", "eval", {"round": 99, "kind": "train", "method": "x", "client": "beta", "global": 0.5})
    assert {k: got[k] for k in ("method", "round", "client", "kind")} == {"method": "feddat", "round": 2, "client": "alpha", "kind": "eval"}
    good = {"loss": 0.25, "steps": 3, "global/colour": 0.5}
    old_style = {"method": "feddat", "round": 2, "client": "alpha", "kind": "train", **good}
    assert list(rounds.record(2, "alpha", "train", good).items()) == list(old_style.items())  # same keys, same order: same metrics.jsonl bytes


def test_a_train_metric_named_like_a_record_field_is_refused(cfg, model, tmp_path):
    log = []
    strategy = strategy_for(cfg, model, tmp_path / "run", log)
    train_round(strategy, lambda m, s: train_reply(m, "alpha", s, metrics={"loss": 0.5, "steps": 2, "round": 7, "kind": 1}))
    alpha = [r for r in records(tmp_path / "run") if r["client"] == "alpha"]
    assert len(alpha) == 1 and alpha[0]["round"] == 1 and alpha[0]["kind"] == "train" and "metric 'round'" in alpha[0]["rejected"]
    assert alpha[0]["loss"] == 0.5  # what is sound of its metrics is kept


# ---- 3. evaluation scores: present, numbers in [0, 1]; else the run stops, naming the client -


BAD_EVAL = {
    "no global": {"personal": 0.5},
    "no personal": {"global": 0.5},
    "NaN": {"global": math.nan, "personal": 0.5},
    "inf": {"global": 0.5, "personal": math.inf},
    "above 1": {"global": 1.5, "personal": 0.5},
    "negative": {"global": -0.1, "personal": 0.5},
    "list": {"global": [0.5], "personal": 0.5},
    "record field": {"global": 0.5, "personal": 0.5, "round": 0.0},
    "no metrics": None,
}


@pytest.mark.parametrize("fault", list(BAD_EVAL))
def test_a_faulty_evaluation_reply_stops_the_run_naming_client_and_node(cfg, model, tmp_path, fault):
    strategy = strategy_for(cfg, model, tmp_path / "run")
    as_server()
    msgs = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    replies = []
    for msg in msgs:
        client = {n: c for c, n in NODES.items()}[msg.metadata.dst_node_id]
        if client == "alpha":
            replies.append(eval_reply(msg, client, drop=("metrics",)) if BAD_EVAL[fault] is None else eval_reply(msg, client, BAD_EVAL[fault]))
        else:
            replies.append(eval_reply(msg, client))
    with pytest.raises(FlowerRunError, match=r"client 'alpha' \(node 11\) replied to round 1 evaluate"):
        strategy.aggregate_evaluate(1, replies)
    assert records(tmp_path / "run") == []  # nothing written ...
    assert not (tmp_path / "run" / "checkpoint" / "feddat" / "progress.json").exists()  # ... nor committed: resume reruns the round


def test_good_evaluation_replies_are_recorded_as_sent(cfg, model, tmp_path):
    log = []
    strategy = strategy_for(cfg, model, tmp_path / "run", log)
    as_server()
    msgs = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    strategy.aggregate_evaluate(1, [eval_reply(m, {n: c for c, n in NODES.items()}[m.metadata.dst_node_id]) for m in msgs])
    got = records(tmp_path / "run")
    assert [(r["client"], r["global"], r["personal"]) for r in got] == [(c, 0.5, 0.75) for c in NODES]
    assert any("mean global 50.0%  personal 75.0%" in line for line in log), log


# ---- 4. a resumed run's wall time goes on from its checkpoint's ----------------------------


def test_a_resumed_flower_run_counts_the_wall_time_before_the_interruption(cfg, model, tmp_path):
    run_dir = tmp_path / "run"
    strategy = strategy_for(cfg, model, run_dir)
    strategy.started = time.perf_counter() - 1000.0  # as if the run had been going for 1000 s
    strategy.commit(cfg.federation.rounds)
    assert Checkpoint(run_dir / "checkpoint" / "feddat").load().counters.get("wall_s", 0.0) >= 1000.0
    roster = Roster(list(NODES), timeout=1.0, log=lambda s: None)
    summary = server_app.run_method_on_grid("feddat", cfg, model, roster, FakeGrid(), run_dir, CPU, lambda s: None, resume=True)  # every round committed: no round runs
    assert summary["wall_s"] >= 1000.0


# ---- 5. resuming refuses a configuration other than the run directory's ---------------------


def test_resuming_with_another_configuration_than_the_run_directorys_is_refused(cfg, tmp_path):
    here = copy.deepcopy(cfg)
    here.run.out_dir, here.run.name = str(tmp_path), "interrupted"
    run_dir, _ = server_app.open_run_dir(here, resume=False)  # writes config.toml
    carried = transport.config_from_run({transport.RUN_CONFIG_KEY: here.to_toml()})  # what `--resume` submits
    carried.run.threads = 3  # where and how fast it runs may differ
    assert server_app.open_run_dir(carried, resume=True)[0] == run_dir
    carried.train.lr = 0.5
    with pytest.raises(FlowerRunError, match=r"interrupted/config.toml holds another configuration.*train\.lr.*--resume"):
        server_app.open_run_dir(carried, resume=True)


def test_secure_aggregation_metrics_that_cannot_be_recorded_stop_the_run_naming_the_client(cfg, model, tmp_path, monkeypatch):
    """Under SecAgg+ a contributor's change is in the sum already: it cannot be rejected alone,
    so metrics the records cannot hold stop the run (nothing committed), naming it."""
    from feddat.engines.flower import secure

    strategy = strategy_for(cfg, model, tmp_path / "run")
    strategy.sent, strategy.order = {n: c for c, n in NODES.items()}, list(NODES)
    good = {"loss": 0.5, "steps": 2}
    outcome = secure.Outcome(mean=dict(strategy.shared), metrics={"alpha": dict(good), "beta": dict(good), "gamma": dict(good)})
    monkeypatch.setattr(secure, "secure_mean", lambda *a, **k: outcome)
    assert [u.metrics for u in strategy.secure_updates(1)] == [good] * 3
    outcome.metrics["beta"] = {"loss": 0.5, "steps": 2, "client": 3}
    with pytest.raises(FlowerRunError, match=r"client 'beta' \(node 12\) replied to round 1 train \(secure aggregation\).*metric 'client'"):
        strategy.secure_updates(1)


def test_clients_listed_from_the_servers_own_data_root_say_to_set_flower_clients(tmp_path):
    """Your folders on the SuperNodes' hosts only: without flower.clients the ServerApp lists
    data.root on its own host, so a missing folder, or one holding other clients, stops the run
    saying where the list came from and to set flower.clients."""
    from feddat.config import Config
    from feddat.data.types import DataError
    from feddat.engines.flower.partitions import client_names, clients_origin

    class Asking(FakeGrid):
        def get_node_ids(self):
            return [21]

        def send_and_receive(self, messages, timeout=None):
            return [Message(RecordDict({"info": ConfigRecord({"client": "south", "num-train": 4})}), reply_to=m) for m in messages]

    cfg = Config()
    cfg.data.benchmark, cfg.data.root = "folder", str(tmp_path / "only-on-the-nodes")
    with pytest.raises(DataError, match=r"only-on-the-nodes is not a folder; the run's clients are the sub-folders of data.root \S+ on the ServerApp's host; .*flower.clients"):
        client_names(cfg)
    (tmp_path / "an-old-copy" / "north").mkdir(parents=True)
    cfg.data.root = str(tmp_path / "an-old-copy")
    as_server()
    roster = Roster(client_names(cfg), timeout=1.0, log=lambda s: None, origin=clients_origin(cfg))
    with pytest.raises(FlowerRunError, match=r"serves client 'south', which is not one of this run's clients: north \(the run's clients are the sub-folders of data.root \S*an-old-copy on the ServerApp's host; .*flower.clients"):
        roster.refresh(Asking())
    cfg.flower.clients = ["north", "south"]
    assert client_names(cfg) == ["north", "south"] and clients_origin(cfg) == ""
