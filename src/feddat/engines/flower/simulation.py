"""Flower's simulation engine: the feddat ServerApp and ClientApp, one virtual SuperNode per
client, all on this machine, with Ray running the ClientApps (`feddat flower simulate`).

The same two apps as the deployment engine (server_app.py, client_app.py) and the same run
config: the Flower App `flwr run` submits (launch.write_app) with the feddat configuration as
its one run-config key (transport.run_config_text). Virtual node i serves client
`client_names(cfg)[i]` (its node config has only 'partition-id', partitions.node_partition)
and keeps its private state under the run directory (transport.node_state_root).

Flower 1.41's public `flwr.simulation.run_simulation(server_app, client_app, ...)` gives the
apps an empty run config and offers no way to set one. So this module makes the call Flower's
own simulation process (`flwr-simulation`, behind `flwr run` on a simulation federation)
makes: `_run_simulation` with a `Run` carrying the run config as its override, and the App's
directory for the nodes to read it from. It is private API: flwr is pinned below 1.42.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import tomllib
import warnings
from pathlib import Path
from typing import Callable, Iterator

from feddat.config import Config
from feddat.engines.flower import transport
from feddat.engines.flower.partitions import client_names

Log = Callable[[str], None]
# Ray's object store holds messages and contexts in flight (A_s and metrics: small); Ray's
# default (30% of memory) would reserve gigabytes. 128 MiB is well above Ray's 75 MiB floor.
OBJECT_STORE_BYTES = 128 * 1024**2
# Set for the duration of a simulation only (a value the user set wins): no usage reports from
# Ray, no telemetry from Flower (a machine without a network would only wait for their
# timeouts); and the ClientApps at normal priority: Ray starts its workers at niceness 15, so on
# a machine with other work they get a few percent of a core, and a round that takes seconds
# alone took over ten minutes beside two busy processes (the SuperNodes never answered).
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0", "RAY_worker_niceness": "0"}


def run_simulation(cfg: Config, log: Log = print) -> Path:
    """Run every configured method on Flower's simulation engine; returns the run directory
    (written by the ServerApp, as by `feddat run`). Ray is started for this run, in a temporary
    folder of its own, and shut down afterwards, also on an error."""
    from feddat.engines.flower import client_app, server_app
    from feddat.engines.flower.launch import write_app

    cfg = named(cfg)
    clients = client_names(cfg)
    backend = backend_config(cfg, len(clients))
    log(f"flower simulation: {len(clients)} virtual SuperNodes ({', '.join(clients)}); each ClientApp gets {backend['client_resources']}")
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    with tempfile.TemporaryDirectory(prefix="feddat-sim-") as tmp, quiet_environment(), ray_session(run_dir / "ray-logs") as ray_tmp:
        backend["init_args"]["_temp_dir"] = str(ray_tmp)
        app_dir = write_app(Path(tmp))  # the Flower App `flwr run` would submit: its run-config key
        simulate(server_app.app, client_app.app, len(clients), backend, app_dir, transport.run_config_text(cfg))
    return run_dir


def named(cfg: Config) -> Config:
    """The run needs its name before it starts: it names the run directory we return, and
    the folder where each virtual node keeps its private state (transport.run_key)."""
    cfg.run.name = cfg.run.name or f"{cfg.data.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg.run.out_dir = str(Path(cfg.run.out_dir).resolve())
    return cfg


def uses_cuda(cfg: Config) -> bool:
    from feddat.runtime import pick_device  # run.device = cuda without a GPU fails here, before Ray starts

    return pick_device(cfg.run.device).type == "cuda"


def backend_config(cfg: Config, num_clients: int) -> dict:
    """Flower's Ray backend config: `client_resources` per virtual ClientApp (Ray runs as many
    at once as fit), `init_args` for `ray.init`."""
    cores = os.cpu_count() or 1
    cpus = cfg.run.threads or cores  # run.threads 0 means all cores, as for torch (runtime.set_threads)
    # Ray must have room for one ClientApp at least, even where run.threads exceeds the cores.
    init_args = {"num_cpus": max(cores, cpus), "include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING", "object_store_memory": OBJECT_STORE_BYTES}
    resources = {"num_cpus": cpus, "num_gpus": 0.0}
    if uses_cuda(cfg):
        import torch

        gpus = torch.cuda.device_count()
        # The GPUs shared by the ClientApps that run at once (no more than there are clients);
        # Ray sets each one's CUDA_VISIBLE_DEVICES. Without a share, Ray hides the GPUs.
        at_once = max(1, min(num_clients, max(cores, cpus) // cpus))
        resources["num_gpus"] = gpus / at_once
        init_args["num_gpus"] = gpus
    return {"client_resources": resources, "init_args": init_args}


@contextlib.contextmanager
def quiet_environment() -> Iterator[None]:
    """QUIET_ENV while the simulation runs, and the variables as they were afterwards (Flower's
    Ray backend also rewrites PYTHONPATH, for the Ray workers)."""
    keys = [*QUIET_ENV, "PYTHONPATH"]
    saved = {k: os.environ.get(k) for k in keys}
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(keep_logs_in: Path) -> Iterator[Path]:
    """A temporary folder for a Ray instance of this run's own (Flower's backend starts it with
    the backend config's init_args), and Ray stopped afterwards: Flower's backend stops it at the
    end of a run, this covers a failure before Flower gets to it. When the run fails, Ray's
    logs (its workers' output, the actors' errors) are copied to `keep_logs_in` first: they are
    what explains a ClientApp that never answered."""
    import ray

    if ray.is_initialized():  # Flower would reuse it, with its resources and temp dir, not ours
        raise RuntimeError("Ray is already running in this process; shut it down (ray.shutdown()) before a feddat simulation")
    # Ray's Unix socket paths must stay under ~107 characters: a short folder under the system's tmp.
    ray_tmp = Path(tempfile.mkdtemp(prefix="feddat-ray-"))
    try:
        with warnings.catch_warnings():
            # Ray 2.55's tip that it may one day stop hiding the GPUs from ClientApps given 0 of
            # them: hiding them is what a CPU run wants, and ray is pinned (constraints.txt).
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            yield ray_tmp
    except BaseException as err:
        kept = keep_ray_logs(ray_tmp, keep_logs_in)
        if kept and isinstance(err, RuntimeError):
            raise RuntimeError(f"{err} (Ray's logs of this run: {kept})") from err.__cause__
        raise
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def keep_ray_logs(ray_tmp: Path, dest: Path) -> Path | None:
    """Ray's session logs copied to `dest` (None if Ray wrote none, or they can't be copied:
    keeping them must not hide the error being reported)."""
    logs = ray_tmp / "session_latest" / "logs"
    if not logs.is_dir():
        return None
    try:
        shutil.copytree(logs, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
    except OSError:
        return None
    return dest


def simulate(server, client, num_supernodes: int, backend: dict, app_dir: Path, run_config_text: str) -> None:
    """What `flwr-simulation` does with a submitted run: one Run whose override config is the
    run config; the ServerApp's context and every node's read it (fused with the App's)."""
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    override = tomllib.loads(run_config_text)  # as `flwr run --run-config FILE` reads the file
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.override_config, run.federation_id = override, NOOP_FEDERATION_ID
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    # The ServerApp's messages take their source from the task identity of this process
    # (set as the public run_simulation sets it, which passing our own Run skips).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    run_config = get_fused_config_from_dir(app_dir, override)
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    _run_simulation(
        num_supernodes=num_supernodes, server_app=server, client_app=client, backend_name="ray", backend_config=backend,
        server_app_context=context, app_dir=str(app_dir), is_app=True, run=run,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
    )
