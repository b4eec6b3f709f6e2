"""One experiment: build backbone and data once, run each method with the embedded engine,
write the run directory and print the results table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from feddat.config import Config
from feddat.runtime import pick_device, set_threads, write_json, write_text


def make_run_dir(cfg: Config) -> Path:
    name = cfg.run.name or f"{cfg.data.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.run.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run directory {run_dir} already holds a run; choose another --run.name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run_experiment(cfg: Config, log: Callable[[str], None] = lambda s: print(s, flush=True)) -> Path:
    from feddat.backbones import build_backbone
    from feddat.data.clients import load_clients
    from feddat.engines.embedded import run_method
    from feddat.peft.model import AdaptedModel
    from feddat.reporting import read_metrics, results_table

    set_threads(cfg.run.threads)
    device = pick_device(cfg.run.device)
    run_dir = make_run_dir(cfg)
    write_text(run_dir / "config.toml", cfg.to_toml())
    log(f"feddat: run directory {run_dir}  (device {device})")
    t0 = time.perf_counter()
    b = cfg.backbone
    backbone = build_backbone(b.name, b.path, b.image_size, b.max_text_len).to(device)
    log(f"backbone {b.name} loaded in {time.perf_counter() - t0:.1f}s; encoding the {cfg.data.benchmark} benchmark (image features cached in {cfg.data.cache_dir})")
    t0 = time.perf_counter()
    clients = load_clients(cfg, backbone, log=log)
    log(f"data ready in {time.perf_counter() - t0:.1f}s")
    a = cfg.adapter
    model = AdaptedModel(backbone, a.reduction_factor, a.activation, a.blocks or None, a.init, a.init_std)
    summaries = []
    for name in cfg.run.methods:
        log(f"== {name}")
        summaries.append(run_method(name, cfg, model, clients, run_dir, device, log))
        write_json(run_dir / "summary.json", {"methods": summaries})
    table = results_table(read_metrics(run_dir / "metrics.jsonl"))
    timing = "\n".join(
        f"- {s['method']}: wall {s['wall_s']:.1f}s, {s['local_steps']} local steps, {1000 * s['s_per_local_step']:.0f} ms/step (incl. data), "
        f"{s['shared_params']:,} shared parameters, {s['bytes_up_per_round']:,} bytes up per round"
        for s in summaries
    )
    report = f"# Results: {cfg.data.benchmark} benchmark, {cfg.backbone.name}, {cfg.federation.rounds} rounds, seed {cfg.run.seed}\n\nScores in % on each client's held-out split, at the last evaluated round.\n\n{table}\n\n{timing}\n"
    write_text(run_dir / "results.md", report)
    log("\n" + report)
    return run_dir
