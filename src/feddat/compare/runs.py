"""Finished runs read back: a compare run folder or a `feddat run` directory (several methods),
and what one run shows: its evaluations by round, its compute and bytes, its curve and its
per-client scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from feddat import config as config_mod
from feddat.compare.statistics import nanmean
from feddat.compare.variants import LABEL, SHAREABLE, Variant, passes_per_step
from feddat.config import Config, ConfigError
from feddat.reporting import VIEWS
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
    run_dir: Path | None = None  # where it was read from
    config: Config | None = None  # its config.toml (None: the directory has none)

    @property
    def name(self) -> str:
        """The run as an error message names it: its directory (and method, for a `feddat run`
        directory that holds several)."""
        where = str(self.run_dir) if self.run_dir is not None else "a run"
        return where if "label" in self.summary else f"{where} ({self.method})"


def load_compare_run(run_dir: Path) -> RunResult:
    from feddat.reporting import read_metrics

    summary = read_json(run_dir / "summary.json")
    check_summary(run_dir / "summary.json", summary, compare_run=True)
    cfg = run_config(run_dir)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("method") == summary["method"]]
    # passes per step as configured in that run, read at report time, so that a correction of
    # the pass counts applies to runs that finished before it
    passes = sum(passes_per_step(summary["method"], cfg or Config()))
    return RunResult(summary["label"], summary["method"], int(summary["seed"]), records, summary, any("personal" in r for r in records), passes, run_dir, cfg)


def check_summary(path: Path, summary, compare_run: bool) -> None:
    """Refuse a summary.json that lacks what the report reads, naming the file and the field."""
    from feddat.algorithms import METHODS

    def bad(what: str):
        return ValueError(f"{path}: {what} (was it edited, or written by another program?)")

    def check_method(entry: dict, where: str) -> None:
        method = entry.get("method")
        if not isinstance(method, str):
            raise bad(f"{where} has no 'method' name")
        if method not in METHODS:
            raise bad(f"{where} names unknown method '{method}'")

    if not isinstance(summary, dict):
        raise bad("not a JSON object")
    if compare_run:
        check_method(summary, "the run")
        label = summary.get("label")
        if not isinstance(label, str):
            raise bad("the run has no 'label'")
        if not LABEL.fullmatch(label):
            raise bad(f"the run's label {label!r} is not letters, digits and _ . @ + - (not starting with '.')")
        seed = summary.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise bad(f"the run's 'seed' is {seed!r}, not an integer")
    else:
        methods = summary.get("methods")
        if not isinstance(methods, list) or not methods or not all(isinstance(m, dict) for m in methods):
            raise bad("no 'methods' list (a `feddat run` summary) and no 'label' (a `feddat compare` run)")
        for i, entry in enumerate(methods):
            check_method(entry, f"methods[{i}]")


def run_config(run_dir: Path) -> Config | None:
    """The run's config.toml read back (None where there is none); an unreadable one names the file."""
    path = run_dir / "config.toml"
    if not path.is_file():
        return None
    try:
        return config_mod.load(path, {})
    except ConfigError as err:
        raise ConfigError(str(err) if str(path) in str(err) else f"{path}: {err}") from None


def load_run_dirs(dirs: list[Path]) -> list[RunResult]:
    """Results from `feddat run` directories (several methods each) or compare run folders, all
    trained with settings that one table may show side by side (`check_comparable`)."""
    from feddat.reporting import read_metrics

    results = []
    for d in dirs:
        d = Path(d)
        if not (d / "summary.json").is_file():
            raise FileNotFoundError(f"{d} holds no finished run (no summary.json)")
        if not (d / "config.toml").is_file():
            raise FileNotFoundError(f"{d} has no config.toml: what its runs were trained with cannot be checked against the other runs")
        summary = read_json(d / "summary.json")
        if isinstance(summary, dict) and "label" in summary:
            results.append(load_compare_run(d))
            continue
        check_summary(d / "summary.json", summary, compare_run=False)
        cfg = run_config(d)
        records = read_metrics(d / "metrics.jsonl")
        for s in summary["methods"]:
            mine = [r for r in records if r.get("method") == s["method"]]
            # what a compare run records and a `feddat run` summary lacks, where the config says it
            s = {"local_epochs": cfg.train.local_epochs, **s}
            results.append(RunResult(s["method"], s["method"], int(cfg.run.seed), mine, s, any("personal" in r for r in mine), sum(passes_per_step(s["method"], cfg)), d, cfg))
    seen = [(r.label, r.seed) for r in results]
    dupes = sorted({x for x in seen if seen.count(x) > 1})
    if dupes:
        raise ValueError(f"the same method and seed appear in several run directories: {dupes}")
    check_comparable(results)
    return results


