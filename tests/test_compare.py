"""`feddat compare`: variants, compute matching, seed statistics, reuse and resumption, report files."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import tiny_config
from feddat import compare
from feddat.compare import Variant, Workspace, difference, matched_variants, parse_variants, run_compare
from feddat.config import ConfigError
from feddat.peft.model import AdaptedModel
from feddat.runtime import write_json, write_text


def valid_config(**overrides):
    """tiny_config with a backbone path, so that it passes validation when read back."""
    cfg = tiny_config(**overrides)
    cfg.backbone.path = "tiny-vilt"
    return cfg


def test_variants_expand_groups_presets_and_custom_overrides():
    labels = [v.label for v in parse_variants(["all"])]
    assert labels[:6] == ["feddat", "feddat_nokd", "feddat_oneway", "feddat_clientonly", "feddat_frozenonly", "feddat_lora"]
    assert {"fedavg_full", "fedavg_lora", "fedavg_prompt", "fedavg_bitfit", "fedprox", "scaffold", "feddyn", "moon", "ditto", "fedrep", "local", "centralised", "fedavgm", "fedadam"} <= set(labels)
    (nokd,) = parse_variants(["feddat_nokd"])
    assert nokd.method == "feddat" and dict(nokd.overrides) == {"feddat.kd": "none"}
    (custom,) = parse_variants(["prox1=fedprox:baselines.fedprox_mu=1.0:train.lr=0.01"])
    assert custom == Variant("prox1", "fedprox", (("baselines.fedprox_mu", "1.0"), ("train.lr", "0.01")))
    with pytest.raises(ConfigError, match="unknown method or variant 'fedsgd'"):
        parse_variants(["fedsgd"])
    with pytest.raises(ConfigError, match="data.benchmark=function"):
        parse_variants(["x=fedavg:data.benchmark=function"])  # runs must share backbone and data


def test_compute_matched_baselines_get_proportionally_more_local_epochs():
    cfg = valid_config(**{"train.local_epochs": 2})
    variants = parse_variants(["feddat", "fedavg", "moon"])
    if hasattr(cfg.feddat, "schedule"):
        cfg.feddat.schedule = "reference"  # 3 forward + 2 backward passes per minibatch
    matched = {v.label: v for v in matched_variants(variants, ["all"], "feddat", cfg)}
    assert dict(matched["fedavg@feddat"].overrides)["train.local_epochs"] == "5"  # 2 epochs x 5/2
    assert dict(matched["moon@feddat"].overrides)["train.local_epochs"] == "3"  # 2 x 5/4 = 2.5, rounded up
    with pytest.raises(ConfigError, match="reference 'feddat'"):
        matched_variants(parse_variants(["fedavg"]), ["fedavg"], "feddat", cfg)


def test_difference_flags_only_what_exceeds_the_seed_noise():
    ref = {0: 0.40, 1: 0.42, 2: 0.41}
    assert difference({0: 0.50, 1: 0.53, 2: 0.51}, ref)[1] is True
    assert difference({0: 0.45, 1: 0.37, 2: 0.43}, ref)[1] is False
    d, sig = difference({0: 0.5}, {0: 0.4})
    assert sig is None and d == pytest.approx(0.1)
    assert difference({3: 0.50, 4: 0.53, 5: 0.51}, ref)[1] is True  # unpaired seeds: Welch


def fake_run(run_dir, method, seed, scores_by_round, personal=False, categories=None):
    """A finished `feddat run` directory written by hand: known numbers in, known table out.
    `categories`: client -> {category: global score} added to the last round's evaluation."""
    cfg = valid_config(**{"run.seed": seed})
    write_text(run_dir / "config.toml", cfg.to_toml())
    lines = []
    for round_, per_client in scores_by_round.items():
        lines.append({"method": method, "round": round_, "client": "all", "kind": "train", "steps": 4})
        for client, s in per_client.items():
            by_category = {f"global/{c}": v for c, v in (categories or {}).get(client, {}).items()} if round_ == max(scores_by_round) else {}
            lines.append({"method": method, "round": round_, "client": client, "kind": "eval", "global": s, **({"personal": s + 0.1} if personal else {}), **by_category})
    write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    write_json(run_dir / "summary.json", {"methods": [{"method": method, "wall_s": 10.0, "s_per_local_step": 0.5, "local_steps": 8, "shared_params": 100, "bytes_up_per_round": 800}]})


