"""A validation split: held out of each client's training questions, scored every evaluated
round; the test split scored once, on the model of the round validation selects."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import raw_split, tiny_config
from feddat.config import ConfigError, load
from feddat.data.clients import build_client, hold_out_validation, load_clients
from feddat.data.types import RawClient
from feddat.engines.embedded import run_method
from feddat.peft.model import AdaptedModel

SPECS = [("alpha", ("red", "blue", "green")), ("beta", ("one", "two")), ("gamma", ("yes", "no", "maybe", "never"))]


def raw_clients() -> list[RawClient]:
    return [RawClient(name, raw_split(20, i, a), raw_split(8, 100 + i, a)) for i, (name, a) in enumerate(SPECS)]


def validated_clients(backbone, n: int = 6, seed: int = 0):
    cfg = tiny_config(**{"data.validation_per_client": n, "data.seed": seed})
    return load_clients(cfg, backbone, log=lambda s: None, raw=raw_clients())


def run(backbone, clients, run_dir, **overrides):
    cfg = tiny_config(**overrides)
    model = AdaptedModel(backbone, reduction_factor=cfg.adapter.reduction_factor)
    run_dir.mkdir()
    summary = run_method("feddat", cfg, model, clients, run_dir, torch.device("cpu"), log=lambda s: None)
    return summary, [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def rows(t: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in t.flatten(1)}


def test_validation_questions_are_a_reproducible_draw_out_of_training_never_test(tiny_backbone):
    train = raw_split(20, 0)
    kept, held = hold_out_validation("alpha", train, 6, seed=0)
    assert len(held) == 6 and len(kept) == 14
    assert set(held.questions).isdisjoint(kept.questions) and set(held.questions) | set(kept.questions) == set(train.questions)
    again = hold_out_validation("alpha", train, 6, seed=0)[1]
    assert again.questions == held.questions and again.key == held.key
    assert hold_out_validation("alpha", train, 6, seed=1)[1].questions != held.questions  # data.seed decides it
    assert hold_out_validation("beta", train, 6, seed=0)[1].questions != held.questions  # and the client's name
    # Through the config: the encoded splits share no example, and the same seed gives the same split.
    first, second = validated_clients(tiny_backbone), validated_clients(tiny_backbone)
    for a, b in zip(first, second):
        assert len(a.validation) == 6 and len(a.train) == 14 and len(a.test) == 8
        assert rows(a.validation.image_features).isdisjoint(rows(a.train.image_features))
        assert rows(a.validation.image_features).isdisjoint(rows(a.test.image_features))
        assert torch.equal(a.validation.image_features, b.validation.image_features) and torch.equal(a.train.input_ids, b.train.input_ids)
    with pytest.raises(ValueError, match="validation_per_client = 20 would leave none"):
        hold_out_validation("alpha", train, 20, seed=0)


def test_validated_run_scores_validation_every_eval_round_and_test_once(tiny_backbone, tmp_path):
    clients = validated_clients(tiny_backbone)
    summary, records = run(tiny_backbone, clients, tmp_path / "r", **{"data.validation_per_client": 6, "federation.rounds": 3, "federation.eval_every": 1})
    validation = [r for r in records if r["kind"] == "validation"]
    assert sorted({r["round"] for r in validation}) == [1, 2, 3]
    assert all({r["client"] for r in validation if r["round"] == k} == {c.name for c in clients} for k in (1, 2, 3))
    assert all(0.0 <= r["global"] <= 1.0 and 0.0 <= r["personal"] <= 1.0 for r in validation)
    tests = [r for r in records if r["kind"] == "eval"]
    assert len(tests) == len(clients) and {r["round"] for r in tests} == {3} and {r["select_round"] for r in tests} == {"last"}
    assert summary["selected_round"] == 3 and summary["select_round"] == "last"


def test_best_round_is_tested_on_its_own_model(tiny_backbone, tmp_path):
    """The test score reported under select_round = best is the one the model of the best
    validated round has: a run stopped at that round (training is deterministic) scores the same."""
    clients = validated_clients(tiny_backbone)
    settings = {"data.validation_per_client": 6, "federation.eval_every": 1, "train.lr": 5e-2}
    summary, records = run(tiny_backbone, clients, tmp_path / "best", **settings, **{"federation.rounds": 5, "federation.select_round": "best"})
    means = {}
    for r in records:
        if r["kind"] == "validation":
            means.setdefault(r["round"], []).append(r["global"])
    means = {k: sum(v) / len(v) for k, v in means.items()}
    best = max(means, key=lambda k: (means[k], -k))  # the highest mean; a tie: the earliest round
    assert summary["selected_round"] == best == summary["best_validation_round"]
    tests = {r["client"]: r for r in records if r["kind"] == "eval"}
    assert len(tests) == len(clients) and {r["round"] for r in tests.values()} == {best}
    _, stopped = run(tiny_backbone, clients, tmp_path / "stopped", **settings, **{"federation.rounds": best})
    again = {r["client"]: r for r in stopped if r["kind"] == "eval"}
    for client, r in tests.items():
        assert r["global"] == again[client]["global"] and r["personal"] == again[client]["personal"]
    assert (tmp_path / "best" / "checkpoint" / "feddat" / f"best-r{best:05d}.safetensors").is_file()
    # What predict and export serve is that model too, not the last round's: the shared module
    # and every client's private state equal those of the run stopped at the selected round.
    from feddat.inference import latest_state, selected_state
    from feddat.runtime import load_tensors_and_metadata

    served, meta = load_tensors_and_metadata(tmp_path / "best" / "feddat" / "shared_adapter.safetensors")
    stopped_shared, _ = load_tensors_and_metadata(tmp_path / "stopped" / "feddat" / "shared_adapter.safetensors")
    assert meta["selected_round"] == str(best) and served.keys() == stopped_shared.keys()
    assert all(torch.equal(served[k], stopped_shared[k]) for k in served)
    for client in tests:
        state, _ = selected_state(tmp_path / "best", "feddat", client, best)
        expected, _ = latest_state([tmp_path / "stopped" / "state" / "feddat"], client)
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    print("selected round", best)
    # results.md and the comparison table say which round was tested, and why
    from feddat.compare.runs import RunResult
    from feddat.compare.tables import markdown_scores, summarise
    from feddat.engines.rundir import write_report

    cfg = tiny_config(**settings, **{"federation.rounds": 5, "federation.select_round": "best"})
    write_report(cfg, tmp_path / "best", [summary], lambda s: None)
    assert f"scored once, on the model of the round selected by validation (6 questions per client held out of its training data; federation.select_round = best): feddat round {best}." in (tmp_path / "best" / "results.md").read_text()
    table = markdown_scores(*summarise([RunResult("feddat", "feddat", 0, records, summary, True)], "feddat"), "global", "feddat")
    assert "| mean | round selected by validation (per seed) |" in table and "last 1 eval" not in table
    assert table.splitlines()[2].split(" | ")[-2] == str(best)


def test_without_validation_metrics_keep_todays_format(tiny_backbone, tiny_clients, tmp_path):
    summary, records = run(tiny_backbone, tiny_clients, tmp_path / "r", **{"federation.rounds": 2, "federation.eval_every": 1})
    assert {r["kind"] for r in records} == {"train", "eval"}
    evals = [r for r in records if r["kind"] == "eval"]
    assert sorted({r["round"] for r in evals}) == [1, 2] and len(evals) == 2 * len(tiny_clients)
    assert all(set(r) == {"method", "round", "client", "kind", "global", "personal"} for r in evals)
    assert not {"select_round", "selected_round", "best_validation_round"} & set(summary)
    assert not any(p.name.startswith("best-") for p in (tmp_path / "r" / "checkpoint" / "feddat").iterdir())


def test_selection_keys_are_checked_and_the_flower_engine_refuses_them():
    with pytest.raises(ConfigError, match="data.validation_per_client > 0"):
        load(None, {"federation.select_round": "best"})
    with pytest.raises(ConfigError, match="not one of: last, best"):
        load(None, {"federation.select_round": "first", "data.validation_per_client": 4})
    with pytest.raises(ConfigError, match="must not be negative"):
        load(None, {"data.validation_per_client": -1})
    from feddat.engines.selection import refuse_on_flower

    refuse_on_flower(load(None, {}))  # the default: runs on Flower as before
    with pytest.raises(ConfigError, match="Flower engine does not support a validation split"):
        refuse_on_flower(load(None, {"data.validation_per_client": 4}))


class Stop(Exception):
    pass


def test_a_resumed_best_selection_equals_an_uninterrupted_one(tiny_backbone, tmp_path):
    """Stopped after a committed round, or after the test evaluation but before the summary, a
    resumed run selects the same round and reports the same test scores, once."""
    clients = validated_clients(tiny_backbone)
    settings = {"data.validation_per_client": 6, "federation.eval_every": 1, "train.lr": 5e-2, "federation.rounds": 3, "federation.select_round": "best"}
    cfg = tiny_config(**settings)
    whole, records = run(tiny_backbone, clients, tmp_path / "whole", **settings)
    for stop_at in ("round 2/3", "test split, once"):
        run_dir = tmp_path / stop_at.split()[0]
        run_dir.mkdir()

        def stopping(line: str, stop_at=stop_at) -> None:
            if stop_at in line:
                raise Stop

        with pytest.raises(Stop):
            run_method("feddat", cfg, AdaptedModel(tiny_backbone, reduction_factor=4), clients, run_dir, torch.device("cpu"), log=stopping)
        summary = run_method("feddat", cfg, AdaptedModel(tiny_backbone, reduction_factor=4), clients, run_dir, torch.device("cpu"), log=lambda s: None, resume=True)
        resumed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert resumed == records
        assert summary["selected_round"] == whole["selected_round"]
