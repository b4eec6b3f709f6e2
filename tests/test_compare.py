"""`feddat compare`: variants, compute matching, seed statistics, reuse and resumption, report files."""

from __future__ import annotations

import csv
import json
import re

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
    variants = parse_variants(["feddat", "fedavg", "moon", "fedrep"])
    if hasattr(cfg.feddat, "schedule"):
        cfg.feddat.schedule = "reference"  # 3 forward + 2 backward passes per minibatch
    matched = {v.label: v for v in matched_variants(variants, ["all"], "feddat", cfg)}
    assert dict(matched["fedavg@feddat"].overrides)["train.local_epochs"] == "5"  # 2 epochs x 5/2
    assert dict(matched["moon@feddat"].overrides)["train.local_epochs"] == "3"  # 2 x 5/4 = 2.5, rounded up
    # FedRep also runs one forward pass over its data per round (its representations): (10 - 1)/2 = 4.5 -> 5
    assert dict(matched["fedrep@feddat"].overrides)["train.local_epochs"] == "5"
    cfg.train.local_epochs = 1  # 5 per round for FedDAT; FedRep: (5 - 1)/2 = 2 epochs, not round(5/2) = 3
    assert dict({v.label: v for v in matched_variants(variants, ["fedrep"], "feddat", cfg)}["fedrep@feddat"].overrides)["train.local_epochs"] == "2"
    with pytest.raises(ConfigError, match="reference 'feddat'"):
        matched_variants(parse_variants(["fedavg"]), ["fedavg"], "feddat", cfg)


def test_difference_flags_only_what_exceeds_the_seed_noise():
    ref = {0: 0.40, 1: 0.42, 2: 0.41}
    assert difference({0: 0.50, 1: 0.53, 2: 0.51}, ref)[1] is True
    assert difference({0: 0.45, 1: 0.37, 2: 0.43}, ref)[1] is False
    d, sig = difference({0: 0.5}, {0: 0.4})
    assert sig is None and d == pytest.approx(0.1)
    assert difference({3: 0.50, 4: 0.53, 5: 0.51}, ref)[1] is True  # unpaired seeds: Welch


def test_t_test_agrees_with_scipy_also_beyond_30_degrees_of_freedom():
    import numpy as np
    from scipy import stats

    # the two-sided 95% critical values of Student's t, not the normal's 1.96
    for df, expected in ((1, 12.706), (30, 2.042), (31, 2.040), (40, 2.021), (60, 2.000)):
        assert compare.t_critical(df) == pytest.approx(expected, abs=5e-4)
    rng = np.random.default_rng(0)

    def paired_with_t(n, t):  # per-seed differences whose paired t statistic is exactly t
        e = rng.normal(size=n)
        e = (e - e.mean()) / e.std(ddof=1)
        b = rng.uniform(0.3, 0.5, n)
        return b + 0.01 * (e + t / np.sqrt(n)), b

    cases = [paired_with_t(n, t) for n, t in ((32, 2.0), (41, 2.01), (61, 1.99), (32, 2.1), (5, 2.5), (5, 3.0), (3, 4.0))]
    cases += [(rng.normal(0.5, 0.05, n), rng.normal(0.48, 0.05, n)) for n in (4, 10, 25, 40, 80) for _ in range(4)]
    seen = set()
    for a, b in cases:
        a_by_seed, b_by_seed = dict(enumerate(a)), dict(enumerate(b))
        expected = stats.ttest_rel(a, b).pvalue < 0.05
        assert difference(a_by_seed, b_by_seed) == (pytest.approx(a.mean() - b.mean()), expected)
        seen.add(expected)
        # other seeds on each side: Welch's test
        welch = stats.ttest_ind(a, b, equal_var=False)
        assert difference(a_by_seed, {100 + s: v for s, v in b_by_seed.items()})[1] == (welch.pvalue < 0.05), (len(a), welch)
    assert seen == {True, False}
    # a paired t of 2.0 over 32 seeds (df 31) is within the noise: p = 0.054
    a, b = paired_with_t(32, 2.0)
    assert stats.ttest_rel(a, b).pvalue == pytest.approx(0.0543, abs=1e-3)
    assert difference(dict(enumerate(a)), dict(enumerate(b)))[1] is False
    # Welch with 25 seeds a side (df about 48) and t = 2.0: within the noise too
    x = rng.normal(size=25)
    x = (x - x.mean()) / x.std(ddof=1)
    y = np.flip(x) - 2.0 * np.sqrt(2 / 25)
    assert stats.ttest_ind(x, y, equal_var=False).statistic == pytest.approx(2.0)
    assert difference(dict(enumerate(x)), {100 + i: v for i, v in enumerate(y)})[1] is False


