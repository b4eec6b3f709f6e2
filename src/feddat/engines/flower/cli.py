"""`feddat flower local` (a whole federation on this machine), `feddat flower simulate` (Flower's
simulation engine: virtual SuperNodes on Ray) and `feddat flower app` (the files `flwr run`
needs for a real deployment). Imports of Flower happen inside the commands, so that
`feddat run` does not pay for them."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from feddat import config as config_mod

LOCAL_HELP = (
    "Start a SuperLink and one SuperNode per client on 127.0.0.1, submit the run with `flwr run`, "
    "stream its log, and stop every process started (also on an error or Ctrl-C). The run directory "
    "is written by the ServerApp as with `feddat run`."
)
SIMULATE_HELP = (
    "Run the same ServerApp and ClientApp on Flower's simulation engine: one virtual SuperNode per "
    "client, the ClientApps run by Ray on this machine (each with run.threads CPUs), in this process; "
    "Ray is stopped afterwards. The run directory is written by the ServerApp as with `feddat run`."
)


def add_parser(sub, add_config_flags) -> None:
    p = sub.add_parser("flower", help="run on Flower's deployment engine (SuperLink, SuperNodes, flwr run) or its simulation engine", description="Run experiments on Flower's deployment engine or its simulation engine; see docs/guide/flower.md.")
    commands = p.add_subparsers(dest="flower_command", required=True)
    local = commands.add_parser("local", allow_abbrev=False, help="a whole local federation on this machine, for trying it out", description=LOCAL_HELP)
    local.add_argument("--workdir", metavar="DIR", help="where the daemons' logs, FLWR_HOME and the nodes' private state go (default: RUN_DIR.flower beside the run directory, kept so that --resume finds the nodes' state)")
    local.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted Flower run from its last committed round (uses RUN_DIR/config.toml and the same workdir; no other options)")
    local.add_argument("--cold", action="store_true", help="no warm feddat worker per SuperNode: every message loads torch, the model and the data anew (slow; Flower's default)")
    local.add_argument("--timeout", metavar="S", type=float, default=24 * 3600.0, help="stop the run after S seconds (default: a day)")
    local.add_argument("--config", metavar="FILE", help="TOML configuration, as for `feddat run`")
    add_config_flags(local)
    local.set_defaults(handler=command_local)
    simulate = commands.add_parser("simulate", allow_abbrev=False, help="Flower's simulation engine: virtual SuperNodes on Ray, on this machine", description=SIMULATE_HELP)
    simulate.add_argument("--config", metavar="FILE", help="TOML configuration, as for `feddat run`")
    add_config_flags(simulate)
    simulate.set_defaults(handler=command_simulate)
    app = commands.add_parser("app", allow_abbrev=False, help="write the Flower App and its run config for `flwr run`", description="Write DIR/feddat-flower/pyproject.toml (the Flower App) and DIR/run-config.toml (this configuration), then print the `flwr run` command.")
    app.add_argument("dir", metavar="DIR")
    app.add_argument("--config", metavar="FILE", help="TOML configuration, as for `feddat run`")
    app.add_argument("--resume", metavar="RUN_DIR", help="write the run config that continues the interrupted run in RUN_DIR (on the ServerApp's host) from its last committed round")
    add_config_flags(app)
    app.set_defaults(handler=command_app)
    worker = commands.add_parser("worker", allow_abbrev=False, help="the warm feddat worker of one SuperNode (start it beside flower-supernode)", description="Keep torch, the backbone and the client's data loaded across the messages of a run: the SuperNode's ClientApp forwards each message to this process over a Unix socket reachable only by this user. Give the SuperNode the same path: --node-config 'worker=\"PATH\"'.")
    worker.add_argument("--socket", required=True, metavar="PATH", help="the Unix socket to listen on (at most 100 bytes long; its folder is made private to this user)")
    worker.set_defaults(handler=command_worker)


def load_config(args: argparse.Namespace):
    from feddat.algorithms import check_methods
    from feddat.engines.selection import refuse_on_flower

    if getattr(args, "resume", None):
        return resumed_config(args)
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    cfg = config_mod.load(args.config, overrides)
    check_methods(cfg.run.methods)  # config.load cannot: the method registry sits above it
    refuse_on_flower(cfg)  # before any daemon starts
    return cfg


def resumed_config(args: argparse.Namespace):
    """The interrupted run's own configuration (its config.toml), named after its directory."""
    from feddat.engines.rundir import resumable

    if args.config or any("." in k and v is not None for k, v in vars(args).items()):
        raise config_mod.ConfigError("--resume continues a run with its own config.toml; it takes no --config or other options")
    run_dir = Path(args.resume).resolve()
    cfg = resumable(run_dir)
    cfg.run.out_dir, cfg.run.name = str(run_dir.parent), run_dir.name
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
    named = ""
    if not cfg.run.name:
        # Named here, as `flower local` names its runs: the nodes keep a client's private state
        # under the run's name (transport.run_key), else under the Flower run id, which a
        # resubmitted run (--resume) does not have, so it would start the clients afresh.
        cfg.run.name = f"{cfg.data.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
        named = f"\nthe run is named {cfg.run.name} (--run.name to choose): its results go to {Path(cfg.run.out_dir) / cfg.run.name} on the ServerApp's host"
    out = Path(args.dir)
    app = write_app(out)
    run_config = write_run_config(cfg, out / "run-config.toml", resume=bool(args.resume))
    print(f"wrote {app / 'pyproject.toml'} and {run_config}{named}\nsubmit with:\n  flwr run {app} <superlink-connection> --run-config {run_config} --stream")
    return 0


