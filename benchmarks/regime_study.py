"""Where FedDAT leads: the regime study (README "Where FedDAT leads"), one prepared script.

Each cell of the study is a `feddat compare` over one benchmark twin under one regime (a set of
configuration overrides), with the controls of every table (`head_only`, `centralised`),
FedAvg+Adapter, FedProx as the drift detector, FedDAT, and FedAvg given FedDAT's compute per
round (`fedavg@feddat`, as `--matched fedavg` names it). The grid is cut into units of one
(cell, method, seed) run; `run` trains the units in priority order on `--lanes` processes of
`--threads` threads each and can be killed and restarted at any time: a finished run is reused
and an unfinished one continues from its last round checkpoint (both by `feddat compare`).
`report` then runs each cell's whole compare, which trains nothing and writes its tables.

    .venv/bin/python benchmarks/regime_study.py plan                       # the units, in order
    .venv/bin/python benchmarks/regime_study.py run --lanes 2 --threads 1  # train what is missing
    .venv/bin/python benchmarks/regime_study.py run --cells domain-r1b8    # one cell only
    .venv/bin/python benchmarks/regime_study.py report                     # tables of finished cells

On a GPU: `run --lanes 1 --threads 4 --device cuda` (one process keeps the GPU busy).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEDDAT = [str(Path(sys.executable).parent / "feddat")]
SEEDS = (0, 1, 2)

# Adam's square-root scaling rule (Malladi et al., NeurIPS 2022): lr ∝ √batch, from the
# default's 3e-3 at batch 32.
def sqrt_lr(batch: int) -> str:
    return f"{3e-3 * math.sqrt(batch / 32):.3g}"


#: regime -> (what it is, overrides). Every override is a `feddat run` configuration key.
REGIMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "r0": ("today's default: batch 32, 32 local steps per round, lr 3e-3", ()),
    "r1b8": ("many local steps, same compute: batch 8 (128 steps per round), lr by the √batch rule",
             ("--train.batch_size", "8", "--train.lr", sqrt_lr(8))),
    "r1b4": ("many local steps, same compute: batch 4 (256 steps per round), lr by the √batch rule",
             ("--train.batch_size", "4", "--train.lr", sqrt_lr(4))),
    "r2ref": ("the released code's conditions for every method (configs/reference-code.toml), at this project's scale",
              ("--config", "configs/reference-code.toml")),
    "r2ref-sched": ("r2ref with this project's constant lr instead of the released code's schedule",
                    ("--config", "configs/reference-code.toml", "--train.lr_schedule", "constant")),
    "r2ref-opt": ("r2ref with DESIGN's separate optimisers instead of one AdamW over everything",
                  ("--config", "configs/reference-code.toml", "--feddat.optimizer", "separate")),
    "r2ref-freeze": ("r2ref with A_c trained in every round instead of round 1 only",
                     ("--config", "configs/reference-code.toml", "--feddat.client_adapter_rounds", "0")),
}
TWINS = ("domain", "function")

#: label -> (compare variant spec, cost in FedAvg runs). FedProx's μ = 0.1: at the default 0.01 the
#: proximal pull is too weak to tell drift (README "Where FedDAT leads").
METHODS: dict[str, tuple[str, float]] = {
    "head_only": ("head_only", 0.05),
    "fedavg": ("fedavg", 1.0),
    "feddat": ("feddat", 2.0),
    "fedprox": ("fedprox:baselines.fedprox_mu=0.1", 1.05),
    "centralised": ("centralised", 1.0),
    "fedavg@feddat": ("fedavg:train.local_epochs=2", 2.0),
}
#: what each regime's cell trains; the R2 ablations change only what FedDAT (and FedAvg) run.
CELL_METHODS = {
    "r0": tuple(METHODS),
    "r1b8": tuple(METHODS),
    "r1b4": tuple(METHODS),
    "r2ref": tuple(METHODS),
    "r2ref-sched": ("fedavg", "feddat"),
    "r2ref-opt": ("feddat",),
    "r2ref-freeze": ("feddat",),
}
#: the order cells are worked on (most decisive first)
PRIORITY = ("domain-r1b8", "domain-r0", "domain-r2ref", "function-r1b8", "function-r0", "function-r2ref",
            "domain-r2ref-sched", "domain-r2ref-opt", "domain-r2ref-freeze", "domain-r1b4", "function-r1b4",
            "function-r2ref-sched", "function-r2ref-opt", "function-r2ref-freeze")


@dataclass(frozen=True)
class Unit:
    cell: str
    label: str
    seed: int

    @property
    def twin(self) -> str:
        return self.cell.split("-", 1)[0]

    @property
    def regime(self) -> str:
        return self.cell.split("-", 1)[1]

    @property
    def cost(self) -> float:
        return METHODS[self.label][1]


def variant(label: str) -> str:
    spec = METHODS[label][0]
    method, _, rest = spec.partition(":")
    return label if not rest and method == label else f"{label}={spec}"


def out_dir(cell: str, root: Path) -> Path:
    return root / cell


def base_args(cell: str, root: Path, threads: int, device: str) -> list[str]:
    twin, regime = cell.split("-", 1)
    return [*REGIMES[regime][1], "--data.benchmark", twin, "--out", str(out_dir(cell, root)),
            "--run.threads", str(threads), "--run.device", device, "--run.progress", "lines"]


#: what decides a cell first: FedDAT against FedAvg+Adapter, FedProx (drift) and the head alone
CORE = ("head_only", "fedavg", "feddat", "fedprox")


def units(cells: list[str]) -> list[Unit]:
    """Cell by cell: the core methods for seeds 0, 1, 2 (seed by seed), then the rest of the table."""
    out = []
    for c in cells:
        labels = CELL_METHODS[c.split("-", 1)[1]]
        for tier in ([m for m in labels if m in CORE], [m for m in labels if m not in CORE]):
            out += [Unit(c, label, s) for s in SEEDS for label in tier]
    return out


def unit_command(u: Unit, root: Path, threads: int, device: str) -> list[str]:
    return [*FEDDAT, "compare", "--methods", variant(u.label), "--seeds", str(u.seed), *base_args(u.cell, root, threads, device)]


def report_command(cell: str, root: Path, threads: int, device: str) -> list[str]:
    labels = [m for m in CELL_METHODS[cell.split("-", 1)[1]] if m != "fedavg@feddat"]
    matched = ["--matched", "fedavg"] if "fedavg@feddat" in CELL_METHODS[cell.split("-", 1)[1]] else []
    ref = ["--reference", "feddat"] if "feddat" in labels else []
    return [*FEDDAT, "compare", "--methods", ",".join(variant(m) for m in labels), *matched, *ref,
            "--seeds", ",".join(map(str, SEEDS)), *base_args(cell, root, threads, device)]


def finished(u: Unit, root: Path) -> bool:
    return (out_dir(u.cell, root) / "runs" / u.label / f"seed{u.seed}" / "summary.json").is_file()


def running_elsewhere(u: Unit, root: Path) -> bool:
    """Whether another process (an earlier driver's orphan, a second driver) trains `u` now."""
    wanted = ["compare", "--methods", variant(u.label), "--seeds", str(u.seed)]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if all(w in argv for w in wanted) and str(out_dir(u.cell, root)) in argv and int(cmdline.parent.name) != os.getpid():
            if argv[argv.index("--methods") + 1] == variant(u.label) and argv[argv.index("--seeds") + 1] == str(u.seed):
                return True
    return False


def run_units(todo: list[Unit], root: Path, lanes: int, threads: int, device: str, logs: Path) -> int:
    """Train `todo` on `lanes` processes; a unit's output goes to logs/<cell>.<label>.seed<N>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[subprocess.Popen, Unit] = {}
    failed = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def stop(*_):
        for p in running:
            p.terminate()
        sys.exit(130)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    queue = list(todo)
    while queue or running:
        while queue and len(running) < lanes:
            u = queue.pop(0)
            if running_elsewhere(u, root):
                print(f"{time.strftime('%H:%M:%S')} skip  {u.cell} {u.label} seed {u.seed}: another process trains it", flush=True)
                continue
            log = logs / f"{u.cell}.{u.label}.seed{u.seed}.log"
            print(f"{time.strftime('%H:%M:%S')} start {u.cell} {u.label} seed {u.seed}  (log {log})", flush=True)
            running[subprocess.Popen(unit_command(u, root, threads, device), cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)] = u
        time.sleep(5)
        for p in [p for p in running if p.poll() is not None]:
            u = running.pop(p)
            ok = p.returncode == 0
            failed += not ok
            print(f"{time.strftime('%H:%M:%S')} {'done ' if ok else 'FAILED'} {u.cell} {u.label} seed {u.seed}" + ("" if ok else f" (exit {p.returncode})"), flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("plan", "run", "report"))
    p.add_argument("--cells", default=",".join(PRIORITY), help="comma list of twin-regime cells, in the order to work on them")
    p.add_argument("--root", default="runs/study", help="where each cell's compare folder goes")
    p.add_argument("--lanes", type=int, default=2, help="training processes at once")
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for c in cells:
        twin, _, regime = c.partition("-")
        if twin not in TWINS or regime not in REGIMES:
            p.error(f"unknown cell '{c}': a cell is <twin>-<regime>, twin in {TWINS}, regime in {tuple(REGIMES)}")
    root = Path(args.root)
    if args.action == "plan":
        for c in cells:
            print(f"# {c}: {REGIMES[c.split('-', 1)[1]][0]}")
            print("  " + " ".join(report_command(c, root, args.threads, args.device)))
        todo = [u for u in units(cells) if not finished(u, root)]
        print(f"# {len(todo)} runs to train, {sum(u.cost for u in todo):.1f} FedAvg-run equivalents")
        return 0
    if args.action == "run":
        todo = [u for u in units(cells) if not finished(u, root)]
        return 1 if run_units(todo, root, args.lanes, args.threads, args.device, root / "logs") else 0
    for c in cells:
        if all(finished(u, root) for u in units([c])):
            subprocess.run(report_command(c, root, args.threads, args.device), cwd=ROOT, check=True)
        else:
            print(f"# {c}: not finished, no report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
