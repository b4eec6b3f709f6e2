"""`feddat compare`: every method on one benchmark over several seeds, as the paper tabulates it.

A comparison is a folder: one run directory per (method variant, seed) under runs/, then the
report written from whatever finished: table.md and table.csv (scores per client and mean,
global and personal, final and mean of the last three evaluations, mean ± std over seeds,
differences to a reference method that exceed the seed noise), costs.csv (parameters, bytes,
compute, time, memory) and PNG plots (score against rounds, compute and bytes; per-client
bars). A run whose summary.json exists is finished and reused; an unfinished one continues
from its last round checkpoint, so an interrupted compare picks up where it stopped.

A *variant* is a method plus configuration overrides under a label: the FedDAT ablations are
presets, `label=method:key=value:key=value` defines others, and compute-matched variants
(`--matched`) give a baseline as many local epochs as make its compute per round equal the
reference's (FedDAT spends more backbone passes per minibatch than FedAvg).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from feddat import config as config_mod
from feddat.config import Config, ConfigError
from feddat.reporting import category_means, final_scores
from feddat.runtime import environment, write_json, write_text

# ---- variants -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    overrides: tuple[tuple[str, str], ...] = ()


PRESETS = {
    "feddat_nokd": Variant("feddat_nokd", "feddat", (("feddat.kd", "none"),)),
    "feddat_oneway": Variant("feddat_oneway", "feddat", (("feddat.kd", "one_way"),)),
    "feddat_clientonly": Variant("feddat_clientonly", "feddat", (("feddat.teacher", "client_only"),)),
    "feddat_frozenonly": Variant("feddat_frozenonly", "feddat", (("feddat.teacher", "frozen_only"),)),
}
GROUPS = {  # names that expand to several methods (none equals a method's name)
    "feddat_family": ["feddat", "feddat_nokd", "feddat_oneway", "feddat_clientonly", "feddat_frozenonly", "feddat_lora"],
    "peft_kinds": ["fedavg", "fedavg_full", "fedavg_lora", "fedavg_prompt", "fedavg_bitfit"],
    "adapter_fl": ["fedprox", "scaffold", "feddyn", "moon", "ditto", "fedrep", "head_only", "local", "centralised"],
    "server_opt": ["fedavgm", "fedadam"],
}
GROUPS["all"] = [m for g in ("feddat_family", "peft_kinds", "adapter_fl", "server_opt") for m in GROUPS[g]]
# Overrides may change how a method trains, never the backbone or data that all runs share.
SHAREABLE = ("run.", "train.", "federation.", "feddat.", "peft.", "baselines.", "server.")
# Keys that change what a run shows or logs while it trains, never what it computes.
WATCHING = ("run.progress", "tracking.")


def parse_variant(item: str) -> list[Variant]:
    from feddat.algorithms import METHODS

    item = item.strip()
    if item in GROUPS:
        return [v for name in GROUPS[item] for v in parse_variant(name)]
    if item in PRESETS:
        return [PRESETS[item]]
    if item in METHODS:
        return [Variant(item, item)]
    if "=" in item.split(":")[0]:
        label, _, rest = item.partition("=")
        method, *pairs = rest.split(":")
        if method not in METHODS:
            raise ConfigError(f"compare: '{item}' names unknown method '{method}'; methods: {', '.join(METHODS)}")
        overrides = []
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key.startswith(SHAREABLE):
                raise ConfigError(f"compare: override '{pair}' in '{item}' must be key=value with a key under {', '.join(SHAREABLE)}")
            overrides.append((key, value))
        return [Variant(label.strip(), method, tuple(overrides))]
    choices = [*GROUPS, *PRESETS, *METHODS]
    raise ConfigError(f"compare: unknown method or variant '{item}'; choose from {', '.join(choices)} or write label=method:key=value")


def parse_variants(items: list[str]) -> list[Variant]:
    out: dict[str, Variant] = {}
    for item in items:
        for v in parse_variant(item):
            if v.label in out and out[v.label] != v:
                raise ConfigError(f"compare: label '{v.label}' is defined twice, differently")
            out[v.label] = v
    return list(out.values())


def variant_config(cfg: Config, variant: Variant, seed: int) -> Config:
    """The run's configuration: the comparison's, the variant's overrides, this seed."""
    overrides = {**dict(variant.overrides), "run.seed": seed, "run.methods": variant.method}
    return config_mod.load(None, {**flat_config(cfg), **overrides})


