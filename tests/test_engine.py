"""The embedded engine: deterministic under a seed, private state on disk, partial participation."""

from __future__ import annotations

import json

import torch

from conftest import tiny_config
from feddat.engines.embedded import run_method, sample_clients
from feddat.engines.state import ClientStateStore
from feddat.peft.model import AdaptedModel
from feddat.runtime import load_tensors


def run(tiny_backbone, clients, run_dir, method="feddat", **overrides):
    cfg = tiny_config(**overrides)
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    run_dir.mkdir()
    summary = run_method(method, cfg, model, clients, run_dir, torch.device("cpu"), log=lambda s: None)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def test_same_seed_gives_identical_metrics_and_adapter(tiny_backbone, tiny_clients, tmp_path):
    _, first = run(tiny_backbone, tiny_clients, tmp_path / "a")
    _, second = run(tiny_backbone, tiny_clients, tmp_path / "b")
    assert first == second
    a = load_tensors(tmp_path / "a" / "feddat" / "shared_adapter.safetensors")
    b = load_tensors(tmp_path / "b" / "feddat" / "shared_adapter.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, other = run(tiny_backbone, tiny_clients, tmp_path / "c", **{"run.seed": 1})
    assert other != first


def test_evaluation_records_global_and_personal_per_client_per_round(tiny_backbone, tiny_clients, tmp_path):
    _, records = run(tiny_backbone, tiny_clients, tmp_path / "r", **{"federation.rounds": 3, "federation.eval_every": 2})
    evals = [r for r in records if r["kind"] == "eval"]
    assert sorted({r["round"] for r in evals}) == [2, 3]  # every 2 rounds, and the last
    assert {r["client"] for r in evals} == {c.name for c in tiny_clients}
    assert all(0.0 <= r["global"] <= 1.0 and 0.0 <= r["personal"] <= 1.0 for r in evals)


def test_client_state_lives_on_disk_one_file_per_client(tiny_backbone, tiny_clients, tmp_path):
    run(tiny_backbone, tiny_clients, tmp_path / "r")
    store = ClientStateStore(tmp_path / "r" / "state" / "feddat")
    for client in tiny_clients:
        state = store.load(client.name)
        assert state is not None and any(k.startswith("client.") for k in state)
        assert state["head.3.weight"].shape[0] == client.num_answers


def test_partial_participation_is_seeded(tiny_clients):
    picks = [[c.name for c in sample_clients(tiny_clients, 0.34, seed=0, round_=r)] for r in range(1, 9)]
    assert all(len(p) == 2 for p in picks)
    assert len({tuple(p) for p in picks}) > 1
    assert picks == [[c.name for c in sample_clients(tiny_clients, 0.34, seed=0, round_=r)] for r in range(1, 9)]


def test_fedavg_local_and_centralised_run(tiny_backbone, tiny_clients, tmp_path):
    for method in ("fedavg", "local", "centralised"):
        summary, records = run(tiny_backbone, tiny_clients, tmp_path / method, method=method)
        evals = [r for r in records if r["kind"] == "eval"]
        assert len(evals) == 2 * len(tiny_clients) and "personal" not in evals[0]
        assert summary["local_steps"] > 0
    assert summary["bytes_up_per_round"] == 0  # centralised sends nothing
