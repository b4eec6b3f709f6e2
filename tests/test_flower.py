"""The Flower deployment engine with real Flower processes: a `flower-superlink` and one
`flower-supernode` per client on 127.0.0.1, runs submitted with `flwr run`.

Slow by nature (Flower polls every 3 s: ~6 s per message phase), so each test is one small
run of a tiny ViLT on three tiny clients.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from conftest import TINY_IMAGE, tiny_config
from feddat.config import validate
from feddat.engines.flower.launch import LocalFederation
from feddat.runtime import load_tensors

pytestmark = pytest.mark.slow
CLIENTS = {"alpha": ("red", "blue", "green"), "beta": ("one", "two"), "gamma": ("yes", "no", "maybe")}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Three clients in the folder format (README), each with its own answer space."""
    root = tmp_path_factory.mktemp("clients")
    rng = np.random.default_rng(0)
    for client, answers in CLIENTS.items():
        (root / client / "img").mkdir(parents=True)
        for split, n in (("train", 12), ("test", 6)):
            lines = []
            for i in range(n):
                image = f"img/{split}{i}.png"
                Image.fromarray(rng.integers(0, 256, (TINY_IMAGE, TINY_IMAGE, 3), dtype=np.uint8)).save(root / client / image)
                lines.append(json.dumps({"image": image, "question": f"what is object {i}?", "answer": answers[i % len(answers)]}))
            (root / client / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def make_config(vilt_dir: str, data_root: Path, out: Path, name: str, **overrides):
    cfg = tiny_config(**overrides)
    cfg.backbone.path = vilt_dir
    cfg.data.benchmark, cfg.data.root, cfg.data.cache_dir = "folder", str(data_root), str(out / "cache")
    cfg.run.methods, cfg.run.out_dir, cfg.run.name, cfg.run.device, cfg.run.threads = ["feddat"], str(out), name, "cpu", 1
    cfg.flower.join_timeout = 120.0
    validate(cfg)
    return cfg


def records(run_dir: Path) -> dict[tuple, dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["method"], r["round"], r["client"], r["kind"]): r for r in lines}


def assert_same_run(got_dir: Path, want_dir: Path) -> None:
    """The same metric lines (float fields to float tolerance) and the same final shared adapter."""
    got, want = records(got_dir), records(want_dir)
    assert got.keys() == want.keys()
    for key, record in want.items():
        assert got[key].keys() == record.keys(), key
        for field, value in record.items():
            if isinstance(value, float):
                assert got[key][field] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, field)
    a = load_tensors(want_dir / "feddat" / "shared_adapter.safetensors")
    b = load_tensors(got_dir / "feddat" / "shared_adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def process_tree(fed: LocalFederation) -> list[psutil.Process]:
    tree = []
    for p in fed.processes():
        root = psutil.Process(p.pid)
        tree += [root, *root.children(recursive=True)]
    return tree


def assert_all_gone(tree: list[psutil.Process]) -> None:
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left running: {[(p.pid, p.name()) for p in alive]}"


def test_flower_run_matches_embedded_engine(tiny_vilt_dir, data_root, tmp_path):
    """Two rounds of FedDAT, 2 of 3 clients sampled per round, evaluated after round 2 only:
    same adapter and per-client metrics (a round without evaluation loses no client)."""
    from feddat.engines.runner import run_experiment

    overrides = {"federation.fraction": 0.6, "federation.rounds": 2, "federation.eval_every": 2}
    embedded_cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "embedded", **overrides)
    t0 = time.perf_counter()
    embedded = run_experiment(embedded_cfg, log=lambda s: None)
    embedded_s = time.perf_counter() - t0

    flower_cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "flower", **overrides)
    with LocalFederation(tmp_path / "federation", list(CLIENTS), log=lambda s: None) as fed:
        tree = process_tree(fed)
        t0 = time.perf_counter()
        info = fed.cli.wait(fed.cli.submit(flower_cfg), timeout=600)
        flower_s = time.perf_counter() - t0
        tree = process_tree(fed) + tree
    assert_all_gone(tree)
    print(f"\nwall time of the same run: embedded {embedded_s:.1f}s, Flower {flower_s:.1f}s (flwr run to finished); network {info.get('network-traffic')}")

    flower = tmp_path / "flower"
    want = records(embedded)
    assert {k[2] for k in want if k[1] == 1 and k[3] == "train"} != set(CLIENTS)  # sampling did leave a client out
    assert {k[1] for k in want if k[3] == "eval"} == {2} and {k[1] for k in want if k[3] == "train"} == {1, 2}
    assert_same_run(flower, embedded)
    summary = json.loads((flower / "summary.json").read_text())["methods"][0]
    assert summary["engine"] == "flower" and summary["bytes_up_per_round"] == json.loads((embedded / "summary.json").read_text())["methods"][0]["bytes_up_per_round"]
    assert "| feddat | global |" in (flower / "results.md").read_text()


