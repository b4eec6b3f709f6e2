"""The run directory, as both engines write it: config.toml, metrics.jsonl (one record a line),
summary.json and results.md (docs/guide/running.md, "What a run writes")."""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from feddat.config import Config
from feddat.runtime import save_tensors, write_json, write_text

SHARED_FILE = "shared_adapter.safetensors"  # <method>/SHARED_FILE: the trained shared module


def save_shared(run_dir: Path, method: str, shared: dict, cfg: Config, **extra: str) -> None:
    """A method's trained shared module, with what it was trained for in the file's metadata:
    the method, the rounds and the backbone's identity (`feddat predict` refuses the model on
    another backbone)."""
    from feddat.backbones import backbone_identity

    identity = {f"backbone_{k}": v for k, v in backbone_identity(cfg.backbone).items()}
    save_tensors(Path(run_dir) / method / SHARED_FILE, shared, metadata={"method": method, "rounds": str(cfg.federation.rounds), **extra, **identity})


# Keys a resumed run may differ in: where and how fast it runs, not what it computes (each
# method's numbers do not depend on which other methods the run holds, either).
PLACE_AND_PACE = ("run.methods", "run.out_dir", "run.name", "run.device", "run.threads", "run.prefix_cache_mb", "run.progress", "data.cache_dir", "tracking.")


# Keys added after checkpoints began to record fingerprints. At its default each means what the
# code did before the key existed, so it is left out there: a checkpoint written before it
# still resumes. Set off its default, it counts like any other key.
ADDED_SINCE_FINGERPRINTS = (
    "train.schedule_epochs", "train.decay_head_norm", "train.task_loss",
    "feddat.optimizer", "feddat.client_adapter_rounds", "feddat.client_init", "feddat.personal_frozen",
    "feddat.kd_warmup_rounds", "feddat.head_update",
    "data.validation_per_client", "federation.select_round", "backbone.max_answer_len",
)


def decisive_settings(cfg: Config) -> dict:
    """Every setting of `cfg` that decides a method's numbers, as {'section.key': value}."""
    flat = {f"{section}.{key}": value for section, values in cfg.to_dict().items() for key, value in values.items()}
    defaults = {f"{section}.{key}": value for section, values in Config().to_dict().items() for key, value in values.items()}
    return {
        k: v
        for k, v in sorted(flat.items())
        if not k.startswith(PLACE_AND_PACE) and not (k in ADDED_SINCE_FINGERPRINTS and v == defaults[k])
    }


def config_fingerprint(cfg: Config) -> str:
    """sha256 of `decisive_settings`: a checkpoint written under one fingerprint continues only
    under the same one."""
    import hashlib

    return hashlib.sha256(json.dumps(decisive_settings(cfg), sort_keys=True, default=str).encode()).hexdigest()


def setting_differences(before: Config, now: Config, shown: int = 5) -> str:
    """The decisive settings that differ, as "train.lr: 0.01 there, 0.02 here"."""
    a, b = decisive_settings(before), decisive_settings(now)
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    text = ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in keys[:shown])
    return (text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")) or "they differ"


def run_dir_path(cfg: Config) -> Path:
    return Path(cfg.run.out_dir) / (cfg.run.name or f"{cfg.data.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}")


def make_run_dir(cfg: Config, run_dir: Path | None = None) -> Path:
    """A new run directory (`run_dir`, else run_dir_path): made, or an empty folder taken over."""
    run_dir = run_dir or run_dir_path(cfg)
    if run_dir.exists() and any(run_dir.iterdir()):
        if has_results(run_dir):
            raise FileExistsError(f"run directory {run_dir} already holds a run; choose another --run.name")
        raise FileExistsError(f"run directory {run_dir} already holds a run that stopped before its first round was committed (no results): delete it, or choose another --run.name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def has_results(run_dir: Path) -> bool:
    """Whether a run directory holds something a resume would keep: a committed round of some
    method (checkpoint/<method>/progress.json) or a finished method (summary.json)."""
    return (run_dir / "summary.json").exists() or any((run_dir / "checkpoint").glob("*/progress.json"))


@contextmanager
def new_run_dir(cfg: Config, log: Callable[[str], None] = print) -> Iterator[Path]:
    """make_run_dir with the run's config.toml in it, taken back if the run stops (an error,
    Ctrl-C) before it has results (has_results): a run that failed on its backbone or in its
    first round leaves nothing that would refuse the same command again. Only what this run
    created goes: an empty folder it was given stays (emptied), folders above it stay."""
    run_dir = run_dir_path(cfg)
    existed = run_dir.exists()
    make_run_dir(cfg, run_dir)
    try:
        write_text(run_dir / "config.toml", cfg.to_toml())
        yield run_dir
    except BaseException:
        if not has_results(run_dir):
            for entry in [run_dir] if not existed else list(run_dir.iterdir()):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            log(f"feddat: run directory {run_dir} {'emptied' if existed else 'removed'}: the run stopped before its first round was committed")
        raise


def resumable(run_dir: Path) -> Config:
    """The configuration of an interrupted run, read back from its directory."""
    from feddat import config as config_mod

    path = run_dir / "config.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.toml")
    return config_mod.load(path, {})


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


def final_score_summary(records: list[dict], method: str) -> dict | None:
    """A method's final scores for summary.json, in [0, 1] as metrics.jsonl holds them: the mean
    over clients per view ('global', and 'personal' for a method that has it), and each client's;
    None before the method's first evaluation."""
    from feddat.reporting import VIEWS, final_scores

    per_client = final_scores(records).get(method)
    if not per_client:
        return None
    out: dict = {}
    for view in VIEWS:
        values = [s[view] for s in per_client.values() if s.get(view) is not None and s[view] == s[view]]
        if values:
            out[view] = sum(values) / len(values)
    out["clients"] = {c: {v: s[v] for v in VIEWS if v in s} for c, s in per_client.items()}
    return out


def write_summary(cfg: Config, run_dir: Path, summaries: list[dict], clients: list[str], environment: dict) -> None:
    """RUN_DIR/summary.json, as both engines write it after each method: per method its costs
    and final scores (final_score_summary, from metrics.jsonl), the benchmark and its clients,
    and the environment the numbers repeat in; a script reads the results here, not the log."""
    from feddat.reporting import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    methods = [{**s, "scores": final_score_summary(records, s["method"])} for s in summaries]
    write_json(run_dir / "summary.json", {"methods": methods, "benchmark": {"name": cfg.data.benchmark, "clients": list(clients)}, "environment": environment})


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
    scored = "Scores in % on each client's held-out split, at the last evaluated round."
    if cfg.data.validation_per_client:  # the test split was scored once, on the selected round's model
        picked = ", ".join(f"{s['method']} round {s['selected_round']}" for s in summaries if s.get("selected_round") is not None)
        scored = (f"Scores in % on each client's test split, scored once, on the model of the round selected by validation ({cfg.data.validation_per_client} "
                  f"questions per client held out of its training data; federation.select_round = {cfg.federation.select_round}): {picked}.")
    report = f"# Results: {cfg.data.benchmark} benchmark, {cfg.backbone.name}, {cfg.federation.rounds} rounds, seed {cfg.run.seed}\n\n{scored}\n\n{table}\n\n{timing}\n"
    write_text(run_dir / "results.md", report)
    log("\n" + report)
