"""Numbers over seeds: means that skip what is missing, mean ± std, and whether a difference
between two methods exceeds the seed noise (paired or Welch's t-test at 95%)."""

from __future__ import annotations

import math


def nanmean(values) -> float:
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else float("nan")


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
