"""benchmarks/regime_study.py: the grid's units and order, the compute-matched FedAvg by compare's
own rule, and recorded runs that survive a fresh clone (record, restore, report) on real compare
runs of a tiny model."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from feddat.compare import Workspace, parse_variants, run_compare
from feddat.peft.model import AdaptedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import regime_report  # noqa: E402
import regime_study  # noqa: E402


def test_units_put_every_cells_core_first_and_know_their_regime():
    units = regime_study.units(["domain-r1b8", "function-r2ref-sched"])
    core_b8 = [u for u in units if u.cell == "domain-r1b8" and u.label in ("head_only", "fedavg", "feddat", "fedprox")]
    first = units[: len(core_b8)]
    assert first == core_b8 and [u.seed for u in first[:4]] == [0, 0, 0, 0]
    sched = [u for u in units if u.cell == "function-r2ref-sched"]
    assert {u.label for u in sched} == {"fedavg", "feddat"} and units.index(sched[0]) < units.index(next(u for u in units if u.label == "centralised"))
    assert (sched[0].twin, sched[0].regime) == ("function", "r2ref-sched")


def test_the_matched_fedavg_is_what_compare_matched_would_train():
    assert regime_study.matched_variant("r0") == "fedavg@feddat=fedavg:train.local_epochs=2"  # fused FedDAT: 2 + 2 passes
    assert regime_study.matched_variant("r2ref") == "fedavg@feddat=fedavg:train.local_epochs=3"  # single optimiser: 3 + 2


def test_every_cell_command_parses():
    from feddat import config as config_mod
    from feddat.cli import build_parser, parse

    for cell in regime_study.PRIORITY:
        argv = regime_study.report_command(cell, Path("runs/study"), 1, "auto")[1:]
        args = parse(build_parser(), argv)
        path = regime_study.ROOT / args.config if getattr(args, "config", None) else None
        config_mod.load(path, {k: v for k, v in vars(args).items() if "." in k and v is not None})


@pytest.fixture()
def two_cells(tiny_backbone, tiny_clients, tmp_path):
    """A 'domain-r0' cell with FedAvg and FedDAT over seeds 0 and 1, trained for real (tiny)."""
    cfg = tiny_config(**{"federation.rounds": 1})
    cfg.backbone.path = "tiny-vilt"
    work = Workspace(cfg, log=lambda s: None)
    work.parts = {"device": torch.device("cpu"), "clients": tiny_clients[:2], "model": AdaptedModel(tiny_backbone, reduction_factor=4)}
    root = tmp_path / "runs-study"
    run_compare(cfg, parse_variants(["fedavg", "feddat"]), [0, 1], root / "domain-r0", workspace=work, log=lambda s: None)
    return root


def test_recorded_runs_come_back_and_the_report_reads_only_them(two_cells, tmp_path, monkeypatch):
    root = two_cells
    recorded = tmp_path / "docs-results"
    monkeypatch.setattr(regime_study, "RECORDED", recorded)
    (root / "domain-r0" / "runs" / "fedavg" / "seed0" / "trained_by.json").write_text(json.dumps({"commit": "abc123def4567"}))
    assert regime_study.record(root) == 4
    kept = sorted(p.name for p in (recorded / "domain-r0" / "runs" / "fedavg" / "seed0").iterdir())
    assert kept == ["clients.json", "config.toml", "metrics.jsonl", "summary.json", "trained_by.json"]  # no state, no checkpoints

    fresh = tmp_path / "fresh-clone-runs"
    assert regime_study.restore(fresh) == 4
    unit = regime_study.Unit("domain-r0", "feddat", 1)
    assert regime_study.finished(unit, fresh)  # compare would reuse it, not train it again
    assert regime_study.restore(fresh) == 0

    out = regime_report.write_summary(recorded, ["domain-r0"])
    assert out == recorded / "index.md"  # a page of the documentation site, not a README
    text = out.read_text()
    scores = {}
    for label in ("fedavg", "feddat"):
        for seed in (0, 1):
            views, _ = regime_report.final_means(recorded / "domain-r0" / "runs" / label / f"seed{seed}")
            scores[label, seed] = views["global"]
    row = re.search(r"\| FedDAT \| global \| 2 \| 0: ([\d.]+), 1: ([\d.]+) \|", text)
    assert row and (float(row[1]), float(row[2])) == (round(scores["feddat", 0], 1), round(scores["feddat", 1], 1))
    diff = sum(scores["feddat", s] - scores["fedavg", s] for s in (0, 1)) / 2
    assert f"| domain-r0 | {diff:+.1f} |" in text
    assert "abc123def456" in text and "not recorded" in text  # the commit where a run says it, else said so


def test_paired_difference_is_scipys_paired_t_test_and_silent_without_spread():
    from scipy import stats

    a, b = {0: 60.0, 1: 58.0, 2: 61.0}, {0: 57.0, 1: 57.5, 2: 58.0}
    m, p, n = regime_report.paired(a, b)
    assert (round(m, 6), n) == (round((3 + 0.5 + 3) / 3, 6), 3)
    assert p == pytest.approx(stats.ttest_rel([60, 58, 61], [57, 57.5, 58]).pvalue)
    assert regime_report.paired({0: 1.0, 1: 2.0}, {0: 0.0, 1: 1.0})[1] != regime_report.paired({0: 1.0, 1: 2.0}, {0: 0.0, 1: 1.0})[1]  # no spread: NaN, no test
    assert regime_report.paired({0: 1.0}, {0: 0.0})[2] == 1


def test_the_committed_results_pages_are_what_make_results_makes_of_the_recorded_runs():
    """docs/results/ is not stale: `make results` (benchmarks/results.py) made again from the
    committed runs gives every committed page byte for byte, and each page names the command
    that made it and where its runs ran (commit, CPU, threads, precision)."""
    import results

    made = results.pages()
    assert set(made) == {results.RESULTS / "index.md", regime_study.RECORDED / "index.md"}
    for path, text in made.items():
        assert path.is_file(), f"{path} is missing: run `make results`"
        assert path.read_text() == text, f"{path} is stale: run `make results` and commit it"
        assert "`make results`" in text and "AMD EPYC, 1 thread(s), cpu, float32" in text
        assert re.search(r"commit\(s\).*\b[0-9a-f]{12}\b", text, re.S)  # the commits that trained the runs
    assert sorted(p.name for p in results.RESULTS.iterdir()) == ["index.md", "regime-study"]  # no page nothing makes
    assert "](regime-study/index.md)" in made[results.RESULTS / "index.md"]
