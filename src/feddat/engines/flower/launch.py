"""Flower's own processes for a feddat run: write the Flower App, start `flower-superlink` and,
per client, a warm feddat worker (worker.py) and a `flower-supernode`, submit with `flwr run`,
wait for the run's end, and stop every process this module started, with all their children
(also on an error or Ctrl-C; and, by a guard process (guard.py), when the launcher is killed).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

from feddat.config import Config
from feddat.engines.flower import guard, transport

BIN = Path(sys.executable).parent  # the daemons start flower-superexec, flwr-serverapp, flwr-clientapp by name
APP_NAME = "feddat-flower"  # a Flower App name: letters, digits and hyphens
LOCAL = "local"  # the [superlink.local] connection a LocalFederation writes

# The Flower App `flwr run` bundles and sends: only this file. Its components are modules of
# the installed feddat package, so every SuperLink / SuperNode host needs feddat installed
# (the SuperLink runs with --disable-runtime-dependency-installation).
APP_PYPROJECT = f"""\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{APP_NAME}"
version = "0.1.0"
description = "feddat on Flower's deployment engine: FedDAT and baselines, one SuperNode per client"
license = "Apache-2.0"
dependencies = ["flwr>=1.41,<1.42", "feddat"]

[tool.flwr.app]
publisher = "feddat"

[tool.flwr.app.components]
serverapp = "feddat.engines.flower.server_app:app"
clientapp = "feddat.engines.flower.client_app:app"

[tool.flwr.app.config]
{transport.RUN_CONFIG_KEY} = ""
{transport.RESUME_KEY} = ""
"""


class FlowerError(RuntimeError):
    """A Flower process or run failed; the message says which and where its log is."""


def write_app(parent: Path) -> Path:
    app = Path(parent) / APP_NAME
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    return app


def write_run_config(cfg: Config, path: Path, resume: bool = False) -> Path:
    Path(path).write_text(transport.run_config_text(cfg, resume))
    return Path(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How often a SuperNode's SuperExec looks for a ClientApp task (Flower's default: every 1 s);
# each message phase waits for it once.
TASK_POLL_INTERVAL_S = "0.05"


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", TASK_POLL_INTERVAL_S)
    # No telemetry (as for a simulation): offline, every Flower process would wait 4 s on its
    # exit report before exiting, past the grace a stopped federation gets (guard.GRACE_S).
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return env


def wait_for_socket(path: Path, process: subprocess.Popen, what: str, log_path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise FlowerError(f"{what} exited with status {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise FlowerError(f"{what} did not listen on {path} within {timeout:.0f}s; see {log_path}")
        time.sleep(0.05)


def wait_for_port(port: int, process: subprocess.Popen, what: str, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FlowerError(f"{what} exited with status {process.returncode}; see {log_path}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise FlowerError(f"{what} did not listen on port {port} within {timeout:.0f}s; see {log_path}")


def tree_of(process: subprocess.Popen) -> list[psutil.Process]:
    """A process and its descendants (none if it is gone)."""
    try:
        return [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(process: subprocess.Popen, grace: float = guard.GRACE_S) -> None:
    """Stop a daemon and everything it started. Flower's SuperExec starts a session of its own,
    so killing the process group is not enough: the descendants are collected first."""
    tree = tree_of(process)
    guard.send(tree, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace)
    guard.send(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace)
    if process.poll() is None:
        process.wait(timeout=grace)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and its descendants (a crash: nothing gets to clean up)."""
    tree = tree_of(process)
    guard.send(tree, signal.SIGKILL)
    psutil.wait_procs(tree, timeout=10)
    process.wait(timeout=10)