def flat_config(cfg: Config) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items() for key, value in values.items()}


# ---- compute -------------------------------------------------------------------------------


def passes_per_step(method: str, cfg: Config) -> tuple[int, int]:
    """(forward, backward) backbone passes per local minibatch: the unit of compute here.

    A backward through the frozen backbone costs about one forward (activation gradients only),
    so FedDAT's reference schedule (3 + 2) costs 2.5x FedAvg's (1 + 1), as measured (README);
    the fused schedule runs one forward and one backward on a doubled batch (2 + 2)."""
    from feddat.algorithms import METHODS

    cls = METHODS[method]
    declared = getattr(cls, "passes_per_step", (1, 1))
    return tuple(declared(cfg) if callable(declared) else declared)


def matched_variants(variants: list[Variant], names: list[str], reference: str, cfg: Config) -> list[Variant]:
    """`name@reference`: the baseline with local epochs scaled to the reference's compute per round."""
    by_label = {v.label: v for v in variants}
    if reference not in by_label:
        raise ConfigError(f"compare: --matched needs the reference '{reference}' among the methods")
    ref_cfg = variant_config(cfg, by_label[reference], 0)
    ref_cost = sum(passes_per_step(by_label[reference].method, ref_cfg)) * ref_cfg.train.local_epochs
    if names == ["all"]:
        names = [v.label for v in variants if not v.method.startswith("feddat") and v.method not in ("head_only", "local", "centralised")]
    out = []
    for name in names:
        if name not in by_label:
            raise ConfigError(f"compare: --matched '{name}' is not among the methods being compared")
        v = by_label[name]
        vcfg = variant_config(cfg, v, 0)
        epochs = max(1, math.floor(ref_cost / sum(passes_per_step(v.method, vcfg)) + 0.5))
        if epochs != vcfg.train.local_epochs:
            out.append(Variant(f"{name}@{reference}", v.method, (*v.overrides, ("train.local_epochs", str(epochs)))))
    return out


# ---- running -------------------------------------------------------------------------------


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


TRAINABLE_STATE = ("head", "client", "personal", "phead")  # private state entries that train


def trainable_parameters(method, client) -> int:
    """Parameters one client trains: the shared PEFT module plus its private trainable parts."""
    shared = sum(p.numel() for p in method.model.adapter_parameters("shared")) if "shared" in method.adapter_sets() else 0
    state = method.init_client_state(client)
    return shared + sum(v.numel() for k, v in state.items() if k.split(".")[0] in TRAINABLE_STATE)


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
            model = AdaptedModel.from_config(backbone, cfg.adapter)
            self.parts = {"device": device, "clients": clients, "model": model}
        return self.parts


def run_status(run_dir: Path, cfg: Config) -> str:
    """'done', 'partial' or 'new'; a finished run trained with another configuration is an error."""
    if not run_dir.exists():
        return "new"
    stored = run_dir / "config.toml"
    diffs = config_differences(stored.read_text(), cfg) if stored.is_file() else ["no config.toml"]
    same = not diffs
    if (run_dir / "summary.json").is_file():
        if not same:
            raise ConfigError(f"{run_dir} holds a finished run with a different configuration ({'; '.join(diffs[:3])}); delete it or compare into another --out")
        return "done"
    if not same:
        shutil.rmtree(run_dir)  # unfinished work for another configuration: nothing to keep
        return "new"
    return "partial"


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
    from feddat.inference import write_client_index

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
        trainable_params=trainable_parameters(method, parts["clients"][0]),
        bytes_down_per_round=summary["bytes_up_per_round"],  # the server sends each participant what it sends back
        peak_memory_mb=memory.peak_mb,
        memory_kind="cuda_max_allocated" if parts["device"].type == "cuda" else "process_rss",
        environment=environment(parts["device"]),  # where these numbers repeat bit for bit (README)
    )
    write_json(run_dir / "summary.json", summary)  # written last: marks the run finished
    return summary


