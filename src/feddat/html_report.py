"""`feddat report DIR`: one self-contained HTML page for a run or a comparison.

DIR is a `feddat run` directory (config.toml, metrics.jsonl, results.md, summary.json) or a
`feddat compare` folder (compare.json, table.md, runs/; or, written by `feddat compare --from`,
compare.json naming the run directories it reports on, and table.md). The page holds the results tables as
the Markdown files have them (results.md / table.md, per category of question included), a
cost table, the score curves against rounds, compute and bytes, per-client bars, the
configuration and the environment each run recorded. Pictures are PNGs embedded as data URIs
and the page loads nothing from anywhere, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import re
import tempfile
from pathlib import Path
from typing import Any

from feddat.runtime import read_json, write_text

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{ title }}</title>
<style>
 body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1b1f24; line-height: 1.45; }
 h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; } h3 { font-size: 1.05rem; }
 table { border-collapse: collapse; margin: .8rem 0; font-size: .88rem; display: block; overflow-x: auto; }
 th, td { border: 1px solid #d0d7de; padding: .3rem .55rem; text-align: right; white-space: nowrap; }
 th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
 thead th, tr:first-child th { background: #f6f8fa; }
 tbody tr:nth-child(even) { background: #fafbfc; }
 figure { margin: 1rem 0 1.6rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
 figcaption { color: #57606a; font-size: .85rem; }
 pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
 .note { color: #57606a; font-size: .9rem; }
 nav a { margin-right: 1rem; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="note">{{ subtitle }}</p>
<nav>{% for id, name in sections %}<a href="#{{ id }}">{{ name }}</a>{% endfor %}</nav>

<h2 id="results">Results</h2>
<div class="markdown">{{ results_html }}</div>

<h2 id="cost">Cost</h2>
{{ cost_html }}

<h2 id="plots">Plots</h2>
{% for plot in plots %}
<figure><img src="data:image/png;base64,{{ plot.data }}" alt="{{ plot.caption }}"><figcaption>{{ plot.caption }}</figcaption></figure>
{% else %}<p class="note">No plots: nothing was evaluated.</p>{% endfor %}

<h2 id="config">Configuration</h2>
{{ variants_html }}
<pre>{{ config }}</pre>

<h2 id="environment">Environment</h2>
<p class="note">What the numbers depend on beyond the configuration (docs/guide/running.md, "Same seed, same numbers"), as each run's summary.json recorded it.</p>
{{ environment_html }}
</body>
</html>
"""

CAPTIONS = {
    "curve_round": "Mean global score over clients against rounds (mean over seeds, ±std band).",
    "curve_compute": "Mean global score against compute spent (backbone passes over a minibatch).",
    "curve_bytes": "Mean global score against bytes sent (up + down, all clients).",
    "scores_once": "Every run was evaluated once: the final mean global score per method (no curve to draw).",
    "clients_global": "Per-client global score at the final round (seed error bars).",
    "clients_personal": "Per-client personal score at the final round (seed error bars).",
}


def markdown_html(text: str) -> str:
    """Markdown (with tables) as HTML; raw HTML in the text is escaped, not passed through.
    Its headings move one level down, below the page's own sections."""
    from markdown_it import MarkdownIt

    demoted = re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(demoted)


def html_table(header: list[str], rows: list[list[Any]]) -> str:
    from markupsafe import escape

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = "—" if value is None else value
    return out


def environment_html(environments: dict[str, dict]) -> str:
    """One column per distinct environment, headed by the runs that recorded it."""
    if not environments:
        return '<p class="note">No environment recorded (runs written before summary.json had one).</p>'
    distinct: list[tuple[dict, list[str]]] = []
    for run, env in environments.items():
        for known, runs in distinct:
            if known == env:
                runs.append(run)
                break
        else:
            distinct.append((env, [run]))
    keys = list(dict.fromkeys(k for env, _ in distinct for k in flat(env)))
    header = ["", *(", ".join(runs) for _, runs in distinct)]
    return html_table(header, [[k, *(flat(env).get(k, "—") for env, _ in distinct)] for k in keys])


