"""Numbers over seeds: means that skip what is missing, mean ± std, and whether a difference
between two methods exceeds the seed noise (two-sided t-test at 95%: scipy.stats.ttest_rel on
the seeds both ran, else Welch's scipy.stats.ttest_ind; no test below MIN_SEEDS seeds a side or
where the seeds do not vary)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# A t-test on 2 seeds estimates the noise from one degree of freedom: one lucky pair of runs
# agreeing closely makes any difference "significant". From 3 seeds a side it may star.
MIN_SEEDS = 3
# Per-seed values closer than this do not vary: scores are fractions of test questions, and
# float rounding alone (0.7 − 0.6 vs 0.8 − 0.7) must not make a spread the t-test divides by.
NO_SPREAD = 1e-9


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


@dataclass(frozen=True)
class Difference:
    """mean of a − mean of b over seeds, and its test against the seed noise."""

    mean: float
    n: tuple[int, int]  # seeds on each side (paired: the same seeds, so equal)
    test: str  # "paired t" (ttest_rel), "Welch t" (ttest_ind, unequal variances)
    p: float | None = None  # two-sided p-value; None: not tested
    untested: str = ""  # why there is no test: too few seeds, or no spread

    @property
    def significant(self) -> bool | None:
        """p < 0.05; None where nothing was tested (too few seeds, no spread)."""
        return None if self.p is None else self.p < 0.05


def significance(a: dict[int, float], b: dict[int, float]) -> Difference:
    """The difference of the means of `a` and `b` (seed -> score) and its two-sided t-test.

    Seeds shared by both sides are paired (same initial A_s, same client sampling): paired t-test
    on the per-seed differences. Otherwise Welch's t-test. Fewer than MIN_SEEDS seeds a side,
    or per-seed values without spread (the t statistic divides by it), are not tested."""
    from scipy import stats

    a = {s: v for s, v in a.items() if v is not None and v == v}
    b = {s: v for s, v in b.items() if v is not None and v == v}
    if a and set(a) == set(b):
        seeds = sorted(a)
        m, sd, n = mean_std([a[s] - b[s] for s in seeds])
        if n < MIN_SEEDS:
            return Difference(m, (n, n), "paired t", untested=f"fewer than {MIN_SEEDS} seeds")
        if not sd > NO_SPREAD:
            return Difference(m, (n, n), "paired t", untested="no spread")
        return Difference(m, (n, n), "paired t", float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue))
    (ma, sa, na), (mb, sb, nb) = mean_std(list(a.values())), mean_std(list(b.values()))
    if min(na, nb) < MIN_SEEDS:
        return Difference(ma - mb, (na, nb), "Welch t", untested=f"fewer than {MIN_SEEDS} seeds")
    if not max(sa, sb) > NO_SPREAD:
        return Difference(ma - mb, (na, nb), "Welch t", untested="no spread")
    return Difference(ma - mb, (na, nb), "Welch t", float(stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).pvalue))


def difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, bool | None]:
    """(mean of a − mean of b, whether it exceeds the seed noise at 95%; None: not tested), as
    significance decides it."""
    d = significance(a, b)
    return d.mean, d.significant