def run_compare(cfg: Config, variants: list[Variant], seeds: list[int], out_dir: Path, reference: str | None = None, log: Callable[[str], None] = lambda s: print(s, flush=True), workspace: Workspace | None = None) -> Path:
    """Train what is missing, then write the report. Returns the report folder.

    `workspace` lets a caller (a test, a notebook) hand over a backbone and clients already built."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "compare.json", {"variants": [{"label": v.label, "method": v.method, "overrides": dict(v.overrides)} for v in variants], "seeds": seeds})
    work = workspace or Workspace(cfg, log)
    # Seed by seed: an interrupted compare then has every method for the seeds it finished.
    plan = [(v, s, variant_config(cfg, v, s)) for s in seeds for v in variants]
    statuses = [run_status(run_path(out_dir, v, s), c) for v, s, c in plan]
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


def run_path(out_dir: Path, variant: Variant, seed: int) -> Path:
    return out_dir / "runs" / variant.label / f"seed{seed}"


def default_reference(labels: list[str]) -> str:
    return "feddat" if "feddat" in labels else labels[0]


# ---- reading finished runs ----------------------------------------------------------------


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

    summary = json.loads((run_dir / "summary.json").read_text())
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
        summary = json.loads((d / "summary.json").read_text())
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


# ---- numbers -------------------------------------------------------------------------------


def evals_by_round(result: RunResult) -> dict[int, dict[str, dict[str, float]]]:
    out: dict[int, dict[str, dict[str, float]]] = {}
    for r in result.records:
        if r.get("kind") == "eval":
            out.setdefault(int(r["round"]), {})[r["client"]] = {k: r[k] for k in ("global", "personal") if k in r}
    return dict(sorted(out.items()))


def nanmean(values) -> float:
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else float("nan")


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


def mean_std(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and v == v]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return m, sd, n


# Two-sided 95% critical values of Student's t (df 1..30); beyond, the normal 1.96.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_critical(df: float) -> float:
    if df < 1:
        return float("inf")
    return T95[int(df) - 1] if df < 31 else 1.96  # int(): rounding df down is conservative


def difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, bool | None]:
    """(mean of a − mean of b, whether it exceeds the seed noise at 95%; None: too few seeds).

    Seeds shared by both sides are paired (same initial A_s, same client sampling): paired t-test
    on the per-seed differences. Otherwise Welch's t-test."""
    common = sorted(set(a) & set(b))
    if len(common) >= 2 and len(common) == len(a) == len(b):
        d = [a[s] - b[s] for s in common]
        m, sd, n = mean_std(d)
        if sd == 0:
            return m, m != 0
        return m, abs(m) / (sd / math.sqrt(n)) > t_critical(n - 1)
    ma, sa, na = mean_std(list(a.values()))
    mb, sb, nb = mean_std(list(b.values()))
    if na < 2 or nb < 2:
        return ma - mb, None
    va, vb = sa**2 / na, sb**2 / nb
    if va + vb == 0:
        return ma - mb, ma != mb
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return ma - mb, abs(ma - mb) / math.sqrt(va + vb) > t_critical(df)


@dataclass
class Row:
    label: str
    method: str
    view: str
    seeds: list[int]
    cells: dict[str, dict[str, tuple[float, float, int]]]  # client -> {'final'|'last3': (mean, sd, n)}
    mean_by_seed: dict[int, float]  # final mean-over-clients score per seed
    diff: tuple[float, bool | None] | None = None


def summarise(results: list[RunResult], reference: str) -> tuple[list[Row], list[str]]:
    """Rows per (label, view) over seeds, and the clients in order."""
    labels = list(dict.fromkeys(r.label for r in results))
    clients: list[str] = []
    rows = []
    for view in ("global", "personal"):
        for label in labels:
            runs = [r for r in results if r.label == label and (view == "global" or r.personal)]
            per_seed = {r.seed: client_scores(r, view) for r in runs}
            per_seed = {s: v for s, v in per_seed.items() if v}
            if not per_seed:
                continue
            names = [c for scores in per_seed.values() for c in scores if c != "mean"]
            clients += [c for c in dict.fromkeys(names) if c not in clients]
            cells = {c: {stat: mean_std([s.get(c, (None, None))[i] for s in per_seed.values()]) for i, stat in enumerate(("final", "last3"))} for c in [*dict.fromkeys(names), "mean"]}
            rows.append(Row(label, runs[0].method, view, sorted(per_seed), cells, {s: v["mean"][0] for s, v in per_seed.items()}))
    ref = {r.view: r for r in rows if r.label == reference}
    for row in rows:
        if row.view in ref and row.label != reference:
            row.diff = difference(row.mean_by_seed, ref[row.view].mean_by_seed)
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