def fake_run(run_dir, method, seed, scores_by_round, personal=False, categories=None, settings=None):
    """A finished `feddat run` directory written by hand: known numbers in, known table out.
    `categories`: client -> {category: global score} added to the last round's evaluation;
    `settings`: {"section.key": value} for its config.toml."""
    cfg = valid_config(**{"run.seed": seed, "run.methods": [method], **(settings or {})})
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
    # plots over runs evaluated once have no curves: the earlier curves go, a file of the user's stays
    from feddat.compare.plots import write_plots
    from feddat.compare.runs import load_run_dirs

    (out / "plots" / "notes.png").write_bytes(b"mine")
    for seed in (0, 1):
        fake_run(tmp_path / f"once{seed}", "feddat", seed, {3: {"x": 0.5, "y": 0.3}})
    write_plots(load_run_dirs([tmp_path / "once0", tmp_path / "once1"]), out / "plots", ["x", "y"])
    assert {p.name for p in (out / "plots").iterdir()} == {"scores_once.png", "clients_global.png", "notes.png"}


def test_report_shows_an_answer_decoders_generated_scores_in_tables_of_their_own(tmp_path):
    """Runs on an answer decoder record '<view>-generated' beside each view: the report gives
    them their own rows (mean ± std over seeds), and runs without them get none."""
    for seed, said in enumerate([0.2, 0.4]):
        run = tmp_path / f"d{seed}"
        fake_run(run, "feddat", seed, {1: {"x": 0.5}, 2: {"x": 0.6}}, personal=True)
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for r in lines:
            if r["kind"] == "eval":
                r.update({"global-generated": said, "personal-generated": said + 0.1})
        write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "report"
    compare.report_from_dirs([tmp_path / "d0", tmp_path / "d1"], out)
    table = (out / "table.md").read_text()
    generated = table.split("## Global model, generated answers")[1]
    assert "| feddat | 30.0 ± 14.1 | 30.0 ± 14.1 | 30.0 ± 14.1 | ref |" in generated.split("## Personal model, generated answers")[0]
    assert "| feddat | 40.0 ± 14.1 | 40.0 ± 14.1 | 40.0 ± 14.1 | ref |" in generated.split("## Personal model, generated answers")[1]
    assert {r["view"] for r in csv.DictReader(open(out / "table.csv"))} == {"global", "personal", "global-generated", "personal-generated"}
    fake_run(tmp_path / "plain", "feddat", 0, {1: {"x": 0.5}})
    compare.report_from_dirs([tmp_path / "plain"], tmp_path / "plain-report")
    assert "generated" not in (tmp_path / "plain-report" / "table.md").read_text()


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


def test_variant_labels_are_names_not_paths_or_table_syntax():
    for spec in ("../../escape=fedavg", "=fedavg", "a|b=fedavg", ".hidden=fedavg", "a b=fedavg", "x/y=fedavg:train.lr=0.1"):
        with pytest.raises(ConfigError, match=f"'{re.escape(spec)}': label '.*' is not allowed"):
            parse_variants([spec])
    (ok,) = parse_variants(["v1.2_a@b+c-d=fedavg"])
    assert ok.label == "v1.2_a@b+c-d"


