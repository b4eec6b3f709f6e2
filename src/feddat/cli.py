"""Command line: `feddat run [--config FILE] [--section.key VALUE ...]`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from feddat import config as config_mod
from feddat.config import ConfigError


def _run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        allow_abbrev=False,
        help="train methods on a benchmark and print the results table",
        description="Train the configured methods on one benchmark with the embedded engine. "
        "Defaults: minivl backbone (offline), synthetic domain benchmark, FedDAT vs FedAvg+Adapter. "
        "Values come from the defaults, then --config FILE (TOML, sections as below), then these flags.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with [run], [backbone], [adapter], [feddat], [train], [federation], [data] tables")
    for key, f, _ in config_mod.iter_fields():
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if isinstance(default, list):
            default = ",".join(map(str, default))
        p.add_argument(f"--{key}", dest=key, metavar="V", default=None, help=f"{f.metadata['help']} (default: {default!r})")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddat", description="Federated Dual-Adapter Teacher and baselines for vision-language PEFT.")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    return parser


def command_run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    cfg = config_mod.load(args.config, overrides)
    from feddat.engines.runner import run_experiment

    run_experiment(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return command_run(args)
    except ConfigError as err:
        print(f"feddat: config error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"feddat: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("feddat: interrupted; results written so far are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
