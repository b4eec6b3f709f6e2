"""Results tables from a run's metrics.jsonl: per client, mean, global and personal, per method;
and per category of question (kind, answer type) where the data have one."""

from __future__ import annotations

import json
from pathlib import Path


#: An answer decoder's open-ended score of a view ("global-generated"): its greedy answers
#: scored as free text; the view itself scores the top-ranked answer of the answer list.
GENERATED = "-generated"
VIEWS = ("global", "personal", "global" + GENERATED, "personal" + GENERATED)


def read_metrics(path: str | Path) -> list[dict]:
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err.msg}); was the run interrupted mid-write?") from err
    return records


def final_scores(records: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """method -> client -> {'global', 'personal'?, 'global/<category>', ...} at that method's last evaluated round."""
    last: dict[str, int] = {}
    for r in records:
        if r.get("kind") == "eval":
            last[r["method"]] = max(last.get(r["method"], 0), r["round"])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in records:
        if r.get("kind") == "eval" and r["round"] == last[r["method"]]:
            out.setdefault(r["method"], {})[r["client"]] = {k: v for k, v in r.items() if k.split("/")[0] in VIEWS}
    return out


def _cell(value: float | None) -> str:
    return "—" if value is None or value != value else f"{100 * value:.1f}"


def results_table(records: list[dict]) -> str:
    """Markdown: one row per method and view (global / personal), one column per client, then the mean."""
    scores = final_scores(records)
    clients: list[str] = []
    for per_client in scores.values():
        clients += [c for c in per_client if c not in clients]
    header = "| method | view | " + " | ".join(clients) + " | mean |"
    lines = [header, "|" + "---|" * (len(clients) + 3)]
    for method, per_client in scores.items():
        for view in VIEWS:
            values = [per_client.get(c, {}).get(view) for c in clients]
            if all(v is None for v in values):
                continue
            present = [v for v in values if v is not None]
            mean = sum(present) / len(present)
            lines.append(f"| {method} | {view} | " + " | ".join(_cell(v) for v in values) + f" | {_cell(mean)} |")
    return "\n".join(lines)


def category_means(per_client: dict[str, dict[str, float]], view: str) -> dict[str, float]:
    """category -> mean of `view/<category>` over the clients that have it, categories sorted."""
    values: dict[str, list[float]] = {}
    for scores in per_client.values():
        for key, value in scores.items():
            prefix, _, category = key.partition("/")
            if prefix == view and category:
                values.setdefault(category, []).append(value)
    return {c: sum(v) / len(v) for c, v in sorted(values.items())}


def category_table(records: list[dict]) -> str:
    """Markdown: one row per method and view, one column per category of question (question
    kind, VQA answer type; in alphabetical order), each the mean over the clients that have
    that category; "" when the data have no categories."""
    rows = {(method, view): category_means(per_client, view) for method, per_client in final_scores(records).items() for view in VIEWS}
    categories = sorted({c for means in rows.values() for c in means})
    if not categories:
        return ""
    lines = ["| method | view | " + " | ".join(categories) + " |", "|" + "---|" * (len(categories) + 2)]
    for (method, view), means in rows.items():
        if means:
            lines.append(f"| {method} | {view} | " + " | ".join(_cell(means.get(c)) for c in categories) + " |")
    return "\n".join(lines)