def test_overrides_of_what_compare_sets_itself_are_refused():
    for spec in ("x=fedavg:run.seed=5", "x=fedavg:run.methods=feddat", "x=fedavg:train.lr=0.1:run.out_dir=elsewhere"):
        with pytest.raises(ConfigError, match=f"'{re.escape(spec)}'.* is set by compare itself"):
            parse_variants([spec])


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_compare_leaves_the_comparison_in_out_as_it_was(workspace, tmp_path, monkeypatch):
    cfg, work = workspace
    out = tmp_path / "cmp"
    run_compare(cfg, parse_variants(["fedavg"]), [0], out, workspace=work, log=lambda s: None)
    # unfinished work of another variant, for this configuration: resumable, to be kept
    half = out / "runs" / "feddat_nokd" / "seed0"
    write_text(half / "config.toml", compare.variant_config(cfg, parse_variants(["feddat_nokd"])[0], 0).to_toml())
    before = snapshot(out)
    monkeypatch.setattr(compare.running, "train_run", lambda *a, **k: pytest.fail("trained before every check passed"))
    # a bad override: nothing written, and the error names its spec
    with pytest.raises(ConfigError) as bad:
        run_compare(cfg, parse_variants(["fedavg", "feddat_nokd", "x=fedavg:train.lr=abc"]), [0, 1], out, workspace=work, log=lambda s: None)
    assert snapshot(out) == before
    assert "variant 'x=fedavg:train.lr=abc': config key 'train.lr'" in str(bad.value)
    # a finished run trained with another configuration: refused before anything is written or deleted
    other = valid_config(**{"federation.rounds": 1, "train.lr": 0.5})
    with pytest.raises(ConfigError) as refused:
        run_compare(other, parse_variants(["feddat_nokd", "fedavg", "fedprox"]), [0], out, workspace=work, log=lambda s: None)
    assert snapshot(out) == before
    assert "holds a finished run with a different configuration (train.lr: 0.01 then, 0.5 now)" in str(refused.value)


def test_where_compare_writes_its_runs_does_not_block_their_reuse(workspace, tmp_path, monkeypatch):
    cfg, work = workspace
    run_compare(cfg, parse_variants(["fedavg"]), [0], tmp_path / "cmp", workspace=work, log=lambda s: None)
    monkeypatch.setattr(compare.running, "train_run", lambda *a, **k: pytest.fail("a finished run was trained again"))
    cfg.run.out_dir, cfg.run.name, cfg.data.cache_dir = str(tmp_path / "elsewhere"), "other", str(tmp_path / "cache")
    run_compare(cfg, parse_variants(["fedavg"]), [0], tmp_path / "cmp", workspace=work, log=lambda s: None)
    cfg.run.seed, cfg.train.local_epochs = 0, 2  # what decides the numbers still counts
    with pytest.raises(ConfigError, match="train.local_epochs: 1 then, 2 now"):
        run_compare(cfg, parse_variants(["fedavg"]), [0], tmp_path / "cmp", workspace=work, log=lambda s: None)