def run_costs_html(methods: list[dict]) -> str:
    header = ["method", "wall s", "local steps", "ms per local step", "shared params", "bytes up / round", "engine overhead", "compute s", "evaluate s", "state I/O s"]

    def num(s: dict, key: str, spec: str, scale: float = 1) -> str:  # "—" where the summary lacks it
        value = s.get(key)
        return format(scale * value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"

    rows = []
    for s in methods:
        split = s.get("time_split_s", {})
        rows.append([
            s["method"], num(s, "wall_s", ".1f"), num(s, "local_steps", ","), num(s, "s_per_local_step", ".0f", 1000), num(s, "shared_params", ","),
            num(s, "bytes_up_per_round", ","), f"{100 * s.get('engine_overhead', 0):.2f} %",
            *(num(split, k, ".1f") for k in ("compute", "evaluate", "state_io")),
        ])
    return html_table(header, rows)


def embedded_plots(results: list, clients: list[str]) -> list[dict[str, str]]:
    """compare's plots of `results`, drawn into a scratch folder and embedded as base64 PNG."""
    from feddat.compare import write_plots

    with tempfile.TemporaryDirectory() as scratch:
        paths = write_plots(results, Path(scratch), clients)
        return [{"data": base64.b64encode(p.read_bytes()).decode("ascii"), "caption": CAPTIONS.get(p.stem, p.stem)} for p in paths]


def run_page(run_dir: Path) -> dict[str, Any]:
    from feddat.compare import load_run_dirs, summarise

    for name in ("results.md", "summary.json", "config.toml", "metrics.jsonl"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} holds no finished run: {run_dir / name} is missing")
    summary = read_json(run_dir / "summary.json")
    results_md = (run_dir / "results.md").read_text()
    title, _, body = results_md.partition("\n")
    results = load_run_dirs([run_dir])
    _, clients = summarise(results, results[0].label)
    return {
        "title": title.lstrip("# ").strip() or f"Run {run_dir.name}",
        "subtitle": f"Run directory {run_dir.resolve()}; methods {', '.join(s['method'] for s in summary['methods'])}.",
        "results_md": body,
        "cost_html": run_costs_html(summary["methods"]),
        "plots": embedded_plots(results, clients),
        "config": (run_dir / "config.toml").read_text(),
        "variants_html": "",
        "environments": {run_dir.name: summary["environment"]} if "environment" in summary else {},
    }


def compare_plan(folder: Path) -> tuple[dict, list]:
    """compare.json read back and checked (its variants, seeds and, for a report on finished
    runs, their directories); what is wrong names the file."""
    from feddat.compare import Variant
    from feddat.compare.variants import check_label

    path = folder / "compare.json"
    plan = read_json(path)
    try:
        variants = [Variant(check_label(v["label"], str(path)), v["method"], tuple(v["overrides"].items())) for v in plan["variants"]]
        seeds = [int(s) for s in plan["seeds"]]
        if "from" in plan:
            runs = [(r["label"], int(r["seed"]), str(r["dir"])) for r in plan["runs"]]
            from_dirs = [str(d) for d in plan["from"]]
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{path} is not a comparison's plan ({type(err).__name__}: {err}); was it edited?") from None
    if not variants or not seeds:
        raise ValueError(f"{path} lists no variants or no seeds")
    plan = {"seeds": seeds, **({"from": from_dirs, "runs": runs} if "from" in plan else {})}
    return plan, variants


def compare_page(folder: Path) -> dict[str, Any]:
    from feddat.compare import load_compare_run, load_run_dirs, run_path, summarise

    table = folder / "table.md"
    if not table.is_file():
        raise FileNotFoundError(f"{folder} holds no comparison report: {table} is missing (run `feddat compare` first)")
    plan, variants = compare_plan(folder)
    if "from" in plan:  # `feddat compare --from`: the runs stay where they finished
        reported = {(label, seed) for label, seed, _ in plan["runs"]}
        try:
            results = [r for r in load_run_dirs([Path(d) for d in plan["from"]]) if (r.label, r.seed) in reported]
        except (OSError, ValueError) as err:
            raise (FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError)(f"{folder} reports on finished runs that cannot be read back: {err}") from None
        first_config = Path(plan["runs"][0][2]) / "config.toml" if plan["runs"] else None
        where = f"Report on finished runs (`feddat compare --from`) in {folder.resolve()}"
    else:
        finished = [run_path(folder, v, s) for s in plan["seeds"] for v in variants]
        results = [load_compare_run(d) for d in finished if (d / "summary.json").is_file()]
        first_config = run_path(folder, variants[0], plan["seeds"][0]) / "config.toml"
        where = f"Comparison folder {folder.resolve()}"
    if not results:
        raise FileNotFoundError(f"{folder}/runs holds no finished run" if "from" not in plan else f"{folder}: none of the runs it reports on is there any more")
    _, clients = summarise(results, results[0].label)
    text = table.read_text()
    title, _, body = text.partition("\n")
    scores, _, _ = body.partition("\n## Plots")  # the page embeds the plots themselves
    scores, _, costs = scores.partition("\n## Cost")
    variants_table = html_table(["label", "method", "overrides"], [[v.label, v.method, ", ".join(f"{k} = {val}" for k, val in v.overrides) or "—"] for v in variants])
    variants_html = "<p>Every run shares this configuration (the first run's config.toml below) except for its seed and its variant's overrides:</p>" + variants_table
    if "from" in plan:
        variants_html = (
            "<p>Runs of one method share every setting but the seed; methods share the backbone, adapter sites, data and privacy settings "
            "(the first run's config.toml below) and differ in their training settings, as a compare run's overrides record:</p>"
            + variants_table
            + "<p>The runs, where they finished:</p>"
            + html_table(["label", "seed", "run directory"], [[label, seed, d] for label, seed, d in plan["runs"]])
        )
    return {
        "title": title.lstrip("# ").strip() or f"Comparison {folder.name}",
        "subtitle": f"{where}; {len(results)} finished runs, seeds {', '.join(map(str, plan['seeds']))}.",
        "results_md": scores,
        "cost_html": markdown_html(costs),
        "plots": embedded_plots(results, clients),
        "config": first_config.read_text() if first_config is not None and first_config.is_file() else "",
        "variants_html": variants_html,
        "environments": {f"{r.label} seed {r.seed}": r.summary["environment"] for r in results if "environment" in r.summary},
    }


def render(page: dict[str, Any]) -> str:
    from jinja2 import Environment
    from markupsafe import Markup

    sections = [("results", "Results"), ("cost", "Cost"), ("plots", "Plots"), ("config", "Configuration"), ("environment", "Environment")]
    template = Environment(autoescape=True).from_string(PAGE)
    return template.render(
        title=page["title"],
        subtitle=page["subtitle"],
        sections=sections,
        results_html=Markup(markdown_html(page["results_md"])),
        cost_html=Markup(page["cost_html"]),
        plots=page["plots"],
        config=page["config"],
        variants_html=Markup(page["variants_html"]),
        environment_html=Markup(environment_html(page["environments"])),
    )


def write_report(folder: Path, out: Path | None = None) -> Path:
    """Write the page for a run directory or a comparison folder; returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    page = compare_page(folder) if (folder / "compare.json").is_file() else run_page(folder)
    out = out or folder / "report.html"
    write_text(out, render(page))
    return out
