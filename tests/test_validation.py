"""The server refuses bad updates (naming the client and why) and the round goes on without them;
robust aggregation resists an outlier."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from feddat.algorithms import build_method
from feddat.algorithms.base import ClientUpdate, UpdateRejected
from feddat.engines.embedded import run_method
from feddat.peft.model import AdaptedModel


@pytest.fixture()
def fedavg(tiny_backbone):
    cfg = tiny_config()
    model = AdaptedModel(tiny_backbone, reduction_factor=4)
    return build_method("fedavg", cfg, model, torch.device("cpu"))


def filled(shared, value):
    return {k: torch.full_like(v, value) for k, v in shared.items()}


def bad_updates(shared):
    key = next(iter(shared))
    return {
        "wrong_shape": (dict(shared, **{key: torch.zeros(3)}), "shape"),
        "nan": (dict(shared, **{key: torch.full_like(shared[key], float("nan"))}), "NaN"),
        "huge_norm": (filled(shared, 1e3), "exceeds federation.max_update_norm"),
        "unknown_name": (dict(shared, **{"evil.weight": torch.zeros(2)}), "unknown ['evil.weight']"),
        "oversized": (dict(shared, **{"blob": torch.zeros(2**19)}), "oversized"),
        "wrong_dtype": ({k: v.double() for k, v in shared.items()}, "dtype torch.float64"),
    }


@pytest.mark.parametrize("kind", ["wrong_shape", "nan", "huge_norm", "unknown_name", "oversized", "wrong_dtype"])
def test_each_bad_update_is_rejected_and_the_round_completes(fedavg, kind):
    fed = fedavg.cfg.federation
    fed.max_update_norm, fed.max_update_mib = 500.0, 1.0
    shared = fedavg.init_shared()
    update, reason = bad_updates(shared)[kind]
    good = [ClientUpdate("alice", filled(shared, 1.0), 10, {}), ClientUpdate("bob", filled(shared, 3.0), 30, {})]
    out, rejected = fedavg.server_round(shared, [good[0], ClientUpdate("mallory", update, 10, {}), good[1]])
    assert [r.client for r in rejected] == ["mallory"] and reason in rejected[0].reason
    assert all(torch.allclose(v, torch.full_like(v, 2.5)) for v in out.values())  # (10·1 + 30·3) / 40


def test_too_few_acceptable_updates_fail_the_round_clearly(fedavg):
    fedavg.cfg.federation.min_updates = 2
    shared = fedavg.init_shared()
    nan = filled(shared, float("nan"))
    with pytest.raises(UpdateRejected, match=r"1 acceptable update\(s\) of 2.*'mallory'.*NaN"):
        fedavg.server_round(shared, [ClientUpdate("alice", filled(shared, 1.0), 10, {}), ClientUpdate("mallory", nan, 10, {})])


@pytest.mark.parametrize("how, expected", [("median", 2.0), ("trimmed_mean", 2.0), ("mean", (1 + 2 + 3 + 1000) / 4)])
def test_robust_aggregation_resists_an_outlier(fedavg, how, expected):
    fedavg.cfg.federation.aggregation, fedavg.cfg.federation.trim_fraction = how, 0.25
    fedavg.cfg.federation.weighting = "uniform"
    shared = fedavg.init_shared()
    updates = [ClientUpdate(f"c{v}", filled(shared, float(v)), 10, {}) for v in (1, 2, 3, 1000)]
    out, _ = fedavg.server_round(shared, updates)
    # median of (1, 2, 3, 1000) is 2.5; the trimmed mean drops 1 and 1000: 2.5 as well
    target = 2.5 if how != "mean" else expected
    assert all(torch.allclose(v, torch.full_like(v, target)) for v in out.values())


def test_engine_logs_a_rejected_client_and_keeps_training(tiny_backbone, tiny_clients, tmp_path, monkeypatch):
    cfg = tiny_config(**{"federation.rounds": 1})
    model = AdaptedModel(tiny_backbone, reduction_factor=4)
    method_cls = build_method("fedavg", cfg, model, torch.device("cpu")).__class__
    honest = method_cls.client_update

    def sometimes_poisoned(self, shared, state, client, round_):
        update = honest(self, shared, state, client, round_)
        if client.name == "beta":
            update.shared = {k: torch.full_like(v, float("inf")) for k, v in update.shared.items()}
        return update

    monkeypatch.setattr(method_cls, "client_update", sometimes_poisoned)
    lines = []
    run_method("fedavg", cfg, model, tiny_clients, tmp_path, torch.device("cpu"), log=lines.append)
    assert any("client 'beta' rejected" in line and "infinite" in line for line in lines)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["client"] for r in records if "rejected" in r] == ["beta"]
    assert {r["client"] for r in records if r["kind"] == "eval"} == {"alpha", "beta", "gamma"}


def poison(monkeypatch, method_cls, client: str, round_: int) -> None:
    """`client`'s update in `round_` holds NaN, as a broken client would send it (its private
    state is trained as usual): the server rejects it."""
    honest = method_cls.client_update

    def poisoned(self, shared, state, c, r):
        update = honest(self, shared, state, c, r)
        if c.name == client and r == round_:
            update.shared = {k: torch.full_like(v, float("nan")) for k, v in update.shared.items()}
        return update

    monkeypatch.setattr(method_cls, "client_update", poisoned)


@pytest.mark.parametrize("name", ["scaffold", "feddyn", "moon", "feddat", "fedavg"])
def test_a_rejected_client_keeps_the_private_state_it_had_before_the_round(name, tiny_backbone, tiny_clients, tmp_path, monkeypatch):
    """SCAFFOLD's c_i, FedDyn's g_k, MOON's previous adapter, FedDAT's A_c and every head are
    advanced only when the server accepts the client's update: after a round whose update from
    beta was rejected, beta's state is the one it had after round 1 (a 1-round run's), while
    the accepted clients' states moved on."""
    from feddat.engines.embedded import load_state
    from feddat.engines.state import ClientStateStore

    def final_states(rounds: int, where):
        cfg = tiny_config(**{"federation.rounds": rounds, "federation.eval_every": 1})
        model = AdaptedModel(tiny_backbone, reduction_factor=4)
        method = build_method(name, cfg, model, torch.device("cpu"))
        lines = []
        run_method(name, cfg, model, tiny_clients, where, torch.device("cpu"), log=lines.append)
        store = ClientStateStore(where / "state" / name)
        return {c.name: load_state(method, store, c) for c in tiny_clients}, lines, method.__class__

    after_one, _, method_cls = final_states(1, tmp_path / "one")
    poison(monkeypatch, method_cls, "beta", 2)
    after_two, lines, _ = final_states(2, tmp_path / "two")
    assert any("round 2: update from client 'beta' rejected" in line for line in lines)
    assert after_two["beta"].keys() == after_one["beta"].keys()
    assert all(torch.equal(after_two["beta"][k], after_one["beta"][k]) for k in after_one["beta"]), "beta's private state advanced"
    assert not all(torch.equal(after_two["alpha"][k], after_one["alpha"][k]) for k in after_one["alpha"])  # accepted: advanced
    assert sorted(p.name for p in (tmp_path / "two" / "state" / name).glob("beta*")) == ["beta.r00001.safetensors"]


