"""The warm feddat worker of a SuperNode (engines/flower/worker.py), without Flower's daemons:
a real worker process on a Unix socket, asked as the ClientApp asks it. Its answers equal the
in-process handlers'; it is private to its user; a dead or missing worker is reported with its
socket named; a failing message leaves the worker up. Also the nodes' round-versioned state."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from test_flower import CLIENTS, data_root, make_config, marked  # noqa: F401  (data_root: a fixture)
from feddat.engines.flower import client_node, guard, transport, worker
from feddat.engines.flower.launch import stop_tree, wait_for_socket

RUN_ID = 7


@pytest.fixture()
def socket_dir():
    with tempfile.TemporaryDirectory(prefix="feddat-wt-") as tmp:  # short: Unix socket paths are limited
        yield Path(tmp) / "private"


@pytest.fixture()
def running_worker(socket_dir, tmp_path):
    path = socket_dir / "0.sock"
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "feddat.engines.flower.worker", "--socket", str(path)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_socket(path, process, "worker", log)
        yield path, process, log
    finally:
        stop_tree(process)


def as_server():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID  # what a ServerApp process has


def context_for(cfg, partition: str, tmp_path: Path) -> Context:
    node_config = {transport.PARTITION_KEY: partition, transport.STATE_DIR_KEY: str(tmp_path / "state")}
    return Context(run_id=RUN_ID, node_id=11, node_config=node_config, state=RecordDict(), run_config={transport.RUN_CONFIG_KEY: cfg.to_toml()})


def query() -> Message:
    as_server()
    return Message(RecordDict({"config": ConfigRecord()}), dst_node_id=11, message_type="query")


def train_message(shared, round_: int) -> Message:
    as_server()
    return Message(RecordDict({"shared": transport.to_record(shared), "config": ConfigRecord({"method": "feddat", "round": round_})}), dst_node_id=11, message_type="train")


def test_the_light_clientapp_loads_no_torch():
    code = "import sys, feddat.engines.flower.client_app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_worker_answers_as_the_clientapp_would_and_stays_private(running_worker, tiny_vilt_dir, data_root, tmp_path):  # noqa: F811
    path, process, log = running_worker
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "worker")
    reply = worker.ask(path, query(), context_for(cfg, "beta", tmp_path), timeout=120)
    info = dict(reply.content["info"])
    index = json.loads(info.pop("index"))  # the client's entries of the run's clients.json (server_app writes it)
    assert info == {"client": "beta", "num-train": 12, "num-test": 6, "num-answers": 2}
    assert index["clients"]["name"] == "beta" and sorted(index["clients"]["answers"]) == ["one", "two"] and index["data"]["test"] == 6

    # a train message: the worker's update equals the one computed in this process
    from feddat.algorithms import build_method

    node = client_node.Nodes().get(context_for(cfg, "beta", tmp_path / "here"))
    shared = build_method("feddat", cfg, node.model, node.device).init_shared()
    there = worker.ask(path, train_message(shared, 1), context_for(cfg, "beta", tmp_path), timeout=120)
    here = client_node.train(train_message(shared, 1), node)
    a, b = transport.from_record(there.content["shared"]), transport.from_record(here.content["shared"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert dict(there.content["metrics"]) == pytest.approx(dict(here.content["metrics"]))
    assert "train answered" in log.read_text()

    # a message that fails (a client the benchmark does not have) is reported, and the worker goes on
    with pytest.raises(worker.WorkerError, match=f"worker at {path} failed .*'nope' is not a client"):
        worker.ask(path, query(), context_for(cfg, "nope", tmp_path), timeout=120)
    assert worker.ask(path, query(), context_for(cfg, "alpha", tmp_path), timeout=120).content["info"]["client"] == "alpha"


def test_a_missing_or_dead_worker_is_reported_with_its_socket(running_worker, tiny_vilt_dir, data_root, tmp_path):  # noqa: F811
    path, process, _ = running_worker
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "dead")
    process.kill()
    process.wait()
    with pytest.raises(worker.WorkerError, match=f"no feddat worker listens on {path}.*feddat flower worker --socket {path}"):
        worker.ask(path, query(), context_for(cfg, "beta", tmp_path), timeout=30)
    with pytest.raises(worker.WorkerError, match="no feddat worker listens on"):
        worker.ask(path.parent / "other.sock", query(), context_for(cfg, "beta", tmp_path), timeout=30)


def test_a_second_worker_on_a_live_socket_is_refused(running_worker):
    path, _, _ = running_worker
    done = subprocess.run([sys.executable, "-m", "feddat.engines.flower.worker", "--socket", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "already listens" in done.stderr


def test_node_state_is_versioned_by_round_so_a_replayed_round_starts_where_it_did(tiny_vilt_dir, data_root, tmp_path):  # noqa: F811
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "versions")
    node = client_node.Nodes().get(context_for(cfg, "alpha", tmp_path))
    method = node.method("feddat")
    fresh = node.load_state(method, 1, training=True)
    one = {k: v + 1 for k, v in fresh.items()}
    node.save_state(method, one, 1)
    node.save_state(method, {k: v + 3 for k, v in fresh.items()}, 3)  # round 3 trained, then the server crashed before committing it
    files = lambda: sorted(p.name for p in (node.state_root / "feddat").iterdir())  # noqa: E731
    assert files() == ["alpha.r00001.safetensors", "alpha.r00003.safetensors"]
    after = node.load_state(method, 3, training=False)  # evaluating round 3 reads round 3's version
    assert all(torch.equal(after[k], fresh[k] + 3) for k in fresh)
    replay = node.load_state(method, 3, training=True)  # the resumed server sends round 3 again
    assert files() == ["alpha.r00001.safetensors"] and all(torch.equal(replay[k], one[k]) for k in one)
    node.save_state(method, replay, 3)
    node.save_state(method, replay, 4)
    assert files() == ["alpha.r00003.safetensors", "alpha.r00004.safetensors"]  # the one round 4 started from, and round 4's


def test_a_replayed_round_discards_only_its_own_clients_state_in_a_shared_state_dir(tiny_vilt_dir, data_root, tmp_path):  # noqa: F811
    """Two SuperNodes of one host share the node config's state-dir: one node replaying a round
    must not delete the round another node has already trained."""
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path, "shared-dir")
    alpha = client_node.Nodes().get(context_for(cfg, "alpha", tmp_path))
    beta = client_node.Nodes().get(context_for(cfg, "beta", tmp_path))
    assert alpha.state_root == beta.state_root  # the deployment docs/guide/flower.md shows
    for node in (alpha, beta):
        method = node.method("feddat")
        state = node.load_state(method, 1, training=True)
        node.save_state(method, state, 1)
    beta_method = beta.method("feddat")
    beta.save_state(beta_method, beta.load_state(beta_method, 2, training=True), 2)  # beta is a round ahead
    alpha.load_state(alpha.method("feddat"), 2, training=True)  # alpha starts round 2
    assert [r for r, _ in beta.store(beta_method).versions("beta")] == [1, 2]


# A launcher as LocalFederation is one, without Flower: it starts its guard, then a daemon in a
# session of its own that starts another, both marked with the token and deaf to SIGTERM (as
# a busy Flower process may be).
LAUNCHER = """
import os, subprocess, sys, time
from feddat.engines.flower import guard
guard.start(sys.argv[1])
deaf = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
grandchild = deaf + "time.sleep(600)"
child = deaf + f"subprocess.Popen([sys.executable, '-c', {grandchild!r}], start_new_session=True); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", child], env={**os.environ, guard.FEDERATION_ENV: sys.argv[1]}, start_new_session=True)
time.sleep(600)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_the_guard_stops_the_federation_when_its_launcher_dies(signum):
    mark = f"guard-{os.getpid()}-{signum}"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, f"token-{mark}"], env={**os.environ, "FEDDAT_TEST_MARK": mark})
    try:
        deadline = time.monotonic() + 120
        while len(marked(mark)) < 4 and time.monotonic() < deadline:  # launcher, guard, daemon, its child
            time.sleep(0.1)
        assert len(marked(mark)) == 4, [p.cmdline() for p in marked(mark)]
        launcher.send_signal(signum)
        launcher.wait()
        killed = time.monotonic()
        while marked(mark) and time.monotonic() - killed < 20:
            time.sleep(0.1)
        assert not marked(mark), [p.cmdline() for p in marked(mark)]
        assert time.monotonic() - killed < guard.POLL_S + guard.GRACE_S + 5  # SIGKILL after the grace
    finally:
        for p in marked(mark):
            p.kill()


