"""Every process of a local federation dies with the process that launched it, however that
process dies (an exception, Ctrl-C twice, SIGTERM, SIGKILL, a closed terminal).

A LocalFederation (launch.py) sets FEDERATION_ENV to a token of its own in the environment of
every process it starts; Flower's daemons pass their environment on to what they start
(SuperExec, ServerApp and ClientApp processes, each in a session of its own), so the token
marks the whole federation, wherever it was re-parented. A guard process, started first and
in a session of its own (a signal to the launcher's process group does not reach it), watches
its parent: once the launcher is gone it stops every process carrying the token and exits.
The launcher's own orderly stop uses the same `reap`.

Light on purpose (psutil and the standard library): it idles beside every local federation.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import psutil

FEDERATION_ENV = "FEDDAT_FEDERATION"
POLL_S = 0.5  # how soon after the launcher's death the federation is stopped
GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long: everything is gone within ~5 s


def members(token: str) -> list[psutil.Process]:
    """The running processes carrying the federation's token (never this process)."""
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(FEDERATION_ENV) == token:
                found.append(process)
        except (psutil.Error, OSError):  # gone meanwhile, or another user's
            pass
    return running(found)


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those not yet exited. An exited one stays a zombie until its parent collects it, and
    Flower's daemons never collect theirs: a zombie counts as gone."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.Error:
            pass
    return alive


def send(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """-> those still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = running(processes)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = running(alive)
    return alive


def reap(token: str, grace: float = GRACE_S) -> None:
    """SIGTERM every process of the federation at once, SIGKILL what is left after `grace`
    seconds. Looked for again until none is found: a SuperExec may start a ClientApp meanwhile."""
    signum, wait = signal.SIGTERM, grace
    for _ in range(10):
        found = members(token)
        if not found:
            return
        send(found, signum)
        send(wait_gone(found, wait), signal.SIGKILL)
        signum, wait = signal.SIGKILL, 2.0  # latecomers get no grace


def start(token: str) -> subprocess.Popen:
    """A guard for the federation `token`, watching this process. Its environment lacks the
    token: it is not a member of what it stops."""
    env = {k: v for k, v in os.environ.items() if k != FEDERATION_ENV}
    args = [sys.executable, "-m", "feddat.engines.flower.guard", "--token", token, "--parent", str(os.getpid())]
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feddat.engines.flower.guard", description="Stop a local federation once the process that launched it is gone.")
    parser.add_argument("--token", required=True, help=f"the federation's {FEDERATION_ENV} value")
    parser.add_argument("--parent", type=int, required=True, help="the launcher's pid (this process's parent)")
    args = parser.parse_args(argv)
    stopping = []
    # SIGTERM (the launcher's orderly stop) and SIGINT also stop the federation, then the guard.
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    while not stopping and os.getppid() == args.parent:  # re-parented: the launcher died
        time.sleep(POLL_S)
    reap(args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
