"""The paired tests behind claims and decide (analysis/paired.py): pinned numbers, and simulations of known
true differences for interval coverage and for the sequential rule's false-decision rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from peftbench.analysis import paired
from peftbench.analysis.report.examples import corpus_metric
from peftbench.catalog.metrics import macro_f1, matthews_corrcoef

pytestmark = pytest.mark.unit


def test_paired_t_is_students_t_on_the_differences_with_k_minus_1_df():
    diffs = [0.30, 0.10, 0.60]
    test = paired.paired_t(diffs, (-1.0, 1.0))
    assert test.p == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue)
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)
    assert (test.estimate, test.low, test.high) == pytest.approx((1 / 3, 1 / 3 - half, 1 / 3 + half))
    assert test.n == 3 and test.scope == paired.SEEDS
    detectable, needed = paired.plan(diffs, discrete=False)
    assert detectable == pytest.approx(test.detectable) and needed == 7


def test_paired_intervals_stay_within_the_range_of_a_difference():
    test = paired.paired_t([0.9, -0.5, 0.95], paired.difference_bounds((0.0, 1.0)))
    assert test.low == -1.0 and test.high == 1.0  # t gives [-1.32, 2.22]
    assert paired.difference_bounds((-1.0, 1.0)) == (-2.0, 2.0)


def test_per_seed_intervals_overlap_while_the_paired_difference_excludes_zero():
    """A seed effect shared by both methods: each side's own interval is wide, their difference is not."""
    a, b = np.array([0.50, 0.70, 0.90]), np.array([0.45, 0.64, 0.86])
    half = stats.t.ppf(0.975, 2) * a.std(ddof=1) / math.sqrt(3)
    assert a.mean() - half < b.mean() + half  # the intervals-apart rule: undecided
    test = paired.paired_t(a - b, (-1.0, 1.0))
    assert test.p == pytest.approx(0.013072, abs=1e-6) and test.low > 0  # as scipy's ttest_1samp


def test_sign_flip_is_exact_and_cannot_decide_with_three_seeds():
    three = paired.sign_flip([-5, -6, -6], (-9.0, 9.0))
    assert three.p == 0.25 and three.p_floor == 0.25 and (three.low, three.high) == (-9.0, 9.0)
    six = paired.sign_flip([-5, -6, -6, -4, -5, -6], (-9.0, 9.0))
    assert six.p == pytest.approx(2 / 64) and (six.low, six.high) == (-6.0, -4.0)
    assert paired.sign_flip([1, -1, 2, -2], (-9.0, 9.0)).p == 1.0
    assert paired.sign_flip_floor(3) == 0.25 and paired.sign_flip_floor(3, "greater") == 0.125


def test_differences_that_do_not_vary_are_tested_by_sign_flip_not_by_a_zero_width_t():
    test = paired.paired_t([2.0, 2.0, 2.0])
    assert test.name == "sign-flip" and test.p == 0.25


def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs():
    a = [1] * 30 + [0] * 10 + [1] * 50 + [0] * 10
    b = [0] * 30 + [1] * 10 + [1] * 50 + [0] * 10
    test = paired.mcnemar(a, b)
    assert test.estimate == pytest.approx(0.2) and test.n == 100 and test.scope == paired.EXAMPLES
    assert test.p == pytest.approx(stats.binomtest(30, 40, 0.5).pvalue)
    assert -1 <= test.low < 0.2 < test.high <= 1


def test_the_fast_corpus_metrics_equal_the_catalogs():
    rng = np.random.default_rng(1)
    classes = ("yes", "no", "maybe")
    labels = [classes[i] for i in rng.integers(0, 3, 200)]
    answers = [classes[i] if i < 3 else "other" for i in rng.integers(0, 4, 200)]
    codes = {c: i for i, c in enumerate(classes)}
    y, p = np.array([codes[x] for x in labels]), np.array([codes.get(x, 3) for x in answers])
    assert corpus_metric("mcc", y, p, 3) == pytest.approx(matthews_corrcoef(answers, labels, classes))
    assert corpus_metric("macro_f1", y, p, 3) == pytest.approx(macro_f1(answers, labels, classes))


def test_paired_bootstrap_recomputes_a_corpus_metric_per_resample():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    good = np.where(rng.random(300) < 0.8, y, 1 - y)
    constant = np.zeros(300, dtype=np.int64)  # MCC 0
    test = paired.bootstrap_difference([300], lambda s, idx: corpus_metric("mcc", y[idx], good[idx], 2)
                                       - corpus_metric("mcc", y[idx], constant[idx], 2), (-2.0, 2.0))
    assert test.estimate == pytest.approx(corpus_metric("mcc", y, good, 2))
    assert test.low > 0.4 and test.p < 0.01 and test.scope == paired.EXAMPLES


