"""Where FedDAT leads: the regime study (docs/findings.md, "Where FedDAT leads"), one prepared script.

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
    .venv/bin/python benchmarks/regime_study.py record                     # keep finished runs in docs/
    .venv/bin/python benchmarks/regime_study.py report                     # every page of docs/results/ (= make results)

`record` copies what a finished run's report needs (summary.json, config.toml, metrics.jsonl,
clients.json, and which commit trained it) to docs/results/regime-study/<cell>/runs/, where the
repository keeps it; `run` starts by putting recorded runs back under --root, so a fresh clone
(or the next session) trains only what no one has recorded. `report` writes the summary tables
from the recorded runs alone (every mean with its seeds, paired differences with their p-values)
to docs/results/regime-study/index.md, for every cell whatever --cells says, and the index of
docs/results/, as `make results` does (benchmarks/results.py).

On a GPU: `run --lanes 1 --threads 4 --device cuda` (one process keeps the GPU busy).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEDDAT = [str(Path(sys.executable).parent / "feddat")]
SEEDS = (0, 1, 2)
RECORDED = ROOT / "docs" / "results" / "regime-study"
KEPT = ("summary.json", "config.toml", "metrics.jsonl", "clients.json", "trained_by.json")

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
    "r2ref-opt": ("r2ref with the design's separate optimisers (docs/design.md §4) instead of one AdamW over everything",
                  ("--config", "configs/reference-code.toml", "--feddat.optimizer", "separate")),
    "r2ref-freeze": ("r2ref with A_c trained in every round instead of round 1 only",
                     ("--config", "configs/reference-code.toml", "--feddat.client_adapter_rounds", "0")),
    "r0-kdwarm": ("r0 with FedDAT's KD off in round 1 (feddat.kd_warmup_rounds = 1; not the paper's)",
                  ("--feddat.kd_warmup_rounds", "1")),
    "r0-headstudent": ("r0 with the head stepped by the student's loss only (feddat.head_update = student; not the paper's)",
                       ("--feddat.head_update", "student")),
}
TWINS = ("domain", "function")
#: cells that train only what their overrides change borrow the rest of their table from this
#: regime's cell (the same runs: the overrides do not touch the borrowed methods)
BASE = {"r2ref-opt": "r2ref", "r2ref-freeze": "r2ref", "r0-kdwarm": "r0", "r0-headstudent": "r0"}

#: label -> (compare variant spec, cost in FedAvg runs). FedProx's μ = 0.1: at the default 0.01 the
#: proximal pull is too weak to tell drift (docs/findings.md, "Where FedDAT leads").
METHODS: dict[str, tuple[str, float]] = {
    "head_only": ("head_only", 0.05),
    "fedavg": ("fedavg", 1.0),
    "feddat": ("feddat", 2.0),
    "fedprox": ("fedprox:baselines.fedprox_mu=0.1", 1.05),
    "fedprox0.01": ("fedprox:baselines.fedprox_mu=0.01", 1.05),
    "centralised": ("centralised", 1.0),
    "fedavg@feddat": ("fedavg:train.local_epochs=<matched>", 2.0),
    "local": ("local", 1.0),
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
    "r0-kdwarm": ("feddat",),
    "r0-headstudent": ("feddat",),
}
#: the order cells are worked on (most decisive first)
PRIORITY = ("domain-r1b8", "domain-r1b4", "domain-r2ref", "domain-r0", "function-r1b8", "function-r1b4", "function-r2ref", "function-r0",
            "domain-r2ref-sched", "domain-r2ref-opt", "domain-r2ref-freeze", "domain-r0-kdwarm", "domain-r0-headstudent",
            "function-r2ref-sched", "function-r2ref-opt", "function-r2ref-freeze",
            "function-r0-kdwarm", "function-r0-headstudent")


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


def variant(label: str, regime: str = "r0") -> str:
    if label == "fedavg@feddat":
        return matched_variant(regime)
    spec = METHODS[label][0]
    method, _, rest = spec.partition(":")
    return label if not rest and method == label else f"{label}={spec}"


def matched_variant(regime: str) -> str:
    """FedAvg given FedDAT's backbone passes per round under `regime`, by compare's own rule
    (`--matched fedavg`: 2 local epochs against the fused step, 3 against the reference one)."""
    from feddat import config as config_mod
    from feddat.compare.variants import Variant, matched_variants

    args = list(REGIMES[regime][1])
    path = args[args.index("--config") + 1] if "--config" in args else None
    flags = {k[2:]: v for k, v in zip(args[::2], args[1::2]) if k != "--config"}
    cfg = config_mod.load(ROOT / path if path else None, flags)
    (matched,) = matched_variants([Variant("feddat", "feddat"), Variant("fedavg", "fedavg")], ["fedavg"], "feddat", cfg) or [Variant("fedavg@feddat", "fedavg")]
    return matched.spec


def out_dir(cell: str, root: Path) -> Path:
    return root / cell


def base_args(cell: str, root: Path, threads: int, device: str) -> list[str]:
    twin, regime = cell.split("-", 1)
    return [*REGIMES[regime][1], "--data.benchmark", twin, "--out", str(out_dir(cell, root)),
            "--run.threads", str(threads), "--run.device", device, "--run.progress", "lines"]


#: what decides a cell first: FedDAT against FedAvg+Adapter and the head alone, and where drift
#: is the question (R0, R1), FedProx
CORE = {"r2": ("head_only", "fedavg", "feddat"), "": ("head_only", "fedavg", "feddat", "fedprox")}


def core(regime: str) -> tuple[str, ...]:
    return CORE["r2"] if regime.startswith("r2") else CORE[""]


def units(cells: list[str]) -> list[Unit]:
    """The core methods of every cell (cell by cell, seed by seed), then the rest of each table."""
    first, rest = [], []
    for c in cells:
        regime = c.split("-", 1)[1]
        labels = CELL_METHODS[regime]
        first += [Unit(c, label, s) for s in SEEDS for label in labels if label in core(regime)]
        rest += [Unit(c, label, s) for s in SEEDS for label in labels if label not in core(regime)]
    return first + rest


def unit_command(u: Unit, root: Path, threads: int, device: str) -> list[str]:
    return [*FEDDAT, "compare", "--methods", variant(u.label, u.regime), "--seeds", str(u.seed), *base_args(u.cell, root, threads, device)]


def report_command(cell: str, root: Path, threads: int, device: str) -> list[str]:
    labels = [m for m in CELL_METHODS[cell.split("-", 1)[1]] if m != "fedavg@feddat"]
    matched = ["--matched", "fedavg"] if "fedavg@feddat" in CELL_METHODS[cell.split("-", 1)[1]] else []
    ref = ["--reference", "feddat"] if "feddat" in labels else []
    return [*FEDDAT, "compare", "--methods", ",".join(variant(m, cell.split("-", 1)[1]) for m in labels), *matched, *ref,
            "--seeds", ",".join(map(str, SEEDS)), *base_args(cell, root, threads, device)]


def finished(u: Unit, root: Path) -> bool:
    return (out_dir(u.cell, root) / "runs" / u.label / f"seed{u.seed}" / "summary.json").is_file()


def training_processes(root: Path) -> list[list[str]]:
    """The command lines of every `feddat compare` training under `root` on this machine, this
    driver's or not (an earlier driver's orphans, a second driver)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "compare" in argv and "--out" in argv and argv[argv.index("--out") + 1].startswith(str(root)):
            found.append(argv)
    return found