def command_local(args: argparse.Namespace) -> int:
    from feddat.engines.flower.launch import FlowerError, LocalFederation
    from feddat.engines.flower.partitions import client_names
    from feddat.runtime import check_device

    cfg = absolute_paths(load_config(args))
    check_device(cfg.run.device)  # here, not in the ServerApp after the daemons have started
    cfg.run.name = cfg.run.name or f"{cfg.data.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"  # known here, to print it
    clients = client_names(cfg)
    # Beside the run directory, not in it (the ServerApp makes that), and kept: a resumed run
    # finds its nodes' private state there.
    workdir = Path(args.workdir or Path(cfg.run.out_dir) / f"{cfg.run.name}.flower")
    # Ctrl-C and SIGTERM (`kill`, a closed session) both clean up; SIGINT is restored explicitly
    # because a shell starting us in the background sets it to "ignore".
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with LocalFederation(workdir, clients, warm=not args.cold) as fed:
            run_id = fed.cli.submit(cfg, resume=bool(args.resume))
            print(f"flower: run {run_id} submitted{' (resuming)' if args.resume else ''}; its log follows", flush=True)
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
    print(f"flower: run {run_id} completed; results in {Path(cfg.run.out_dir) / cfg.run.name} (daemons' logs and node state in {workdir})")
    return 0


def command_worker(args: argparse.Namespace) -> int:
    from feddat.engines.flower.worker import main

    return main(["--socket", args.socket])


def command_simulate(args: argparse.Namespace) -> int:
    from feddat.engines.flower.simulation import run_simulation
    from feddat.runtime import check_device

    cfg = absolute_paths(load_config(args))  # Ray's worker processes need not share our directory
    check_device(cfg.run.device)  # before Ray starts
    # SIGTERM unwinds like Ctrl-C, so that Ray is shut down (simulation.ray_session).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run_dir = run_simulation(cfg)
    except RuntimeError as err:  # the ServerApp's FlowerRunError, or Flower's own "simulation crashed"
        print(f"feddat: flower simulate: {reasons(err)}", file=sys.stderr)
        return 1
    print(f"flower simulation: completed; results in {run_dir}")
    return 0


def reasons(err: BaseException) -> str:
    """The error and what caused it: Flower wraps the real reason ('ActorPool is empty...')
    in generic ones ('An error was encountered. Ending simulation.')."""
    chain = []
    while err is not None:
        chain.append(str(err) or type(err).__name__)
        err = err.__cause__
    return ": ".join(chain)
