"""Finished runs read back: a compare run folder or a `feddat run` directory (several methods),
and what one run shows: its evaluations by round, its compute and bytes, its curve and its
per-client scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from feddat import config as config_mod
from feddat.compare.statistics import nanmean
from feddat.compare.variants import Variant, passes_per_step
from feddat.config import Config
from feddat.runtime import read_json


def run_path(out_dir: Path, variant: Variant, seed: int) -> Path:
    return out_dir / "runs" / variant.label / f"seed{seed}"


@dataclass
class RunResult:
    label: str
    method: str
    seed: int
    records: list[dict]
    summary: dict
    personal: bool = False
    passes: int = 2  # backbone passes per local minibatch, from the method and the run's config


def load_compare_run(run_dir: Path) -> RunResult:
    from feddat.reporting import read_metrics

    summary = read_json(run_dir / "summary.json")
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("method") == summary["method"]]
    return RunResult(summary["label"], summary["method"], int(summary["seed"]), records, summary, any("personal" in r for r in records), run_passes(run_dir, summary["method"]))


def run_passes(run_dir: Path, method: str) -> int:
    """Passes per step for `method` as configured in that run (read at report time, so that a
    correction of the pass counts applies to runs that finished before it)."""
    path = run_dir / "config.toml"
    cfg = config_mod.load(path, {}) if path.is_file() else Config()
    return sum(passes_per_step(method, cfg))


def load_run_dirs(dirs: list[Path]) -> list[RunResult]:
    """Results from `feddat run` directories (several methods each) or compare run folders."""
    from feddat.reporting import read_metrics

    results = []
    for d in dirs:
        if not (d / "summary.json").is_file():
            raise FileNotFoundError(f"{d} holds no finished run (no summary.json)")
        summary = read_json(d / "summary.json")
        if "label" in summary:
            results.append(load_compare_run(d))
            continue
        seed = int(config_mod.load(d / "config.toml", {}).run.seed) if (d / "config.toml").is_file() else 0
        records = read_metrics(d / "metrics.jsonl")
        for s in summary["methods"]:
            mine = [r for r in records if r.get("method") == s["method"]]
            results.append(RunResult(s["method"], s["method"], seed, mine, s, any("personal" in r for r in mine), run_passes(d, s["method"])))
    seen = [(r.label, r.seed) for r in results]
    dupes = sorted({x for x in seen if seen.count(x) > 1})
    if dupes:
        raise ValueError(f"the same method and seed appear in several run directories: {dupes}")
    return results


def evals_by_round(result: RunResult) -> dict[int, dict[str, dict[str, float]]]:
    out: dict[int, dict[str, dict[str, float]]] = {}
    for r in result.records:
        if r.get("kind") == "eval":
            out.setdefault(int(r["round"]), {})[r["client"]] = {k: r[k] for k in ("global", "personal") if k in r}
    return dict(sorted(out.items()))


def compute_by_round(result: RunResult) -> dict[int, float]:
    """Backbone passes spent in each round, summed over the participating clients."""
    per_step = result.passes
    out: dict[int, float] = {}
    for r in result.records:
        if r.get("kind") == "train":
            out[int(r["round"])] = out.get(int(r["round"]), 0.0) + float(r.get("passes", r.get("steps", 0) * per_step))
    return out


def curve(result: RunResult, view: str = "global") -> list[dict[str, float]]:
    """Per evaluated round: mean score over clients, cumulative compute and bytes (up + down)."""
    evals, compute = evals_by_round(result), compute_by_round(result)
    per_round_bytes = result.summary.get("bytes_up_per_round", 0) + result.summary.get("bytes_down_per_round", result.summary.get("bytes_up_per_round", 0))
    points = []
    for round_, clients in evals.items():
        points.append({
            "round": round_,
            "score": nanmean(c.get(view) for c in clients.values()),
            "compute": sum(v for r, v in compute.items() if r <= round_),
            "bytes": per_round_bytes * round_,
        })
    return points


def client_scores(result: RunResult, view: str) -> dict[str, tuple[float, float]]:
    """client (and 'mean') -> (final score, mean of the last three evaluations)."""
    evals = evals_by_round(result)
    if not evals:
        return {}
    rounds = list(evals)
    clients = list(evals[rounds[-1]])
    out = {}
    for c in clients:
        final = evals[rounds[-1]][c].get(view)
        last3 = nanmean(evals[r].get(c, {}).get(view) for r in rounds[-3:])
        out[c] = (final, last3)
    out["mean"] = (nanmean(out[c][0] for c in clients), nanmean(out[c][1] for c in clients))
    return out
