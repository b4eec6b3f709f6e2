"""Where a round's time goes, and memory against the number of clients.

Part 1 runs the embedded default (foundation, synthetic domain benchmark, FedDAT) for a few small
rounds and prints the time split: client compute, aggregation, evaluation, state I/O, data,
plus what (de)serialising one update costs and how many bytes a round moves. The engine's
overhead is everything in a training round that is not the clients' own compute.

Part 2 runs FedAvg+Adapter over 10 and over 1,000 simulated clients (lazily loaded data,
state on disk) with a few percent sampled per round, each in a fresh process, and prints the
peak resident memory of each: it should not grow with the number of clients.

    .venv/bin/python benchmarks/bench_engine.py
    .venv/bin/python benchmarks/bench_engine.py --skip-scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

from feddat.config import Config
from feddat.runtime import derive_seed, pick_device, set_threads


def default_config(out: Path) -> Config:
    cfg = Config()
    cfg.run.methods = ["feddat"]
    cfg.run.out_dir, cfg.run.name = str(out), "split"
    cfg.data.train_per_client, cfg.data.test_per_client = 64, 64
    cfg.federation.rounds, cfg.federation.eval_every = 2, 1
    return cfg


def serialisation_cost(shared: dict[str, torch.Tensor], repeats: int = 20) -> tuple[float, int]:
    """Seconds to turn A_s into safetensors bytes and back (what an engine sends), and its size."""
    from safetensors.torch import load, save

    t0 = time.perf_counter()
    for _ in range(repeats):
        blob = save(shared)
        load(blob)
    return (time.perf_counter() - t0) / repeats, len(blob)


def time_split(out: Path) -> None:
    from feddat.engines.runner import run_experiment
    from feddat.runtime import load_tensors

    cfg = default_config(out)
    run_dir = run_experiment(cfg, log=lambda s: None)
    summary = json.loads((run_dir / "summary.json").read_text())["methods"][0]
    split = summary["time_split_s"]
    rounds = cfg.federation.rounds
    train_s = summary["train_s"]
    ser_s, size = serialisation_cost(load_tensors(run_dir / "feddat" / "shared_adapter.safetensors"))
    clients_per_round = summary["bytes_up_per_round"] // max(1, size) if size else 0
    print(f"\n## Round time split: {cfg.backbone.name}, domain (5 clients x {cfg.data.train_per_client} train), feddat, {rounds} rounds")
    print(f"{'part':<26} {'s/round':>9} {'% of round':>11}")
    round_total = (train_s + split["evaluate"]) / rounds
    for kind in ("compute", "aggregate", "state_io", "data", "evaluate"):
        print(f"{kind:<26} {split[kind] / rounds:9.3f} {100 * split[kind] / rounds / round_total:10.1f}%")
    ser_round = ser_s * clients_per_round * 2  # each participant: A_s down and up
    print(f"{'(de)serialisation*':<26} {ser_round:9.3f} {100 * ser_round / round_total:10.1f}%")
    print(f"engine overhead (training rounds, excluding client compute): {100 * summary['engine_overhead']:.2f}% of round time")
    print(f"local step {1000 * summary['s_per_local_step']:.0f} ms; bytes per round: {summary['bytes_up_per_round']:,} up + the same down ({size:,} per client)")
    print("* not spent by the embedded engine (clients share its memory); what the Flower engine pays per round, measured here")


# ---- part 2: scale -------------------------------------------------------------------------


def synthetic_client(i: int, backbone, cache: Path, n_train: int, n_test: int):
    """Client i of a large federation: its own seeded mix of styles and question kinds."""
    from feddat.data.clients import RawSplit, build_client
    from feddat.data.synthetic import QUESTION_KINDS, STYLES, generate

    rng = np.random.default_rng(derive_seed("bench-scale", i))
    styles = dict(zip(STYLES, rng.dirichlet([0.3] * len(STYLES))))
    kinds = dict(zip(QUESTION_KINDS, rng.dirichlet([0.5] * len(QUESTION_KINDS))))

    def split(name: str, n: int) -> RawSplit:
        samples = generate(n, styles, kinds, seed=derive_seed("bench-scale", i, name), image_size=128, max_objects=3)
        return RawSplit(np.stack([s.image for s in samples]), [s.question for s in samples], [s.answer for s in samples], key=f"bench-scale|{i}|{name}|{n}")

    return build_client(f"c{i:04d}", split("train", n_train), split("test", n_test), backbone, 100, cache)


def scale_child(num_clients: int, rounds: int, fraction: float, out: Path) -> None:
    """One process, one federation size; prints a JSON line with its peak RSS and times."""
    from feddat.backbones.minivl import MiniVL
    from feddat.data.lazy import LazyClients
    from feddat.engines.embedded import run_method, sample_clients
    from feddat.peft.model import AdaptedModel

    cfg = Config()
    cfg.federation.rounds, cfg.federation.fraction, cfg.federation.eval_every = rounds, fraction, rounds
    cfg.federation.eval_fraction = min(1.0, 10 / num_clients)
    cfg.train.local_epochs = 1
    backbone = MiniVL()
    model = AdaptedModel(backbone)
    cache = out / "cache"
    clients = LazyClients([f"c{i:04d}" for i in range(num_clients)], lambda i: synthetic_client(i, backbone, cache, 32, 16))
    run_dir = out / f"run-{num_clients}"
    run_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    summary = run_method("fedavg", cfg, model, clients, run_dir, pick_device("cpu"), log=lambda s: None)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"clients": num_clients, "peak_rss_mib": peak_mib, "wall_s": time.perf_counter() - t0, "split": summary["time_split_s"], "per_round": len(sample_clients(range(num_clients), fraction, 0, 1))}))


def scale(out: Path, rounds: int) -> None:
    print(f"\n## Memory against the number of clients: fedavg, minivl, {rounds} rounds, 32 train / 16 test per client, lazily loaded")
    print(f"{'clients':>8} {'per round':>10} {'peak RSS MiB':>13} {'wall s':>8} {'data s':>8} {'state I/O s':>12}")
    for n, fraction in ((10, 0.2), (1000, 0.02)):
        cmd = [sys.executable, __file__, "--scale-child", str(n), "--fraction", str(fraction), "--rounds", str(rounds), "--out", str(out / str(n))]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"scale run with {n} clients failed")
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{n:>8} {row['per_round']:>10} {row['peak_rss_mib']:13.0f} {row['wall_s']:8.1f} {row['split']['data']:8.1f} {row['split']['state_io']:12.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-scale", action="store_true", help="only the round time split")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the scale runs")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--fraction", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    set_threads(args.threads)
    if args.scale_child:
        scale_child(args.scale_child, args.rounds, args.fraction, Path(args.out))
        return 0
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="feddat-bench-") as tmp:
        time_split(Path(tmp))
        if not args.skip_scale:
            scale(Path(tmp), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
