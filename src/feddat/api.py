"""The Python entry points, for notebooks and scripts (docs/guide/using-a-model.md, 'Python API').

    import feddat
    cfg = feddat.Config.from_toml("my.toml", {"federation.rounds": 3})
    result = feddat.run(cfg)          # trains, writes the run directory, returns what the CLI prints
    print(result.table)               # = results.md
    result.scores["feddat"]["night"]["global"]
    model = feddat.load_model(result.run_dir, method="feddat", client="night")
    model.predict(["cat.png"], ["what colour is the cat?"])
    feddat.report(result.run_dir)     # report.html

Everything here is a thin layer over the modules the CLI uses, so both give the same results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from feddat.config import Config
from feddat.runtime import read_json


@dataclass
class RunResult:
    """What `feddat run` prints and writes, as Python objects."""

    run_dir: Path
    table: str  # results.md: per-client scores per method and view, per category, times
    scores: dict[str, dict[str, dict[str, float]]]  # method -> client -> {"global", "personal", "global/<category>", ...}, final round, in [0, 1]
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json: per-method times, steps, bytes; environment
    metrics: list[dict] = field(default_factory=list)  # every metrics.jsonl record

    def mean(self, method: str, view: str = "global") -> float:
        """The mean over clients of `method`'s final `view` score (the table's last column, in [0, 1])."""
        values = [s[view] for s in self.scores[method].values() if view in s]
        if not values:
            raise KeyError(f"method '{method}' has no '{view}' scores; views: {sorted({k for s in self.scores[method].values() for k in s})}")
        return sum(values) / len(values)

    def __str__(self) -> str:
        return self.table


def as_config(cfg: Config | str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """A Config from a Config (overrides applied to a copy), a TOML path, or None (the defaults)."""
    if isinstance(cfg, Config):
        from feddat.compare import flat_config

        return Config.from_toml(None, {**flat_config(cfg), **(overrides or {})})
    return Config.from_toml(cfg, overrides)


def read_run(run_dir: str | Path) -> RunResult:
    """A finished run directory as a RunResult."""
    from feddat.reporting import final_scores, read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    table = (run_dir / "results.md").read_text() if (run_dir / "results.md").is_file() else ""
    return RunResult(run_dir, table, final_scores(records), summary, records)


def run(cfg: Config | str | Path | None = None, overrides: dict[str, Any] | None = None, log: Callable[[str], None] = lambda s: print(s, flush=True)) -> RunResult:
    """Train every method of `cfg` (`feddat run`): a Config, a TOML path or None for the defaults,
    with dotted `overrides` ({"run.methods": "feddat,fedavg"}). `log` gets the progress lines
    (pass `lambda s: None` for silence)."""
    from feddat.algorithms import check_methods
    from feddat.engines.runner import run_experiment

    cfg = as_config(cfg, overrides)
    check_methods(cfg.run.methods)
    return read_run(run_experiment(cfg, log=log))


def resume(run_dir: str | Path, log: Callable[[str], None] = lambda s: print(s, flush=True)) -> RunResult:
    """Continue an interrupted run (`feddat run --resume RUN_DIR`)."""
    from feddat.engines.runner import resumable, run_experiment

    return read_run(run_experiment(resumable(Path(run_dir)), log=log, resume=Path(run_dir)))


def compare_methods(cfg: Config | str | Path | None = None, methods: list[str] | str = "feddat,fedavg", seeds: list[int] = (0,), out: str | Path | None = None, overrides: dict[str, Any] | None = None, reference: str | None = None, log: Callable[[str], None] = lambda s: print(s, flush=True)) -> Path:
    """`feddat compare`: train (or reuse) every method variant for every seed; returns the folder
    holding table.md, table.csv, costs.csv and plots/. (Not `feddat.compare`: that name is the
    module with the comparison's parts.)"""
    from feddat import compare as compare_mod

    cfg = as_config(cfg, overrides)
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    folder = Path(out) if out else Path(cfg.run.out_dir) / f"compare-{cfg.data.benchmark}"
    return compare_mod.run_compare(cfg, compare_mod.parse_variants(names), list(seeds), folder, reference, log)


def load_model(path: str | Path, method: str | None = None, client: str | None = None, view: str | None = None, device: str = "auto", state_dir: str | Path | None = None):
    """A client's trained model (inference.Predictor) from a run directory (view None: the global
    view; state_dir: a Flower SuperNode's state-dir holding the client's state) or an export
    folder (which holds one model: leave method, client and view out)."""
    from feddat.inference import load

    return load(path, method, client, view, device, state_dir)


def export(run_dir: str | Path, client: str, out: str | Path, method: str | None = None, view: str = "global", state_dir: str | Path | None = None) -> Path:
    """`feddat export`: one client's model as a folder (peft's adapter format for LoRA methods)."""
    from feddat.inference import export as export_model

    return export_model(run_dir, method, client, out, view, state_dir)


def lora_base(export: str | Path):
    """(backbone, encoder): what a LoRA export's peft adapter goes on, as the run trained and
    evaluated it (foundation: MiniLM with the exported checkpoint's delta merged, not plain
    MiniLM). `peft.PeftModel.from_pretrained(encoder, export)` adapts `encoder` in place;
    docs/guide/using-a-model.md has the whole snippet."""
    from feddat.inference import lora_base as base

    return base(export)


def export_head(export: str | Path):
    """An export's client head (torch module: backbone features -> logits over its answers)."""
    from feddat.inference import export_head as head

    return head(export)


def report(path: str | Path, out: str | Path | None = None) -> Path:
    """`feddat report`: the self-contained report.html of a run or comparison folder."""
    from feddat.html_report import write_report

    return write_report(Path(path), Path(out) if out else None)
