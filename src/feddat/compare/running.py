"""Training what a comparison lacks: one backbone and client set for every run (`Workspace`),
each (variant, seed) run reused when finished, continued when partial, and its summary.json
completed with what the report needs (passes, trainable parameters, bytes down, peak memory)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from feddat.compare.runs import load_compare_run, run_path
from feddat.compare.tables import MANIFEST, check_out_folder, write_report
from feddat.compare.variants import Variant, check_label, check_reference, default_reference, passes_per_step, variant_config
from feddat.config import Config, ConfigError
from feddat.runtime import environment, write_json, write_text


# Keys that change what a run shows or logs while it trains, or where its outputs go (compare
# puts each run in OUT/runs/<label>/seed<N> whatever they say), never what it computes.
WATCHING = ("run.progress", "tracking.", "run.out_dir", "run.name", "data.cache_dir")


class PeakMemory:
    """Peak memory while a run trains: CUDA's allocator peak on a GPU, else the process's
    resident set sampled every 20 ms (an upper bound: it includes the shared backbone)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(0.02)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb())


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trainable_parameters(method, client) -> int:
    """Parameters one client trains: the shared PEFT module plus the private state the method
    declares trainable (`Method.trainable_state`)."""
    return method.trainable_parameters(client)


@dataclass
class Workspace:
    """Backbone, clients and adapted model, built once and shared by every run of a compare."""

    cfg: Config
    log: Callable[[str], None]
    parts: dict[str, Any] = field(default_factory=dict)

    def get(self) -> dict[str, Any]:
        if not self.parts:
            from feddat.backbones import backbone_from_config
            from feddat.data.clients import load_clients
            from feddat.peft.model import AdaptedModel
            from feddat.runtime import pick_device, set_threads

            from feddat.data.sources import check_inputs

            cfg = self.cfg
            check_inputs(cfg)  # before the backbone loads
            set_threads(cfg.run.threads)
            device = pick_device(cfg.run.device)
            backbone = backbone_from_config(cfg.backbone).to(device)
            clients = load_clients(cfg, backbone, log=self.log)
            model = AdaptedModel.from_config(backbone, cfg.adapter, cfg.run.prefix_cache_mb)
            self.parts = {"device": device, "clients": clients, "model": model}
        return self.parts


def run_status(run_dir: Path, cfg: Config) -> str:
    """'done', 'partial' or 'new'; a finished run trained with another configuration is an error,
    an unfinished one is deleted (nothing to keep)."""
    status = check_run(run_dir, cfg)
    if status == "stale":
        shutil.rmtree(run_dir)
        return "new"
    return status


def check_run(run_dir: Path, cfg: Config) -> str:
    """run_status without touching anything: 'stale' is unfinished work for another configuration."""
    if not run_dir.exists():
        return "new"
    stored = run_dir / "config.toml"
    diffs = config_differences(stored.read_text(), cfg) if stored.is_file() else ["no config.toml"]
    same = not diffs
    if (run_dir / "summary.json").is_file():
        if not same:
            raise ConfigError(f"{run_dir} holds a finished run with a different configuration ({'; '.join(diffs[:3])}); delete it or compare into another --out")
        return "done"
    return "partial" if same else "stale"


def config_differences(stored_toml: str, cfg: Config) -> list[str]:
    """How a stored run's configuration differs from `cfg`. A key the stored file lacks counts
    only if `cfg` moves it off its default: a key added to feddat later must not invalidate
    finished runs."""
    import tomllib

    try:
        stored = flat_dict(tomllib.loads(stored_toml))
    except tomllib.TOMLDecodeError as err:
        return [f"unreadable config.toml ({err})"]
    now, defaults = flat_dict(cfg.to_dict()), flat_dict(Config().to_dict())
    out = []
    for key in sorted(set(stored) | set(now)):
        if key.startswith(WATCHING):
            continue  # how a run is watched changes none of its numbers
        if key not in now:
            out.append(f"{key} is no longer a configuration key")
        elif key not in stored:
            if now[key] != defaults.get(key):
                out.append(f"{key}: default then, {now[key]!r} now")
        elif stored[key] != now[key]:
            out.append(f"{key}: {stored[key]!r} then, {now[key]!r} now")
    return out