def test_report_from_finished_runs_has_mean_std_last3_and_costs(tmp_path):
    for seed, (a, b) in enumerate([(0.5, 0.3), (0.7, 0.5)]):
        fake_run(tmp_path / f"r{seed}", "feddat", seed, {1: {"x": 0.0, "y": 0.0}, 2: {"x": 0.2, "y": 0.2}, 3: {"x": a, "y": b}}, personal=True)
    out = tmp_path / "report"
    compare.report_from_dirs([tmp_path / "r0", tmp_path / "r1"], out)
    table = (out / "table.md").read_text()
    # final: x = 50/70 -> 60.0 ± 14.1; mean over clients 40/60 -> 50.0 ± 14.1
    assert "| feddat | 60.0 ± 14.1 | 40.0 ± 14.1 | 50.0 ± 14.1 |" in table
    # last three evaluations of the mean: (0 + 20 + 40)/3 = 20.0 and (0 + 20 + 60)/3 = 26.7
    assert "23.3 ± 4.7" in table
    assert "## Personal model" in table and "## Cost" in table
    rows = list(csv.DictReader(open(out / "table.csv")))
    mean_row = next(r for r in rows if r["view"] == "global" and r["client"] == "mean")
    assert float(mean_row["final_mean"]) == pytest.approx(0.5) and mean_row["seeds"] == "2"
    costs = list(csv.DictReader(open(out / "costs.csv")))
    assert float(costs[0]["total_bytes"]) == pytest.approx(3 * 1600)  # 3 rounds x (800 up + 800 down)
    assert {p.name for p in (out / "plots").iterdir()} == {"curve_round.png", "curve_compute.png", "curve_bytes.png", "clients_global.png", "clients_personal.png"}


def test_report_breaks_scores_down_by_category_of_question(tmp_path):
    for seed, colour in enumerate([0.2, 0.4]):
        categories = {"x": {"colour": colour, "count": 0.5}, "y": {"colour": 0.6}}
        fake_run(tmp_path / f"r{seed}", "fedavg", seed, {1: {"x": 0.1, "y": 0.1}, 2: {"x": 0.3, "y": 0.6}}, categories=categories)
    out = tmp_path / "report"
    compare.report_from_dirs([tmp_path / "r0", tmp_path / "r1"], out)
    table = (out / "table.md").read_text()
    # colour: mean over x and y per seed (40, 50), then over seeds; count: x alone, 50 on both seeds
    assert "| method | colour | count |\n|---|---|---|\n| fedavg | 45.0 ± 7.1 | 50.0 ± 0.0 |" in table
    fake_run(tmp_path / "plain", "fedavg", 0, {1: {"x": 0.1}})
    compare.report_from_dirs([tmp_path / "plain"], tmp_path / "plain_report")
    assert "by category" not in (tmp_path / "plain_report" / "table.md").read_text()


