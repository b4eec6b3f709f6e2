"""The run directory, as both engines write it: config.toml, metrics.jsonl (one record a line),
summary.json and results.md (README "What a run writes")."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from feddat.config import Config
from feddat.runtime import save_tensors, write_text

SHARED_FILE = "shared_adapter.safetensors"  # <method>/SHARED_FILE: the trained shared module


def save_shared(run_dir: Path, method: str, shared: dict, cfg: Config, **extra: str) -> None:
    """A method's trained shared module, with what it was trained for in the file's metadata:
    the method, the rounds and the backbone's identity (`feddat predict` refuses the model on
    another backbone)."""
    from feddat.backbones import backbone_identity

    identity = {f"backbone_{k}": v for k, v in backbone_identity(cfg.backbone).items()}
    save_tensors(Path(run_dir) / method / SHARED_FILE, shared, metadata={"method": method, "rounds": str(cfg.federation.rounds), **extra, **identity})


def make_run_dir(cfg: Config) -> Path:
    name = cfg.run.name or f"{cfg.data.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run directory {run_dir} already holds a run; choose another --run.name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def resumable(run_dir: Path) -> Config:
    """The configuration of an interrupted run, read back from its directory."""
    from feddat import config as config_mod

    path = run_dir / "config.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.toml")
    return config_mod.load(path, {})


def clean_partial_writes(run_dir: Path) -> int:
    """Temporary files of atomic writes that a kill interrupted: never read, safe to drop."""
    stray = list(run_dir.rglob(".*.tmp"))
    for path in stray:
        path.unlink(missing_ok=True)
    return len(stray)


class MetricsLog:
    """Append-only JSONL, flushed and fsynced per write, so a crash loses at most the lines in flight."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict]) -> None:
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def keep(self, predicate: Callable[[dict], bool]) -> None:
        """Rewrite the log (atomically) with only the records `predicate` accepts; a torn last line goes."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a kill cut short
            if predicate(record):
                kept.append(line + "\n")
        write_text(self.path, "".join(kept))


def write_report(cfg: Config, run_dir: Path, summaries: list[dict], log: Callable[[str], None]) -> None:
    """results.md from metrics.jsonl and the methods' summaries (both engines write it this way)."""
    from feddat.reporting import category_table, read_metrics, results_table

    records = read_metrics(run_dir / "metrics.jsonl")
    table = results_table(records)
    by_category = category_table(records)
    if by_category:
        table += "\n\nBy category of question (mean over the clients that ask it):\n\n" + by_category
    timing = "\n".join(
        f"- {s['method']}: wall {s['wall_s']:.1f}s, {s['local_steps']} local steps, {1000 * s['s_per_local_step']:.0f} ms per local step, "
        f"{s['shared_params']:,} shared parameters, {s['bytes_up_per_round']:,} bytes up per round"
        for s in summaries
    )
    report = f"# Results: {cfg.data.benchmark} benchmark, {cfg.backbone.name}, {cfg.federation.rounds} rounds, seed {cfg.run.seed}\n\nScores in % on each client's held-out split, at the last evaluated round.\n\n{table}\n\n{timing}\n"
    write_text(run_dir / "results.md", report)
    log("\n" + report)