def running_elsewhere(u: Unit, root: Path) -> bool:
    """Whether some process trains `u` now."""
    for argv in training_processes(root):
        if argv[argv.index("--out") + 1] == str(out_dir(u.cell, root)) and "--methods" in argv and "--seeds" in argv:
            if argv[argv.index("--methods") + 1] == variant(u.label, u.regime) and argv[argv.index("--seeds") + 1] == str(u.seed):
                return True
    return False


def code_commit() -> str:
    """The commit of the feddat code this process imports (a snapshot on PYTHONPATH or the checkout)."""
    import feddat

    where = Path(feddat.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no", "--", "."], capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "") if head else "unknown"


def write_provenance(u: Unit, root: Path, commit: str, started: float) -> None:
    """Say which commit trained the run, if this driver's process finished it (not a reuse)."""
    run = out_dir(u.cell, root) / "runs" / u.label / f"seed{u.seed}"
    summary = run / "summary.json"
    if summary.is_file() and summary.stat().st_mtime >= started and not (run / "trained_by.json").is_file():
        (run / "trained_by.json").write_text(json.dumps({"commit": commit, "command": unit_command(u, root, 0, "")[1:6]}, indent=1) + "\n")


def record(root: Path) -> int:
    """Copy the report's files of every finished run under `root` to RECORDED; -> runs copied."""
    copied = 0
    for summary in sorted(root.glob("*/runs/*/seed*/summary.json")):
        run = summary.parent
        cell = run.parents[2].name
        dest = RECORDED / cell / "runs" / run.parent.name / run.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (run / name).is_file():
                shutil.copy2(run / name, dest / name)
        copied += 1
    return copied


def restore(root: Path) -> int:
    """Put recorded runs back under `root` where it has none, so that compare reuses them."""
    restored = 0
    for summary in sorted(RECORDED.glob("*/runs/*/seed*/summary.json")):
        run = summary.parent
        dest = root / run.parents[2].name / "runs" / run.parent.name / run.name
        if not (dest / "summary.json").is_file():
            if dest.exists():
                shutil.rmtree(dest)  # unfinished here, finished elsewhere
            shutil.copytree(run, dest)
            restored += 1
    return restored


def run_units(todo: list[Unit], root: Path, lanes: int, threads: int, device: str, logs: Path) -> int:
    """Train `todo` with at most `lanes` training processes under `root` on this machine (others'
    included); a unit's output goes to logs/<cell>.<label>.seed<N>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[subprocess.Popen, tuple[Unit, float]] = {}
    failed = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def stop(*_):
        for p in running:
            p.terminate()
        sys.exit(130)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    queue = list(todo)
    commit = code_commit()
    while queue or running:
        while queue and len(running) < lanes and len(training_processes(root)) < lanes:
            u = queue.pop(0)
            if running_elsewhere(u, root):
                print(f"{time.strftime('%H:%M:%S')} skip  {u.cell} {u.label} seed {u.seed}: another process trains it", flush=True)
                continue
            log = logs / f"{u.cell}.{u.label}.seed{u.seed}.log"
            print(f"{time.strftime('%H:%M:%S')} start {u.cell} {u.label} seed {u.seed}  (log {log})", flush=True)
            running[subprocess.Popen(unit_command(u, root, threads, device), cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)] = (u, time.time())
        time.sleep(5)
        for p in [p for p in running if p.poll() is not None]:
            u, started = running.pop(p)
            ok = p.returncode == 0
            write_provenance(u, root, commit, started)
            failed += not ok
            print(f"{time.strftime('%H:%M:%S')} {'done ' if ok else 'FAILED'} {u.cell} {u.label} seed {u.seed}" + ("" if ok else f" (exit {p.returncode})"), flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("plan", "run", "record", "report"))
    p.add_argument("--cells", default=",".join(PRIORITY), help="comma list of twin-regime cells, in the order to work on them")
    p.add_argument("--root", default="runs/study", help="where each cell's compare folder goes")
    p.add_argument("--lanes", type=int, default=2, help="training processes at once on this machine (any driver's)")
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for c in cells:
        twin, _, regime = c.partition("-")
        if twin not in TWINS or regime not in REGIMES:
            p.error(f"unknown cell '{c}': a cell is <twin>-<regime>, twin in {TWINS}, regime in {tuple(REGIMES)}")
    root = Path(args.root).resolve()
    if args.action == "plan":
        for c in cells:
            print(f"# {c}: {REGIMES[c.split('-', 1)[1]][0]}")
            print("  " + " ".join(report_command(c, root, args.threads, args.device)))
        todo = [u for u in units(cells) if not finished(u, root)]
        print(f"# {len(todo)} runs to train, {sum(u.cost for u in todo):.1f} FedAvg-run equivalents")
        return 0
    if args.action == "run":
        print(f"{restore(root)} recorded runs put back under {root}", flush=True)
        todo = [u for u in units(cells) if not finished(u, root)]
        return 1 if run_units(todo, root, args.lanes, args.threads, args.device, root / "logs") else 0
    if args.action == "record":
        print(f"{record(root)} finished runs recorded in {RECORDED}")
        return 0
    import results  # beside this file

    return results.main()  # every cell's: a page made for some cells would not be the committed one


if __name__ == "__main__":
    sys.exit(main())