def test_same_method_and_seed_twice_is_refused(tmp_path):
    fake_run(tmp_path / "a", "fedavg", 0, {1: {"x": 0.5}})
    fake_run(tmp_path / "b", "fedavg", 0, {1: {"x": 0.6}})
    with pytest.raises(ValueError, match="same method and seed"):
        compare.report_from_dirs([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


@pytest.fixture()
def workspace(tiny_backbone, tiny_clients):
    cfg = valid_config(**{"federation.rounds": 1})
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    work = Workspace(cfg, log=lambda s: None)
    work.parts = {"device": torch.device("cpu"), "clients": tiny_clients[:2], "model": model}
    return cfg, work


def test_compare_trains_each_run_once_and_continues_after_an_interruption(workspace, tmp_path, monkeypatch):
    cfg, work = workspace
    variants = parse_variants(["fedavg", "feddat_nokd"])
    calls = []
    real = compare.running.train_run

    def counting(variant, seed, *args, **kwargs):
        calls.append((variant.label, seed, kwargs.get("resume")))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the third run is interrupted before it finishes
        return real(variant, seed, *args, **kwargs)

    monkeypatch.setattr(compare.running, "train_run", counting)  # run_compare's own reference
    out = tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt):
        run_compare(cfg, variants, [0, 1], out, workspace=work, log=lambda s: None)
    # seed by seed: fedavg and feddat_nokd finished seed 0; make fedavg seed 1 look half-written
    write_text(out / "runs" / "fedavg" / "seed1" / "config.toml", compare.variant_config(cfg, variants[0], 1).to_toml())
    calls.clear()
    run_compare(cfg, variants, [0, 1], out, workspace=work, log=lambda s: None)
    assert calls == [("fedavg", 1, True), ("feddat_nokd", 1, False)]  # finished runs reused, the partial one continued
    calls.clear()
    run_compare(cfg, variants, [0, 1], out, workspace=work, log=lambda s: None)
    assert calls == []
    table = (out / "table.md").read_text()
    assert "| fedavg |" in table and "| feddat_nokd |" in table and "Δ mean vs fedavg" in table
    summary = json.loads((out / "runs" / "feddat_nokd" / "seed1" / "summary.json").read_text())
    assert summary["passes_per_step"] >= 4 and summary["trainable_params"] > summary["shared_params"]
    assert summary["peak_memory_mb"] > 0 and summary["bytes_down_per_round"] == summary["bytes_up_per_round"] > 0
    stored = compare.load_compare_run(out / "runs" / "feddat_nokd" / "seed1")
    assert stored.personal and {r["method"] for r in stored.records} == {"feddat"}


def test_a_finished_run_with_another_configuration_is_not_silently_reused(workspace, tmp_path):
    cfg, work = workspace
    variants = parse_variants(["fedavg"])
    run_compare(cfg, variants, [0], tmp_path, workspace=work, log=lambda s: None)
    cfg.train.lr = 0.5
    with pytest.raises(ConfigError, match=r"different configuration \(train.lr: 0.01 then, 0.5 now\)"):
        run_compare(cfg, variants, [0], tmp_path, workspace=work, log=lambda s: None)


def test_cli_compare_reports_on_finished_runs(tmp_path, capsys):
    from feddat.cli import main

    fake_run(tmp_path / "r0", "fedavg", 0, {1: {"x": 0.5}})
    assert main(["compare", "--from", str(tmp_path / "r0"), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "table.md").is_file()
    assert main(["compare", "--methods", "nope", "--out", str(tmp_path / "o2")]) == 2
    assert "unknown method or variant 'nope'" in capsys.readouterr().err
    for args in (["--from", str(tmp_path / "r0")], ["--methods", "fedavg,local"]):  # a reference that is not compared: before any training
        assert main(["compare", *args, "--reference", "feddat", "--out", str(tmp_path / "o3")]) == 1
        assert "--reference 'feddat' is not one of the compared methods: fedavg" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_methods_declare_the_private_state_they_train(tiny_backbone, tiny_clients):
    """`feddat compare`'s trainable parameters: the shared module plus what each method declares
    trainable of its private state (Method.trainable_state), not what it only keeps."""
    from feddat.algorithms import build_method

    cfg = valid_config()
    model = AdaptedModel(tiny_backbone, reduction_factor=cfg.adapter.reduction_factor)
    client = tiny_clients[0]
    cpu = torch.device("cpu")
    shared = sum(v.numel() for v in build_method("fedavg", cfg, model, cpu).init_shared().values())
    head = sum(v.numel() for k, v in build_method("fedavg", cfg, model, cpu).init_client_state(client).items() if k.startswith("head."))
    expected = {
        "fedavg": shared + head,
        "feddat": 2 * shared + head,  # A_s and the client's own A_c
        "ditto": 2 * shared + 2 * head,  # the personal adapter and its own head
        "moon": shared + head,  # the previous round's adapter is kept, not trained
        "scaffold": shared + head,  # the control variates are kept, not trained
        "local": shared + head,  # its adapter is A_s's slot (kept again in its state)
    }
    for name, count in expected.items():
        method = build_method(name, cfg, model, cpu)
        assert method.trainable_parameters(client) == count, name
        assert compare.trainable_parameters(method, client) == count
