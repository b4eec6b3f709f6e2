"""Checkpoint and resume: a run killed with SIGKILL continues to exactly the numbers of an
uninterrupted run, whatever it was writing when it died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from feddat.cli import main
from feddat.runtime import load_tensors, save_tensors

ROUNDS = 4


def tiny_args(tiny_vilt_dir: str, tmp_path: Path, name: str) -> list[str]:
    return [
        "run", "--backbone.name", "vilt", "--backbone.path", tiny_vilt_dir, "--backbone.image_size", "32",
        "--backbone.max_text_len", "12", "--adapter.reduction_factor", "4", "--data.benchmark", "domain",
        "--data.train_per_client", "24", "--data.test_per_client", "6", "--data.cache_dir", str(tmp_path / "cache"),
        "--federation.rounds", str(ROUNDS), "--federation.eval_every", "1", "--federation.fraction", "0.6",
        "--train.batch_size", "6", "--run.methods", "feddat,fedavg",
        "--run.out_dir", str(tmp_path), "--run.name", name, "--run.threads", "1",
    ]  # fmt: skip


def results(run_dir: Path) -> tuple[list[dict], dict[str, dict[str, torch.Tensor]]]:
    """Every metrics record (sorted) and each method's final A_s."""
    records = sorted((json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()), key=lambda r: json.dumps(r, sort_keys=True))
    adapters = {m: load_tensors(run_dir / m / "shared_adapter.safetensors") for m in ("feddat", "fedavg")}
    return records, adapters


def committed_round(run_dir: Path, method: str) -> int:
    try:
        return json.loads((run_dir / "checkpoint" / method / "progress.json").read_text())["round"]
    except (OSError, ValueError):
        return 0


def kill_after(cmd: list[str], run_dir: Path, method: str, round_: int, timeout: float = 180) -> None:
    """Start `cmd`, SIGKILL it as soon as `method` has committed `round_` (mid-way through the next)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while committed_round(run_dir, method) < round_:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run did not reach the kill point in time")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def straight_then_killed(tiny_vilt_dir: str, tmp_path: Path, method: str, round_: int):
    """An uninterrupted run's results, and the directory of the same run SIGKILLed mid-way."""
    assert main(tiny_args(tiny_vilt_dir, tmp_path, "straight")) == 0
    run_dir = tmp_path / "killed"
    kill_after([sys.executable, "-m", "feddat.cli", *tiny_args(tiny_vilt_dir, tmp_path, "killed")], run_dir, method, round_)
    return results(tmp_path / "straight"), run_dir


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_vilt_dir, tmp_path):
    expected, run_dir = straight_then_killed(tiny_vilt_dir, tmp_path, "feddat", 2)
    assert 2 <= committed_round(run_dir, "feddat") < ROUNDS
    # The wreckage a kill in the middle of writes leaves: a torn metrics line, a half-written
    # temporary file, client states and checkpoint tensors of a round that never committed.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"method": "feddat", "round": 3, "cli')
    (run_dir / "checkpoint" / "feddat" / ".progress.json.abc.tmp").write_text('{"round": 9')
    future = committed_round(run_dir, "feddat") + 1
    save_tensors(run_dir / "state" / "feddat" / f"flat.r{future:05d}.safetensors", {"head.junk": torch.ones(1)})
    save_tensors(run_dir / "checkpoint" / "feddat" / f"round-{future:05d}.safetensors", {"shared.junk": torch.ones(1)})

    assert main(["run", "--resume", str(run_dir)]) == 0
    records, adapters = results(run_dir)
    assert records == expected[0]
    for method, tensors in expected[1].items():
        assert all(torch.equal(tensors[k], adapters[method][k]) for k in tensors), method
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.slow
def test_resume_after_the_first_method_finished(tiny_vilt_dir, tmp_path):
    """Killed during the second method: the first is not rerun, the second continues."""
    expected, run_dir = straight_then_killed(tiny_vilt_dir, tmp_path, "fedavg", 1)
    feddat_summary = json.loads((run_dir / "summary.json").read_text())["methods"][0]
    assert main(["run", "--resume", str(run_dir)]) == 0
    assert results(run_dir)[0] == expected[0]
    assert json.loads((run_dir / "summary.json").read_text())["methods"][0] == feddat_summary


def test_resume_refuses_other_options_and_non_runs(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path), "--federation.rounds", "3"]) == 2
    assert "takes no --config or other options" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 1
    assert "has no config.toml" in capsys.readouterr().err