def compared_settings(cfg: Config) -> dict:
    """What decides a run's numbers, but its seed: the runs of one method differ in that alone."""
    from feddat.engines.rundir import decisive_settings

    return {k: v for k, v in decisive_settings(cfg).items() if k != "run.seed"}


def differing(a: RunResult, b: RunResult, keys_of=lambda k: True, shown: int = 5) -> str:
    """The settings (among `keys_of`) in which the runs differ, as "key: A in <a>, B in <b>"."""
    sa, sb = compared_settings(a.config), compared_settings(b.config)
    keys = [k for k in sorted(sa.keys() | sb.keys()) if keys_of(k) and sa.get(k) != sb.get(k)]
    text = "; ".join(f"{k}: {sa.get(k)!r} in {a.name}, {sb.get(k)!r} in {b.name}" for k in keys[:shown])
    return text + (f"; and {len(keys) - shown} more" if len(keys) > shown else "")


def check_comparable(results: list[RunResult]) -> None:
    """Refuse runs that one table must not show as one comparison.

    Runs under one label are averaged over seeds: they must agree in every setting that decides
    the numbers (`feddat.engines.rundir.decisive_settings`) but the seed. Runs under different
    labels may differ as `feddat compare`'s variants do (run., train., federation., feddat.,
    peft., baselines., server. settings), and must share the rest: backbone, adapter sites, data
    (benchmark, partition, sizes) and privacy, which the table's clients and title stand for."""
    with_config = [r for r in results if r.config is not None]
    first: dict[str, RunResult] = {}
    for r in with_config:
        ref = first.setdefault(r.label, r)
        if r.method != ref.method:
            raise ValueError(f"'{r.label}' names method '{ref.method}' in {ref.name} and '{r.method}' in {r.name}; one label is one method")
        if r is not ref and (diffs := differing(ref, r)):
            raise ValueError(f"'{r.label}' would average runs trained with different settings, not only another seed: {diffs}; leave out the runs that differ")
    if with_config:
        ref = with_config[0]
        for r in with_config[1:]:
            if diffs := differing(ref, r, lambda k: not k.startswith(SHAREABLE)):
                raise ValueError(f"'{ref.label}' and '{r.label}' were trained on different backbones, data or adapter sites, which one table cannot compare: {diffs}")


def evals_by_round(result: RunResult) -> dict[int, dict[str, dict[str, float]]]:
    out: dict[int, dict[str, dict[str, float]]] = {}
    for r in result.records:
        if r.get("kind") == "eval":
            out.setdefault(int(r["round"]), {})[r["client"]] = {k: r[k] for k in VIEWS if k in r}
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


LAST_EVALS = 3  # the table's second score averages a run's last three evaluations (or all, if fewer)


def last_evals(result: RunResult) -> int:
    """How many evaluations client_scores' second score averages: LAST_EVALS, or fewer if the
    run evaluated fewer times."""
    return min(LAST_EVALS, len(evals_by_round(result)))


def client_scores(result: RunResult, view: str) -> dict[str, tuple[float, float]]:
    """client (and 'mean') -> (final score, mean of the last LAST_EVALS evaluations or all)."""
    evals = evals_by_round(result)
    if not evals:
        return {}
    rounds = list(evals)
    clients = list(evals[rounds[-1]])
    out = {}
    for c in clients:
        final = evals[rounds[-1]][c].get(view)
        last3 = nanmean(evals[r].get(c, {}).get(view) for r in rounds[-LAST_EVALS:])
        out[c] = (final, last3)
    out["mean"] = (nanmean(out[c][0] for c in clients), nanmean(out[c][1] for c in clients))
    return out