def test_holm_steps_down_and_leaves_missing_p_values_out():
    assert paired.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = paired.holm([0.01, math.nan])
    assert adjusted[0] == 0.01 and math.isnan(adjusted[1])


def test_non_inferiority_against_the_smallest_effect():
    close, worse_by_more = paired.non_inferiority([0.001, -0.002, 0.000, 0.002], 0.02)
    assert close.p < 0.001 and worse_by_more > 0.99
    far, below = paired.non_inferiority([-0.051, -0.049, -0.050, -0.052], 0.02)
    assert far.p > 0.99 and below < 0.001


def test_power_planning():
    assert paired.seeds_needed_t(1.0, 1.0) == 10  # the textbook paired t: effect size 1, 80 % power
    assert paired.detectable_t(1.0, 10) == pytest.approx((stats.t.ppf(0.975, 9) + stats.t.ppf(0.8, 9)) / 10**0.5)
    assert paired.seeds_needed_sign_flip(np.array([-1.0, -2.0, -1.0])) == 6  # 2^(1-6) < 0.05
    assert paired.plan([-1.0, -2.0, -1.0], discrete=True)[0] == math.inf


# ---- simulations ------------------------------------------------------------------------------------------


def _grid_differences(rng: np.random.Generator, true_difference: float, seeds: int, examples: int) -> np.ndarray:
    """Per-seed accuracy differences of two methods that share each seed's training and test sample: a seed
    effect on both, a method-by-seed effect, and binomial test sampling (examples answered independently)."""
    base = np.clip(0.65 + rng.normal(0, 0.1, seeds), 0.05, 0.95)
    wobble = rng.normal(0, 0.03, seeds)
    a = rng.binomial(examples, np.clip(base + true_difference / 2 + wobble, 0, 1)) / examples
    b = rng.binomial(examples, np.clip(base - true_difference / 2, 0, 1)) / examples
    return a - b


@pytest.mark.parametrize("seeds", [3, 5])
def test_paired_t_interval_covers_the_true_difference_at_least_94_percent(seeds):
    rng = np.random.default_rng(seeds)
    grids, covered = 1500, 0
    for i in range(grids):
        true = (0.0, 0.05, 0.15)[i % 3]
        test = paired.paired_t(_grid_differences(rng, true, seeds, 100), (-1.0, 1.0))
        covered += test.low <= true <= test.high
    assert covered / grids >= 0.94


def test_the_sequential_rule_keeps_its_false_decision_rate_under_optional_stopping():
    """No true difference; the loop looks after every seed from 2 to 12 and stops at the first p < 0.05.
    The anytime-valid p keeps false decisions below 5 %; a fixed-sample t looked at this way does not."""
    rng = np.random.default_rng(0)
    grids = 2000
    diffs = np.array([_grid_differences(rng, 0.0, 12, 100) for _ in range(grids)])
    anytime = np.mean([paired.anytime_p(row) < 0.05 for row in diffs])
    k = np.arange(2, 13)
    means = np.stack([diffs[:, :n].mean(axis=1) for n in k], axis=1)
    sds = np.stack([diffs[:, :n].std(axis=1, ddof=1) for n in k], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # two equal differences: sd 0, t infinite
        naive = np.mean((2 * stats.t.sf(np.abs(means) / (sds / np.sqrt(k)), k - 1) < 0.05).any(axis=1))
    assert anytime <= 0.05
    assert naive > 0.1


def test_the_sign_e_value_keeps_its_level_and_decides_a_consistent_best_epoch():
    rng = np.random.default_rng(3)
    null = [paired.anytime_p(rng.integers(-3, 4, 12), discrete=True) < 0.05 for _ in range(2000)]
    assert np.mean(null) <= 0.05
    assert paired.anytime_p([-4, -5, -3, -4, -6, -5, -4], discrete=True) < 0.05  # seven seeds, all earlier
    assert paired.anytime_p([-4, -5, -3], discrete=True) > 0.05


def test_the_sequential_rule_decides_a_real_difference_and_projects_the_seeds_it_needs():
    rng = np.random.default_rng(4)
    decided = np.mean([paired.anytime_p(_grid_differences(rng, 0.2, 10, 100)) < 0.05 for _ in range(300)])
    assert decided > 0.8
    assert paired.seeds_to_decide([0.20, 0.25, 0.15], 0.05, most=10) == 5
    assert paired.seeds_to_decide([0.01, -0.02, 0.015], 0.05, most=10) == math.inf  # futile
