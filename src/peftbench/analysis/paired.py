"""Paired comparisons of two methods of one cell: the tests ``claims`` and ``decide`` read (docs/statistics.md).

Two methods of a cell share each seed's training sample and test sample (``data.sample_hash``), so they are
compared through their differences, seed by seed:

- ``paired_t``: Student's t on the k per-seed differences (k − 1 degrees of freedom); it carries both the
  training variance and the test-sample variance. The interval is kept inside the range a difference of the
  metric can take.
- ``sign_flip``: the exact permutation test of the same differences (all 2^k sign flips), for per-run
  quantities with few distinct values (best epoch) or differences that do not vary; with k seeds no p-value
  is below 2^(1 − k) (three seeds: 0.25), which ``p_floor`` states.
- ``mcnemar`` and ``bootstrap_difference``: within seeds, over the test examples both methods answered; they
  cover the test-sample variance only, never the training variance.
- ``holm``: the step-down correction over a claim's comparisons; ``non_inferiority``: "at least as good as"
  as a one-sided test against the metric's smallest effect.
- ``t_e_value`` and ``sign_e_value``: anytime-valid evidence for the sequential rule of ``decide``.

All functions take plain numbers; nothing here reads result files.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
EXACT_FLIPS = 16
"""Up to this many differences the sign-flip test enumerates all 2^k flips; beyond, 2^16 random ones."""

SEEDS = "seeds (training and test-sample variance)"
EXAMPLES = "test examples (test-sample variance only)"
Bounds = tuple[float, float]
UNBOUNDED: Bounds = (-math.inf, math.inf)


@dataclass(frozen=True)
class Test:
    """One paired comparison: ``estimate`` (mean difference a − b) with its 95% interval and p-value."""

    name: str
    """"paired t", "sign-flip", "McNemar", "paired bootstrap", "Welch t"."""
    estimate: float
    low: float
    high: float
    p: float
    n: int
    """Seeds (or test examples) the test pairs."""
    scope: str
    """What variance it covers: ``SEEDS`` or ``EXAMPLES``."""
    p_floor: float = 0.0
    """The smallest p-value the test can give with ``n``; above ALPHA it cannot decide at all."""
    detectable: float = math.nan
    """The smallest |difference| the test detects with 80% power at its ``n``."""
    needed: float = math.nan
    """The n that gives 80% power at the observed difference (inf: never, NaN: unknown)."""

    @property
    def unit(self) -> str:
        return "seeds" if self.scope == SEEDS else "test examples"


def difference_bounds(bounds: Bounds) -> Bounds:
    """The range of a − b when a and b lie in ``bounds``."""
    low, high = bounds
    return low - high, high - low


def _clip(low: float, high: float, bounds: Bounds) -> tuple[float, float]:
    return max(low, bounds[0]), min(high, bounds[1])


def _p_from_t(t: float, df: int, alternative: str) -> float:
    if alternative == "greater":
        return float(stats.t.sf(t, df))
    if alternative == "less":
        return float(stats.t.cdf(t, df))
    return float(2 * stats.t.sf(abs(t), df))


# ---- seed-level tests ---------------------------------------------------------------------------------


def paired_t(diffs: Sequence[float], bounds: Bounds = UNBOUNDED, alternative: str = "two-sided",
             alpha: float = ALPHA) -> Test:
    """Student's t on the per-seed differences; ``bounds``: the range of a difference. Differences that do
    not vary (sd 0) have no t: the exact ``sign_flip`` answers for them. ``plan`` gives what more seeds
    would detect."""
    d = np.asarray(diffs, dtype=float)
    k = d.size
    if k < 2:
        return Test("paired t", float(d.mean()) if k else math.nan, *bounds, math.nan, k, SEEDS,
                    detectable=math.inf, needed=math.nan)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return sign_flip(d, bounds, alternative, alpha)
    mean, se = float(d.mean()), sd / math.sqrt(k)
    half = float(stats.t.ppf(1 - alpha / 2, k - 1)) * se
    low, high = _clip(mean - half, mean + half, bounds)
    return Test("paired t", mean, low, high, _p_from_t(mean / se, k - 1, alternative), k, SEEDS,
                detectable=detectable_t(sd, k, alpha))


def detectable_t(sd: float, k: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest difference a two-sided paired t on k seeds detects with ``power``:
    (t_{1−α/2} + t_{power}) · sd / √k, k − 1 degrees of freedom."""
    if k < 2:
        return math.inf
    return float((stats.t.ppf(1 - alpha / 2, k - 1) + stats.t.ppf(power, k - 1)) * sd / math.sqrt(k))