class LocalFederation:
    """A SuperLink and one SuperNode per client on 127.0.0.1, each with a log file under `workdir`.

    Use as a context manager: leaving it (normally, on an exception or on Ctrl-C) stops every
    process it started. Every process carries the federation's token in its environment
    (guard.FEDERATION_ENV), also those Flower starts; a guard process stops them all once the
    launcher is gone, however it died.
    """

    def __init__(self, workdir: Path, clients: list[str], node_config: dict[str, str] | None = None, log: Callable[[str], None] = print, warm: bool = True):
        self.workdir = Path(workdir).resolve()
        self.clients = list(clients)
        self.node_config = dict(node_config or {})
        self.log = log
        self.warm = warm  # a feddat worker per SuperNode (worker.py); False: every message loads feddat anew
        self.workers: dict[str, subprocess.Popen] = {}
        self.socket_dir: Path | None = None  # short (Unix socket paths are limited), mode 0700
        self.flwr_home = self.workdir / "flwr-home"
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.env = {**flower_env(self.flwr_home), guard.FEDERATION_ENV: self.token}
        self.guard: subprocess.Popen | None = None
        self.port = 0
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[str, subprocess.Popen] = {}
        self.cli = Flwr(LOCAL, self.workdir, self.env)  # `flwr run`, `flwr ls`, ... against this SuperLink

    # ---- processes -----------------------------------------------------------------------
    def spawn(self, args: list[str], log_name: str) -> tuple[subprocess.Popen, Path]:
        log_path = self.workdir / "logs" / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(args, cwd=self.workdir, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return process, log_path

    def start(self) -> LocalFederation:
        self.guard = guard.start(self.token)  # first: from here on a killed launcher leaves nothing behind
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        if self.warm:
            self.socket_dir = Path(tempfile.mkdtemp(prefix="feddat-w-"))
        self.port = free_port()
        (self.flwr_home / "config.toml").write_text(f'[superlink.{LOCAL}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.superlink, log_path = self.spawn(self.superlink_args(), "superlink.log")
        wait_for_port(self.port, self.superlink, "flower-superlink", log_path)
        for client in self.clients:
            self.start_node(client)
        warm = " with warm feddat workers" if self.warm else ""
        self.log(f"flower: SuperLink on 127.0.0.1:{self.port}, {len(self.clients)} SuperNodes{warm} ({', '.join(self.clients)}); logs in {self.workdir / 'logs'}")
        return self

    def superlink_args(self) -> list[str]:
        # State in a database file, not in memory: a SuperLink restarted after a crash still
        # knows the SuperNodes (they reconnect without registering again) and the runs.
        return [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.port), "--database", str(self.workdir / "superlink.db")]

    def socket_path(self, client: str) -> Path:
        return self.socket_dir / f"{self.clients.index(client)}.sock"

    def start_worker(self, client: str) -> subprocess.Popen:
        """The node's warm worker, answering on its socket before the SuperNode starts."""
        path = self.socket_path(client)
        # A killed worker leaves its socket file behind; waiting for the path to exist must see the new one.
        path.unlink(missing_ok=True)
        self.workers[client], log_path = self.spawn([sys.executable, "-m", "feddat.engines.flower.worker", "--socket", str(path)], f"worker-{client}.log")
        wait_for_socket(path, self.workers[client], f"the feddat worker of client '{client}'", log_path)
        return self.workers[client]

    def start_node(self, client: str) -> subprocess.Popen:
        """A SuperNode for `client` (and, if warm, its worker first)."""
        settings = {transport.PARTITION_KEY: client, transport.STATE_DIR_KEY: str(self.workdir / "node-state" / client), **self.node_config}
        if self.warm:
            self.start_worker(client)
            settings[transport.WORKER_KEY] = str(self.socket_path(client))
        node_config = " ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
        args = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()), "--node-config", node_config]
        self.nodes[client], _ = self.spawn(args, f"supernode-{client}.log")
        return self.nodes[client]

    def kill_node(self, client: str) -> None:
        """SIGKILL a SuperNode, its worker and their children, as a crashed host would vanish."""
        for process in (self.nodes.pop(client), self.workers.pop(client, None)):
            if process is not None:
                kill_tree(process)

    def kill_superlink(self) -> None:
        """SIGKILL the SuperLink and what it started (the ServerApp), as a crashed server would vanish."""
        kill_tree(self.superlink)

    def restart_superlink(self) -> None:
        """A new SuperLink on the same port and FLWR_HOME (the SuperNodes reconnect to it)."""
        self.superlink, log_path = self.spawn(self.superlink_args(), "superlink.log")
        wait_for_port(self.port, self.superlink, "flower-superlink", log_path)

    def processes(self) -> list[subprocess.Popen]:
        return [p for p in (self.superlink, *self.nodes.values(), *self.workers.values(), *self.cli.others) if p is not None]

    def stop(self) -> None:
        """Every process of the federation at once, found by its token (re-parented ones too):
        SIGTERM, SIGKILL after guard.GRACE_S; then the guard."""
        guard.reap(self.token)
        for process in self.processes():
            process.wait()  # reaped above: collects the exit status
        self.cli.others, self.nodes, self.workers, self.superlink = [], {}, {}, None
        if self.guard is not None:
            self.guard.terminate()
            self.guard.wait()
            self.guard = None
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class Flwr:
    """The `flwr` command line against one SuperLink connection of FLWR_HOME/config.toml."""

    def __init__(self, superlink: str, cwd: Path, env: dict[str, str] | None = None):
        self.superlink, self.cwd = superlink, Path(cwd)
        self.env = env or flower_env(Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")))
        self.others: list[subprocess.Popen] = []  # `flwr log --stream` processes, stopped by the caller

    def flwr(self, *args: str, timeout: float = 120.0) -> str:
        done = subprocess.run([str(BIN / "flwr"), *args], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise FlowerError(f"`flwr {' '.join(args)}` failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    def submit(self, cfg: Config, resume: bool = False) -> int:
        """`flwr run` the feddat app with this configuration (resume: continuing the run of
        that name from its last committed round); returns the run id."""
        app = write_app(self.cwd / "app")
        return self.submit_app(app, write_run_config(cfg, self.cwd / "app" / "run-config.toml", resume))

    def submit_app(self, app: Path, run_config: Path) -> int:
        """`flwr run` a Flower App directory with a run-config file; returns the run id."""
        out = json.loads(self.flwr("run", str(app), self.superlink, "--run-config", str(run_config), "--format", "json"))
        if not out.get("success"):
            raise FlowerError(f"`flwr run` did not start the run: {out}")
        return int(out["run-id"])

    def stream_logs(self, run_id: int) -> None:
        """Show the run's log (the ServerApp's output) on this terminal while it runs."""
        self.others.append(subprocess.Popen([str(BIN / "flwr"), "log", str(run_id), self.superlink, "--stream"], cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True))

    def status(self, run_id: int) -> dict:
        runs = json.loads(self.flwr("ls", self.superlink, "--run-id", str(run_id), "--format", "json"))["runs"]
        return runs[0]

    def wait(self, run_id: int, timeout: float, poll: float = 2.0) -> dict:
        """Block until the run finishes; raise FlowerError unless it completed."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.status(run_id)
            if str(info["status"]).startswith("finished"):
                break
            if time.monotonic() > deadline:
                self.flwr("stop", str(run_id), self.superlink)
                raise FlowerError(f"run {run_id} did not finish within {timeout:.0f}s (stopped); log:\n{self.run_log(run_id)}")
            time.sleep(poll)
        if info["status"] != "finished:completed":
            raise FlowerError(f"run {run_id} ended {info['status']} ({info.get('status-details')}); log:\n{self.run_log(run_id)}")
        return info

    def run_log(self, run_id: int) -> str:
        try:
            return self.flwr("log", str(run_id), self.superlink, "--show", timeout=60)[-6000:]
        except (FlowerError, subprocess.TimeoutExpired) as err:
            return f"(no log: {err})"
