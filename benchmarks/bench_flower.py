"""The same tiny run on every engine, against a bare Flower app of the same shape.

A tiny FedDAT run (a 2-block ViLT with hidden size 32, three clients of 12 training questions,
2 rounds, every client in every round, evaluation after each round) takes:
- embedded: `feddat run`'s engine, one process;
- Flower deployment: real `flower-superlink` / `flower-supernode`s with their warm feddat
  workers (worker.py), from `flwr run` to the run's end (the daemons start before the clock);
- Flower deployment, cold (with --cold): the same without workers, every message loading feddat;
- Flower simulation: Flower's simulation engine (Ray), from the call to its return;
- bare Flower: a Flower App with a numpy model and Flower's own FedAvg, the same phases
  (one query to identify the nodes, then train and evaluate in each round), on the same
  daemons: Flower's own floor for this run shape.
The last line is `flower deployment / bare flower ratio: N.NN` (goal: at most 1.3).

    .venv/bin/python benchmarks/bench_flower.py [--cold] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from feddat.config import Config, validate
from feddat.engines.flower.launch import LocalFederation

CLIENTS = {"alpha": ("red", "blue", "green"), "beta": ("one", "two"), "gamma": ("yes", "no", "maybe")}
IMAGE = 32
ROUNDS = 2

BARE_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "bare-flower"
version = "0.1.0"
dependencies = ["flwr>=1.41,<1.42", "numpy"]

[tool.flwr.app]
publisher = "bench"

[tool.flwr.app.components]
serverapp = "bare_app:server"
clientapp = "bare_app:client"

[tool.flwr.app.config]
nodes = 3
rounds = 2
size = 1000
"""

BARE_APP = '''"""A bare Flower App: numpy arrays, Flower's FedAvg, one identification query first."""
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

server = ServerApp()  # one name per line: `flwr run` finds the components by reading the file
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    want = int(context.run_config["nodes"])
    while len(list(grid.get_node_ids())) < want:
        time.sleep(1.0)
    ask = [Message(RecordDict({"config": ConfigRecord()}), dst_node_id=n, message_type="query") for n in grid.get_node_ids()]
    grid.send_and_receive(ask, timeout=600)
    arrays = ArrayRecord([np.zeros(int(context.run_config["size"]), np.float32)])
    FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=want).start(grid, arrays, num_rounds=int(context.run_config["rounds"]), timeout=600)


@client.query()
def identify(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"info": ConfigRecord({"client": str(context.node_id)})}), reply_to=msg)


@client.train()
def train(msg: Message, context: Context) -> Message:
    arrays = [a + 0.01 for a in msg.content["arrays"].to_numpy_ndarrays()]
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 12, "loss": 1.0})}), reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 6, "accuracy": 0.5})}), reply_to=msg)
'''


def tiny_vilt(path: Path) -> str:
    from feddat.backbones.vilt import save_random_vilt

    return save_random_vilt(path, image_size=IMAGE)


def folder_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for client, answers in CLIENTS.items():
        (root / client / "img").mkdir(parents=True)
        for split, n in (("train", 12), ("test", 6)):
            lines = []
            for i in range(n):
                image = f"img/{split}{i}.png"
                Image.fromarray(rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8)).save(root / client / image)
                lines.append(json.dumps({"image": image, "question": f"what is object {i}?", "answer": answers[i % len(answers)]}))
            (root / client / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tiny_run(vilt: str, data: Path, out: Path, name: str) -> Config:
    cfg = Config()
    cfg.backbone.name, cfg.backbone.path, cfg.backbone.image_size, cfg.backbone.max_text_len = "vilt", vilt, IMAGE, 12
    cfg.adapter.reduction_factor = 4
    cfg.train.batch_size, cfg.train.lr = 8, 1e-2
    cfg.federation.rounds, cfg.federation.eval_every, cfg.federation.fraction = ROUNDS, 1, 1.0
    cfg.data.benchmark, cfg.data.root, cfg.data.cache_dir = "folder", str(data), str(out / "cache")
    cfg.run.methods, cfg.run.out_dir, cfg.run.name, cfg.run.device, cfg.run.threads = ["feddat"], str(out), name, "cpu", 1
    cfg.run.progress = "off"
    validate(cfg)
    return cfg


def timed(fn, what: str) -> float:
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    print(f"  {what}: {seconds:.1f}s", flush=True)
    return seconds


def on_flower(fed: LocalFederation, submit, what: str) -> float:
    return timed(lambda: fed.cli.wait(submit(), timeout=900, poll=0.2), what)


def bare_app(parent: Path) -> Path:
    app = parent / "bare-flower"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(BARE_PYPROJECT)
    (app / "bare_app.py").write_text(BARE_APP)
    (parent / "bare-run-config.toml").write_text(f"nodes = {len(CLIENTS)}\nrounds = {ROUNDS}\n")
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also time Flower deployment without warm workers (slow)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (daemon and worker logs) and print its path")
    parser.add_argument("--repeats", type=int, default=2, help="runs per engine on the same daemons; the median is printed")
    args = parser.parse_args()
    from feddat.engines.runner import run_experiment

    # SIGTERM unwinds like Ctrl-C: the federation is stopped and the temporary folder removed
    # (were this process killed outright, the federation's guard would still stop its processes).
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    torch.set_num_threads(1)
    with (contextlib.nullcontext(tempfile.mkdtemp(prefix="bench-flower-")) if args.keep else tempfile.TemporaryDirectory(prefix="bench-flower-")) as tmp:
        tmp = Path(tmp)
        if args.keep:
            print(f"working in {tmp}")
        vilt, data = tiny_vilt(tmp / "vilt"), folder_data(tmp / "data")
        out = tmp / "runs"
        times: dict[str, list[float]] = {}
        times["embedded"] = [timed(lambda i=i: run_experiment(tiny_run(vilt, data, out, f"embedded-{i}"), log=lambda s: None), "embedded") for i in range(args.repeats)]
        with LocalFederation(tmp / "federation", list(CLIENTS), log=lambda s: None) as fed:
            times["flower deployment"] = [on_flower(fed, lambda i=i: fed.cli.submit(tiny_run(vilt, data, out, f"flower-{i}")), "flower deployment") for i in range(args.repeats)]
            app = bare_app(tmp / "bare")
            times["bare flower"] = [on_flower(fed, lambda: fed.cli.submit_app(app, tmp / "bare" / "bare-run-config.toml"), "bare flower") for _ in range(args.repeats)]
        if args.cold:
            with LocalFederation(tmp / "federation-cold", list(CLIENTS), log=lambda s: None, warm=False) as fed:
                times["flower deployment, cold"] = [on_flower(fed, lambda: fed.cli.submit(tiny_run(vilt, data, out, "flower-cold")), "flower deployment, cold")]
        try:
            from feddat.engines.flower.simulation import run_simulation
        except ImportError as err:
            print(f"flower simulation: not available ({err})")
        else:
            times["flower simulation"] = [timed(lambda i=i: run_simulation(tiny_run(vilt, data, out, f"simulation-{i}"), log=lambda s: None), "flower simulation") for i in range(args.repeats)]
    print(f"the same tiny FedDAT run ({len(CLIENTS)} clients, {ROUNDS} rounds, evaluation each round), seconds (median of {args.repeats}; all runs listed):")
    for name, values in times.items():
        print(f"  {name:26s} {statistics.median(values):7.1f}   {' '.join(f'{v:.1f}' for v in values)}")
    ratio = statistics.median(times["flower deployment"]) / statistics.median(times["bare flower"])
    print(f"flower deployment / bare flower ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