def test_a_killed_supernode_is_left_out_and_rejoins_from_its_disk_state(tiny_vilt_dir, data_root, tmp_path):
    """SIGKILL gamma's SuperNode (and worker) after round 1 and start a new one: round 2 completes
    with alpha and beta once the round timeout passes; the restarted SuperNode (new node id, new
    worker on the same socket path) rejoins in round 3 from its saved state."""
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "killed", **{"federation.rounds": 3})
    cfg.flower.round_timeout = 45.0
    run_dir = tmp_path / "killed"
    with LocalFederation(tmp_path / "federation", list(CLIENTS), log=lambda s: None) as fed:
        tree = process_tree(fed)
        run_id = fed.cli.submit(cfg)
        wait_for(lambda: len([k for k in records_if(run_dir) if k[1] == 1 and k[3] == "eval"]) == 3, "round 1 evaluated")
        states = tmp_path / "federation" / "node-state" / "gamma" / "killed" / "feddat"  # <state-dir>/<run name>/<method>
        assert [p.name for p in states.iterdir()] == ["gamma.r00001.safetensors"]
        tree += process_tree(fed)
        fed.kill_node("gamma")
        # The new node registers while round 2 waits out the dead one (round_timeout); the server
        # admits restarted SuperNodes when a round begins, so gamma is back from round 3 on.
        fed.start_node("gamma")
        tree += process_tree(fed)
        fed.cli.wait(run_id, timeout=600)
        log = fed.cli.run_log(run_id)
        tree += process_tree(fed)
    assert_all_gone(tree)

    got = records(run_dir)
    clients = lambda round_, kind: {k[2] for k in got if k[1] == round_ and k[3] == kind}  # noqa: E731
    assert clients(1, "train") == clients(1, "eval") == set(CLIENTS)
    assert clients(2, "train") == clients(2, "eval") == {"alpha", "beta"}
    assert clients(3, "train") == clients(3, "eval") == set(CLIENTS)
    assert "client 'gamma'" in log and "did not reply to round 2 train" in log
    # gamma's private state: round 3's version and the round-1 version it started from (kept until the next round), readable, no stray temporary files
    assert sorted(p.name for p in states.iterdir()) == ["gamma.r00001.safetensors", "gamma.r00003.safetensors"]
    assert any(k.startswith("client.") for k in load_tensors(states / "gamma.r00003.safetensors"))
    assert not list((tmp_path / "federation" / "node-state").rglob("*.tmp"))
    shared = load_tensors(run_dir / "feddat" / "shared_adapter.safetensors")
    assert all(torch.isfinite(t).all() for t in shared.values())


def records_if(run_dir: Path) -> dict[tuple, dict]:
    return records(run_dir) if (run_dir / "metrics.jsonl").is_file() else {}


def wait_for(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.5)


def committed_round(checkpoint: Path) -> int:
    progress = checkpoint / "progress.json"
    return json.loads(progress.read_text())["round"] if progress.is_file() else 0


def test_a_killed_superlink_and_serverapp_resume_to_the_same_numbers(tiny_vilt_dir, data_root, tmp_path):
    """SIGKILL the SuperLink and its ServerApp once round 1 of 3 is committed (round 2 in flight,
    some clients may have trained it); a new SuperLink and a resumed submission finish the run
    with the numbers of an uninterrupted Flower run on the same nodes (and of the embedded
    engine), the nodes continuing from their disk state."""
    from feddat.engines.runner import run_experiment

    overrides = {"federation.fraction": 0.6, "federation.rounds": 3, "federation.eval_every": 1}
    embedded = run_experiment(make_config(tiny_vilt_dir, data_root, tmp_path, "embedded", **overrides), log=lambda s: None)
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "resumed", **overrides)
    run_dir = tmp_path / "resumed"
    with LocalFederation(tmp_path / "federation", list(CLIENTS), log=lambda s: None) as fed:
        tree = process_tree(fed)
        fed.cli.wait(fed.cli.submit(make_config(tiny_vilt_dir, data_root, tmp_path, "uninterrupted", **overrides)), timeout=600)
        first = fed.cli.submit(cfg)
        wait_for(lambda: committed_round(run_dir / "checkpoint" / "feddat") >= 1, "round 1 committed")
        tree += process_tree(fed)
        fed.kill_superlink()
        killed_at = committed_round(run_dir / "checkpoint" / "feddat")
        assert killed_at < 3, "the run ended before the kill: nothing was resumed"
        fed.restart_superlink()
        second = fed.cli.submit(cfg, resume=True)
        fed.cli.wait(second, timeout=600)
        log = fed.cli.run_log(second)
        tree += process_tree(fed)
    assert_all_gone(tree)
    assert second != first and f"resuming after round {killed_at}" in log
    # an interrupted round's lines were dropped, then written again once
    assert_same_run(run_dir, tmp_path / "uninterrupted")
    assert_same_run(run_dir, embedded)
    assert committed_round(run_dir / "checkpoint" / "feddat") == 3