def seeds_needed_t(difference: float, sd: float, alpha: float = ALPHA, power: float = POWER,
                   most: int = 1000) -> float:
    """The fewest seeds at which a two-sided paired t detects ``difference`` with ``power`` (noncentral t),
    when the differences spread by ``sd``; inf when not within ``most``."""
    if difference == 0 or not math.isfinite(sd) or sd <= 0:
        return math.inf if difference == 0 else 2.0
    effect = abs(difference) / sd
    for k in range(2, most + 1):
        critical = stats.t.ppf(1 - alpha / 2, k - 1)
        if stats.nct.sf(critical, k - 1, effect * math.sqrt(k)) >= power:
            return float(k)
    return math.inf


def sign_flip_floor(k: int, alternative: str = "two-sided") -> float:
    """The smallest p-value the sign-flip test can give with k differences: 2^(1 − k) two-sided, 2^−k
    one-sided (three seeds: 0.25 and 0.125)."""
    return min(1.0, 2.0 ** (-k) * (2 if alternative == "two-sided" else 1))


def _flips(k: int) -> np.ndarray:
    if k <= EXACT_FLIPS:
        return np.array(list(itertools.product((1.0, -1.0), repeat=k)))
    return np.random.default_rng(0).choice((1.0, -1.0), size=(2**16, k))


def _sign_flip_p(d: np.ndarray, flips: np.ndarray, alternative: str) -> float:
    observed, means = d.mean(), flips @ d / d.size
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max(initial=0.0)))
    if alternative == "greater":
        return float(np.mean(means >= observed - tolerance))
    if alternative == "less":
        return float(np.mean(means <= observed + tolerance))
    return float(np.mean(np.abs(means) >= abs(observed) - tolerance))


def sign_flip(diffs: Sequence[float], bounds: Bounds = UNBOUNDED, alternative: str = "two-sided",
              alpha: float = ALPHA) -> Test:
    """The exact sign-flip test of the mean difference (symmetry about 0); its 95% interval inverts the test
    over a grid (every shift the test does not reject), kept within ``bounds``."""
    d = np.asarray(diffs, dtype=float)
    k = d.size
    if k == 0:
        return Test("sign-flip", math.nan, *bounds, math.nan, 0, SEEDS, 1.0, math.inf, math.nan)
    flips = _flips(k)
    spread = float(d.max() - d.min()) + 1.0
    grid_low = bounds[0] if math.isfinite(bounds[0]) else float(d.min()) - 2 * spread
    grid_high = bounds[1] if math.isfinite(bounds[1]) else float(d.max()) + 2 * spread
    grid = np.union1d(np.linspace(grid_low, grid_high, 801), d)  # the observed values are its corners
    kept = [float(shift) for shift in grid if _sign_flip_p(d - shift, flips, "two-sided") > alpha]
    low, high = (min(kept), max(kept)) if kept else (float(d.mean()), float(d.mean()))
    low = bounds[0] if kept and low == grid_low else low  # the grid's edge: the interval may run further
    high = bounds[1] if kept and high == grid_high else high
    floor = sign_flip_floor(k, alternative)
    return Test("sign-flip", float(d.mean()), low, high, _sign_flip_p(d, flips, alternative), k, SEEDS,
                p_floor=floor, detectable=math.inf if floor > alpha else math.nan)


def seeds_needed_sign_flip(d: np.ndarray, alpha: float = ALPHA) -> float:
    """Seeds the sign-flip test needs before it can decide at all (2^(1−k) ≤ α), and more when the
    differences do not all share a sign (then as many as the paired t needs at their spread)."""
    floor_k = math.ceil(1 - math.log2(alpha))
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return math.inf
    if np.all(nonzero > 0) or np.all(nonzero < 0):
        return float(floor_k)
    return max(float(floor_k), seeds_needed_t(float(d.mean()), float(d.std(ddof=1)), alpha))


