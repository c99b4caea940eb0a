"""Statistics across seeds: mean, sample standard deviation and the 95% Student t confidence interval."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (four decimals, as tables print them): the
# intervals that tables and figures show use these, so a report reads the same on every installation.
# fmt: off
_T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
# fmt: on


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table above up to df 30, scipy beyond."""
    if df <= len(_T_975):
        return _T_975[df - 1]
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mean_ci(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, sample sd, half-width of the 95% CI) = mean ± t_{0.975,n-1}·sd/√n.

    With a single value the spread is unknown: sd and half-width are NaN. Raises ValueError when empty.
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(array.mean())
    if array.size == 1:
        return mean, math.nan, math.nan
    sd = float(array.std(ddof=1))
    return mean, sd, t_quantile_975(array.size - 1) * sd / math.sqrt(array.size)
