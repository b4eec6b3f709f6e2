"""`feddat data describe`: per-client sizes, answer distributions and how heterogeneous they are.

Heterogeneity of the clients' training-answer distributions p_1..p_K:
- JS: the mean Jensen-Shannon divergence (base 2, in [0, 1]) over all pairs of clients;
  0 when every client has the same answer distribution, 1 when no two share an answer;
- TV: the mean total-variation distance of each client's distribution from the pooled one;
- size CV: coefficient of variation of the clients' training-set sizes (quantity skew).
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


def heterogeneity(clients: list[RawClient]) -> dict[str, float]:
    _, shares = distributions(clients)
    k = len(clients)
    pairs = [js_divergence(shares[i], shares[j]) for i in range(k) for j in range(i + 1, k)]
    sizes = np.array([len(c.train) for c in clients], dtype=float)
    pooled = (shares * sizes[:, None]).sum(0) / max(sizes.sum(), 1)
    return {
        "mean_pairwise_js": float(np.mean(pairs)) if pairs else 0.0,
        "mean_tv_to_pooled": float(np.mean(0.5 * np.abs(shares - pooled).sum(1))),
        "size_cv": float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else 0.0,
    }


def summary(clients: list[RawClient], top: int = 5) -> dict:
    """Everything the report prints, as plain data (also written by --json)."""
    _, shares = distributions(clients)
    rows = []
    for client, p in zip(clients, shares):
        counts = Counter(client.train.answers)
        total = max(len(client.train), 1)
        rows.append({
            "client": client.name,
            "task": client.task,
            "train": len(client.train),
            "test": len(client.test),
            "answers": len(counts),
            "effective_answers": float(2 ** _entropy(p)),  # perplexity: how many answers it really uses
            "top": [[a, n / total] for a, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
        })
    return {"clients": rows, "heterogeneity": heterogeneity(clients)}


def report(stats: dict) -> str:
    lines = ["| client | task | train | test | answers | effective | most frequent training answers |", "|---|---|---|---|---|---|---|"]
    for r in stats["clients"]:
        top = ", ".join(f"{a} {100 * s:.0f}%" for a, s in r["top"])
        lines.append(f"| {r['client']} | {r['task']} | {r['train']} | {r['test']} | {r['answers']} | {r['effective_answers']:.1f} | {top} |")
    h = stats["heterogeneity"]
    lines += [
        "",
        f"heterogeneity: mean pairwise Jensen-Shannon divergence {h['mean_pairwise_js']:.3f} (0 = identical answer distributions, 1 = disjoint); "
        f"mean total variation to the pooled distribution {h['mean_tv_to_pooled']:.3f}; training-size CV {h['size_cv']:.2f}",
    ]
    return "\n".join(lines)


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
