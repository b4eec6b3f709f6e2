"""Command line: `feddat run [--config FILE] [--section.key VALUE ...]`, `feddat data describe ...`."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from pathlib import Path

from feddat import config as config_mod
from feddat.commands import positive_int
from feddat.config import ConfigError


def _run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        allow_abbrev=False,
        help="train methods on a benchmark and print the results table",
        description="Train the configured methods on one benchmark with the embedded engine. "
        "Defaults: the packaged foundation backbone (offline), synthetic domain benchmark, FedDAT vs FedAvg+Adapter. "
        "Values come from the defaults, then --config FILE (TOML, sections as below), then these flags.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with [run], [backbone], [adapter], [feddat], [train], [federation], [data] tables")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint (uses RUN_DIR/config.toml; no other options but --run.threads)")
    add_config_flags(p)
    return p


def add_config_flags(p: argparse.ArgumentParser, section: str = "") -> None:
    """One --section.key flag per configuration key (also used by `feddat flower`): every key but
    the [pretrain] ones, or only those of `section`."""
    for key, f, _ in config_mod.iter_fields():
        if (key.split(".")[0] != section) if section else key.startswith("pretrain."):
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if isinstance(default, list):
            default = ",".join(map(str, default))
        p.add_argument(f"--{key}", dest=key, metavar="V", default=None, help=f"{f.metadata['help']} (default: {default!r})")


def _data_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("data", help="inspect a benchmark's clients (sizes, answer distributions, heterogeneity)")
    actions = p.add_subparsers(dest="data_command", required=True)
    d = actions.add_parser(
        "describe",
        allow_abbrev=False,
        help="print per-client sizes, answer distributions and heterogeneity; optionally save a heat map",
        description="Describe the clients of the configured benchmark and partition (no backbone is loaded). "
        "Example: feddat data describe --data.benchmark shapes --data.partition dirichlet --data.num_clients 20 --data.alpha 0.3 --plot skew.png",
    )
    d.add_argument("--config", metavar="FILE", help="TOML file; only its [data] table (and [backbone] image size for public data) matter")
    d.add_argument("--plot", metavar="PNG", help="save a heat map of each client's answer distribution to this file")
    d.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    d.add_argument("--top", type=positive_int, default=5, metavar="N", help="most frequent answers listed per client, 1 or more (default 5)")
    for key, f, _ in config_mod.iter_fields():
        if key.startswith("data.") or key == "backbone.image_size":
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            d.add_argument(f"--{key}", dest=key, metavar="V", default=None, help=f"{f.metadata['help']} (default: {default!r})")
    return p


def command_data(args: argparse.Namespace) -> int:
    from feddat.data import faults
    from feddat.data.clients import in_vocabulary
    from feddat.data.describe import heatmap, report, summary
    from feddat.data.sources import raw_clients
    from feddat.runtime import write_json

    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    cfg = config_mod.load(args.config, overrides)
    d = cfg.data
    # before the data are read: a picture under another extension, or a folder where a file goes
    if args.plot and Path(args.plot).suffix.lower() != ".png":
        raise ConfigError(f"--plot {args.plot}: the heat map is a PNG; name a .png file")
    for option, path in (("--plot", args.plot), ("--json", args.json)):
        if path and Path(path).is_dir():
            raise ConfigError(f"{option} {path} is a folder; name the file to write")
    with faults.applied(d.on_bad_record, lambda message: print(message, file=sys.stderr)):
        # answers are all it needs; cut to the answer vocabulary as a run cuts them
        clients = [in_vocabulary(c, d.max_answers) for c in raw_clients(cfg, with_images=False)]
    stats = summary(clients, top=args.top, max_answers=d.max_answers)
    print(("" if d.benchmark == "folder" else f"{d.source} ") + f"{d.benchmark} benchmark, partition {d.partition}" + (f" (alpha {d.alpha})" if d.partition in ("dirichlet", "quantity") else "") + f", {len(clients)} clients, seed {d.seed}\n")
    print(report(stats))
    if args.json:
        write_json(args.json, {"data": dataclasses.asdict(d), **stats})
    if args.plot:
        title = f"{d.benchmark}: partition {d.partition}" + (f", alpha {d.alpha}" if d.partition in ("dirichlet", "quantity") else "")
        print(f"heat map written to {heatmap(clients, args.plot, title=title)}")
    return 0



def _compare_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="run (or collect) many methods over several seeds; write tables, costs and plots",
        description="Train every listed method on one benchmark for each seed (one run directory each, under OUT/runs), "
        "reusing finished runs and continuing unfinished ones, then write OUT/table.md, table.csv, costs.csv and OUT/plots/*.png. "
        "With --from, only report on finished run directories. "
        "Example: feddat compare --methods all --seeds 0,1,2 --matched fedavg,fedprox --data.benchmark function",
    )
    p.add_argument("--methods", default=None, metavar="LIST", help="comma-separated methods, presets (feddat_nokd, feddat_oneway, feddat_clientonly, feddat_frozenonly), "
                   "groups (all, feddat_family, peft_kinds, adapter_fl, server_opt) or label=method:key=value:key=value (default: all)")
    p.add_argument("--seeds", default=None, metavar="LIST", help="training seeds (default: 0,1,2)")
    p.add_argument("--matched", default="", metavar="LIST", help="baselines to also run at the reference's compute per round (more local epochs); 'all' for every cheaper baseline")
    p.add_argument("--reference", default="", metavar="LABEL", help="method the differences are measured against (default: feddat)")
    p.add_argument("--out", metavar="DIR", help="comparison folder (default: runs/compare-<benchmark>; with --from, runs/compare-<benchmark>-from)")
    p.add_argument("--from", dest="from_dirs", nargs="+", metavar="RUN_DIR", help="report on these finished run directories instead of training (into a folder of its own: never one that holds another comparison)")
    p.add_argument("--config", metavar="FILE", help="TOML file, as for `feddat run` (run.methods and run.seed are set per run)")
    add_config_flags(p)
    for action in p._actions:  # parsed, to be refused by name (command_compare), but not offered
        if action.dest in SET_BY_COMPARE:
            action.help = argparse.SUPPRESS
        if action.dest == "run.out_dir":
            action.help = "parent folder of the default comparison folder, <run.out_dir>/compare-<benchmark>; not with --out (default: 'runs')"
    return p


# What compare sets for every run itself, and the option that says it instead: a --run.seed
# would be silently replaced by each of --seeds, a --run.name by OUT/runs/<label>/seed<N>.
SET_BY_COMPARE = {"run.seed": "--seeds", "run.methods": "--methods", "run.name": "--out"}


def check_compare_flags(args: argparse.Namespace) -> None:
    """Refuse the configuration flags compare would silently override, naming its own option."""
    for key, option in SET_BY_COMPARE.items():
        value = getattr(args, key, None)
        if value is not None:
            what = f"use {option} {value}" if key != "run.name" else f"name the comparison folder with {option} (each run goes to OUT/runs/<label>/seed<N>)"
            raise ValueError(f"`feddat compare` takes no --{key}: it sets {key} for every run itself; {what}")
    if args.out and getattr(args, "run.out_dir", None) is not None:
        raise ValueError("--run.out_dir only places the default comparison folder (<run.out_dir>/compare-<benchmark>), which --out replaces; give one of them")
    if args.from_dirs:  # the runs were trained already: what would train them changes nothing
        given = [f"--{k}" for k, v in vars(args).items() if "." in k and v is not None and k != "run.out_dir"]
        given += [option for option, v in (("--config", args.config), ("--methods", args.methods), ("--seeds", args.seeds), ("--matched", args.matched or None)) if v is not None]
        if given:
            raise ValueError(f"--from reports on finished runs as they were trained: {', '.join(given)} would change nothing; drop {'it' if len(given) == 1 else 'them'} (--out or --run.out_dir place the report)")


def command_compare(args: argparse.Namespace) -> int:
    from feddat import compare
    from feddat.runtime import check_device

    check_compare_flags(args)
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    cfg = config_mod.load(args.config, overrides)
    if args.from_dirs:
        # its own folder (default <run.out_dir>/compare-<benchmark>-from), never a `feddat compare` one
        out = compare.report_from_dirs([Path(d) for d in args.from_dirs], Path(args.out) if args.out else None, args.reference or None, out_root=Path(cfg.run.out_dir))
    else:
        check_device(cfg.run.device)  # before the comparison folder is written
        out = Path(args.out or Path(cfg.run.out_dir) / f"compare-{cfg.data.benchmark}")
        variants = compare.parse_variants([m for m in (args.methods or "all").split(",") if m.strip()])
        compare.check_reference(args.reference or None, [v.label for v in variants])  # before any training
        if args.matched:
            reference = args.reference or compare.default_reference([v.label for v in variants])
            variants += compare.matched_variants(variants, [m.strip() for m in args.matched.split(",") if m.strip()], reference, cfg)
        seeds_text = "0,1,2" if args.seeds is None else args.seeds
        try:
            seeds = [int(s) for s in seeds_text.split(",") if s.strip()]
        except ValueError as err:
            raise ConfigError(f"--seeds takes comma-separated integers, got '{args.seeds}'") from err
        if not seeds:
            raise ConfigError("--seeds is empty")
        compare.run_compare(cfg, variants, seeds, out, args.reference or None)
    print(f"feddat: comparison written to {out}/table.md (plots in {out}/plots)")
    return 0

def _pretrain_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pretrain",
        allow_abbrev=False,
        help="build a vision-language foundation checkpoint offline (masked words from the image + image-text matching)",
        description="Pretrain the fusion encoder and image projector on an image-caption corpus (the procedural one, or yours with "
        "--pretrain.corpus folder --pretrain.root DIR) and write a foundation checkpoint (card.json + foundation.safetensors) to "
        "--pretrain.out. Use it with: feddat run --backbone.name foundation --backbone.path DIR. "
        "Example: feddat pretrain --pretrain.steps 200 --pretrain.corpus_size 2000 --pretrain.out runs/pretrain-small",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with a [pretrain] table")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted pretraining run in DIR from its last committed step (its own recipe; no other options)")
    add_config_flags(p, section="pretrain")
    return p


def command_pretrain(args: argparse.Namespace) -> int:
    from feddat.pretrain.train import STATE_DIR, pretrain
    from feddat.runtime import read_json

    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    if args.resume:
        if overrides or args.config:
            raise ConfigError("--resume continues a pretraining run with its own recipe; it takes no --config or other options")
        progress = Path(args.resume) / STATE_DIR / "progress.json"
        if not progress.is_file():
            hint = "; it was stopped before its first committed step: start it again without --resume" if (Path(args.resume) / STATE_DIR).is_dir() else ""
            raise ConfigError(f"{args.resume} holds no pretraining run to resume ({progress} is missing){hint}")
        committed = read_json(progress)
        if not isinstance(committed, dict) or not isinstance(committed.get("config"), dict) or "threads" not in committed | committed["config"]:
            raise ConfigError(f"{progress} does not hold a pretraining recipe and thread count (was it edited or written by another version?); it cannot be resumed")
        # the thread count it ran with, not this machine's: the same threads, the same checkpoint
        threads = committed["threads"] if "threads" in committed else committed["config"]["threads"]
        try:
            cfg = config_mod.load(None, {f"pretrain.{k}": v for k, v in committed["config"].items()} | {"pretrain.out": args.resume, "pretrain.threads": threads})
        except ConfigError as err:
            raise ConfigError(f"{progress}: {err} (was it edited or written by another version?)") from None
        pretrain(cfg.pretrain, resume=True)
        return 0
    cfg = config_mod.load(args.config, overrides)
    pretrain(cfg.pretrain)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddat", description="Federated Dual-Adapter Teacher and baselines for vision-language PEFT.")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _compare_parser(sub)
    _data_parser(sub)
    _pretrain_parser(sub)
    from feddat.engines.flower.cli import add_parser as flower_parser

    flower_parser(sub, add_config_flags)
    from feddat.commands import add_parsers as model_parsers

    model_parsers(sub)  # predict, export, report
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown option is named with the nearest valid one, as
    config errors do, instead of argparse's bare "unrecognized arguments"."""
    args, extras = parser.parse_known_args(argv)
    unknown = [a.split("=")[0] for a in extras if a.startswith("-")]
    if extras:
        command, options = chosen_command(parser, args)
        close = difflib.get_close_matches(unknown[0], options, n=1, cutoff=0.6) if unknown else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        what = f"unknown option '{unknown[0]}'{hint}" if unknown else f"unexpected argument(s) {' '.join(extras)}"
        if unknown and (others := commands_taking(parser, unknown[0])):  # an option of a sibling command
            what = f"`{command}` takes no option '{unknown[0]}'; it is an option of {', '.join(f'`{c}`' for c in others[:3])}{' and others' if len(others) > 3 else ''}"
        parser.error(f"{what}; `{command} --help` lists the options")
    return args