from test_flower import data_root  # noqa: E402,F401  (a fixture: three clients in the folder format)


def same_records(got_dir, want_dir) -> None:
    """The same metrics.jsonl records (float fields to float tolerance, the others exactly)."""
    def records(run_dir):
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {(r["method"], r["round"], r["client"], r["kind"]): r for r in lines}

    got, want = records(got_dir), records(want_dir)
    assert got.keys() == want.keys()
    for key, record in want.items():
        assert got[key].keys() == record.keys(), key
        for name, value in record.items():
            assert got[key][name] == (pytest.approx(value, rel=1e-4, abs=1e-6) if isinstance(value, float) else value), (key, name)


def test_on_flower_a_rejected_client_is_told_and_keeps_its_state_as_on_the_embedded_engine(tiny_vilt_dir, data_root, tmp_path, monkeypatch):  # noqa: F811
    """The ServerApp's strategy and the nodes' handlers, in this process with Flower's messages
    (no daemons): alpha's round-2 update (NaN) is rejected; the next message to its node says so
    (round 3's train message: round 2 does not evaluate), and alpha trains round 3 from the state
    it had after round 1, as on the embedded engine, whose records this run repeats. A resumed
    ServerApp recalls the rejection from metrics.jsonl and goes on telling the node."""
    from flwr.app import ArrayRecord, ConfigRecord

    from test_flower import make_config
    from test_flower_worker import as_server, context_for
    from feddat.algorithms import METHODS
    from feddat.engines.flower import client_node, transport
    from feddat.engines.flower.server_app import MethodStrategy, Roster
    from feddat.engines.rundir import MetricsLog, config_fingerprint
    from feddat.engines.runner import run_experiment
    from feddat.engines.state import Checkpoint

    nodes = {"alpha": 11, "beta": 12, "gamma": 13}
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "flower", **{"federation.rounds": 3, "federation.eval_every": 3, "federation.fraction": 1.0, "federation.eval_fraction": 1.0})
    started_from = {}  # (client, round) -> the private state its update started from
    honest = METHODS["feddat"].client_update

    def poisoned(self, shared, state, c, r):
        started_from[c.name, r] = {k: v.clone() for k, v in state.items()}
        update = honest(self, shared, state, c, r)
        if c.name == "alpha" and r == 2:
            update.shared = {k: torch.full_like(v, float("nan")) for k, v in update.shared.items()}
        return update

    monkeypatch.setattr(METHODS["feddat"], "client_update", poisoned)

    class KnownNodes:  # the Grid as Roster.refresh sees it: every node known already
        def get_node_ids(self):
            return list(nodes.values())

    run_dir = tmp_path / "flower"
    run_dir.mkdir()
    handlers = client_node.Nodes()
    contexts = {c: context_for(cfg, c, tmp_path) for c in nodes}
    client_of = {n: c for c, n in nodes.items()}

    def strategy():
        roster = Roster(list(nodes), timeout=1.0, log=lambda s: None)
        roster.nodes, roster.sizes = dict(nodes), {c: 12 for c in nodes}
        node = handlers.get(contexts["alpha"])
        return MethodStrategy(METHODS["feddat"](cfg, node.model, node.device), cfg, roster, MetricsLog(run_dir / "metrics.jsonl"), Checkpoint(run_dir / "checkpoint" / "feddat", config_fingerprint(cfg)), lambda s: None)

    def answer(messages):
        return [client_node.handle(m, contexts[client_of[m.metadata.dst_node_id]]) for m in messages]

    def run_round(s, r):
        as_server()
        sent = list(s.configure_train(r, ArrayRecord(), ConfigRecord(), KnownNodes()))
        s.aggregate_train(r, answer(sent))
        s.aggregate_evaluate(r, answer(list(s.configure_evaluate(r, ArrayRecord(), ConfigRecord(), KnownNodes()))))
        return {client_of[m.metadata.dst_node_id]: transport.rejected_rounds(m.content["config"]) for m in sent}

    first = strategy()
    assert run_round(first, 1) == {"alpha": [], "beta": [], "gamma": []}
    assert run_round(first, 2) == {"alpha": [], "beta": [], "gamma": []}
    state_dir = handlers.get(contexts["alpha"]).state_root / "feddat"
    assert sorted(p.name for p in state_dir.glob("alpha*")) == ["alpha.r00001.safetensors", "alpha.r00002.safetensors"]  # not told yet

    resumed = strategy()  # a ServerApp started anew after round 2 committed
    from feddat.reporting import read_metrics

    resumed.restore(resumed.checkpoint.load())
    resumed.recall_rejections(read_metrics(run_dir / "metrics.jsonl"))
    assert run_round(resumed, 1) == {"alpha": [2], "beta": [], "gamma": []}  # Flower's round 1 of this ServerApp is round 3
    assert sorted(p.name for p in state_dir.glob("alpha*")) == ["alpha.r00001.safetensors", "alpha.r00003.safetensors"]
    assert all(torch.equal(started_from["alpha", 3][k], started_from["alpha", 2][k]) for k in started_from["alpha", 2])
    assert not all(torch.equal(started_from["beta", 3][k], started_from["beta", 2][k]) for k in started_from["beta", 2])

    embedded = make_config(tiny_vilt_dir, data_root, tmp_path, "embedded", **{"federation.rounds": 3, "federation.eval_every": 3, "federation.fraction": 1.0, "federation.eval_fraction": 1.0})
    run_experiment(embedded, log=lambda s: None)
    same_records(run_dir, tmp_path / "embedded")


def test_under_secure_aggregation_the_fitins_tells_a_node_its_rejected_rounds():
    """SecAgg+ rounds send a legacy FitIns, not feddat's message: it carries the rejections too."""
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from feddat.engines.flower import secure, transport

    config = {"method": "feddat", "round": 4, "names": "w", "weighting": "examples", "max-weight": 12.0, "clipping-range": 1.0}
    for notes, rounds in (({}, ()), (transport.rejected_config([2, 3]), (2, 3))):
        content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([torch.zeros(2).numpy()]), {**config, **notes}), keep_input=True)
        ask, shared = secure.read_fitins(content)
        assert ask.round == 4 and ask.rejected == rounds and list(shared) == ["w"]