def test_sigterm_stops_a_worker_mid_message(running_worker, tiny_vilt_dir, data_root, tmp_path):  # noqa: F811
    """SIGTERM while the worker trains (a train message of many local epochs): it exits at once
    (the message fails on the ClientApp's side), instead of taking the signal for a failed
    message and going on."""
    import threading

    from feddat.algorithms import build_method

    path, process, log = running_worker
    here = make_config(tiny_vilt_dir, data_root, tmp_path / "here", "sigterm")
    node = client_node.Nodes().get(context_for(here, "beta", tmp_path / "here"))
    shared = build_method("feddat", here, node.model, node.device).init_shared()
    cfg = make_config(tiny_vilt_dir, data_root, tmp_path / "there", "sigterm", **{"train.local_epochs": 5000})
    errors = []
    asking = threading.Thread(target=lambda: errors.append(pytest.raises(worker.WorkerError, worker.ask, path, train_message(shared, 1), context_for(cfg, "beta", tmp_path), 600)))
    asking.start()
    # the worker has built beta's data (train and test features cached) and is training
    cache, deadline = tmp_path / "there" / "cache", time.monotonic() + 600
    while len(list(cache.glob("*.safetensors"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=guard.GRACE_S + 2) == 0, log.read_text()
    asking.join(timeout=30)
    assert errors and "stopped while answering" in str(errors[0].value)
    assert not path.exists() and "feddat worker stopped" in log.read_text()
