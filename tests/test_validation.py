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
