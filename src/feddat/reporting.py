"""Results tables from a run's metrics.jsonl: per client, mean, global and personal, per method."""

from __future__ import annotations

import json
from pathlib import Path


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
    """method -> client -> {'global', 'personal'?} at that method's last evaluated round."""
    last: dict[str, int] = {}
    for r in records:
        if r.get("kind") == "eval":
            last[r["method"]] = max(last.get(r["method"], 0), r["round"])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in records:
        if r.get("kind") == "eval" and r["round"] == last[r["method"]]:
            out.setdefault(r["method"], {})[r["client"]] = {k: r[k] for k in ("global", "personal") if k in r}
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
        for view in ("global", "personal"):
            values = [per_client.get(c, {}).get(view) for c in clients]
            if all(v is None for v in values):
                continue
            present = [v for v in values if v is not None]
            mean = sum(present) / len(present)
            lines.append(f"| {method} | {view} | " + " | ".join(_cell(v) for v in values) + f" | {_cell(mean)} |")
    return "\n".join(lines)
