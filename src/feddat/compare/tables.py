"""The report of a comparison: rows per (label, view) over seeds and costs per label, written
as table.md (markdown tables with the links to the plots), table.csv and costs.csv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feddat.compare.plots import write_plots
from feddat.compare.runs import LAST_EVALS, RunResult, client_scores, compute_by_round, curve, last_evals, load_run_dirs
from feddat.compare.statistics import MIN_SEEDS, Difference, mean_std, nanmean, significance
from feddat.compare.variants import check_reference, default_reference
from feddat.reporting import GENERATED, VIEWS, category_means, final_scores
from feddat.runtime import read_json, write_json, write_text


@dataclass
class Row:
    label: str
    method: str
    view: str
    seeds: list[int]
    cells: dict[str, dict[str, tuple[float, float, int]]]  # client -> {'final'|'last3': (mean, sd, n)}
    mean_by_seed: dict[int, float]  # final mean-over-clients score per seed
    diff: Difference | None = None
    last_evals: int = LAST_EVALS  # evaluations the 'last3' cells average (fewer where the runs evaluated fewer)
    # Per seed, the round whose model the test split scored once, chosen by validation
    # (data.validation_per_client, federation.select_round); empty without a validation split.
    selected: tuple[int, ...] = ()


def summarise(results: list[RunResult], reference: str) -> tuple[list[Row], list[str]]:
    """Rows per (label, view) over seeds, and the clients in order."""
    labels = list(dict.fromkeys(r.label for r in results))
    clients: list[str] = []
    rows = []
    for view in VIEWS:  # an answer decoder's runs add the generated answers' scores of each view
        for label in labels:
            runs = [r for r in results if r.label == label and (not view.startswith("personal") or r.personal)]
            per_seed = {r.seed: client_scores(r, view) for r in runs}
            per_seed = {s: v for s, v in per_seed.items() if any(final is not None for c, (final, _) in v.items() if c != "mean")}  # runs that scored this view
            if not per_seed:
                continue
            names = [c for scores in per_seed.values() for c in scores if c != "mean"]
            clients += [c for c in dict.fromkeys(names) if c not in clients]
            cells = {c: {stat: mean_std([s.get(c, (None, None))[i] for s in per_seed.values()]) for i, stat in enumerate(("final", "last3"))} for c in [*dict.fromkeys(names), "mean"]}
            evaluated = min(last_evals(r) for r in runs if r.seed in per_seed)
            selected = tuple(int(r.summary["selected_round"]) for r in sorted(runs, key=lambda r: r.seed) if r.seed in per_seed and r.summary.get("selected_round") is not None)
            rows.append(Row(label, runs[0].method, view, sorted(per_seed), cells, {s: v["mean"][0] for s, v in per_seed.items()}, last_evals=evaluated, selected=selected))
    ref = {r.view: r for r in rows if r.label == reference}
    for row in rows:
        if row.view in ref and row.label != reference:
            row.diff = significance(row.mean_by_seed, ref[row.view].mean_by_seed)
    return rows, clients


def cost_rows(results: list[RunResult]) -> list[dict[str, Any]]:
    """Per label, the mean over seeds of what each run spent."""
    keys = ("local_epochs", "passes_per_step", "trainable_params", "shared_params", "bytes_up_per_round", "bytes_down_per_round", "wall_s", "s_per_local_step", "peak_memory_mb")
    out = []
    for label in dict.fromkeys(r.label for r in results):
        runs = [r for r in results if r.label == label]
        row: dict[str, Any] = {"label": label, "method": runs[0].method, "seeds": len(runs)}
        for k in keys:
            row[k] = nanmean(r.summary.get(k) for r in runs)
        row["passes_per_step"] = nanmean(r.passes for r in runs)
        rounds = nanmean(max((p["round"] for p in curve(r)), default=0) for r in runs)
        row["total_bytes"] = (row["bytes_up_per_round"] + (row["bytes_down_per_round"] if row["bytes_down_per_round"] == row["bytes_down_per_round"] else row["bytes_up_per_round"])) * rounds
        row["compute_passes"] = nanmean(sum(compute_by_round(r).values()) for r in runs)
        out.append(row)
    return out


def pct(mean: float, sd: float) -> str:
    if mean != mean:
        return "—"
    return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if sd == sd else "")


def evals_label(k: int) -> str:
    return f"last {k} eval" + ("s" if k != 1 else "")


def delta_cell(d: Difference) -> str:
    """Δ with its test: '+6.2 * (p = 0.012, n = 3)', '+1.0 (p = 0.41, n = 3 vs 4, Welch)';
    untested: '+6.2 (n = 2, untested: fewer than 3 seeds)'."""
    n = str(d.n[0]) if d.test == "paired t" else f"{d.n[0]} vs {d.n[1]}, Welch"
    if d.p is None:
        return f"{100 * d.mean:+.1f} (n = {n}, untested: {d.untested})"
    p = "p < 0.001" if d.p < 0.001 else f"p = {d.p:.3f}"
    return f"{100 * d.mean:+.1f}" + (" *" if d.significant else "") + f" ({p}, n = {n})"


def markdown_scores(rows: list[Row], clients: list[str], view: str, reference: str) -> str:
    mine = [r for r in rows if r.view == view]
    if not mine:
        return ""
    # the evaluations the second mean averages, in the header where every row averages as many
    counts = {r.last_evals for r in mine}
    uniform = len(counts) == 1
    averaged = evals_label(min(counts)) if uniform else "last evals (as many as each row says)"
    # Runs with a validation split scored the test split once: the column names the round instead.
    validated = all(r.selected for r in mine)
    second = "round selected by validation (per seed)" if validated else f"mean, {averaged}"
    head = "| method | " + " | ".join(clients) + f" | mean | {second} | Δ mean vs " + reference + " (p, n seeds) |"
    lines = [head, "|" + "---|" * (len(clients) + 4)]
    for r in mine:
        cells = [pct(*r.cells.get(c, {}).get("final", (float("nan"), float("nan"), 0))[:2]) for c in [*clients, "mean"]]
        last3 = pct(*r.cells["mean"]["last3"][:2]) + ("" if uniform else f" ({evals_label(r.last_evals)})")
        if r.selected:
            last3 = ", ".join(map(str, r.selected)) if validated else f"test once, at round {', '.join(map(str, r.selected))} (selected by validation)"
        if r.diff is None:
            delta = "ref" if r.label == reference else "—"
        else:
            delta = delta_cell(r.diff)
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {last3} | {delta} |")
    return "\n".join(lines)


def markdown_categories(results: list[RunResult], view: str = "global") -> str:
    """Per category of question (question kind, answer type): mean ± std over seeds; "" without categories."""
    per_label: dict[str, list[dict[str, float]]] = {}
    for r in results:
        per_client = next(iter(final_scores(r.records).values()), {})  # a run's records are one method's
        per_label.setdefault(r.label, []).append(category_means(per_client, view))
    categories = sorted({c for runs in per_label.values() for means in runs for c in means})
    if not categories:
        return ""
    lines = ["| method | " + " | ".join(categories) + " |", "|" + "---|" * (len(categories) + 1)]
    for label, runs in per_label.items():
        lines.append(f"| {label} | " + " | ".join(pct(*mean_std([m.get(c) for m in runs])[:2]) for c in categories) + " |")
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    if n != n:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def number(x: float, spec: str = ",.0f", scale: float = 1) -> str:
    """A number for the cost table; "—" where no run recorded it (NaN), as pct/human_bytes."""
    return "—" if x != x else format(scale * x, spec)


def markdown_costs(costs: list[dict[str, Any]]) -> str:
    lines = [
        "| method | local epochs | passes per step | trainable params (per client) | shared params | bytes up / round | bytes down / round | total bytes | compute (backbone passes) | wall s | ms per local step | peak memory MiB |",
        "|" + "---|" * 12,
    ]
    for c in costs:
        lines.append(
            f"| {c['label']} | {number(c['local_epochs'], '.0f')} | {number(c['passes_per_step'], '.0f')} | {number(c['trainable_params'])} | {number(c['shared_params'])} | "
            f"{human_bytes(c['bytes_up_per_round'])} | {human_bytes(c['bytes_down_per_round'])} | {human_bytes(c['total_bytes'])} | {number(c['compute_passes'])} | "
            f"{number(c['wall_s'], '.1f')} | {number(c['s_per_local_step'], '.0f', 1000)} | {number(c['peak_memory_mb'], '.0f')} |"
        )
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


def score_records(rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        for client, stats in r.cells.items():
            (fm, fs, n), (lm, ls, _) = stats["final"], stats["last3"]
            d = r.diff if client == "mean" else None  # the reference is tested on the mean over clients
            tested = {"diff_vs_reference": d.mean, "exceeds_seed_noise": d.significant, "test": d.test, "p_value": d.p, "test_seeds": "/".join(map(str, d.n)), "untested": d.untested} if d else {}
            out.append({
                "label": r.label, "method": r.method, "view": r.view, "client": client, "final_mean": fm, "final_std": fs, "last3_mean": lm, "last3_std": ls, "seeds": n,
                "last_evals": r.last_evals, **dict.fromkeys(("diff_vs_reference", "exceeds_seed_noise", "test", "p_value", "test_seeds", "untested")), **tested,
                **({"selected_rounds": "/".join(map(str, r.selected))} if any(row.selected for row in rows) else {}),
            })
    return out


SELECTION_NOTE = (
    "A run with a validation split (data.validation_per_client) scored the test split once, at the end, on the model of the round "
    "its validation scores selected (federation.select_round: last, or best); its scores are that one test score, and the column "
    "after 'mean' gives the selected round (per seed). "
)


def write_report(results: list[RunResult], out_dir: Path, reference: str, title: str = "") -> None:
    if not results:
        raise ValueError("nothing to report: no finished runs")
    check_reference(reference, [r.label for r in results])
    rows, clients = summarise(results, reference)
    costs = cost_rows(results)
    seeds = sorted({r.seed for r in results})
    plots = write_plots(results, out_dir / "plots", clients)
    parts = [
        f"# Comparison: {title}".rstrip(": "),
        f"Seeds {', '.join(map(str, seeds))}. Scores in % on each client's held-out split at the final evaluation, mean ± std over seeds; "
        f"'mean, last k evals' averages a run's last k evaluated rounds (k = {LAST_EVALS}, or all of them where a run evaluated fewer). "
        + (SELECTION_NOTE if any(r.summary.get("selected_round") is not None for r in results) else "") +
        f"Δ is the difference of the mean to `{reference}`, with the p-value of its two-sided t-test and n, the seeds tested: "
        "a paired t-test over the seeds both ran (scipy.stats.ttest_rel), else Welch's t-test (scipy.stats.ttest_ind, unequal variances; n per side). "
        f"`*` marks p < 0.05, a difference beyond the seed noise. Untested, and never starred: fewer than {MIN_SEEDS} seeds (a side), "
        "or no spread (per-seed differences, or both sides' scores, all equal: the t statistic is undefined).",
        "## Global model (shared PEFT module + private head)",
        markdown_scores(rows, clients, "global", reference),
    ]
    by_category = markdown_categories(results)
    if by_category:
        parts += ["### Global model by category of question (mean over the clients that ask it)", by_category]
    personal = markdown_scores(rows, clients, "personal", reference)
    if personal:
        parts += ["## Personal model (FedDAT's Dual-Adapter Teacher, Ditto's personal adapter)", personal]
    for view, title in (("global", "Global"), ("personal", "Personal")):
        generated = markdown_scores(rows, clients, view + GENERATED, reference)
        if generated:
            parts += [f"## {title} model, generated answers (an answer decoder's greedy answers scored as free text; the tables above rank the answer list)", generated]
    parts += [
        "## Cost",
        "Compute counts backbone passes over a minibatch (forward and backward each count one). Bytes are per round over all participants. "
        "Peak memory is CUDA's allocator peak on a GPU, the process's resident set on a CPU (includes the shared backbone).",
        markdown_costs(costs),
        "## Plots",
        "\n".join(f"- [{p.name}](plots/{p.name})" for p in plots),
    ]
    write_text(out_dir / "table.md", "\n\n".join(p for p in parts if p) + "\n")
    write_csv(out_dir / "table.csv", score_records(rows))
    write_csv(out_dir / "costs.csv", costs)


MANIFEST = "compare.json"  # what a comparison folder compares: the plan `feddat report` reads


def from_manifest(dirs: list[Path], results: list[RunResult]) -> dict[str, Any]:
    """compare.json of a report on finished runs: the run directories (`from`), each run
    reported, and the labels as variants (with the overrides a compare run recorded)."""
    variants = {r.label: {"label": r.label, "method": r.method, "overrides": r.summary.get("overrides", {}) if "label" in r.summary else {}} for r in results}
    return {
        "from": [str(Path(d).resolve()) for d in dirs],
        "variants": list(variants.values()),
        "seeds": sorted({r.seed for r in results}),
        "runs": [{"label": r.label, "method": r.method, "seed": r.seed, "dir": str(Path(r.run_dir).resolve())} for r in results],
    }


def check_out_folder(out_dir: Path, from_dirs: list[str] | None = None) -> None:
    """Refuse to write a comparison where its tables would replace another's or mix with it.

    `from_dirs` None: `feddat compare` trains into `out_dir` (its own comparison, or a new or
    empty folder); else a report on those finished run directories (resolved paths) goes there,
    which only a new or empty folder, or the report on the same runs, may receive."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    if (out_dir / "summary.json").exists() or (out_dir / "config.toml").exists():
        raise ValueError(f"{out_dir} is a run directory; write the comparison to another --out")
    manifest = out_dir / MANIFEST
    plan = read_json(manifest) if manifest.is_file() else None
    theirs = plan.get("from") if isinstance(plan, dict) else None
    if from_dirs is None:
        if theirs is not None:
            raise ValueError(f"{out_dir} holds a report on finished runs (`feddat compare --from`, {manifest}), not a comparison to train into; choose another --out or delete it")
        return
    if plan is None:
        if any(out_dir.iterdir()):
            raise ValueError(f"{out_dir} is not empty and holds no report on finished runs; a report there would replace or mix with what it holds; choose another --out")
        return
    if theirs is None:
        raise ValueError(f"{out_dir} holds the comparison `feddat compare` trained ({manifest}); a report on other runs would replace its tables; choose another --out")
    if sorted(theirs) != sorted(from_dirs):
        raise ValueError(f"{out_dir} holds the report on other finished runs ({', '.join(theirs)}); choose another --out or delete it")


