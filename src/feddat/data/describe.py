"""`feddat data describe`: per-client sizes, answer distributions and how heterogeneous they are.

Heterogeneity of the clients' training-answer distributions p_1..p_K:
- JS: the mean Jensen-Shannon divergence (base 2, in [0, 1]) over all pairs of clients;
  0 when every client has the same answer distribution, 1 when no two share an answer;
- TV: the mean total-variation distance of each client's distribution from the pooled one;
- size CV: coefficient of variation of the clients' training-set sizes (quantity skew), with the
  population standard deviation (ddof=0): the clients are the whole federation, not a sample.
A client with no training example has no answer distribution: it is left out of JS and TV (and
named in a warning), its effective number of answers is None ("—"), but its size 0 counts in
the CV. A mean over no clients (or, for JS, over no pair of them) is None too.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from feddat.data.types import RawClient
from feddat.runtime import atomic_path


def distributions(clients: list[RawClient]) -> tuple[list[str], np.ndarray]:
    """(answers sorted by pooled frequency, K x A matrix of each client's training-answer shares)."""
    pooled = Counter(a for c in clients for a in c.train.answers)
    answers = [a for a, _ in sorted(pooled.items(), key=lambda kv: (-kv[1], kv[0]))]
    index = {a: i for i, a in enumerate(answers)}
    counts = np.zeros((len(clients), len(answers)))
    for k, client in enumerate(clients):
        for answer, n in Counter(client.train.answers).items():
            counts[k, index[answer]] = n
    return answers, counts / np.maximum(counts.sum(1, keepdims=True), 1)


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.where(p > 0, p, 1.0)
    return -(p * np.log2(q)).sum(-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    return float(_entropy(m) - (_entropy(p) + _entropy(q)) / 2)


def heterogeneity(clients: list[RawClient]) -> dict:
    """JS, TV and size CV (see the module's docstring); `left_out`: the clients with no training example."""
    _, shares = distributions(clients)
    sizes = np.array([len(c.train) for c in clients], dtype=float)
    held = sizes > 0  # an empty client's all-zero row is no distribution: it would count as disjoint from every other
    p = shares[held]
    pairs = [js_divergence(p[i], p[j]) for i in range(len(p)) for j in range(i + 1, len(p))]
    pooled = (p * sizes[held, None]).sum(0) / max(sizes.sum(), 1)
    return {
        "mean_pairwise_js": float(np.mean(pairs)) if pairs else None,
        "mean_tv_to_pooled": float(np.mean(0.5 * np.abs(p - pooled).sum(1))) if len(p) else None,
        "size_cv": float(sizes.std(ddof=0) / sizes.mean()) if sizes.mean() > 0 else None,  # population std: the clients are all there are
        "left_out": [c.name for c, h in zip(clients, held) if not h],
    }


def summary(clients: list[RawClient], top: int = 5, max_answers: int | None = None) -> dict:
    """Everything the report prints, as plain data (also written by --json). `max_answers`: the
    clients are as a run trains on them (data.clients.in_vocabulary, the cut of data.max_answers):
    the notes then say what the cut and any cap on the sizes left out."""
    from feddat.data.clients import data_notes

    _, shares = distributions(clients)
    rows, notes = [], []
    for client, p in zip(clients, shares):
        counts = Counter(client.train.answers)
        total = max(len(client.train), 1)
        rows.append({
            "client": client.name,
            "task": client.task,
            "train": len(client.train),
            "test": len(client.test),
            "answers": len(counts),
            "effective_answers": float(2 ** _entropy(p)) if len(client.train) else None,  # perplexity: how many answers it really uses
            "top": [[a, n / total] for a, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
            "train_outside_vocabulary": client.train_outside_vocabulary,  # dropped: not in `train`
            "test_outside_vocabulary": client.test_outside_vocabulary,  # in `test`, counted wrong
            **{f"{split}_available": n for split, n in (("train", client.train.available), ("test", client.test.available)) if n is not None},
        })
        if max_answers is not None:
            notes += data_notes({"name": client.name, **rows[-1]}, max_answers)
    h = heterogeneity(clients)
    warnings = [
        f"warning: client '{name}' has no training examples: it is left out of the Jensen-Shannon and total-variation means, "
        "and its effective number of answers is undefined (—)"
        for name in h["left_out"]
    ]
    return {"clients": rows, "heterogeneity": h, "notes": notes, "warnings": warnings}


def report(stats: dict) -> str:
    lines = ["| client | task | train | test | answers | effective | most frequent training answers |", "|---|---|---|---|---|---|---|"]
    for r in stats["clients"]:
        top = ", ".join(f"{a} {100 * s:.0f}%" for a, s in r["top"])
        lines.append(f"| {r['client']} | {r['task']} | {r['train']} | {r['test']} | {r['answers']} | {_number(r['effective_answers'], '.1f')} | {top} |")
    h = stats["heterogeneity"]
    k, left_out = len(stats["clients"]), h.get("left_out", [])
    over = f" (both over the {k - len(left_out)} of {k} clients with training examples)" if left_out else ""
    lines += [
        "",
        f"heterogeneity: mean pairwise Jensen-Shannon divergence {_number(h['mean_pairwise_js'], '.3f')} (0 = identical answer distributions, 1 = disjoint); "
        f"mean total variation to the pooled distribution {_number(h['mean_tv_to_pooled'], '.3f')}{over}; "
        f"training-size CV {_number(h['size_cv'], '.2f')} (population std / mean over all {k} clients)",
        *stats.get("notes", []),
        *stats.get("warnings", []),
    ]
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def heatmap(clients: list[RawClient], path: str | Path, top: int = 30, title: str = "") -> Path:
    """A PNG of each client's share of the `top` most frequent answers (rows: clients)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    answers, shares = distributions(clients)
    answers, shares = answers[:top], shares[:, :top]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(answers) + 2.5), max(3.0, 0.3 * len(clients) + 1.8)))
    image = ax.imshow(shares, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(answers)), answers, rotation=70, ha="right", fontsize=8)
    ax.set_yticks(range(len(clients)), [c.name for c in clients], fontsize=8)
    ax.set_xlabel(f"answer (the {len(answers)} most frequent overall)")
    ax.set_ylabel("client")
    ax.set_title(title or "share of each client's training answers", fontsize=10)
    fig.colorbar(image, ax=ax, label="share of the client's training set")
    fig.tight_layout()
    try:  # atomic: a reader never sees half a picture
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return Path(path)