def commands_taking(parser: argparse.ArgumentParser, option: str) -> list[str]:
    """Every (sub-)subcommand that takes `option`, by its full name ('feddat flower local')."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += commands_taking(sub, option)
        elif option in action.option_strings and parser.prog != "feddat":
            found.append(parser.prog)
    return list(dict.fromkeys(found))


def chosen_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, list[str]]:
    """The (sub-)subcommand `args` chose ('feddat flower local') and every option it takes."""
    found, current = [], parser
    while True:
        found += [o for a in current._actions for o in a.option_strings if o.startswith("--")]
        chooser = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, chooser.dest, None) if chooser else None
        if chosen not in getattr(chooser, "choices", {}):
            return current.prog, found
        current = chooser.choices[chosen]


def resumed_with_threads(saved: config_mod.Config, run_dir: Path, threads: str) -> config_mod.Config:
    """The interrupted run's configuration with another thread count (it decides how fast the
    run goes, not what it computes), and a warning where the count differs from the run's own:
    its numbers repeat bit for bit only at one thread count (docs/guide/running.md, "Same seed, same numbers")."""
    cfg = config_mod.load(run_dir / "config.toml", {"run.threads": threads})
    if cfg.run.threads != saved.run.threads:
        print(f"feddat: warning: resuming {run_dir} with --run.threads {cfg.run.threads} where it ran with {saved.run.threads}: "
              "its scores may differ in the last digits from those of an uninterrupted run (bit for bit needs one thread count)", file=sys.stderr, flush=True)
    return cfg


def command_run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    from feddat.algorithms import check_methods
    from feddat.engines.runner import resumable, run_experiment
    from feddat.runtime import check_device

    if args.resume:
        if set(overrides) - {"run.threads"} or args.config:
            raise ConfigError("--resume continues a run with its own config.toml; it takes no --config or other options but --run.threads")
        cfg = resumable(Path(args.resume))
        if "run.threads" in overrides:
            cfg = resumed_with_threads(cfg, Path(args.resume), overrides["run.threads"])
        check_device(cfg.run.device)  # the run's own device may not be on this machine
        run_experiment(cfg, resume=Path(args.resume))
        return 0
    cfg = config_mod.load(args.config, overrides)
    check_methods(cfg.run.methods)  # config.load cannot: the method registry sits above it
    check_device(cfg.run.device)
    run_experiment(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "data":
            return command_data(args)
        if args.command == "compare":
            return command_compare(args)
        if args.command == "pretrain":
            return command_pretrain(args)
        if args.command in ("flower", "predict", "export", "report"):
            return args.handler(args)
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
