"""The Flower deployment engine with real Flower processes: a `flower-superlink` and one
`flower-supernode` per client on 127.0.0.1, runs submitted with `flwr run`.

Slow by nature (Flower polls every 3 s: ~6 s per message phase), so each test is one small
run of a tiny ViLT on three tiny clients.

Every test that starts a federation is in this file, so that `make test` (pytest-xdist, one file
per worker at a time) never runs two at once. Two federations at once on 2 cores starved
Flower's ClientApp processes past the 30 s in which a SuperNode expects one to take up its task
(flwr's HEARTBEAT_DEFAULT_INTERVAL): the task went back to pending, a new process started, and
the runs stalled (CI, 2026-12-07: this file beside a secure-aggregation test in another file).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import TINY_IMAGE, tiny_config, write_folder_clients
from feddat.config import validate
from feddat.engines.flower import secure
from feddat.engines.flower.launch import LocalFederation
from feddat.runtime import load_tensors

pytestmark = pytest.mark.slow
CLIENTS = {"alpha": ("red", "blue", "green"), "beta": ("one", "two"), "gamma": ("yes", "no", "maybe")}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Three clients in the folder format (docs/guide/own-data.md), each with its own answer space."""
    return write_folder_clients(tmp_path_factory.mktemp("clients"), CLIENTS, {"train": 12, "test": 6}, TINY_IMAGE)


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
        info = wait_run(fed, fed.cli.submit(flower_cfg), [tmp_path])
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
    both = [json.loads((d / "summary.json").read_text()) for d in (flower, embedded)]  # the final scores and the benchmark, as the embedded engine records them
    assert both[0]["benchmark"] == both[1]["benchmark"] == {"name": "folder", "clients": list(CLIENTS)}
    assert both[0]["methods"][0]["scores"]["global"] == pytest.approx(both[1]["methods"][0]["scores"]["global"], abs=1e-6)
    assert "| feddat | global |" in (flower / "results.md").read_text()


def test_a_killed_supernode_is_left_out_and_rejoins_from_its_disk_state(tiny_vilt_dir, data_root, tmp_path):
    """SIGKILL gamma's SuperNode (and worker) after round 1 and start a new one: round 2 completes
    with alpha and beta once the round timeout passes; the restarted SuperNode (new node id, new
    worker on the same socket path) rejoins in round 3 from its saved state."""
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "killed", **{"federation.rounds": 3})
    # The wait for the dead node: alpha's and beta's replies must arrive within it while gamma's
    # new SuperNode and worker start beside them. 45 s was too short with the suite's other
    # worker busy (round 2's evaluation came back empty); each round with gamma dead waits it out.
    cfg.flower.round_timeout = 90.0
    run_dir = tmp_path / "killed"
    with LocalFederation(tmp_path / "federation", list(CLIENTS), log=lambda s: None) as fed:
        tree = process_tree(fed)
        run_id = fed.cli.submit(cfg)
        wait_for(lambda: len([k for k in records_if(run_dir) if k[1] == 1 and k[3] == "eval"]) == 3, "round 1 evaluated", [tmp_path])
        states = tmp_path / "federation" / "node-state" / "gamma" / "killed" / "feddat"  # <state-dir>/<run name>/<method>
        assert [p.name for p in states.iterdir()] == ["gamma.r00001.safetensors"]
        tree += process_tree(fed)
        fed.kill_node("gamma")
        # The new node registers while round 2 waits out the dead one (round_timeout); the server
        # admits restarted SuperNodes when a round begins, so gamma is back from round 3 on.
        fed.start_node("gamma")
        tree += process_tree(fed)
        wait_run(fed, run_id, [tmp_path])
        log = fed.cli.run_log(run_id)
        tree += process_tree(fed)
    assert_all_gone(tree)

    got = records(run_dir)
    clients = lambda round_, kind: {k[2] for k in got if k[1] == round_ and k[3] == kind}  # noqa: E731
    assert clients(1, "train") == clients(1, "eval") == set(CLIENTS), log
    assert clients(2, "train") == clients(2, "eval") == {"alpha", "beta"}, log
    assert clients(3, "train") == clients(3, "eval") == set(CLIENTS), log
    assert "client 'gamma'" in log and "did not reply to round 2 train" in log
    # gamma's private state: round 3's version and the round-1 version it started from (kept until the next round), readable, no stray temporary files
    assert sorted(p.name for p in states.iterdir()) == ["gamma.r00001.safetensors", "gamma.r00003.safetensors"]
    assert any(k.startswith("client.") for k in load_tensors(states / "gamma.r00003.safetensors"))
    assert not list((tmp_path / "federation" / "node-state").rglob("*.tmp"))
    shared = load_tensors(run_dir / "feddat" / "shared_adapter.safetensors")
    assert all(torch.isfinite(t).all() for t in shared.values())


