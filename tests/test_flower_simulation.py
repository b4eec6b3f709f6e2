"""Flower's simulation engine (engines/flower/simulation.py): the feddat ServerApp and ClientApp
on Ray, one virtual SuperNode per client, give the embedded engine's numbers, and leave no
Ray process behind.

One small run of a tiny ViLT on three tiny clients (Ray's start and stop take seconds)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from test_flower import CLIENTS, assert_same_run, data_root, make_config, records  # noqa: F401 - data_root: the fixture

pytestmark = pytest.mark.slow


def is_ray(p: psutil.Process) -> bool:
    """Ray's daemons (raylet, gcs_server, ...) and workers (`ray::...`, python .../ray/...)."""
    try:
        name, cmdline = p.name(), p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "ray" in name or "gcs_server" in name or any(a.startswith("ray::") or "raylet" in a or "/ray/" in a for a in cmdline)


def ray_processes_since(t0: float) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if p.pid != os.getpid() and p.create_time() >= t0 and is_ray(p) and p.status() != psutil.STATUS_ZOMBIE]


def assert_no_ray_left(t0: float, grace: float = 15.0) -> None:
    """Processes Ray started after t0 are gone (a worker may take a moment to exit)."""
    deadline = time.monotonic() + grace
    while (left := ray_processes_since(t0)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left running: {[(p.pid, p.name(), ' '.join(p.cmdline())[:120]) for p in left]}"


def test_flower_simulation_matches_embedded_engine(tiny_vilt_dir, data_root, tmp_path):  # noqa: F811
    """test_flower.py's run (2 rounds of FedDAT, 2 of 3 clients sampled per round, evaluated
    after round 2) on 3 virtual SuperNodes: same per-client metrics and shared adapter."""
    from feddat.engines.flower.simulation import run_simulation
    from feddat.engines.runner import run_experiment

    overrides = {"federation.fraction": 0.6, "federation.rounds": 2, "federation.eval_every": 2}
    t0 = time.perf_counter()
    embedded = run_experiment(make_config(tiny_vilt_dir, data_root, tmp_path, "embedded", **overrides), log=lambda s: None)
    embedded_s = time.perf_counter() - t0

    started = time.time() - 1.0  # process create_time has a coarse clock
    ray_dirs = set(Path(tempfile.gettempdir()).glob("feddat-ray-*"))
    t0 = time.perf_counter()
    simulated = run_simulation(make_config(tiny_vilt_dir, data_root, tmp_path, "simulated", **overrides), log=lambda s: None)
    simulated_s = time.perf_counter() - t0
    assert_no_ray_left(started)
    assert set(Path(tempfile.gettempdir()).glob("feddat-ray-*")) == ray_dirs  # Ray's folder is removed
    print(f"\nwall time of the same run: embedded {embedded_s:.1f}s, Flower simulation {simulated_s:.1f}s (Ray start and stop included)")

    assert simulated == tmp_path / "simulated"
    assert {k[2] for k in records(embedded) if k[1] == 1 and k[3] == "train"} != set(CLIENTS)  # sampling did leave a client out
    assert_same_run(simulated, embedded)
    summary = json.loads((simulated / "summary.json").read_text())["methods"][0]
    assert summary["engine"] == "flower" and summary["bytes_up_per_round"] == json.loads((embedded / "summary.json").read_text())["methods"][0]["bytes_up_per_round"]
    # Virtual nodes have no 'state-dir': each keeps its client's private state in the run directory.
    assert sorted(p.name for p in (simulated / "node-state").iterdir()) == sorted(CLIENTS)


def test_an_answer_decoder_simulated_on_flower_matches_the_embedded_engine(tiny_blip_dir, data_root, tmp_path):  # noqa: F811
    """The same run on a tiny BLIP: the decoder path (its ranking and generated scores, FedDAT's
    token distillation) gives the embedded engine's numbers through Flower's messages."""
    from feddat.engines.flower.simulation import run_simulation
    from feddat.engines.runner import run_experiment

    def config(name):
        cfg = make_config(tiny_blip_dir, data_root, tmp_path, name, **{"federation.rounds": 2, "federation.eval_every": 2})
        cfg.backbone.name = "blip"
        return cfg

    embedded = run_experiment(config("embedded"), log=lambda s: None)
    simulated = run_simulation(config("simulated"), log=lambda s: None)
    assert_same_run(simulated, embedded)
    assert any("global-generated" in r and "personal-generated" in r for r in records(simulated).values())


def test_a_failed_simulation_keeps_rays_logs_in_the_run_directory(tmp_path):
    """When a simulation fails, Ray's temporary folder is still removed, but its logs (what a
    ClientApp that never answered printed) are copied to the run directory and the error says
    where; a run that ends well keeps nothing (the test above: the folder is gone)."""
    from feddat.engines.flower.simulation import ray_session

    dest = tmp_path / "run" / "ray-logs"
    with pytest.raises(RuntimeError) as failed:
        with ray_session(dest) as ray_tmp:
            logs = ray_tmp / "session_2026-12-08" / "logs"
            logs.mkdir(parents=True)
            (ray_tmp / "session_latest").symlink_to(ray_tmp / "session_2026-12-08")
            (logs / "worker-1.err").write_text("ClientAppActor failed to start\n")
            raise RuntimeError("after 300s no SuperNode serves client(s) alpha")
    assert not ray_tmp.exists()
    assert (dest / "worker-1.err").read_text() == "ClientAppActor failed to start\n"
    assert str(failed.value) == f"after 300s no SuperNode serves client(s) alpha (Ray's logs of this run: {dest})"


def test_rays_workers_run_at_normal_priority(tmp_path):
    """Ray starts its workers at niceness 15; the simulation's ClientApps run at the priority
    of the run that started them, or on a machine with other work they starve (a simulation
    beside two busy processes never answered within ten minutes)."""
    import ray

    from feddat.engines.flower.simulation import quiet_environment, ray_session

    with quiet_environment(), ray_session(tmp_path / "ray-logs") as ray_tmp:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=str(ray_tmp), object_store_memory=80 * 1024**2)
        niceness = ray.get(ray.remote(lambda: os.nice(0)).remote())
    assert niceness == os.nice(0)
