"""`feddat run` end to end on a tiny configuration, and its refusals."""

from __future__ import annotations

import json
import shutil
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


NO_CUDA = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")


@NO_CUDA
@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["run", "--data.benchmark", "function"],
        ["compare", "--methods", "fedavg", "--seeds", "0"],
        ["flower", "local"],
        ["flower", "simulate"],
    ],
)
def test_an_unavailable_device_is_one_config_error_line(args, tmp_path, capsys):
    """run.device = cuda on a machine without CUDA: exit 2 and one `feddat: ... error:` line,
    before anything is loaded, started or written (no traceback)."""
    assert main([*args, "--run.device", "cuda", "--run.out_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feddat: config error: run.device = cuda") and "no CUDA device" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@NO_CUDA
def test_an_unavailable_device_through_the_real_cli_and_predict(tmp_path):
    run = subprocess.run([sys.executable, "-m", "feddat.cli", "run", "--run.device", "cuda", "--run.out_dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("feddat: config error: run.device = cuda") and len(run.stderr.strip().splitlines()) == 1
    predict = subprocess.run([sys.executable, "-m", "feddat.cli", "predict", str(tmp_path), "--client", "a", "--image", "x.png", "--question", "q", "--device", "cuda"], capture_output=True, text=True)
    assert predict.returncode == 2 and predict.stderr.strip().startswith("feddat: config error: --device = cuda")


@NO_CUDA
@pytest.mark.skipif(__import__("torch").backends.mps.is_available(), reason="this machine has MPS")
@pytest.mark.parametrize("device, message", [("cuda", "no CUDA device"), ("cuda:3", "no CUDA device"), ("mps", "no MPS")])
def test_check_device_names_what_is_missing(device, message):
    from feddat.config import ConfigError
    from feddat.runtime import check_device, pick_device

    with pytest.raises(ConfigError, match=message):
        check_device(device)
    with pytest.raises(ConfigError, match=message):
        pick_device(device)  # every path that picks a device refuses it the same way
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type == "cpu"


def test_every_feddat_command_named_in_src_exists():
    """A message that tells the user to run `feddat X --opt` names a subcommand (and options)
    the parser has: no `feddat flower submit`."""
    import argparse
    import re
    from pathlib import Path

    from feddat.cli import build_parser

    def subcommands(parser):
        return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)

    src = Path(__file__).resolve().parents[1] / "src" / "feddat"
    named = [(path, m.group(1)) for path in sorted(src.rglob("*.py")) for m in re.finditer(r"`feddat ([^`]*)`", path.read_text())]
    assert any("flower app" in text for _, text in named)  # the scan finds them
    wrong = []
    for path, text in named:
        parser, words = build_parser(), [w.strip("[]") for w in text.split()]
        while words and (choices := subcommands(parser)) is not None:
            if words[0] not in choices:
                wrong.append(f"{path.name}: `feddat {text}`: no subcommand '{words[0]}' (there are {', '.join(choices)})")
                break
            parser = choices[words.pop(0)]
        options = {o for a in parser._actions for o in a.option_strings}
        wrong += [f"{path.name}: `feddat {text}`: no option {w}" for w in words if w.startswith("--") and "section.key" not in w and w.split("=")[0] not in options]
    assert not wrong, "\n".join(wrong)


def tiny_folder_run(tiny_vilt_dir, tmp_path, data_root, *extra):
    return [
        "run", "--backbone.name", "vilt", "--backbone.path", str(tiny_vilt_dir), "--backbone.image_size", "32",
        "--backbone.max_text_len", "12", "--adapter.reduction_factor", "4", "--data.benchmark", "folder",
        "--data.root", str(data_root), "--data.cache_dir", "", "--federation.rounds", "1", "--train.batch_size", "4",
        "--run.methods", "fedavg", "--run.out_dir", str(tmp_path / "runs"), "--run.name", "retry", "--run.threads", "1", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("fault, named", [("corrupt", r"south/train.jsonl:2: image file .*train1.png is corrupt"), ("bad_line", r"north/train.jsonl:3: a record needs")])
def test_bad_data_stops_the_run_before_the_backbone_and_the_same_command_then_runs(fault, named, tiny_vilt_dir, tmp_path, capsys):
    """Bad data is found before the backbone loads, with the file named, and leaves no run
    directory behind: after the data are fixed, the same command runs (no "already holds a run")."""
    import re

    from test_data import write_folder

    write_folder(tmp_path / "data", **{fault: True})
    args = tiny_folder_run(tiny_vilt_dir, tmp_path, tmp_path / "data")
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert re.search(named, err) and "backbone vilt loaded" not in out
    assert not (tmp_path / "runs" / "retry").exists()
    shutil.rmtree(tmp_path / "data")
    write_folder(tmp_path / "data")  # fixed
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "retry" / "summary.json").is_file()


def test_a_run_that_fails_before_its_first_round_takes_back_only_what_it_made(tiny_vilt_dir, tmp_path, capsys):
    """A failure after the run directory was made (here: backbone weights missing) removes the
    directory it made; an empty folder that was there before stays, emptied, so the retry runs."""
    from test_data import write_folder

    write_folder(tmp_path / "data")
    broken = tmp_path / "broken-vilt"
    shutil.copytree(tiny_vilt_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    args = tiny_folder_run(broken, tmp_path, tmp_path / "data")
    assert main(args) == 1
    assert "removed: the run stopped before its first round" in capsys.readouterr().out
    assert (tmp_path / "runs").is_dir() and not (tmp_path / "runs" / "retry").exists()
    (tmp_path / "runs" / "retry").mkdir()  # an empty folder given as the run directory
    assert main(args) == 1
    assert (tmp_path / "runs" / "retry").is_dir() and not any((tmp_path / "runs" / "retry").iterdir())
    capsys.readouterr()
    assert main(tiny_folder_run(tiny_vilt_dir, tmp_path, tmp_path / "data")) == 0, capsys.readouterr().err


def test_a_directory_without_results_is_refused_with_the_way_on(tmp_path):
    """A run killed before its first commit (nothing cleaned up then) is named as such: the
    refusal says it holds no results and can go."""
    from conftest import tiny_config
    from feddat.engines.rundir import make_run_dir

    cfg = tiny_config(**{"run.out_dir": str(tmp_path), "run.name": "killed"})
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "config.toml").write_text(cfg.to_toml())
    with pytest.raises(FileExistsError, match=r"killed already holds a run that stopped before its first round was committed \(no results\): delete it, or choose another --run.name"):
        make_run_dir(cfg)


def test_flower_app_names_an_unnamed_run_so_that_a_resubmitted_run_finds_its_clients_state(tmp_path, capsys):
    """`feddat flower app` needs no --run.name: it names the run as `flower local` does, so that
    the nodes keep their private state under the name (not under the Flower run id, which a run
    resubmitted with --resume does not share); a name given is kept."""
    import tomllib

    from feddat.engines.flower import transport

    def written(*flags: str):
        assert main(["flower", "app", str(tmp_path / "submit"), "--data.benchmark", "function", *flags]) == 0
        return transport.config_from_run(tomllib.loads((tmp_path / "submit" / "run-config.toml").read_text()))

    cfg = written()
    assert cfg.run.name.startswith("function-") and transport.run_key(cfg, 7) == transport.run_key(cfg, 8) == cfg.run.name  # the same key under a new run id
    assert f"the run is named {cfg.run.name}" in capsys.readouterr().out
    assert written("--run.name", "mine").run.name == "mine" and "the run is named" not in capsys.readouterr().out