def flat_dict(tree: dict) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in tree.items() for key, value in values.items()}


def train_run(variant: Variant, seed: int, cfg: Config, run_dir: Path, work: Workspace, log: Callable[[str], None], resume: bool) -> dict:
    from feddat.algorithms import build_method
    from feddat.engines.embedded import run_method
    from feddat.data.clients import write_client_index
    from feddat.engines.rundir import final_score_summary
    from feddat.reporting import read_metrics

    parts = work.get()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.toml", cfg.to_toml())
    write_client_index(run_dir, parts["clients"])  # what `feddat predict` needs to name answers
    with PeakMemory(parts["device"]) as memory:
        summary = run_method(variant.method, cfg, parts["model"], parts["clients"], run_dir, parts["device"], log, resume=resume)
    method = build_method(variant.method, cfg, parts["model"], parts["device"])
    fwd, bwd = passes_per_step(variant.method, cfg)
    summary.update(
        label=variant.label,
        seed=seed,
        overrides=dict(variant.overrides),
        local_epochs=cfg.train.local_epochs,
        passes_per_step=fwd + bwd,
        trainable_params=method.trainable_parameters(parts["clients"][0]),  # as the method declares it (Method.trainable_state)
        bytes_down_per_round=summary["bytes_up_per_round"],  # the server sends each participant what it sends back
        peak_memory_mb=memory.peak_mb,
        memory_kind="cuda_max_allocated" if parts["device"].type == "cuda" else "process_rss",
        environment=environment(parts["device"]),  # where these numbers repeat bit for bit (docs/guide/running.md)
        scores=final_score_summary(read_metrics(run_dir / "metrics.jsonl"), variant.method),  # as `feddat run` records them (engines/rundir.py)
        benchmark={"name": cfg.data.benchmark, "clients": [c.name for c in parts["clients"]]},
    )
    write_json(run_dir / "summary.json", summary)  # written last: marks the run finished
    return summary


def run_compare(cfg: Config, variants: list[Variant], seeds: list[int], out_dir: Path, reference: str | None = None, log: Callable[[str], None] = lambda s: print(s, flush=True), workspace: Workspace | None = None) -> Path:
    """Train what is missing, then write the report. Returns the report folder.

    `workspace` lets a caller (a test, a notebook) hand over a backbone and clients already built."""
    # Everything is checked before anything is written: the folder, every variant's
    # configuration, every finished run; a refusal leaves the comparison in out_dir as it was.
    check_out_folder(out_dir)
    for v in variants:
        check_label(v.label, f"compare: variant '{v.spec}'")
    check_reference(reference, [v.label for v in variants])
    plan = [(v, s, variant_config(cfg, v, s)) for s in seeds for v in variants]  # seed by seed: an interrupted compare has every method for the seeds it finished
    statuses = [check_run(run_path(out_dir, v, s), c) for v, s, c in plan]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / MANIFEST, {"variants": [{"label": v.label, "method": v.method, "overrides": dict(v.overrides)} for v in variants], "seeds": seeds})
    for i, ((v, s, _), status) in enumerate(zip(plan, statuses)):
        if status == "stale":  # unfinished work for another configuration: nothing to keep
            shutil.rmtree(run_path(out_dir, v, s))
            statuses[i] = "new"
    work = workspace or Workspace(cfg, log)
    log(f"compare: {statuses.count('done')} finished runs reused, {len(plan) - statuses.count('done')} to train, in {out_dir}")
    for (v, s, c), status in zip(plan, statuses):
        if status == "done":
            continue
        t0 = time.perf_counter()
        log(f"== {v.label} seed {s}" + ("  (continuing)" if status == "partial" else ""))
        train_run(v, s, c, run_path(out_dir, v, s), work, log, resume=status == "partial")
        log(f"   {v.label} seed {s} done in {time.perf_counter() - t0:.1f}s")
    results = [load_compare_run(run_path(out_dir, v, s)) for v, s, _ in plan]
    write_report(results, out_dir, reference or default_reference([v.label for v in variants]), title=f"{cfg.data.benchmark} benchmark, {cfg.backbone.name}")
    return out_dir
