"""`feddat flower local` (a whole federation on this machine) and `feddat flower app` (the files
`flwr run` needs for a real deployment). Imports of Flower happen inside the commands, so that
`feddat run` does not pay for them."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from feddat import config as config_mod

LOCAL_HELP = (
    "Start a SuperLink and one SuperNode per client on 127.0.0.1, submit the run with `flwr run`, "
    "stream its log, and stop every process started (also on an error or Ctrl-C). The run directory "
    "is written by the ServerApp as with `feddat run`."
)


def add_parser(sub, add_config_flags) -> None:
    p = sub.add_parser("flower", help="run on Flower's deployment engine (SuperLink, SuperNodes, flwr run)", description="Run experiments on Flower's deployment engine; see README, Running across machines.")
    commands = p.add_subparsers(dest="flower_command", required=True)
    local = commands.add_parser("local", allow_abbrev=False, help="a whole local federation on this machine, for trying it out", description=LOCAL_HELP)
    local.add_argument("--workdir", metavar="DIR", help="where the daemons' logs, FLWR_HOME and the nodes' private state go (default: a temporary folder, removed afterwards)")
    local.add_argument("--timeout", metavar="S", type=float, default=24 * 3600.0, help="stop the run after S seconds (default: a day)")
    local.add_argument("--config", metavar="FILE", help="TOML configuration, as for `feddat run`")
    add_config_flags(local)
    local.set_defaults(handler=command_local)
    app = commands.add_parser("app", allow_abbrev=False, help="write the Flower App and its run config for `flwr run`", description="Write DIR/feddat-flower/pyproject.toml (the Flower App) and DIR/run-config.toml (this configuration), then print the `flwr run` command.")
    app.add_argument("dir", metavar="DIR")
    app.add_argument("--config", metavar="FILE", help="TOML configuration, as for `feddat run`")
    add_config_flags(app)
    app.set_defaults(handler=command_app)


def load_config(args: argparse.Namespace):
    from feddat.algorithms import check_methods

    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    cfg = config_mod.load(args.config, overrides)
    check_methods(cfg.run.methods)  # config.load cannot: the method registry sits above it
    return cfg


def absolute_paths(cfg):
    """The daemons do not run in this directory: make the run's local paths absolute."""
    cfg.run.out_dir = str(Path(cfg.run.out_dir).resolve())
    for section, key in (("data", "root"), ("data", "cache_dir"), ("backbone", "path")):
        value = getattr(getattr(cfg, section), key)
        if value and Path(value).exists():
            setattr(getattr(cfg, section), key, str(Path(value).resolve()))
    return cfg


def command_app(args: argparse.Namespace) -> int:
    from feddat.engines.flower.launch import write_app, write_run_config

    cfg = load_config(args)
    out = Path(args.dir)
    app = write_app(out)
    run_config = write_run_config(cfg, out / "run-config.toml")
    print(f"wrote {app / 'pyproject.toml'} and {run_config}\nsubmit with:\n  flwr run {app} <superlink-connection> --run-config {run_config} --stream")
    return 0


def command_local(args: argparse.Namespace) -> int:
    from feddat.engines.flower.launch import FlowerError, LocalFederation
    from feddat.engines.flower.partitions import client_names

    cfg = absolute_paths(load_config(args))
    cfg.run.name = cfg.run.name or f"{cfg.data.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"  # known here, to print it
    clients = client_names(cfg)
    # Ctrl-C and SIGTERM (`kill`, a closed session) both clean up; SIGINT is restored explicitly
    # because a shell starting us in the background sets it to "ignore".
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="feddat-flower-") as tmp:
        workdir = Path(args.workdir or tmp)
        try:
            with LocalFederation(workdir, clients) as fed:
                run_id = fed.cli.submit(cfg)
                print(f"flower: run {run_id} submitted; its log follows", flush=True)
                fed.cli.stream_logs(run_id)
                fed.cli.wait(run_id, args.timeout)
                for streamer in fed.cli.others:  # let the log reach its end before stopping it
                    try:
                        streamer.wait(timeout=10)
                    except Exception:  # noqa: BLE001 - stopped with the federation below
                        pass
        except FlowerError as err:
            print(f"feddat: flower: {err}", file=sys.stderr)
            return 1
    print(f"flower: run {run_id} completed; results in {Path(cfg.run.out_dir) / cfg.run.name}")
    return 0
