"""`feddat run` end to end on a tiny configuration, and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from feddat.cli import main
from feddat.runtime import load_tensors


def test_run_writes_the_run_directory_and_prints_the_table(tiny_vilt_dir, tmp_path, capsys):
    args = [
        "run", "--backbone.name", "vilt", "--backbone.path", tiny_vilt_dir, "--backbone.image_size", "32",
        "--backbone.max_text_len", "12", "--adapter.reduction_factor", "4", "--data.benchmark", "function",
        "--data.train_per_client", "12", "--data.test_per_client", "6", "--data.cache_dir", str(tmp_path / "cache"),
        "--federation.rounds", "2", "--federation.eval_every", "1", "--train.batch_size", "6",
        "--run.out_dir", str(tmp_path), "--run.name", "tiny", "--run.threads", "2",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "tiny"
    assert {p.name for p in run_dir.iterdir()} >= {"config.toml", "metrics.jsonl", "results.md", "summary.json", "feddat", "fedavg"}
    assert "| feddat | global |" in out and "| feddat | personal |" in out and "| fedavg | global |" in out
    assert "[feddat] round 2/2" in out  # progress output
    round_lines = [line for line in out.splitlines() if line.startswith("  [feddat] round ")]
    assert " left" in round_lines[0] and " left" not in round_lines[-1]  # time left, until the last round
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert {r["client"] for r in evals} == {"object", "attribute", "count", "spatial", "logic"}
    # each function client asks one kind of question, so its one category score is its score
    assert all(r[f"global/{r['client']}"] == r["global"] for r in evals)
    assert "By category of question" in out and "| fedavg | global | " in out.split("By category of question")[1]
    adapter = load_tensors(run_dir / "feddat" / "shared_adapter.safetensors")
    assert set(adapter) == {f"{b}.{p}.{w}" for b in "01" for p in ("down", "up") for w in ("weight", "bias")}
    assert 'name = "vilt"' in (run_dir / "config.toml").read_text()
    # a second run with the same name would mix two runs: refused
    assert main(args) == 1
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone.name", "clip"], "backbone.name = 'clip' is not one of: foundation, minivl, vilt"),
        (["--run.methods", "feddat,magic"], "run.methods = 'magic'"),
        (["--config", "missing.toml"], "config file missing.toml does not exist"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(args, message, capsys):
    assert main(["run", *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_flag_and_help_list_every_key():
    out = subprocess.run([sys.executable, "-m", "feddat.cli", "run", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for key in ("--feddat.alpha", "--feddat.teacher", "--federation.fraction", "--data.benchmark", "--train.lr"):
        assert key in out.stdout
    bad = subprocess.run([sys.executable, "-m", "feddat.cli", "run", "--train.lrr", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--train.lrr" in bad.stderr
