"""The PNG plots of a comparison: mean global score against rounds, compute and bytes (mean
over seeds, ±std band), per-client bars per view; bars of final scores for runs evaluated once."""

from __future__ import annotations

from pathlib import Path

from feddat.compare.runs import RunResult, client_scores, curve
from feddat.compare.statistics import mean_std, nanmean
from feddat.runtime import atomic_path


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
    for stale in PLOTS - {p.name for p in paths}:  # an earlier report's, of another shape
        (plot_dir / stale).unlink(missing_ok=True)
    return paths


# Every plot `write_plots` may write (and so may remove when a later report has no such plot).
PLOTS = {"scores_once.png", "curve_round.png", "curve_compute.png", "curve_bytes.png", "clients_global.png", "clients_personal.png"}


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
    """PNG written atomically (runtime.atomic_path)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path