# ---- writing -------------------------------------------------------------------------------


def pct(mean: float, sd: float) -> str:
    if mean != mean:
        return "—"
    return f"{100 * mean:.1f}" + (f" ± {100 * sd:.1f}" if sd == sd else "")


def markdown_scores(rows: list[Row], clients: list[str], view: str, reference: str) -> str:
    mine = [r for r in rows if r.view == view]
    if not mine:
        return ""
    head = "| method | " + " | ".join(clients) + " | mean | mean, last 3 evals | Δ mean vs " + reference + " |"
    lines = [head, "|" + "---|" * (len(clients) + 4)]
    for r in mine:
        cells = [pct(*r.cells.get(c, {}).get("final", (float("nan"), float("nan"), 0))[:2]) for c in [*clients, "mean"]]
        last3 = pct(*r.cells["mean"]["last3"][:2])
        if r.diff is None:
            delta = "ref" if r.label == reference else "—"
        else:
            d, sig = r.diff
            delta = f"{100 * d:+.1f}" + ("" if sig is None else (" *" if sig else ""))
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


def markdown_costs(costs: list[dict[str, Any]]) -> str:
    lines = [
        "| method | local epochs | passes per step | trainable params (per client) | shared params | bytes up / round | bytes down / round | total bytes | compute (backbone passes) | wall s | ms per local step | peak memory MiB |",
        "|" + "---|" * 12,
    ]
    for c in costs:
        lines.append(
            f"| {c['label']} | {c['local_epochs']:.0f} | {c['passes_per_step']:.0f} | {c['trainable_params']:,.0f} | {c['shared_params']:,.0f} | "
            f"{human_bytes(c['bytes_up_per_round'])} | {human_bytes(c['bytes_down_per_round'])} | {human_bytes(c['total_bytes'])} | {c['compute_passes']:,.0f} | "
            f"{c['wall_s']:.1f} | {1000 * c['s_per_local_step']:.0f} | {c['peak_memory_mb']:.0f} |"
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
            diff, sig = r.diff if (r.diff and client == "mean") else (None, None)
            out.append({"label": r.label, "method": r.method, "view": r.view, "client": client, "final_mean": fm, "final_std": fs, "last3_mean": lm, "last3_std": ls, "seeds": n, "diff_vs_reference": diff, "exceeds_seed_noise": sig})
    return out


def write_report(results: list[RunResult], out_dir: Path, reference: str, title: str = "") -> None:
    if not results:
        raise ValueError("nothing to report: no finished runs")
    rows, clients = summarise(results, reference)
    costs = cost_rows(results)
    seeds = sorted({r.seed for r in results})
    plots = write_plots(results, out_dir / "plots", clients)
    parts = [
        f"# Comparison: {title}".rstrip(": "),
        f"Seeds {', '.join(map(str, seeds))}. Scores in % on each client's held-out split at the final evaluation, mean ± std over seeds; "
        f"'mean, last 3 evals' averages the last three evaluated rounds. Δ is the difference of the mean to `{reference}`; "
        "`*` marks a difference beyond the seed noise (two-sided t-test at 95%, paired over seeds when both ran the same seeds).",
        "## Global model (shared PEFT module + private head)",
        markdown_scores(rows, clients, "global", reference),
    ]
    by_category = markdown_categories(results)
    if by_category:
        parts += ["### Global model by category of question (mean over the clients that ask it)", by_category]
    personal = markdown_scores(rows, clients, "personal", reference)
    if personal:
        parts += ["## Personal model (FedDAT's Dual-Adapter Teacher, Ditto's personal adapter)", personal]
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


def write_plots(results: list[RunResult], plot_dir: Path, clients: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r.label for r in results))
    colours = {label: plt.get_cmap("tab20")(i % 20) for i, label in enumerate(labels)}
    paths = []
    if all(len(curve(r)) <= 1 for r in results):
        # One evaluation per run (federation.eval_every = rounds) is a point, not a curve: a
        # one-point line gets an x axis of ±0.2 around it (4.8 to 5.2) and says nothing.
        paths.append(scores_once(plt, results, labels, colours, plot_dir / "scores_once.png"))
        axes = ()
    else:
        axes = (("round", "round"), ("compute", "compute spent (backbone passes over a minibatch)"), ("bytes", "bytes sent (up + down, all clients)"))
    for axis, xlabel in axes:
        fig, ax = plt.subplots(figsize=(10, 6))
        for label in labels:
            line_points(ax, [r for r in results if r.label == label], axis, label, colours[label])
        if axis == "bytes":
            ax.set_xscale("symlog", linthresh=1e5)
        if axis == "round":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean global score over clients (%)")
        ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.grid(alpha=0.3)
        paths.append(save(fig, plot_dir / f"curve_{axis}.png"))
    for view in ("global", "personal"):
        path = client_bars(plt, results, clients, view, colours, plot_dir / f"clients_{view}.png")
        if path:
            paths.append(path)
    return paths