def records_if(run_dir: Path) -> dict[tuple, dict]:
    return records(run_dir) if (run_dir / "metrics.jsonl").is_file() else {}


# The waits follow the work: a loaded machine may take many minutes for a tiny run, so a wait
# gives up when nothing it watches has changed for STALL_S (the run hangs), or after CAP_S.
STALL_S, CAP_S = 300.0, 3600.0
QUIET = ("flwr-home", ".db", ".db-wal", ".db-shm", ".db-journal")  # written by idle daemons too (heartbeats, `flwr ls`)


def snapshot(roots: list[Path]) -> set[tuple[str, int, int]]:
    """Every file under `roots` (logs, run and state folders) with its size and mtime."""
    files = set()
    for root in roots:
        for path in Path(root).rglob("*"):
            try:
                if not any(q in str(path) for q in QUIET) and path.is_file():
                    stat = path.stat()
                    files.add((str(path), stat.st_size, stat.st_mtime_ns))
            except OSError:  # removed meanwhile (an atomic write's temporary file)
                pass
    return files


def wait_for(condition, what: str, watch: list[Path], stall: float = STALL_S, cap: float = CAP_S, poll: float = 0.5) -> None:
    """Until `condition()`, for as long as the files under `watch` keep changing."""
    start = changed = time.monotonic()
    seen = snapshot(watch)
    while not condition():
        time.sleep(poll)
        now, files = time.monotonic(), snapshot(watch)
        if files != seen:
            seen, changed = files, now
        if now - changed > stall:
            raise AssertionError(f"timed out waiting until {what}: nothing under {[str(w) for w in watch]} changed for {stall:.0f}s")
        if now - start > cap:
            raise AssertionError(f"timed out waiting until {what}: still not after {cap:.0f}s")


def wait_run(fed: LocalFederation, run_id: int, watch: list[Path]) -> dict:
    """The run's end (as Flwr.wait, which raises with the run's log unless it completed)."""
    wait_for(lambda: str(fed.cli.status(run_id)["status"]).startswith("finished"), f"run {run_id} finished", watch, poll=3.0)
    return fed.cli.wait(run_id, timeout=0)


def committed_round(checkpoint: Path) -> int:
    progress = checkpoint / "progress.json"
    return json.loads(progress.read_text())["round"] if progress.is_file() else 0


def test_a_killed_superlink_and_serverapp_resume_to_the_same_numbers(tiny_vilt_dir, data_root, tmp_path):
    """SIGKILL the SuperLink and its ServerApp once round 1 of 3 is committed (round 2 in flight,
    some clients may have trained it); a new SuperLink and a resumed submission finish the run
    with the numbers of an uninterrupted run, the nodes continuing from their disk state. The
    uninterrupted run is the embedded engine's: test_flower_run_matches_embedded_engine shows
    that an uninterrupted Flower run has its numbers (a Flower run here too took 3 minutes)."""
    from feddat.engines.runner import run_experiment

    overrides = {"federation.fraction": 0.6, "federation.rounds": 3, "federation.eval_every": 1}
    embedded = run_experiment(make_config(tiny_vilt_dir, data_root, tmp_path, "embedded", **overrides), log=lambda s: None)
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "resumed", **overrides)
    run_dir = tmp_path / "resumed"
    with LocalFederation(tmp_path / "federation", list(CLIENTS), log=lambda s: None) as fed:
        tree = process_tree(fed)
        first = fed.cli.submit(cfg)
        wait_for(lambda: committed_round(run_dir / "checkpoint" / "feddat") >= 1, "round 1 committed", [tmp_path])
        tree += process_tree(fed)
        fed.kill_superlink()
        killed_at = committed_round(run_dir / "checkpoint" / "feddat")
        assert killed_at < 3, "the run ended before the kill: nothing was resumed"
        fed.restart_superlink()
        second = fed.cli.submit(cfg, resume=True)
        wait_run(fed, second, [tmp_path])
        log = fed.cli.run_log(second)
        tree += process_tree(fed)
    assert_all_gone(tree)
    assert second != first and f"resuming after round {killed_at}" in log
    # an interrupted round's lines were dropped, then written again once
    assert_same_run(run_dir, embedded)
    assert committed_round(run_dir / "checkpoint" / "feddat") == 3


