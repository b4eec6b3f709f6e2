"""Numbers over seeds: means that skip what is missing, mean ± std, and whether a difference
between two methods exceeds the seed noise (paired or Welch's t-test at 95%, the p-value from
Student's t as scipy.stats.ttest_rel / ttest_ind compute it)."""

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


def t_critical(df: float) -> float:
    """Two-sided 95% critical value of Student's t with `df` degrees of freedom (Welch's df is
    fractional and used as it is, as scipy.stats.ttest_ind does)."""
    from scipy.stats import t

    if not df > 0:
        return float("inf")
    return float(t.ppf(0.975, df))


def two_sided_p(t_stat: float, df: float) -> float:
    """p-value of a two-sided t-test: the probability of |T| >= |t_stat| under Student's t(df)."""
    from scipy.stats import t

    return float(2 * t.sf(abs(t_stat), df))


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
        return m, two_sided_p(m / (sd / math.sqrt(n)), n - 1) < 0.05
    ma, sa, na = mean_std(list(a.values()))
    mb, sb, nb = mean_std(list(b.values()))
    if na < 2 or nb < 2:
        return ma - mb, None
    va, vb = sa**2 / na, sb**2 / nb
    if va + vb == 0:
        return ma - mb, ma != mb
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return ma - mb, two_sided_p((ma - mb) / math.sqrt(va + vb), df) < 0.05