def test_from_refuses_to_average_runs_trained_with_different_settings(tmp_path):
    rounds = {1: {"x": 0.5}, 2: {"x": 0.6}}
    fake_run(tmp_path / "two", "fedavg", 0, rounds, settings={"federation.rounds": 2})
    fake_run(tmp_path / "three", "fedavg", 1, rounds, settings={"federation.rounds": 3})
    with pytest.raises(ValueError, match=rf"'fedavg' would average runs trained with different settings.*federation.rounds: 2 in {re.escape(str(tmp_path / 'two'))} \(fedavg\), 3 in {re.escape(str(tmp_path / 'three'))}"):
        compare.report_from_dirs([tmp_path / "two", tmp_path / "three"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # another method may train otherwise (a variant), but not on other data
    fake_run(tmp_path / "lr", "feddat", 0, rounds, settings={"federation.rounds": 2, "train.lr": 0.05})
    compare.report_from_dirs([tmp_path / "two", tmp_path / "lr"], tmp_path / "ok")
    assert "| feddat |" in (tmp_path / "ok" / "table.md").read_text()
    fake_run(tmp_path / "data", "feddat", 1, rounds, settings={"federation.rounds": 2, "data.train_per_client": 99})
    with pytest.raises(ValueError, match="different backbones, data or adapter sites.*data.train_per_client: 16 in .*, 99 in"):
        compare.report_from_dirs([tmp_path / "two", tmp_path / "data"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_from_names_a_summary_that_lacks_what_the_report_reads(tmp_path, capsys):
    from feddat.cli import main

    fake_run(tmp_path / "r", "fedavg", 0, {1: {"x": 0.5}})
    summary = tmp_path / "r" / "summary.json"
    for broken, what in (({"methods": [{"wall_s": 1.0}]}, r"methods\[0\] has no 'method' name"), ({"label": "x", "seed": 0}, "the run has no 'method' name"),
                         ({"label": "../x", "method": "fedavg", "seed": 0}, "the run's label '../x' is not"), ({"label": "x", "method": "fedavg", "seed": "one"}, "the run's 'seed' is 'one'")):
        write_json(summary, broken)
        with pytest.raises(ValueError, match=f"{re.escape(str(summary))}: {what}"):
            compare.load_run_dirs([tmp_path / "r"])
    assert main(["compare", "--from", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"feddat: error: {summary}: the run's 'seed' is 'one'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cost_table_shows_a_dash_for_what_a_run_did_not_record(tmp_path):
    fake_run(tmp_path / "r", "fedavg", 0, {1: {"x": 0.5}, 2: {"x": 0.6}}, settings={"train.local_epochs": 3})
    compare.report_from_dirs([tmp_path / "r"], tmp_path / "out")
    table = (tmp_path / "out" / "table.md").read_text()
    assert "nan" not in table
    # local epochs from config.toml; trainable parameters, bytes down and peak memory unrecorded
    assert "| fedavg | 3 | 2 | — | 100 | 800 B | — | 3.2 KB | 16 | 10.0 | 500 | — |" in table


def test_from_never_writes_into_another_comparison(tmp_path, capsys):
    from feddat.cli import main

    fake_run(tmp_path / "r0", "fedavg", 0, {1: {"x": 0.5}})
    fake_run(tmp_path / "r1", "fedavg", 1, {1: {"x": 0.7}})
    bench = valid_config().data.benchmark
    trained = tmp_path / "runs" / f"compare-{bench}"  # where `feddat compare` writes by default
    write_json(trained / "compare.json", {"variants": [{"label": "feddat", "method": "feddat", "overrides": {}}], "seeds": [0]})
    write_text(trained / "table.md", "# the trained comparison\n")
    before = snapshot(trained)
    # no --out: a folder of its own
    assert main(["compare", "--from", str(tmp_path / "r0"), "--run.out_dir", str(tmp_path / "runs")]) == 0
    mine = tmp_path / "runs" / f"compare-{bench}-from"
    assert f"comparison written to {mine}/table.md" in capsys.readouterr().out
    assert json.loads((mine / "compare.json").read_text())["from"] == [str((tmp_path / "r0").resolve())]
    assert snapshot(trained) == before
    # --out naming a trained comparison, another report, or a run directory: refused, nothing written
    for out, message in ((trained, "holds the comparison `feddat compare` trained"), (mine, "holds the report on other finished runs"), (tmp_path / "r0", "is a run directory")):
        saved = snapshot(out)
        assert main(["compare", "--from", str(tmp_path / "r0"), str(tmp_path / "r1"), "--out", str(out)]) == 1
        assert f"{out} {message}" in capsys.readouterr().err
        assert snapshot(out) == saved
    # the same runs again: their report is rewritten; training into a report folder is refused
    assert main(["compare", "--from", str(tmp_path / "r0"), "--out", str(mine)]) == 0
    with pytest.raises(ValueError, match="holds a report on finished runs"):
        run_compare(valid_config(), parse_variants(["fedavg"]), [0], mine, log=lambda s: None)


def test_compare_refuses_the_run_flags_it_sets_for_every_run(tmp_path, capsys, monkeypatch):
    """--run.seed, --run.methods and --run.name were listed and silently replaced by --seeds,
    --methods and OUT/runs/<label>/seed<N>: refused, naming the option to use, before anything runs."""
    from feddat.cli import build_parser, main

    monkeypatch.setattr(compare, "run_compare", lambda *a, **k: pytest.fail("compare ran with a flag it overrides"))
    out = tmp_path / "cmp"
    for flag, value, instead in (("--run.seed", "7", "use --seeds 7"), ("--run.methods", "feddat", "use --methods feddat"), ("--run.name", "mine", "with --out")):
        assert main(["compare", "--methods", "feddat,fedavg", "--seeds", "0,1", flag, value, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"feddat: error: `feddat compare` takes no {flag}" in err and instead in err
    # --run.out_dir only places the default folder: with --out it would do nothing
    assert main(["compare", "--methods", "fedavg", "--run.out_dir", str(tmp_path / "elsewhere"), "--out", str(out)]) == 1
    assert "--run.out_dir only places the default comparison folder" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "elsewhere").exists()
    help_text = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "compare")[1].format_help()
    assert "--run.seed" not in help_text and "--run.methods" not in help_text and "--run.name" not in help_text
    assert "--seeds" in help_text and "--run.device" in help_text


def test_from_refuses_training_options_that_would_change_nothing(tmp_path, capsys):
    from feddat.cli import main

    fake_run(tmp_path / "r0", "fedavg", 0, {1: {"x": 0.5}})
    for extra in (["--federation.rounds", "5"], ["--seeds", "0,1"], ["--methods", "feddat"], ["--matched", "fedavg"]):
        assert main(["compare", "--from", str(tmp_path / "r0"), *extra, "--out", str(tmp_path / "o")]) == 1
        assert f"--from reports on finished runs as they were trained: {extra[0]} would change nothing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_no_star_without_enough_seeds_or_spread_and_p_values_match_scipy():
    from scipy import stats

    from feddat.compare import significance

    # two seeds, the same +6.25 on each: the "+6.2 *" — untested, not starred
    two = significance({0: 0.5, 1: 0.625}, {0: 0.4375, 1: 0.5625})
    assert two.mean == pytest.approx(0.0625) and two.p is None and two.significant is None and two.n == (2, 2)
    # two seeds that agree closely: a paired t with 1 degree of freedom would star it (p = 0.03)
    a, b = {0: 0.56, 1: 0.57}, {0: 0.50, 1: 0.505}
    assert stats.ttest_rel([0.56, 0.57], [0.50, 0.505]).pvalue < 0.05
    assert difference(a, b)[1] is None
    # three seeds with no spread of the differences, exact or up to float rounding: no t statistic
    for a3, b3 in (({0: 0.5, 1: 0.625, 2: 0.75}, {0: 0.4375, 1: 0.5625, 2: 0.6875}), ({0: 0.7, 1: 0.8, 2: 0.9}, {0: 0.6, 1: 0.7, 2: 0.8})):
        d = significance(a3, b3)
        assert d.p is None and d.significant is None and d.untested == "no spread" and difference(a3, b3)[1] is None
    # three seeds with spread: scipy's paired t-test; Welch's where the seeds differ, from 3 a side
    a3, b3 = {0: 0.50, 1: 0.53, 2: 0.51}, {0: 0.40, 1: 0.42, 2: 0.41}
    d = significance(a3, b3)
    assert d.test == "paired t" and d.n == (3, 3) and d.p == pytest.approx(stats.ttest_rel(list(a3.values()), list(b3.values())).pvalue) and d.significant
    welch = significance(a3, {5: 0.40, 6: 0.42, 7: 0.41, 8: 0.43})
    assert welch.test == "Welch t" and welch.n == (3, 4) and welch.p == pytest.approx(stats.ttest_ind([0.50, 0.53, 0.51], [0.40, 0.42, 0.41, 0.43], equal_var=False).pvalue)
    assert significance(a3, {5: 0.40, 6: 0.42}).p is None  # 2 seeds on one side


def test_table_shows_p_and_n_beside_delta_and_labels_the_evaluations_averaged(tmp_path):
    # 2 seeds, 2 evaluations, FedDAT +6.25 on both seeds: the table said "+6.2 *" and "last 3 evals"
    for seed, (dat, avg) in enumerate([(0.5, 0.4375), (0.625, 0.5625)]):
        fake_run(tmp_path / f"d{seed}", "feddat", seed, {1: {"x": 0.25}, 2: {"x": dat}})
        fake_run(tmp_path / f"a{seed}", "fedavg", seed, {1: {"x": 0.25}, 2: {"x": avg}})
    out = tmp_path / "two"
    compare.report_from_dirs([tmp_path / f"{m}{s}" for m in "da" for s in (0, 1)], out, reference="fedavg")
    table = (out / "table.md").read_text()
    assert "| mean | mean, last 2 evals | Δ mean vs fedavg (p, n seeds) |" in table and "last 3 evals" not in table
    row = next(line for line in table.splitlines() if line.startswith("| feddat |"))
    assert row.endswith("| +6.2 (n = 2, untested: fewer than 3 seeds) |") and "*" not in row
    assert "scipy.stats.ttest_rel" in table and "never starred: fewer than 3 seeds" in table
    mean_row = next(r for r in csv.DictReader(open(out / "table.csv")) if r["label"] == "feddat" and r["client"] == "mean")
    assert mean_row["exceeds_seed_noise"] == "" and mean_row["p_value"] == "" and mean_row["test_seeds"] == "2/2" and mean_row["last_evals"] == "2"
    # a third seed with a different gain: tested, p and n printed, starred only if p < 0.05
    fake_run(tmp_path / "d2", "feddat", 2, {1: {"x": 0.25}, 2: {"x": 0.75}})
    fake_run(tmp_path / "a2", "fedavg", 2, {1: {"x": 0.25}, 2: {"x": 0.6875 - 0.03125}})
    out = tmp_path / "three"
    compare.report_from_dirs([tmp_path / f"{m}{s}" for m in "da" for s in (0, 1, 2)], out, reference="fedavg")
    row = next(line for line in (out / "table.md").read_text().splitlines() if line.startswith("| feddat |"))
    from scipy import stats

    p = stats.ttest_rel([0.5, 0.625, 0.75], [0.4375, 0.5625, 0.65625]).pvalue
    assert row.endswith(f"| +7.3 * (p = {p:.3f}, n = 3) |") and p < 0.05


def rendered(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def x_tick_labels(ax) -> list[str]:
    """The labelled ticks inside the axis (not a view limit labelled for want of any tick)."""
    lo, hi = sorted(ax.get_xlim())
    return [t.get_text() for t in ax.get_xticklabels() if lo < t.get_position()[0] < hi and t.get_text()]


def test_plots_label_their_axes_fit_their_titles_and_draw_no_error_bars_for_one_seed(tmp_path):
    from matplotlib.container import BarContainer

    from feddat.compare.plots import figures
    from feddat.compare.runs import load_run_dirs

    # bytes 1.6 kB to 4.8 kB, and 2.6 MB to 7.8 MB: under a decade, where the symlog axis had
    # no tick inside it (one label at each view limit, or none)
    fake_run(tmp_path / "a0", "fedavg", 0, {1: {"x": 0.5}, 2: {"x": 0.6}, 3: {"x": 0.7}})
    fake_run(tmp_path / "a1", "fedavg", 1, {1: {"x": 0.4}, 2: {"x": 0.6}, 3: {"x": 0.8}})
    # and 800 kB a round against 800 B: four decades
    for name, method, per_round in (("mb", "fedavg", 1_300_000), ("big", "fedavg_full", 800_000)):
        fake_run(tmp_path / name, method, 0, {1: {"x": 0.5}, 2: {"x": 0.6}, 3: {"x": 0.7}})
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary["methods"][0]["bytes_up_per_round"] = per_round
        write_json(tmp_path / name / "summary.json", summary)
    for dirs in (["a0"], ["mb"], ["a0", "big"]):
        figs = figures(load_run_dirs([tmp_path / d for d in dirs]), ["x"])
        for name in ("curve_round.png", "curve_compute.png", "curve_bytes.png"):
            rendered(figs[name])
            assert len(x_tick_labels(figs[name].axes[0])) >= 2, (dirs, name, figs[name].axes[0].get_xscale())
        # one seed: no error bars at all, not bars of length zero
        bars = figs["clients_global.png"].axes[0]
        assert all(isinstance(c, BarContainer) for c in bars.containers) and not bars.collections and not bars.lines
    # two seeds: their spread is drawn
    bars = figures(load_run_dirs([tmp_path / "a0", tmp_path / "a1"]), ["x"])["clients_global.png"].axes[0]
    assert any(not isinstance(c, BarContainer) for c in bars.containers)
    # evaluated once: the title, however many rounds it names, is inside the figure; one seed, no error bars
    for seed, round_ in enumerate((5, 7, 9)):
        fake_run(tmp_path / f"once{seed}", "fedavg", seed, {round_: {"x": 0.5, "y": 0.4}})
    for dirs in (["once0"], ["once0", "once1", "once2"]):
        fig = figures(load_run_dirs([tmp_path / d for d in dirs]), ["x", "y"])["scores_once.png"]
        renderer = rendered(fig)
        (ax,) = fig.axes
        title, frame = ax.title.get_window_extent(renderer), fig.bbox
        assert frame.x0 <= title.x0 and title.x1 <= frame.x1 and frame.y0 <= title.y0 and title.y1 <= frame.y1, (title, frame)
        if len(dirs) == 1:
            assert all(isinstance(c, BarContainer) for c in ax.containers) and not ax.collections and not ax.lines