def report_from_dirs(dirs: list[Path], out_dir: Path | None = None, reference: str | None = None, labels: list[str] | None = None, out_root: Path = Path("runs")) -> Path:
    """The report for runs that already finished (`feddat compare --from DIR ...`), with its own
    compare.json, so that `feddat report` reads it back. `out_dir` None: its own folder,
    `out_root`/compare-<benchmark>-from, never a `feddat compare` folder. Returns the folder."""
    dirs = [Path(d) for d in dirs]
    results = load_run_dirs(dirs)
    if labels:
        results = [r for r in results if r.label in labels]
    if not results:
        raise ValueError("nothing to report: no finished runs" + (f" labelled {', '.join(labels)}" if labels else ""))
    cfg = results[0].config
    if out_dir is None:
        out_dir = Path(out_root) / f"compare-{cfg.data.benchmark}-from"
    manifest = from_manifest(dirs, results)
    check_out_folder(out_dir, manifest["from"])
    reference = reference or default_reference([r.label for r in results])
    check_reference(reference, [r.label for r in results])  # before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / MANIFEST, manifest)  # first, once every check passed: the folder is this report's
    write_report(results, out_dir, reference, title=f"{cfg.data.benchmark} benchmark, {cfg.backbone.name}, finished runs")
    return out_dir