def welch_t(a: Sequence[float], b: Sequence[float], bounds: Bounds = UNBOUNDED, alpha: float = ALPHA) -> Test:
    """Welch's t for the difference of means of two unpaired samples (Welch-Satterthwaite df)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    estimate = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    if x.size < 2 or y.size < 2:
        return Test("Welch t", estimate, *bounds, math.nan, min(x.size, y.size), SEEDS, detectable=math.inf)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0:
        p = 0.0 if estimate else 1.0
        return Test("Welch t", estimate, estimate, estimate, p, min(x.size, y.size), SEEDS)
    df = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    low, high = _clip(estimate - half, estimate + half, bounds)
    spread = math.sqrt(x.var(ddof=1) + y.var(ddof=1))  # of one seed's a − b, were the seeds paired
    n = min(x.size, y.size)
    return Test("Welch t", estimate, low, high, float(2 * stats.t.sf(abs(estimate) / se, df)), n, SEEDS,
                detectable=detectable_t(spread, n, alpha), needed=seeds_needed_t(estimate, spread, alpha))


# ---- "at least as good as" and several comparisons ----------------------------------------------------


def non_inferiority(diffs: Sequence[float], margin: float, bounds: Bounds = UNBOUNDED,
                    alpha: float = ALPHA) -> tuple[Test, float]:
    """Whether a is at least as good as b within ``margin`` (the metric's smallest effect): the one-sided
    p of H0 "a − b ≤ −margin" (the test's p), and the one-sided p of "a − b ≥ −margin" (a small value shows
    a worse than b by more than the margin). The interval is the two-sided 95% one of the differences."""
    d = np.asarray(diffs, dtype=float)
    shifted = d + margin
    discrete = d.size >= 2 and float(d.std(ddof=1)) == 0.0
    test_fn = sign_flip if discrete or d.size < 2 else paired_t
    both = paired_t(d, bounds, alpha=alpha) if not discrete else sign_flip(d, bounds, alpha=alpha)
    above = test_fn(shifted, alternative="greater").p
    below = test_fn(shifted, alternative="less").p
    name = f"non-inferiority ({both.name}, margin {margin:g})"
    return replace(both, name=name, p=above), below


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    ps = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(ps)):
        running = max(running, min(1.0, (len(ps) - rank) * p))
        adjusted[i] = running
    return adjusted


# ---- example-level tests within seeds ------------------------------------------------------------------


def mcnemar(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> Test:
    """McNemar's exact test on paired 0/1 scores (a binomial test of the discordant pairs); the interval
    is the Wald interval of a difference of paired proportions, within [−1, 1]."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = x.size
    only_a, only_b = int(np.sum((x == 1) & (y == 0))), int(np.sum((x == 0) & (y == 1)))
    estimate = (only_a - only_b) / n if n else math.nan
    discordant = only_a + only_b
    p = float(stats.binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
    variance = discordant / n - estimate**2 if n else math.nan  # of one example's difference
    z = float(stats.norm.ppf(1 - alpha / 2))
    half = z * math.sqrt(max(variance, 0.0) / n) if n else math.inf
    low, high = _clip(estimate - half, estimate + half, (-1.0, 1.0))
    return Test("McNemar", estimate, low, high, p, n, EXAMPLES, detectable=_detectable_z(variance, n, alpha),
                needed=_examples_needed(estimate, variance, alpha))


def bootstrap_difference(sizes: Sequence[int], difference: Callable[[int, np.ndarray], float],
                         bounds: Bounds = UNBOUNDED, resamples: int = 1000, seed: int = 0,
                         alpha: float = ALPHA) -> Test:
    """The paired bootstrap over test examples, within each seed: ``difference(seed index, example
    indices)`` is the metric of a minus that of b on those examples (recomputed, so corpus metrics such as
    MCC work); the estimate is its mean over seeds. Percentile interval; p: twice the smaller tail at 0."""
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([difference(s, np.arange(n)) for s, n in enumerate(sizes)]))
    draws = np.array([np.mean([difference(s, rng.integers(0, n, n)) for s, n in enumerate(sizes)])
                      for _ in range(resamples)])
    low, high = _clip(*np.quantile(draws, [alpha / 2, 1 - alpha / 2]), bounds)
    tail = min(np.mean(draws <= 0), np.mean(draws >= 0))
    p = float(min(1.0, 2 * (tail * resamples + 1) / (resamples + 1)))
    total = int(sum(sizes))
    variance = float(draws.var(ddof=1)) * total  # of one example's contribution, as the draws imply
    return Test("paired bootstrap", estimate, float(low), float(high), p, total, EXAMPLES, 2 / (resamples + 1),
                detectable=_detectable_z(variance, total, alpha), needed=_examples_needed(estimate, variance, alpha))


def _detectable_z(variance: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    if not n or not math.isfinite(variance):
        return math.inf
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * math.sqrt(max(variance, 0.0) / n))


def _examples_needed(difference: float, variance: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Examples for ``power`` at ``difference`` (normal approximation): (z_{1−α/2} + z_power)² σ² / d²."""
    if not difference or not math.isfinite(variance):
        return math.inf
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(math.ceil(z**2 * max(variance, 1e-12) / difference**2))


# ---- anytime-valid evidence (the sequential rule) -----------------------------------------------------

PRIOR_G = 1.0
"""Variance of the normal prior on the standardised effect δ = mean/sd of the t e-value."""
SIGN_BET = 0.8
"""The sign e-value's bet per seed: its evidence grows by 1.8 for each difference of the leading sign."""


def t_e_value(diffs: Sequence[float], g: float = PRIOR_G) -> float:
    """The Bayes factor of "the mean difference is δ·σ, δ ~ N(0, g)" against "it is 0", σ under the
    right-Haar prior: a test martingale under the null in the seeds' order, so sup_k E_k ≥ 1/α happens with
    probability at most α (Ville), however the seeds are added (Pérez-Ortiz et al. 2024).
    E = (1 + kg)^(−1/2) · ((1 + t²/ν) / (1 + t²/(ν(1 + kg))))^(k/2), ν = k − 1."""
    d = np.asarray(diffs, dtype=float)
    k = d.size
    if k < 2:
        return 1.0
    sd = float(d.std(ddof=1))
    if sd == 0:
        return (1 + k * g) ** ((k - 1) / 2) if d.mean() != 0 else 1.0
    t2 = k * float(d.mean()) ** 2 / sd**2
    nu = k - 1
    return float((1 + k * g) ** -0.5 * ((1 + t2 / nu) / (1 + t2 / (nu * (1 + k * g)))) ** (k / 2))


def sign_e_value(diffs: Sequence[float], bet: float = SIGN_BET) -> float:
    """½ Π(1 + λ s_i) + ½ Π(1 − λ s_i), s_i the signs of the differences: a test martingale when the
    differences are symmetric about 0 (for discrete quantities such as the best epoch)."""
    signs = np.sign(np.asarray(diffs, dtype=float))
    return float(0.5 * np.prod(1 + bet * signs) + 0.5 * np.prod(1 - bet * signs))


def anytime_p(diffs: Sequence[float], discrete: bool = False) -> float:
    """min(1, 1 / max_k E_k) over the prefixes of ``diffs`` (in the order the seeds were added): a p-value
    valid at any stopping time."""
    e_value = sign_e_value if discrete else t_e_value
    best = max([e_value(list(diffs)[:k]) for k in range(1, len(diffs) + 1)] or [1.0])
    return min(1.0, 1.0 / best)


def seeds_to_decide(diffs: Sequence[float], alpha: float, most: int, discrete: bool = False) -> float:
    """The seeds at which the e-value would reach 1/α if the differences went on as observed (the same
    standardised mean, or the same share of leading signs); inf when not within ``most`` (futile)."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2:
        return math.nan
    if discrete:
        signs = np.sign(d)
        share = max(np.mean(signs > 0), np.mean(signs < 0))
        growth = share * math.log1p(SIGN_BET) + (1 - share) * math.log1p(-SIGN_BET)
        for k in range(d.size, most + 1):
            if growth > 0 and k * growth - math.log(2) >= math.log(1 / alpha):
                return float(k)
        return math.inf
    sd, mean = float(d.std(ddof=1)), float(d.mean())
    for k in range(d.size, most + 1):
        projected = np.full(k, mean) if sd == 0 else mean + sd * _unit_spread(k)
        if t_e_value(projected) >= 1 / alpha:
            return float(k)
    return math.inf


def _unit_spread(k: int) -> np.ndarray:
    """k values of mean 0 and sample sd 1."""
    x = np.linspace(-1.0, 1.0, k)
    return x / x.std(ddof=1)


def plan(diffs: Sequence[float], discrete: bool, alpha: float = ALPHA) -> tuple[float, float]:
    """(the smallest difference detectable with 80% power at these seeds, the seeds that give 80% power at
    the observed difference) at level ``alpha``; the sign-flip test detects nothing below its floor."""
    d = np.asarray(diffs, dtype=float)
    sd = float(d.std(ddof=1)) if d.size >= 2 else math.nan
    if discrete or sd == 0:
        floor = sign_flip_floor(d.size)
        detectable = math.inf if floor > alpha else detectable_t(sd, d.size, alpha)
        return detectable, seeds_needed_sign_flip(d, alpha)
    return detectable_t(sd, d.size, alpha), seeds_needed_t(float(d.mean()), sd, alpha)