def scores_once(plt, results: list[RunResult], labels: list[str], colours, path: Path) -> Path:
    """Bars of each label's final mean global score (±std over seeds), for runs evaluated once."""
    rounds = sorted({p["round"] for r in results for p in curve(r)})
    stats = [mean_std([p["score"] for r in results if r.label == label for p in curve(r)]) for label in labels]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 5))
    ax.bar(range(len(labels)), [100 * m for m, _, _ in stats], yerr=[100 * sd if sd == sd else 0 for _, sd, _ in stats], color=[colours[label] for label in labels], capsize=2)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_ylabel("mean global score over clients (%)")
    when = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {', '.join(map(str, rounds))}"
    ax.set_title(f"Evaluated once ({when}): final scores, no curve over rounds, compute or bytes", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def line_points(ax, runs: list[RunResult], axis: str, label: str, colour) -> None:
    """Mean over seeds of the curve, with a ±std band; x is averaged over seeds too."""
    curves = [curve(r) for r in runs]
    rounds = sorted({p["round"] for c in curves for p in c})
    xs, ys, sds = [], [], []
    for round_ in rounds:
        points = [p for c in curves for p in c if p["round"] == round_]
        xs.append(nanmean(p[axis] for p in points))
        m, sd, _ = mean_std([p["score"] for p in points])
        ys.append(100 * m)
        sds.append(100 * sd if sd == sd else 0.0)
    style = "-" if label.startswith("feddat") else "--" if "@" in label else "-."
    ax.plot(xs, ys, style, marker="o", ms=3, color=colour, label=label, lw=2.2 if label == "feddat" else 1.2)
    ax.fill_between(xs, [y - s for y, s in zip(ys, sds)], [y + s for y, s in zip(ys, sds)], color=colour, alpha=0.12)


def client_bars(plt, results: list[RunResult], clients: list[str], view: str, colours, path: Path) -> Path | None:
    labels = [label for label in dict.fromkeys(r.label for r in results) if any(r.label == label and (view == "global" or r.personal) for r in results)]
    if not labels:
        return None
    groups = [*clients, "mean"]
    width = 0.85 / len(labels)
    fig, ax = plt.subplots(figsize=(max(10, 1.6 * len(groups) + 0.25 * len(labels)), 5.5))
    for i, label in enumerate(labels):
        per_seed = [client_scores(r, view) for r in results if r.label == label]
        stats = [mean_std([s.get(c, (None,))[0] for s in per_seed]) for c in groups]
        ax.bar([g + i * width for g in range(len(groups))], [100 * m for m, _, _ in stats], width, yerr=[100 * sd if sd == sd else 0 for _, sd, _ in stats], color=colours[label], label=label, capsize=1.5)
    ax.set_xticks([g + 0.425 - width / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(f"{view} score, final round (%)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def save(fig, path: Path) -> Path:
    """PNG written atomically (temporary file, then rename)."""
    import os
    import tempfile

    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def report_from_dirs(dirs: list[Path], out_dir: Path, reference: str | None = None, labels: list[str] | None = None) -> Path:
    """The report for runs that already finished (`feddat compare --from DIR ...`)."""
    results = load_run_dirs(dirs)
    if labels:
        results = [r for r in results if r.label in labels]
    write_report(results, out_dir, reference or default_reference([r.label for r in results]), title="finished runs")
    return out_dir


__all__ = ["Variant", "parse_variants", "matched_variants", "run_compare", "report_from_dirs"]
