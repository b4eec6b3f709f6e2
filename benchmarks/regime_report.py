"""The regime study's summary (docs/results/regime-study/index.md), written from the recorded
runs alone by `make results` (benchmarks/results.py; `benchmarks/regime_study.py report` too): per cell, every method's final mean global
score per seed, mean ± std, its paired difference to FedAvg+Adapter with n and the p-value, the
controls' margins; then FedDAT against FedAvg across the cells."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scipy import stats

from feddat.compare.runs import client_scores, load_compare_run

ORDER = ("head_only", "local", "centralised", "fedavg", "fedavg@feddat", "fedprox", "fedprox0.01", "feddat")
NAMES = {
    "head_only": "head only (control)",
    "local": "local-only",
    "centralised": "centralised (control)",
    "fedavg": "FedAvg+Adapter",
    "fedavg@feddat": "FedAvg+Adapter, FedDAT's compute",
    "fedprox": "FedProx (μ 0.1)",
    "fedprox0.01": "FedProx (μ 0.01)",
    "feddat": "FedDAT",
}


def final_means(run_dir: Path) -> tuple[dict[str, float], dict]:
    """{'global': %, 'personal': %} at the final evaluation, mean over clients; and the summary."""
    result = load_compare_run(run_dir)
    views = {}
    for view in ("global", "personal"):
        scores = client_scores(result, view)
        if scores and scores["mean"][0] == scores["mean"][0]:
            views[view] = 100 * scores["mean"][0]
    return views, result.summary


def machine(run_dir: Path, summary: dict) -> str:
    """'AMD EPYC, 1 thread(s), cpu, float32': where the run's numbers repeat (docs/guide/running.md,
    "Same seed, same numbers"), from its summary.json environment and the precision its config.toml chose."""
    from feddat.compare.runs import run_config

    env = summary.get("environment", {})
    cfg = run_config(run_dir)
    asked = cfg.run.precision if cfg is not None else "auto"
    bf16 = asked == "bf16" or (asked == "auto" and env.get("bf16_native"))
    return f"{env.get('cpu', '?')}, {env.get('torch_threads', '?')} thread(s), {env.get('device', '?')}, {'bf16 autocast' if bf16 else 'float32'}"


def provenance(run_dirs: list[Path]) -> tuple[list[str], list[str]]:
    """(the commits that trained the runs, 12 hex digits or 'not recorded'; the machines)."""
    commits, machines = set(), set()
    for run in run_dirs:
        prov = run / "trained_by.json"
        commits.add(json.loads(prov.read_text())["commit"][:12] if prov.is_file() else "not recorded")
        machines.add(machine(run, json.loads((run / "summary.json").read_text())))
    return sorted(commits), sorted(machines)


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """(mean of a − b over the seeds both have, two-sided p of the paired t-test, n)."""
    common = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in common]
    if not d:
        return float("nan"), float("nan"), 0
    m = sum(d) / len(d)
    if len(d) < 2 or len(set(d)) == 1:
        return m, float("nan"), len(d)  # no spread: a t-test says nothing
    return m, float(stats.ttest_rel([a[s] for s in common], [b[s] for s in common]).pvalue), len(d)


def fmt(x: float, spec: str = ".1f", signed: bool = False) -> str:
    if x != x:
        return "—"
    return format(x, ("+" if signed else "") + spec)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    m = sum(values) / len(values)
    if len(values) < 2:
        return f"{m:.1f} (n = 1)"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{m:.1f} ± {sd:.1f}"


def cell_section(cell: Path, regimes: dict, base: dict) -> tuple[str, dict]:
    by_label: dict[str, dict[str, dict[int, float]]] = {}
    twin, regime = cell.name.split("-", 1)
    own = {p.parent.name for p in cell.glob("runs/*")}
    borrowed = [] if regime not in base else [p for p in sorted((cell.parent / f"{twin}-{base[regime]}").glob("runs/*/seed*/summary.json")) if p.parents[1].name not in own]
    for summary in [*sorted(cell.glob("runs/*/seed*/summary.json")), *borrowed]:
        views, info = final_means(summary.parent)
        for view, value in views.items():
            by_label.setdefault(info["label"], {}).setdefault(view, {})[int(info["seed"])] = value
    commits, machines = provenance([p.parent for p in [*sorted(cell.glob("runs/*/seed*/summary.json")), *borrowed]])
    what, overrides = regimes.get(regime, ("", ()))
    fedavg = by_label.get("fedavg", {}).get("global", {})
    head = by_label.get("head_only", {}).get("global", {})
    lines = [f"## {cell.name}: {twin} twin, {what}", ""]
    lines += [f"Overrides: `{' '.join(overrides) or '(none: the defaults)'}`. Trained by commit(s) {', '.join(commits)} on {'; '.join(machines)}.", ""]
    if borrowed:
        names = sorted({p.parents[1].name for p in borrowed})
        lines += [f"{', '.join(names)}: the runs of cell {twin}-{base[regime]} (this cell's overrides do not change them).", ""]
    lines += ["| method | view | seeds | score per seed | mean ± std | − FedAvg+Adapter (paired: mean, p, n) | − head only (paired) |", "|---|---|---|---|---|---|---|"]
    labels = [l for l in ORDER if l in by_label] + [l for l in by_label if l not in ORDER]
    for label in labels:
        for view in ("global", "personal"):
            seeds = by_label[label].get(view)
            if not seeds:
                continue
            values = [seeds[s] for s in sorted(seeds)]
            per_seed = ", ".join(f"{s}: {seeds[s]:.1f}" for s in sorted(seeds))
            d, p, n = paired(seeds, fedavg) if label != "fedavg" else (float("nan"),) * 2 + (0,)
            h, _, hn = paired(seeds, head) if label != "head_only" else (float("nan"), 0, 0)
            vs_fedavg = f"{fmt(d, signed=True)}, p = {fmt(p, '.3f')}, n = {n}" if n else ""
            lines.append(f"| {NAMES.get(label, label)} | {view} | {len(seeds)} | {per_seed} | {mean_sd(values)} | {vs_fedavg} | {fmt(h, signed=True) if hn else ''} |")
    lines.append("")
    feddat = by_label.get("feddat", {}).get("global", {})
    key = {"cell": cell.name, "feddat_vs_fedavg": paired(feddat, fedavg) if feddat and fedavg else None}
    checks = []
    for label in ("fedavg", "fedprox", "fedprox0.01", "feddat", "fedavg@feddat", "local", "centralised"):
        if label in by_label and head:
            m, _, n = paired(by_label[label]["global"], head)
            checks.append(f"{NAMES[label]} {fmt(m, signed=True)} (n = {n})")
    if checks:
        lines += [f"Adapter methods against the head alone (bar: ≥ +5): {'; '.join(checks)}.", ""]
    if "centralised" in by_label and "local" in by_label:
        m, _, n = paired(by_label["centralised"]["global"], by_label["local"]["global"])
        lines += [f"Centralised against local-only (bar: ≥ +3): {fmt(m, signed=True)} (n = {n}).", ""]
    return "\n".join(lines), key


COMMAND = "make results"  # what writes every page under docs/results/ (benchmarks/results.py)


def summary_text(recorded: Path, cells: list[str]) -> str:
    """The summary page of the cells of `cells` that have recorded runs, in that order."""
    from regime_study import BASE, REGIMES  # beside this file

    sections, keys = [], []
    for name in cells:
        cell = recorded / name
        if any(cell.glob("runs/*/seed*/summary.json")):
            text, key = cell_section(cell, REGIMES, BASE)
            sections.append(text)
            keys.append(key)
    head = [
        "# Where FedDAT leads: the regime study",
        "",
        f"Made by `{COMMAND}` (or `.venv/bin/python benchmarks/regime_study.py report`) from the runs",
        "recorded in this folder alone (`<cell>/runs/<method>/seed<N>/`: each run's config.toml,",
        "metrics.jsonl, summary.json and the commit that trained it); each cell below names the",
        "commits and the machine (CPU, threads, precision) of its runs. [Where FedDAT",
        "leads](../../findings.md#where-feddat-leads) discusses it; [the results index](../index.md)",
        "says how every results page was made.",
        "",
        "Scores are the mean over the twin's clients of the final evaluation (%), the global view",
        "(A_s + head, the deployed model) unless the row says personal. Paired differences pair the",
        "runs of one seed (same data, same initial A_s, same batch order); p is the two-sided paired",
        "t-test (scipy.stats.ttest_rel), '—' where fewer than two seeds or no spread leave nothing to test.",
        "",
        "## FedDAT against FedAvg+Adapter, by cell",
        "",
        "| cell | FedDAT − FedAvg+Adapter (global) | p | n |",
        "|---|---|---|---|",
    ]
    for k in keys:
        if k["feddat_vs_fedavg"]:
            m, p, n = k["feddat_vs_fedavg"]
            head.append(f"| {k['cell']} | {fmt(m, signed=True)} | {fmt(p, '.3f')} | {n} |")
    head.append("")
    return "\n".join(head + sections)


def write_summary(recorded: Path, cells: list[str]) -> Path:
    """summary_text, written to recorded/index.md (a page of the documentation site)."""
    from feddat.runtime import write_text

    out = recorded / "index.md"
    write_text(out, summary_text(recorded, cells))
    return out
