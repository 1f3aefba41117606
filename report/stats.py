"""Means, 95% confidence intervals and the verdict rule of the claims table.

Every mean the report tabulates or plots over seeds comes with a 95% confidence interval from
Student's t distribution (seeds are few, so the normal 1.96 would be too narrow: with 3 seeds
the interval is mean +- 4.30 s / sqrt(3)). A difference of two means uses Welch's interval
(unequal variances, Welch-Satterthwaite degrees of freedom). The t quantile is computed here
(regularized incomplete beta, bisection) rather than taken from a table or scipy.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over n values with its 95% confidence interval [low, high] (nan for n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def format(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """"91.23 [90.95, 91.51]%", or "91.23% (1 seed)" without an interval."""
        mean = f"{self.mean * scale:.{digits}f}"
        if self.n < 2:
            return f"{mean}{unit} (1 seed)"
        return f"{mean} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]{unit}"


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (p in (0.5, 1))."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci(values: Sequence[float]) -> Estimate | None:
    """The mean of `values` with its 95% t interval; None for no values."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return None
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n)
    half = t_quantile(0.5 + LEVEL / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def difference_ci(a: Sequence[float], b: Sequence[float]) -> Estimate | None:
    """mean(a) - mean(b) with Welch's 95% interval; n is the smaller sample's size."""
    a = [float(v) for v in a if v is not None and math.isfinite(v)]
    b = [float(v) for v in b if v is not None and math.isfinite(v)]
    if not a or not b:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Estimate(diff, math.nan, math.nan, min(len(a), len(b)))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, diff, diff, min(len(a), len(b)))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(0.5 + LEVEL / 2, df) * se
    return Estimate(diff, diff - half, diff + half, min(len(a), len(b)))


# -- the verdict rule -----------------------------------------------------------------------

SUPPORTED, NOT_SUPPORTED, MIXED, NOT_TESTED = "supported", "not supported", "mixed", "not tested"


def verdict_greater(effects: Sequence[Estimate | None]) -> str:
    """A claim "A > B" tested in one or more settings, each effect an estimate of A - B:
    supported when every interval lies above 0; not supported when none does; mixed
    otherwise; not tested without estimates with intervals."""
    tested = [e for e in effects if e is not None and e.n >= 2]
    if not tested:
        return NOT_TESTED
    above = [e.low > 0 for e in tested]
    if all(above):
        return SUPPORTED
    return NOT_SUPPORTED if not any(above) else MIXED


def verdict_equivalent(effects: Sequence[Estimate | None], margin: float) -> str:
    """A claim "A matches B" (no practical difference): supported when every interval of
    A - B lies within +-margin; not supported when every interval reaches beyond it on one
    side entirely (a difference larger than the margin); mixed otherwise."""
    tested = [e for e in effects if e is not None and e.n >= 2]
    if not tested:
        return NOT_TESTED
    inside = [-margin <= e.low and e.high <= margin for e in tested]
    outside = [e.low > margin or e.high < -margin for e in tested]
    if all(inside):
        return SUPPORTED
    if all(outside):
        return NOT_SUPPORTED
    return MIXED


# -- Student's t distribution ------------------------------------------------------------------


def _t_cdf(t: float, df: float) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, x)
    return 1 - tail if t >= 0 else tail


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / (c if abs(c) > tiny else tiny)
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return math.exp(log_front) * (f - 1.0) / a
