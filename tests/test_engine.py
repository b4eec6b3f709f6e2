"""The embedded engine: deterministic under a seed, private state on disk, partial participation."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import raw_split, tiny_config
from feddat.data.clients import build_client
from feddat.algorithms import build_method
from feddat.engines.embedded import Ticker, run_method, sample_clients, train_round
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


def test_scores_are_also_reported_per_category_of_question(tiny_backbone, tmp_path):
    def with_groups(split, groups):
        split.groups = [groups[i % len(groups)] for i in range(len(split))]
        return split

    answers = ("red", "blue", "green")
    clients = [
        build_client("alpha", with_groups(raw_split(16, 0, answers), ["count"]), with_groups(raw_split(9, 100, answers), ["count", "colour", "colour"]), tiny_backbone, 100, None),
        build_client("beta", with_groups(raw_split(16, 1, answers), ["colour"]), with_groups(raw_split(8, 101, answers), ["colour"]), tiny_backbone, 100, None),
    ]
    _, records = run(tiny_backbone, clients, tmp_path / "r", **{"federation.rounds": 1})
    evals = {r["client"]: r for r in records if r["kind"] == "eval"}
    assert set(evals["beta"]) >= {"global/colour", "personal/colour"} and "global/count" not in evals["beta"]
    alpha = evals["alpha"]
    for view in ("global", "personal"):
        # the categories' scores, weighted by their sizes (3 and 6 of 9), give the client's score
        assert abs((3 * alpha[f"{view}/count"] + 6 * alpha[f"{view}/colour"]) / 9 - alpha[view]) < 1e-9

    from feddat.reporting import category_table

    table = category_table(records).splitlines()
    assert table[0] == "| method | view | colour | count |"
    colour = (alpha["global/colour"] + evals["beta"]["global/colour"]) / 2
    assert table[2] == f"| feddat | global | {100 * colour:.1f} | {100 * alpha['global/count']:.1f} |"


def test_long_rounds_report_progress_within_the_round(tiny_backbone, tiny_clients, tmp_path):
    cfg = tiny_config()
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    for method in ("fedavg", "centralised"):
        lines = []
        ticker = Ticker(lines.append, f"[{method}]", every=0.0)  # no throttle: every step or client
        algorithm = build_method(method, cfg, model, torch.device("cpu"))
        train_round(algorithm, algorithm.init_shared(), list(tiny_clients), ClientStateStore(tmp_path / method), 1, ticker=ticker)
        unit = "clients trained" if method == "fedavg" else "steps"
        assert lines and all(unit in line for line in lines), lines
        # the last client / step is not announced: the round line follows it
        total = len(tiny_clients) if method == "fedavg" else int(lines[0].split()[1].split("/")[1])
        assert [int(line.split()[1].split("/")[0]) for line in lines] == list(range(1, total))


def test_both_engines_drive_one_round_module_and_ask_methods_only_through_the_interface():
    """rounds.py owns a round (sampling, evaluation schedule, records, summary); neither engine
    imports the other, names a method or reads one method's metrics or entry points."""
    from pathlib import Path

    import feddat.engines as engines

    root = Path(engines.__file__).parent
    for path in (root / "embedded.py", root / "flower" / "server_app.py"):
        text = path.read_text()
        assert "from feddat.engines.rounds import" in text, path
        for word in ("pooled_update", "loss_student", '"centralised"', "if method.pooled", "sample_clients(range"):
            assert word not in text, f"{path.name} still holds {word}"
    assert "engines.embedded" not in "".join(p.read_text() for p in (root / "flower").glob("*.py"))


def test_the_round_line_shows_the_loss_a_method_names(tiny_backbone):
    from feddat.engines.rounds import Rounds

    cfg = tiny_config()
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    method = build_method("fedavg", cfg, model, torch.device("cpu"))
    assert method.train_loss({"ce": 9.0, "loss": 0.25}) == 0.25
    assert method.train_loss({"steps": 2, "loss_student": 0.5, "loss_dat": 0.75}) == 0.5  # no 'loss': the first loss term
    assert method.train_loss({"steps": 2}) == 0.0
    method.loss_metric = "loss_dat"
    assert method.train_loss({"loss_student": 0.5, "loss_dat": 0.75}) == 0.75
    from feddat.algorithms.base import ClientUpdate

    rounds = Rounds(method, cfg, 3, log=lambda s: None)
    update = ClientUpdate("alpha", {}, 4, {}, {"loss_student": 0.5, "loss_dat": 0.75, "steps": 2})
    records, line = rounds.trained(1, [update], [], 1.0)
    assert line.endswith("loss 0.750") and rounds.steps == 2
    assert records == [{"method": "fedavg", "round": 1, "client": "alpha", "kind": "train", "loss_student": 0.5, "loss_dat": 0.75, "steps": 2}]
    # time left: the rounds still to run at the pace of those after the process's first (cfg: 2 rounds)
    assert rounds.time_left(1, 1, 30.0) == "  ~30 s left"
    assert rounds.time_left(2, 1, 60.0) == ""  # the last round
    cfg.federation.rounds = 10
    rounds = Rounds(method, cfg, 3, log=lambda s: None)
    assert rounds.time_left(1, 1, 100.0) == "  ~15 min left"  # the first round alone: 100 s, 9 to go
    assert rounds.time_left(2, 1, 110.0) == "  ~80 s left"  # it filled the caches: 10 s a round since, 8 to go
    assert rounds.time_left(3, 1, 130.0) == "  ~2 min left"  # 15 s a round since the first, 7 to go
    resumed = Rounds(method, cfg, 3, log=lambda s: None)
    assert resumed.time_left(5, 5, 20.0) == "  ~2 min left"  # resumed after round 4: the process's first round, 5 to go
    assert resumed.time_left(6, 5, 40.0) == "  ~80 s left"  # 20 s for round 6, 4 to go


def test_precision_auto_is_bf16_exactly_where_bf16_is_native():
    from feddat.runtime import autocast, native_bf16, uses_bf16

    cpu = torch.device("cpu")
    assert uses_bf16(cpu, "auto") == native_bf16(cpu)
    assert uses_bf16(cpu, "bf16") and not uses_bf16(cpu, "fp32")
    layer = torch.nn.Linear(4, 4)
    with autocast(cpu, "bf16"):
        assert layer(torch.ones(2, 4)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert layer(torch.ones(2, 4)).dtype == torch.float32


def test_a_bf16_run_learns_what_the_float32_run_learns(tiny_backbone, tiny_clients, tmp_path):
    """run.precision bf16 on the CPU (what `auto` picks on AMX / AVX512-BF16 machines): the same
    training, rounded differently; master weights stay float32."""
    def losses(precision):
        _, records = run(tiny_backbone, tiny_clients, tmp_path / precision, method="fedavg", **{"run.precision": precision, "federation.rounds": 3})
        return [r["loss"] for r in records if r["kind"] == "train"]

    full, half = losses("fp32"), losses("bf16")
    assert half != full  # bf16 did run
    assert half == [pytest.approx(x, rel=0.05) for x in full]
    assert sum(half[-3:]) < sum(half[:3])  # and it learns
    state = load_tensors(tmp_path / "bf16" / "fedavg" / "shared_adapter.safetensors")
    assert all(v.dtype == torch.float32 for v in state.values())