def marked(mark: str) -> list[psutil.Process]:
    """The live processes whose environment carries FEDDAT_TEST_MARK=`mark`: the launcher gets it
    from the test, everything it and Flower's daemons start inherits it."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("FEDDAT_TEST_MARK") == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def command_lines(processes: list[psutil.Process]) -> list[str]:
    lines = []
    for p in processes:
        try:
            lines.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    return lines


# SIGKILL only: it is the case nothing in the launcher can handle. SIGTERM goes the same way
# through the guard, tested without Flower in test_flower_worker.py (two minutes saved here).
@pytest.mark.parametrize("signum", [signal.SIGKILL], ids=["sigkill"])
def test_a_killed_launcher_leaves_no_flower_process_behind(tiny_vilt_dir, data_root, tmp_path, signum):
    """`feddat flower local` killed while round 1 trains: its SuperLink, SuperNode, warm worker,
    SuperExecs, ServerApp and ClientApps (re-parented, in sessions of their own) are all gone
    within seconds. One client keeps the run small."""
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "orphans", **{"federation.rounds": 20})
    cfg.flower.clients = ["alpha"]
    (tmp_path / "run.toml").write_text(cfg.to_toml())
    mark, workdir = f"{os.getpid()}-{signum}", tmp_path / "federation"
    args = [str(Path(sys.executable).parent / "feddat"), "flower", "local", "--config", str(tmp_path / "run.toml"), "--workdir", str(workdir)]
    with open(tmp_path / "launcher.log", "wb") as out:
        launcher = subprocess.Popen(args, env={**os.environ, "FEDDAT_TEST_MARK": mark}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        trained = lambda: any("train answered" in f.read_text() for f in (workdir / "logs").glob("worker-*.log"))  # noqa: E731
        wait_for(lambda: trained() or launcher.poll() is not None, "round 1 trains", [tmp_path])
        assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()
        running = " ".join(command_lines(marked(mark)))
        for role in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "feddat.engines.flower.worker"):
            assert role in running, f"no {role} among {running}"
        launcher.send_signal(signum)
        killed = time.monotonic()
        while marked(mark) and time.monotonic() - killed < 30:
            time.sleep(0.2)
        left = [(p.pid, p.name()) for p in marked(mark)]
        print(f"\n{signal.Signals(signum).name}: the federation was gone {time.monotonic() - killed:.1f}s after the launcher's signal")
        assert not left, f"processes left running 30 s after {signal.Signals(signum).name} of the launcher: {left}"
        assert launcher.wait(timeout=30) == (-signal.SIGKILL if signum == signal.SIGKILL else 130)
    finally:
        for p in marked(mark):  # this test leaves nothing behind, whatever happened
            p.kill()


def test_a_wait_follows_the_work_not_the_clock(tmp_path):
    """The test helpers' wait goes on, well past its stall window, while the files it watches
    keep changing (a loaded machine), and gives up once they stop (a hung run)."""
    import threading

    done = threading.Event()

    def slow_work():
        for i in range(12):
            (tmp_path / "log").write_text("line\n" * i)
            time.sleep(0.25)
        done.set()

    threading.Thread(target=slow_work, daemon=True).start()
    t0 = time.monotonic()
    wait_for(done.is_set, "the slow work ends", [tmp_path], stall=1.0, poll=0.1)
    assert time.monotonic() - t0 > 2.0  # twice the stall window: the wait followed the work
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="nothing under .* changed for 1s"):
        wait_for(lambda: False, "never", [tmp_path], stall=1.0, poll=0.1)
    assert time.monotonic() - t0 < 10


def test_no_other_test_file_starts_a_federation():
    """The module docstring's rule: a second file starting LocalFederation could run beside this one."""
    here = Path(__file__)
    others = [p.name for p in here.parent.glob("test_*.py") if p != here and "LocalFederation(" in p.read_text()]
    assert not others, f"{others} start Flower federations: move those tests into {here.name}"


