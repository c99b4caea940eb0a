"""A run stopped after epoch k and resumed from its checkpoint ends bit-identical to one never stopped (CPU)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from sweep_helpers import comparable, tiny_overrides

from peftbench.catalog import models
from peftbench.config import load_sweep
from peftbench.recipe import run_state
from peftbench.recipe.checkpoint import load_checkpoint
from peftbench.recipe.train import Interrupted, run_cell

pytestmark = pytest.mark.integration


class Crash(RuntimeError):
    """Stands for a process dying mid-epoch: nothing after the last epoch checkpoint survives."""


def _run(model: str, method: str, results_dir, seed: int = 0, extra: tuple[str, ...] = ()):
    sweep = load_sweep(None, tiny_overrides(results_dir, models=(model,), methods=(method,), seeds=(seed,),
                                            epochs=4, extra=extra))
    (run,) = sweep.expand()
    return run, results_dir / run.run_id()


def _stop_at_step(step: int, error: type[Exception]):
    """A stop_requested callback (called after every optimiser step) that raises at the given step."""
    calls = 0

    def stop_requested() -> bool:
        nonlocal calls
        calls += 1
        if calls == step:
            raise error(f"stopped at optimiser step {step}")
        return False
    return stop_requested


def _adapter(run_dir) -> dict[str, torch.Tensor]:
    return load_file(next((run_dir / "adapter").glob("*.safetensors")))


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(("model", "method"), [("t5-tiny-random", "lora"), ("llama-tiny-random", "bitfit")])
def test_resume_from_an_epoch_checkpoint_is_bit_identical(tmp_path, model, method):
    run, straight_dir = _run(model, method, tmp_path / "straight")
    straight = run_cell(run, straight_dir, progress=False)
    assert straight["epochs"] == 4 and straight["resumed_from_epoch"] is None
    assert load_checkpoint(straight_dir)[2]["epoch"] == 3  # none after the last epoch: it is tested at once

    _, resumed_dir = _run(model, method, tmp_path / "resumed")
    # 2 optimiser steps per epoch: step 5 is the first of epoch 3, after the epoch 2 checkpoint.
    with pytest.raises(Crash):
        run_cell(run, resumed_dir, progress=False, stop_requested=_stop_at_step(5, Crash))
    assert load_checkpoint(resumed_dir)[2]["epoch"] == 2
    resumed = run_cell(run, resumed_dir, progress=False)

    assert resumed["resumed_from_epoch"] == 2
    assert [e["train_loss"] for e in resumed["history"]] == [e["train_loss"] for e in straight["history"]]
    assert [e["val_loss"] for e in resumed["history"]] == [e["val_loss"] for e in straight["history"]]
    assert comparable(resumed) == comparable(straight)  # metrics, steps, lr, tokens, early stopping
    for name, weight in _adapter(straight_dir).items():
        assert torch.equal(weight, _adapter(resumed_dir)[name]), name


@pytest.mark.parametrize(("interval_s", "checkpointed_epochs"), [(0, [1, 2, 3]), (3600, [])])
def test_epoch_checkpoints_wait_for_the_checkpoint_interval(tmp_path, monkeypatch, interval_s, checkpointed_epochs):
    saved = []
    real_save = run_state.save_run

    def recording_save(writer, run_dir, trainable, best, optimizer, scheduler, state, scaler=None):
        real_save(writer, run_dir, trainable, best, optimizer, scheduler, state, scaler)
        saved.append((state.epoch, state.checkpointed_s, state.train_seconds))

    monkeypatch.setattr(run_state, "save_run", recording_save)
    run, run_dir = _run("t5-tiny-random", "lora", tmp_path, extra=(f"train.checkpoint_interval_s={interval_s}",))
    result = run_cell(run, run_dir, progress=False)
    assert result["epochs"] == 4
    assert [epoch for epoch, _, _ in saved] == checkpointed_epochs
    assert all(at == seconds for _, at, seconds in saved)  # the interval counts from each checkpoint taken
    loaded = load_checkpoint(run_dir)
    assert (loaded is None) == (not checkpointed_epochs)
    if loaded is not None:  # a resumed run counts the interval from the checkpoint it resumes
        assert loaded[2]["checkpointed_s"] == loaded[2]["train_seconds"]


def test_resume_after_a_stop_mid_epoch_is_bit_identical(tmp_path):
    run, straight_dir = _run("t5-tiny-random", "lora", tmp_path / "straight")
    straight = run_cell(run, straight_dir, progress=False)
    _, resumed_dir = _run("t5-tiny-random", "lora", tmp_path / "resumed")
    with pytest.raises(Interrupted):  # SIGINT/SIGTERM: a checkpoint of this very step is written
        run_cell(run, resumed_dir, progress=False, stop_requested=_stop_at_step(3, Interrupted))
    assert load_checkpoint(resumed_dir)[2]["step"] == 3
    resumed = run_cell(run, resumed_dir, progress=False)
    assert comparable(resumed) == comparable(straight)


def test_a_run_does_not_depend_on_what_ran_before_it_in_the_process(tmp_path):
    """Seed 1 after a fresh model load (which draws random numbers) equals seed 1 from the cached model."""
    models._load_pristine.cache_clear()
    run, first_dir = _run("t5-tiny-random", "lora", tmp_path / "first", seed=1)
    first = run_cell(run, first_dir, progress=False)
    _, again_dir = _run("t5-tiny-random", "lora", tmp_path / "again", seed=1)
    again = run_cell(run, again_dir, progress=False)
    assert comparable(again) == comparable(first)
