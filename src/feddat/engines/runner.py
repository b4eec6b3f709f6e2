"""One experiment: build backbone and data once, run each method with the embedded engine,
write the run directory and print the results table."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

from feddat.config import Config
from feddat.engines.rundir import config_fingerprint, new_run_dir, resumable, write_report, write_summary  # noqa: F401  (resumable: imported from here by the CLI)
from feddat.engines.state import Checkpoint
from feddat.runtime import clean_partial_writes, environment, pick_device, read_json, set_threads, uses_bf16


def run_experiment(cfg: Config, log: Callable[[str], None] = lambda s: print(s, flush=True), resume: Path | None = None) -> Path:
    """Run every configured method; with `resume`, continue the interrupted run in that directory."""
    from feddat.data import faults
    from feddat.data.sources import check_inputs, raw_clients

    check_inputs(cfg)  # a missing data.root is reported now, not after the backbone has loaded
    set_threads(cfg.run.threads)
    device = pick_device(cfg.run.device)
    # Every record is read and checked (as `feddat data describe` does) before the backbone
    # loads and before a run directory exists: bad data stops the run in seconds, naming the file.
    with faults.applied(cfg.data.on_bad_record, log):
        raw = raw_clients(cfg)
    # A new run that stops before its first committed round takes its directory back (new_run_dir).
    with new_run_dir(cfg, log) if resume is None else contextlib.nullcontext(Path(resume)) as run_dir:
        return run_in(run_dir, cfg, raw, device, log, resume)


def run_in(run_dir: Path, cfg: Config, raw: list, device, log: Callable[[str], None], resume: Path | None) -> Path:
    """run_experiment's work once the data are read (`raw`: raw_clients) and the run directory is there."""
    from feddat.backbones import backbone_from_config
    from feddat.data.clients import load_clients, write_client_index
    from feddat.engines.embedded import run_method
    from feddat.peft.model import AdaptedModel

    if resume is None:
        done: dict[str, dict] = {}
    else:
        clean_partial_writes(run_dir)
        summary = run_dir / "summary.json"
        done = {s["method"]: s for s in read_json(summary)["methods"]} if summary.is_file() else {}
        for name in done:  # a finished method's numbers are reported under the config.toml of now
            Checkpoint(run_dir / "checkpoint" / name, config_fingerprint(cfg)).committed()
    log(f"feddat: run directory {run_dir}  (device {device}, {'bf16 autocast' if uses_bf16(device, cfg.run.precision) else 'float32'}){'  resuming' if resume else ''}")
    t0 = time.perf_counter()
    b = cfg.backbone
    backbone = backbone_from_config(b).to(device)
    log(f"backbone {b.name} loaded in {time.perf_counter() - t0:.1f}s; encoding the {cfg.data.benchmark} benchmark (image features cached in {cfg.data.cache_dir})")
    t0 = time.perf_counter()
    clients = load_clients(cfg, backbone, log=log, raw=raw)
    raw.clear()  # the images, encoded now: not kept through training (the caller holds this list too)
    write_client_index(run_dir, clients)  # each client's answers: what `feddat predict` prints
    log(f"data ready in {time.perf_counter() - t0:.1f}s")
    model = AdaptedModel.from_config(backbone, cfg.adapter, cfg.run.prefix_cache_mb)
    if model.prefix_cache:
        depth = model.prefix_cache.depth
        blocks = "block 0" if depth == 1 else f"blocks 0-{depth - 1}"
        log(f"frozen {blocks} (up to the lowest adapter site) run once per example, kept in up to {cfg.run.prefix_cache_mb} MiB (run.prefix_cache_mb)")
    summaries = []
    for name in cfg.run.methods:
        if name in done:
            log(f"== {name}: finished before the interruption")
            summaries.append(done[name])
            continue
        log(f"== {name}")
        summaries.append(run_method(name, cfg, model, clients, run_dir, device, log, resume=resume is not None))
        # The environment is recorded with the numbers: they repeat bit for bit only in the same
        # one (docs/guide/running.md, "Same seed, same numbers"); a resumed run records the one it finished in.
        write_summary(cfg, run_dir, summaries, [c.name for c in clients], environment(device))
    write_report(cfg, run_dir, summaries, log)
    return run_dir