# ---- secure aggregation (Flower's SecAgg+) -------------------------------------------------
TRAIN = {"alpha": 12, "beta": 12, "gamma": 8}  # unequal n_k, so the weighting is exercised


@pytest.fixture(scope="module")
def unequal_root(data_root, tmp_path_factory) -> Path:
    """test_flower's three clients, gamma with only 8 training examples."""
    root = tmp_path_factory.mktemp("unequal") / "clients"
    shutil.copytree(data_root, root)
    lines = (root / "gamma" / "train.jsonl").read_text().splitlines()
    (root / "gamma" / "train.jsonl").write_text("\n".join(lines[: TRAIN["gamma"]]) + "\n")
    return root


def test_secure_aggregation_matches_plain_aggregation(tiny_vilt_dir, unequal_root, tmp_path):
    """Secure aggregation on Flower's deployment engine (Flower's SecAgg+): a real SuperLink and
    three SuperNodes on 127.0.0.1; the secure aggregate equals plain aggregation (the embedded
    engine, same seed and configuration) within SecAgg+'s quantisation error.

    Tolerance, per coordinate of A_s after one round (`secure.error_bound`): each client's
    weighted change r_k·Δ_k (r_k = round(Q·n_k/W)/Q, W = the largest n_k) is quantised by Flower
    with stochastic rounding to steps of 2c/Q (c = flower.secagg_clipping_range, Q =
    flower.secagg_quantization_range), an error below one step; the unmasked sum is divided by
    Σ r_k, so the mean is off by less than K·(2c/Q)/Σ r_k, plus the weights' rounding to 1/Q;
    both results are float32, so one rounding of each (ε₃₂·|x|) is added. One round keeps the
    bound exact: in a second round the clients would train from slightly different A_s.
    """
    from feddat.engines.runner import run_experiment

    overrides = {"federation.rounds": 1, "federation.fraction": 1.0}
    embedded = run_experiment(make_config(tiny_vilt_dir, unequal_root, tmp_path, "plain", **overrides), log=lambda s: None)

    cfg = make_config(tiny_vilt_dir, unequal_root, tmp_path, "secure", **overrides)
    cfg.flower.secure_aggregation, cfg.flower.secagg_clipping_range = True, 1.0
    with LocalFederation(tmp_path / "federation", list(CLIENTS), log=lambda s: None) as fed:
        tree = process_tree(fed)
        t0 = time.perf_counter()
        run_id = fed.cli.submit(cfg)
        wait_run(fed, run_id, [tmp_path])
        wall = time.perf_counter() - t0
        log = fed.cli.run_log(run_id)
        tree = process_tree(fed) + tree
    assert_all_gone(tree)
    assert "secure aggregation (SecAgg+, 3 of 3 clients" in log, log

    run_dir = tmp_path / "secure"
    got, want = records(run_dir), records(embedded)
    assert got.keys() == want.keys()
    for key, record in want.items():  # the clients' training is the same: the metrics before aggregation agree
        if key[3] == "train":
            assert got[key].keys() == record.keys(), key
            for field, value in record.items():
                if isinstance(value, float):
                    assert got[key][field] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, field)

    bound = secure.error_bound(cfg, list(TRAIN.values()), max(TRAIN.values()))
    a = load_tensors(embedded / "feddat" / "shared_adapter.safetensors")
    b = load_tensors(run_dir / "feddat" / "shared_adapter.safetensors")
    assert a.keys() == b.keys()
    worst, excess = 0.0, 0.0
    for k in a:
        diff = (a[k].double() - b[k].double()).abs()
        tol = bound + torch.finfo(torch.float32).eps * a[k].double().abs()
        worst = max(worst, float(diff.max()))
        excess = max(excess, float((diff - tol).max()))
    print(f"\nsecure aggregation: max |secure - plain| = {worst:.3g} per coordinate, bound {bound:.3g} (c = {cfg.flower.secagg_clipping_range}, Q = {cfg.flower.secagg_quantization_range}); Flower run {wall:.1f}s")
    assert excess <= 0, f"secure aggregate off by {worst:.3g}, more than the quantisation bound {bound:.3g}"
    assert worst > 0  # stochastic quantisation leaves its trace
    summary = json.loads((run_dir / "summary.json").read_text())["methods"][0]
    assert summary["array_bytes_received"] > 0
