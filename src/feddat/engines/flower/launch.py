"""Flower's own processes for a feddat run: write the Flower App, start `flower-superlink` and
`flower-supernode`s, submit with `flwr run`, wait for the run's end, and stop every process
this module started, with all their children (also on an error or Ctrl-C).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil

from feddat.config import Config
from feddat.engines.flower import transport

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
"""


class FlowerError(RuntimeError):
    """A Flower process or run failed; the message says which and where its log is."""


def write_app(parent: Path) -> Path:
    app = Path(parent) / APP_NAME
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(APP_PYPROJECT)
    return app


def write_run_config(cfg: Config, path: Path) -> Path:
    Path(path).write_text(transport.run_config_text(cfg))
    return Path(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(flwr_home)
    return env


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


def stop_tree(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a daemon and everything it started. Flower's SuperExec starts a session of its own,
    so killing the process group is not enough: the descendants are collected first."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    if process.poll() is None:
        process.wait(timeout=grace)


class LocalFederation:
    """A SuperLink and one SuperNode per client on 127.0.0.1, each with a log file under `workdir`.

    Use as a context manager: leaving it (normally, on an exception or on Ctrl-C) stops every
    process it started.
    """

    def __init__(self, workdir: Path, clients: list[str], node_config: dict[str, str] | None = None, log: Callable[[str], None] = print):
        self.workdir = Path(workdir).resolve()
        self.clients = list(clients)
        self.node_config = dict(node_config or {})
        self.log = log
        self.flwr_home = self.workdir / "flwr-home"
        self.env = flower_env(self.flwr_home)
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
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.flwr_home / "config.toml").write_text(f'[superlink.{LOCAL}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.superlink, log_path = self.spawn([str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(self.port)], "superlink.log")
        wait_for_port(self.port, self.superlink, "flower-superlink", log_path)
        for client in self.clients:
            self.start_node(client)
        self.log(f"flower: SuperLink on 127.0.0.1:{self.port}, {len(self.clients)} SuperNodes ({', '.join(self.clients)}); logs in {self.workdir / 'logs'}")
        return self

    def start_node(self, client: str) -> subprocess.Popen:
        settings = {transport.PARTITION_KEY: client, transport.STATE_DIR_KEY: str(self.workdir / "node-state" / client), **self.node_config}
        node_config = " ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
        args = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()), "--node-config", node_config]
        self.nodes[client], _ = self.spawn(args, f"supernode-{client}.log")
        return self.nodes[client]

    def kill_node(self, client: str) -> None:
        """SIGKILL a SuperNode and its children, as a crashed host would vanish."""
        process = self.nodes.pop(client)
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        for p in tree:
            p.kill()
        psutil.wait_procs(tree, timeout=10)
        process.wait(timeout=10)

    def processes(self) -> list[subprocess.Popen]:
        return [p for p in (self.superlink, *self.nodes.values(), *self.cli.others) if p is not None]

    def stop(self) -> None:
        for process in [*self.cli.others, *self.nodes.values(), self.superlink]:
            if process is not None:
                stop_tree(process)
        self.cli.others, self.nodes, self.superlink = [], {}, None

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

    def submit(self, cfg: Config) -> int:
        """`flwr run` the feddat app with this configuration; returns the run id."""
        app = write_app(self.cwd / "app")
        run_config = write_run_config(cfg, self.cwd / "app" / "run-config.toml")
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
