"""The paper's training protocol: LR schedule values, early stopping, scales, metrics."""

from __future__ import annotations

import math

import pytest
from torch import nn, optim

from peftbench.catalog.methods import ADAPTER_LR, FULL_LR, PROMPT_LR, LRSchedule
from peftbench.catalog.tasks import get_task
from peftbench.catalog.tasks.data import Example, scale_cap_and_epochs
from peftbench.config import RunConfig, TrainConfig
from peftbench.recipe.evaluate import exact_match, rouge_l, score
from peftbench.recipe.protocol import EarlyStopping, paper_lr_lambda

pytestmark = pytest.mark.unit


def _lrs(lr: LRSchedule, total: int, warmup: int) -> list[float]:
    param = nn.Parameter(nn.init.zeros_(nn.Linear(1, 1).weight))
    optimizer = optim.AdamW([param], lr=lr.peak)
    scheduler = optim.lr_scheduler.LambdaLR(optimizer, paper_lr_lambda(lr, total, warmup))
    values = []
    for _ in range(total + 1):
        values.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("lr", [FULL_LR, ADAPTER_LR, PROMPT_LR])
def test_schedule_starts_at_initial_peaks_after_warmup_and_ends_at_final(lr):
    values = _lrs(lr, total=20, warmup=2)
    assert values[0] == pytest.approx(lr.initial)
    assert values[2] == pytest.approx(lr.peak)
    assert max(values) == pytest.approx(lr.peak)
    assert values[20] == pytest.approx(lr.final)
    assert values[11] == pytest.approx(lr.peak + (lr.final - lr.peak) * 9 / 18)  # linear anneal


def test_paper_learning_rates():
    assert (FULL_LR.initial, FULL_LR.peak, FULL_LR.final) == (3e-5, 3e-4, 3e-5)
    assert (ADAPTER_LR.initial, ADAPTER_LR.peak, ADAPTER_LR.final) == (3e-4, 3e-3, 3e-4)
    assert (PROMPT_LR.initial, PROMPT_LR.peak, PROMPT_LR.final) == (3e-3, 3e-1, 3e-2)


def test_schedule_without_warmup_anneals_from_peak():
    values = _lrs(ADAPTER_LR, total=10, warmup=0)
    assert values[0] == pytest.approx(3e-3)
    assert values[10] == pytest.approx(3e-4)


def test_early_stopping_on_a_scripted_validation_sequence():
    stopper = EarlyStopping(patience=1)
    improved = [stopper.update(epoch, loss) for epoch, loss in enumerate([2.0, 1.5, 1.2, 1.3], start=1)]
    assert improved == [True, True, True, False]
    assert stopper.should_stop and stopper.best_epoch == 3 and stopper.best == 1.2


def test_early_stopping_patience_and_min_delta():
    stopper = EarlyStopping(patience=2, min_delta=0.05)
    for epoch, loss in enumerate([1.0, 0.97, 0.9, 0.93], start=1):
        stopper.update(epoch, loss)
    assert stopper.best_epoch == 3  # 0.97 is not 0.05 below 1.0; 0.9 is
    assert not stopper.should_stop  # one bad epoch, patience two
    stopper.update(5, 0.89)
    assert stopper.should_stop


def test_scales_follow_the_paper():
    assert scale_cap_and_epochs("low") == (100, 10)
    assert scale_cap_and_epochs("medium") == (1000, 5)
    assert scale_cap_and_epochs("high") == (10000, 1)
    assert scale_cap_and_epochs(48) == (48, 10)
    assert scale_cap_and_epochs(500) == (500, 5)
    assert scale_cap_and_epochs(50000) == (50000, 1)
    run = RunConfig(model="t5-tiny-random", method="lora", task="synthetic_classification", scale="medium")
    assert run.epoch_cap() == 5  # the scale's cap, unless train.max_epochs sets one
    assert RunConfig(model="t5-tiny-random", method="lora", task="synthetic_classification", scale=48,
                     train=TrainConfig(max_epochs=3)).epoch_cap() == 3


def test_exact_match_trims_whitespace_and_a_trailing_period_only():
    assert exact_match(" Sports.", "Sports") == 1.0
    assert exact_match("sports", "Sports") == 0.0
    assert exact_match("Sci/Tech", "Sci/Tech") == 1.0
    assert exact_match("World news", "World") == 0.0


def test_rouge_l_takes_the_best_reference():
    # LCS of "the cat sat" with "the cat sat down" is 3: P = 1, R = 3/4, F = 2PR/(P+R) = 6/7.
    assert rouge_l("the cat sat", ("a dog ran", "the cat sat down")) == pytest.approx(6 / 7)
    assert rouge_l("the cat sat", ("the cat sat",)) == pytest.approx(1.0)
    assert rouge_l("xyz", ("the cat",)) == 0.0


def test_score_averages_per_example():
    task = get_task("synthetic_classification")
    examples = [Example(str(i), "p", word, (word,)) for i, word in enumerate(["food", "tech", "sports", "food"])]
    assert score(task, ["food", "tech", "food", "x"], examples) == 0.5
    assert math.isnan(score(task, [], []))
