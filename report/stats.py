"""Intervals, p-values, verdicts and the Holm rule of the report, in plain Python (no SciPy).

Every mean the report states over seeds carries a 95% interval from Student's t with n - 1
degrees of freedom (with 3 seeds the half width is 4.30 s / sqrt(3), not the normal 1.96).
Two settings that share seeds (same initial-weight stream, same data order) are compared by
the mean of their per-seed differences (a paired t interval); groups that share no seeds by
Welch's interval. Intervals are clipped to the range the quantity can take (an accuracy to
[0, 1], a time to >= 0) and marked so (`Estimate.clipped`).

A claim "A beats B" is tested on an estimate of A - B (oriented so that positive favours A):
supported when the interval lies above 0, contradicted when it lies below, inconclusive when
it contains 0. A claim "A matches B" is two one-sided tests against a margin fixed in the
design (TOST): supported when the 90% interval lies inside +-margin, contradicted when the
95% interval lies wholly outside it, inconclusive otherwise. Over the whole claims table the
verdicts are then held to Holm's rule at family level 0.05: a claim whose p-value Holm does
not reject is inconclusive, whatever its own interval shows.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

LEVEL = 0.95
FAMILY_ALPHA = 0.05
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
NOT_TESTED = "not tested"  # no runs (a partial suite)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean (or mean difference) over n values, its 95% interval and the test's p-value
    (two-sided, against 0; nan when there is no interval)."""

    mean: float
    low: float
    high: float
    n: int
    p: float = math.nan
    clipped: bool = False  # an end of the interval was cut to the quantity's range
    method: str = "t"
    se: float = math.nan  # standard error and degrees of freedom of the t statistic
    df: float = math.nan

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and self.high > self.low

    def format(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """'91.23 [90.95, 91.51]%'; a clipped interval ends in '(clipped)'; one value: '(n=1)'."""
        mean = f"{self.mean * scale:.{digits}f}"
        if not self.has_interval:
            return f"{mean}{unit} (n={self.n}, no interval)"
        text = f"{mean} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]{unit}"
        return text + (" (clipped)" if self.clipped else "")


def _clean(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _clip(mean, low, high, bounds) -> tuple[float, float, bool]:
    if bounds is None:
        return low, high, False
    lo, hi = bounds
    new_low, new_high = max(low, lo), min(high, hi)
    return new_low, new_high, (new_low, new_high) != (low, high)


def _t_estimate(mean, sd, n, df, bounds, method) -> Estimate:
    if n < 2 or not sd > 0:
        # No spread: a zero-width interval (e.g. identical grid-rounded values) is no evidence.
        return Estimate(mean, math.nan, math.nan, n, math.nan, False, method)
    se = sd / math.sqrt(n) if method != "welch" else sd
    half = t_quantile(0.5 + LEVEL / 2, df) * se
    p = 2 * (1 - _t_cdf(abs(mean) / se, df))
    low, high, clipped = _clip(mean, mean - half, mean + half, bounds)
    return Estimate(mean, low, high, n, p, clipped, method, se, df)


def mean_ci(values: Sequence[float | None], bounds=None) -> Estimate | None:
    """The mean of the finite values with its 95% t interval (clipped to bounds); None if none."""
    v = _clean(values)
    if not v:
        return None
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return _t_estimate(statistics.fmean(v), sd, len(v), len(v) - 1, bounds, "t")


def paired_ci(a: dict, b: dict, bounds=None) -> Estimate | None:
    """mean over shared keys (seeds, rounds) of a[k] - b[k]: paired t interval, n - 1 df."""
    keys = sorted(
        k for k in a.keys() & b.keys() if _clean([a[k], b[k]]) and None not in (a[k], b[k])
    )
    if not keys:
        return None
    d = [a[k] - b[k] for k in keys]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    return _t_estimate(statistics.fmean(d), sd, len(d), len(d) - 1, bounds, "paired t")


def welch_ci(a: Sequence[float], b: Sequence[float], bounds=None) -> Estimate | None:
    """mean(a) - mean(b) with Welch's interval (Welch-Satterthwaite df); n = the smaller size."""
    a, b = _clean(a), _clean(b)
    if not a or not b:
        return None
    diff, n = statistics.fmean(a) - statistics.fmean(b), min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return Estimate(diff, math.nan, math.nan, n, math.nan, False, "welch")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return Estimate(diff, math.nan, math.nan, n, math.nan, False, "welch")
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return _t_estimate(diff, math.sqrt(va + vb), n, df, bounds, "welch")


# -- verdicts --------------------------------------------------------------------------------


def verdict_greater(e: Estimate | None) -> str:
    """A beats B, on an estimate of A - B (before Holm)."""
    if e is None or not e.has_interval:
        return INCONCLUSIVE if e is not None else NOT_TESTED
    if e.low > 0:
        return SUPPORTED
    return CONTRADICTED if e.high < 0 else INCONCLUSIVE


def tost(e: Estimate | None, margin: float) -> tuple[str, float]:
    """A matches B within +-margin: the verdict before Holm and its p-value. Equivalence is two
    one-sided t tests (TOST; p is the larger one-sided p-value, < 0.05 when the 90% interval
    lies inside the margin); a contradiction is a difference beyond the margin (the 95%
    interval wholly outside it; p of the one-sided test of |difference| <= margin)."""
    if e is None or not e.has_interval:
        return (INCONCLUSIVE if e is not None else NOT_TESTED), math.nan
    se, df = e.se, e.df
    p_low = 1 - _t_cdf((e.mean + margin) / se, df)  # H0: difference <= -margin
    p_high = _t_cdf((e.mean - margin) / se, df)  # H0: difference >= +margin
    p = max(p_low, p_high)
    if p < (1 - LEVEL):
        return SUPPORTED, p
    if e.low > margin or e.high < -margin:
        return CONTRADICTED, 2 * (1 - _t_cdf((abs(e.mean) - margin) / se, df))
    return INCONCLUSIVE, p


def holm(pvalues: Sequence[float], alpha: float = FAMILY_ALPHA) -> list[bool]:
    """Holm-Bonferroni: which hypotheses are rejected at family-wise level alpha (nan: never).
    Sort the m p-values ascending; reject p(i) while p(i) <= alpha / (m - i + 1)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    m, rejected = len(order), [False] * len(pvalues)
    for rank, (p, i) in enumerate(order):
        if p > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


# -- Student's t distribution -----------------------------------------------------------------


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (p in (0.5, 1)), by bisection."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


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
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
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


# -- seeds by power ---------------------------------------------------------------------------


def seeds_for_power(sd: float, effect: float, alpha: float, power: float = 0.8) -> int:
    """The smallest n >= 2 with n >= ((t(1 - alpha/2, n-1) + t(power, n-1)) * sd / effect)^2:
    the seeds a paired comparison needs to detect a true mean difference `effect` at two-sided
    level `alpha` with probability `power`, when per-seed differences have standard deviation
    `sd` (the rule solved by iterating n, as the t quantiles depend on it)."""
    if not (sd > 0 and effect > 0):
        return 2
    n = 2
    while n < 10**6:
        need = ((t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / effect) ** 2
        if n >= need:
            return n
        n += 1
    return n


def detectable_effect(sd: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest true difference n seeds detect with `power` at two-sided level `alpha`:
    (t(1 - alpha/2, n-1) + t(power, n-1)) * sd / sqrt(n), the rule above solved for the effect."""
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)
