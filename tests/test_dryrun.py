"""``--dry-run``'s time estimate: the earlier runs' mean, the time at the run's epoch cap, and the earlier
runs of this kind of machine preferred (and the others named) where both exist."""

from __future__ import annotations

import pytest

from peftbench.config import RunConfig, TrainConfig
from peftbench.running.dryrun import Estimator, total_text

pytestmark = pytest.mark.unit


def result(method: str, train_s: float, epochs: int, machine: str, outside: float = 20.0) -> dict:
    """An ok result of AG News low: ``train_s`` seconds over ``epochs`` epochs, plus ``outside`` seconds
    (load, test, forgetting) split between ``total_s`` and ``load_s``."""
    return {"status": "ok", "config": {"model": "m", "method": method, "task": "ag_news", "scale": "low"},
            "time": {"train_s": train_s, "total_s": train_s + outside - 1.0, "load_s": 1.0},
            "epochs": epochs, "hardware": {"instruction_set": machine}}


def run(method: str, **train) -> RunConfig:
    return RunConfig(model="m", method=method, task="ag_news", scale="low", train=TrainConfig(**train))


def test_mean_and_time_at_the_epoch_cap():
    earlier = [result("full", 60.0, 2, "avx512"), result("full", 300.0, 10, "avx512")]
    estimate = Estimator(earlier, "avx512").estimate(run("full"))
    # wall seconds: 80 and 320; at low scale's 10-epoch cap: 20 + 30 s × 10 = 320 and 320
    assert (estimate.seconds, estimate.at_cap, estimate.basis) == (200.0, 320.0, "same cell, 2 run(s)")
    # An explicit cap: 20 + 30 × 4 = 140 and 20 + 30 × 4 = 140
    assert Estimator(earlier, "avx512").estimate(run("full", max_epochs=4)).at_cap == pytest.approx(140.0)


def test_this_machines_runs_are_preferred_and_the_others_named():
    earlier = [result("lora", 30.0, 3, "amx-bf16"), result("lora", 90.0, 3, "avx512")]
    assert Estimator(earlier, "avx512").estimate(run("lora")).seconds == 110.0  # the avx512 run alone
    elsewhere = Estimator(earlier[:1], "avx512").estimate(run("lora"))
    assert elsewhere.seconds == 50.0
    assert elsewhere.basis == "same cell, 1 run(s); 1 ran on amx-bf16, this machine is avx512"


def test_same_method_when_the_cell_has_no_run_and_none_without_either():
    estimator = Estimator([result("bitfit", 40.0, 4, "avx512") | {"config": {
        "model": "m", "method": "bitfit", "task": "cola", "scale": "low"}}], "avx512")
    assert estimator.estimate(run("bitfit")).basis == "same method, 1 run(s)"
    assert estimator.estimate(run("ia3")) is None


def test_failed_runs_and_runs_without_epochs():
    failed = result("full", 60.0, 2, "avx512") | {"status": "failed"}
    no_epochs = result("full", 60.0, 2, "avx512") | {"epochs": None}
    estimate = Estimator([failed, no_epochs], "avx512").estimate(run("full"))
    assert (estimate.seconds, estimate.at_cap) == (80.0, None)  # the failed run does not count


def test_totals():
    estimates = [Estimator([result("full", 60.0, 2, "avx512")], "avx512").estimate(run("full"))] * 2
    assert total_text(estimates, 2) == "; estimated 2m40s (up to 10m40s if every run trains to its epoch cap)"
    assert total_text(estimates, 3) == ("; estimated 2m40s (up to 10m40s if every run trains to its epoch cap)"
                                         " for 2 of them (1 without an earlier run to judge from)")
    assert total_text([], 3) == "; no estimate"