def test_a_broken_summary_or_progress_file_is_named(tmp_path, capsys):
    """A file feddat wrote and then found cut short or edited stops the command with its name,
    and the file stays as it was (nothing is rewritten over it)."""
    from feddat.config import Config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(Config().to_toml())
    (run_dir / "summary.json").write_text('{"methods": [')
    assert main(["run", "--resume", str(run_dir)]) == 1
    assert f"{run_dir / 'summary.json'} is not valid JSON" in capsys.readouterr().err
    assert (run_dir / "summary.json").read_text() == '{"methods": ['
    progress = tmp_path / "pre" / "state" / "progress.json"
    progress.parent.mkdir(parents=True)
    bad_recipe = '{"config": {"lr": "fast"}, "threads": 1}'
    for text, message in (("{", "is not valid JSON"), ("{}", "does not hold a pretraining recipe"), (bad_recipe, "cannot read 'fast' as float")):
        progress.write_text(text)
        assert main(["pretrain", "--resume", str(tmp_path / "pre")]) == 2 - (text == "{")
        assert f"{progress}" in (err := capsys.readouterr().err) and message in err


def test_a_pickle_in_place_of_a_state_file_is_refused(tmp_path):
    """State files are safetensors; a pickle (which could run code when loaded) is not read as one."""
    from feddat.engines.state import ClientStateStore

    store = ClientStateStore(tmp_path)
    store.save("alice", {"head.w": torch.zeros(2)}, round_=1)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"head.w": Exploit()}, store.path("alice", 2), _use_new_zipfile_serialization=True)
    with pytest.raises(Exception) as err:
        store.load("alice")
    assert "alice" in str(err.value) and "safetensors" in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_state_and_results_are_written_whole_and_readable_by_others(tmp_path):
    """Atomic writes leave the old file intact when a write fails, no temporary file behind, and
    give new files the umask's mode (0o644 under 022), not mkstemp's owner-only 0o600."""
    from feddat.runtime import atomic_path, write_json

    old_umask = os.umask(0o022)
    try:
        write_json(tmp_path / "summary.json", {"round": 1})
        save_tensors(tmp_path / "shared.safetensors", {"w": torch.ones(2)})
        with pytest.raises(OSError), atomic_path(tmp_path / "summary.json") as tmp:
            tmp.write_text('{"round": 2')
            raise OSError("disk full")  # the write fails midway
    finally:
        os.umask(old_umask)
    assert json.loads((tmp_path / "summary.json").read_text()) == {"round": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.safetensors", "summary.json"]
    for name in ("summary.json", "shared.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


class Interrupted(Exception):
    pass


def interrupted_run(tiny_vilt_dir: str, tmp_path: Path, name: str, method: str = "fedavg") -> Path:
    """A run of `method` stopped right after round 1 committed (as a kill there leaves it)."""
    from feddat.config import load
    from feddat.engines.runner import run_experiment

    flags = tiny_args(tiny_vilt_dir, tmp_path, name)[1:]
    overrides = dict(zip((f[2:] for f in flags[::2]), flags[1::2])) | {"run.methods": method, "federation.fraction": "1.0", "run.progress": "lines"}

    def log(line: str) -> None:
        if f"[{method}] round 1/" in line:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_experiment(load(None, overrides), log=log)
    assert committed_round(tmp_path / name, method) == 1
    return tmp_path / name


def test_resume_refuses_a_config_toml_edited_after_the_run_started(tiny_vilt_dir, tmp_path, capsys):
    run_dir = interrupted_run(tiny_vilt_dir, tmp_path, "edited")
    config_toml = run_dir / "config.toml"
    original = config_toml.read_text()
    config_toml.write_text(original.replace("seed = 0", "seed = 7", 1))
    assert main(["run", "--resume", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert f"{run_dir / 'checkpoint' / 'fedavg' / 'progress.json'} was committed under another configuration" in err and "config.toml edited" in err
    # where and how fast it runs may change: a resumed run continues on another machine
    config_toml.write_text(original.replace("threads = 1", "threads = 2", 1))
    assert main(["run", "--resume", str(run_dir)]) == 0
    # a finished method's numbers are not reported under an edited config either
    config_toml.write_text(original.replace("seed = 0", "seed = 7", 1))
    assert main(["run", "--resume", str(run_dir)]) == 1
    assert "was committed under another configuration" in capsys.readouterr().err


@pytest.mark.parametrize("edit, problem", [
    (lambda s: {**s, "head.3.weight": s["head.3.weight"][:-1]}, "'head.3.weight' has shape"),
    (lambda s: {k: v for k, v in s.items() if k != "head.3.bias"}, "missing ['head.3.bias']"),
    (lambda s: {**s, "head.3.bias": torch.full_like(s["head.3.bias"], float("nan"))}, "'head.3.bias' holds NaN"),
])
def test_resume_names_the_client_and_file_of_private_state_that_does_not_fit(tiny_vilt_dir, tmp_path, capsys, edit, problem):
    run_dir = interrupted_run(tiny_vilt_dir, tmp_path, "state")
    path = run_dir / "state" / "fedavg" / "flat.r00001.safetensors"
    save_tensors(path, edit(load_tensors(path)))
    assert main(["run", "--resume", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert f"private state of client 'flat' ({path}) does not fit method 'fedavg'" in err and problem in err
    assert "Traceback" not in err


@pytest.mark.parametrize("round_", ['"x"', "null", "[1]", "-5", "true"])
def test_resume_names_a_progress_file_without_a_committed_round(tiny_vilt_dir, tmp_path, capsys, round_):
    run_dir = interrupted_run(tiny_vilt_dir, tmp_path, "progress")
    progress = run_dir / "checkpoint" / "fedavg" / "progress.json"
    info = json.loads(progress.read_text())
    progress.write_text(json.dumps(info).replace('"round": 1', f'"round": {round_}'))
    assert main(["run", "--resume", str(run_dir)]) == 1
    assert f"{progress} does not hold a committed round" in capsys.readouterr().err


def test_an_atomic_write_reaches_the_disk_before_and_after_its_rename(tmp_path, monkeypatch):
    """The file's data is flushed before the rename and the folder's entry after it, so a power
    cut leaves the old file or the new one, never a name pointing at lost data."""
    from feddat import runtime

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(runtime.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    real_replace = os.replace
    monkeypatch.setattr(runtime.os, "replace", lambda a, b: (synced.append("rename"), real_replace(a, b))[1])
    runtime.write_json(tmp_path / "progress.json", {"round": 1})
    assert len(synced) == 3 and synced[0].startswith(str(tmp_path / ".progress.json.")) and synced[1:] == ["rename", str(tmp_path)]
    assert json.loads((tmp_path / "progress.json").read_text()) == {"round": 1}


def test_a_key_added_later_keeps_older_checkpoints_resumable():
    """Checkpoints record the fingerprint of the settings (rundir.config_fingerprint). A key added
    since then is left out while at its default (it means the old behaviour), so a run started by
    an older feddat still resumes; set off its default, it counts. The pinned value is the
    default configuration's fingerprint as checkpoints have recorded it since fingerprints began:
    a new key that is not listed in rundir.ADDED_SINCE_FINGERPRINTS changes it, and so does a
    changed default (which must refuse to resume older runs: their numbers came from the old one)."""
    from feddat.config import Config
    from feddat.engines.rundir import ADDED_SINCE_FINGERPRINTS, config_fingerprint, decisive_settings

    cfg = Config()
    assert config_fingerprint(cfg) == "bcaeebf549980b05b159db6d6e3bd693ecad95ec93dc2145da7d4cc0a5be6024"
    assert not set(ADDED_SINCE_FINGERPRINTS) & set(decisive_settings(cfg))
    cfg.feddat.optimizer = "single"
    assert decisive_settings(cfg)["feddat.optimizer"] == "single"
    assert config_fingerprint(cfg) != config_fingerprint(Config())


def test_resume_takes_another_thread_count_and_warns_that_the_last_digits_may_differ(tiny_vilt_dir, tmp_path, capsys):
    """--run.threads only says how fast a run goes: a run started on one machine continues on
    another core count, with a warning (bit for bit needs one thread count); any other key is
    still refused, and the run's config.toml is left as it was."""
    from feddat import config as config_mod

    cfg = config_mod.load(None, {
        "backbone.name": "vilt", "backbone.path": tiny_vilt_dir, "backbone.image_size": 32, "backbone.max_text_len": 12,
        "adapter.reduction_factor": 4, "data.benchmark": "function", "data.train_per_client": 6, "data.test_per_client": 6,
        "data.cache_dir": str(tmp_path / "cache"), "federation.rounds": 1, "train.batch_size": 6, "run.methods": "fedavg",
        "run.out_dir": str(tmp_path), "run.name": "run", "run.threads": 1,
    })  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())  # a run stopped before its first round committed
    assert main(["run", "--resume", str(run_dir), "--run.threads", "1", "--run.seed", "3"]) == 2
    assert "takes no --config or other options but --run.threads" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        assert main(["run", "--resume", str(run_dir), "--run.threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert f"resuming {run_dir} with --run.threads 2 where it ran with 1" in err and "may differ in the last digits" in err
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.toml").read_text() == cfg.to_toml()
