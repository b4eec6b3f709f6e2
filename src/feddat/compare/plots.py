"""The PNG plots of a comparison: mean global score against rounds, compute and bytes (mean
over seeds, ±std band), per-client bars per view; bars of final scores for runs evaluated once."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feddat.compare.runs import RunResult, client_scores, curve
from feddat.compare.statistics import mean_std, nanmean
from feddat.runtime import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_plots(results: list[RunResult], plot_dir: Path, clients: list[str]) -> list[Path]:
    """Every figure of `figures` as plot_dir/<name>; an earlier report's plots of another shape go."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = [save(fig, plot_dir / name) for name, fig in figures(results, clients).items()]
    for stale in PLOTS - {p.name for p in paths}:  # an earlier report's, of another shape
        (plot_dir / stale).unlink(missing_ok=True)
    return paths


def figures(results: list[RunResult], clients: list[str]) -> dict[str, Figure]:
    """The plots of a comparison by file name, laid out and ready to save (or to inspect: plain
    matplotlib Figures, no pyplot state)."""
    from matplotlib import colormaps

    labels = list(dict.fromkeys(r.label for r in results))
    colours = {label: colormaps["tab20"](i % 20) for i, label in enumerate(labels)}
    out = {}
    if all(len(curve(r)) <= 1 for r in results):
        # One evaluation per run (federation.eval_every = rounds) is a point, not a curve: a
        # one-point line gets an x axis of ±0.2 around it (4.8 to 5.2) and says nothing.
        out["scores_once.png"] = scores_once(results, labels, colours)
    else:
        for axis in ("round", "compute", "bytes"):
            out[f"curve_{axis}.png"] = curve_figure(results, labels, colours, axis)
    for view in ("global", "personal"):
        fig = client_bars(results, clients, view, colours)
        if fig is not None:
            out[f"clients_{view}.png"] = fig
    return out


# Every plot `write_plots` may write (and so may remove when a later report has no such plot).
PLOTS = {"scores_once.png", "curve_round.png", "curve_compute.png", "curve_bytes.png", "clients_global.png", "clients_personal.png"}
XLABELS = {"round": "round", "compute": "compute spent (backbone passes over a minibatch)", "bytes": "bytes sent (up + down, all clients)"}


def new_figure(width: float, height: float) -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def curve_figure(results: list[RunResult], labels: list[str], colours, axis: str) -> Figure:
    """Mean global score against rounds, compute or bytes: one line per label."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure(10, 6)
    for label in labels:
        line_points(ax, [r for r in results if r.label == label], axis, label, colours[label])
    if axis == "bytes":
        bytes_axis(ax, [p["bytes"] for r in results for p in curve(r)])
    if axis == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_xlabel(XLABELS[axis])
    ax.set_ylabel("mean global score over clients (%)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(alpha=0.3)
    return laid_out(fig)


def bytes_axis(ax, xs: list[float]) -> None:
    """Bytes on a log-like axis where they span decades (full finetuning sends orders of
    magnitude more than an adapter), linear otherwise: a symlog axis over less than a decade or
    two has no decade inside it to tick and shows no labels. Either way labelled in B, kB, MB."""
    from matplotlib.ticker import EngFormatter

    positive = [x for x in xs if x > 0]
    if positive and max(positive) >= 100 * min(positive):
        # linear only below the smallest amount sent (0 at a round-0 evaluation stays on the axis)
        ax.set_xscale("symlog", linthresh=min(positive))
        if len(visible_ticks(ax)) < 2:
            ax.set_xscale("linear")
    ax.xaxis.set_major_formatter(EngFormatter(unit="B"))


def visible_ticks(ax) -> list[float]:
    lo, hi = sorted(ax.get_xlim())
    return [t for t in ax.xaxis.get_major_locator()() if lo <= t <= hi]


def scores_once(results: list[RunResult], labels: list[str], colours) -> Figure:
    """Bars of each label's final mean global score (±std over seeds), for runs evaluated once."""
    rounds = sorted({p["round"] for r in results for p in curve(r)})
    stats = [mean_std([p["score"] for r in results if r.label == label for p in curve(r)]) for label in labels]
    width = max(6, 0.6 * len(labels) + 2)
    fig, ax = new_figure(width, 5)
    ax.bar(range(len(labels)), [100 * m for m, _, _ in stats], yerr=error_bars([sd for _, sd, _ in stats]), color=[colours[label] for label in labels], capsize=2)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_ylabel("mean global score over clients (%)")
    when = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {', '.join(map(str, rounds))}"
    title = f"Evaluated once ({when}): final scores, no curve over rounds, compute or bytes"
    # wrapped to the figure's width (about 8 characters an inch at 10 pt): a title wider than
    # the figure is cut at both sides, which tight_layout does not prevent
    ax.set_title(textwrap.fill(title, width=int(8 * width)), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return laid_out(fig)


def error_bars(sds: list[float]) -> list[float] | None:
    """Seed std as error bars in %, None (no bars drawn) where no bar has one (a single seed):
    a bar of one seed gets no zero-length bar; NaN leaves that bar without one."""
    if all(sd != sd for sd in sds):
        return None
    return [100 * sd for sd in sds]


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


def client_bars(results: list[RunResult], clients: list[str], view: str, colours) -> Figure | None:
    """Per-client (and mean) bars of the final score in `view`, one bar per label, ±std over seeds."""
    labels = [label for label in dict.fromkeys(r.label for r in results) if any(r.label == label and (view == "global" or r.personal) for r in results)]
    if not labels:
        return None
    groups = [*clients, "mean"]
    width = 0.85 / len(labels)
    fig, ax = new_figure(max(10, 1.6 * len(groups) + 0.25 * len(labels)), 5.5)
    for i, label in enumerate(labels):
        per_seed = [client_scores(r, view) for r in results if r.label == label]
        stats = [mean_std([s.get(c, (None,))[0] for s in per_seed]) for c in groups]
        ax.bar([g + i * width for g in range(len(groups))], [100 * m for m, _, _ in stats], width, yerr=error_bars([sd for _, sd, _ in stats]), color=colours[label], label=label, capsize=1.5)
    ax.set_xticks([g + 0.425 - width / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(f"{view} score, final round (%)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return laid_out(fig)


def laid_out(fig: Figure) -> Figure:
    """tight_layout: labels, titles and the legends beside the axes inside the figure."""
    fig.tight_layout()
    return fig


def save(fig: Figure, path: Path) -> Path:
    """PNG written atomically (runtime.atomic_path)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path
