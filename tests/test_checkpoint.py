"""Checkpoint files: whole, readable back, written without needless copies, and in the background."""

from __future__ import annotations

import threading

import pytest
import torch

from peftbench.recipe import checkpoint
from peftbench.recipe.checkpoint import CHECKPOINT_DIR, BackgroundWriter, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.unit


def test_best_weights_equal_to_the_current_ones_are_a_hard_link(tmp_path):
    weights = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}
    save_checkpoint(tmp_path, weights, weights, {"epoch": 1}, best_is_trainable=True)
    folder = tmp_path / CHECKPOINT_DIR
    assert (folder / "best.safetensors").stat().st_ino == (folder / "trainable.safetensors").stat().st_ino
    current, best, state = load_checkpoint(tmp_path)
    assert state == {"epoch": 1}
    for loaded in (current, best):
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_other_best_weights_are_written_apart_and_shared_memory_is_saved(tmp_path):
    shared = torch.randn(3, 3)
    current = {"embed": shared, "head": shared}  # safetensors refuses tensors that share memory, unless copied
    best = {"embed": torch.zeros(3, 3), "head": torch.zeros(3, 3)}
    save_checkpoint(tmp_path, current, best, {"epoch": 2})
    folder = tmp_path / CHECKPOINT_DIR
    assert (folder / "best.safetensors").stat().st_ino != (folder / "trainable.safetensors").stat().st_ino
    loaded_current, loaded_best, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded_current["head"], shared) and torch.equal(loaded_best["embed"], torch.zeros(3, 3))
    assert torch.equal(current["embed"], shared)  # the live tensors are untouched


def _slow_save(monkeypatch, release: threading.Event, fail: bool = False) -> list[str]:
    """save_checkpoint that blocks until ``release`` is set (a slow disk), then writes or fails."""
    events, real = [], checkpoint.save_checkpoint

    def save(*args, **kwargs):
        release.wait(timeout=30)
        if fail:
            raise OSError("disk full")
        real(*args, **kwargs)
        events.append("written")
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    return events


def test_an_optimiser_step_waits_for_the_checkpoint_being_written(tmp_path, monkeypatch):
    release = threading.Event()
    events = _slow_save(monkeypatch, release)
    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    writer = BackgroundWriter()

    def before_step(*_) -> None:
        events.append("step")
        writer.wait()
    optimizer.register_step_pre_hook(before_step)
    with writer:
        writer.save(tmp_path, {"w": weight}, {"w": weight}, {"epoch": 1}, best_is_trainable=True)
        weight.grad = torch.ones(4)
        threading.Timer(0.2, release.set).start()  # the write is still in flight when the step comes
        optimizer.step()
        events.append("updated")
    assert events == ["step", "written", "updated"]
    assert torch.equal(load_checkpoint(tmp_path)[0]["w"], torch.ones(4))  # the weights before the update
    assert torch.equal(weight.detach(), torch.zeros(4))


def test_a_failed_write_is_raised_by_the_next_wait(tmp_path, monkeypatch):
    release = threading.Event()
    _slow_save(monkeypatch, release, fail=True)
    release.set()
    writer = BackgroundWriter()
    writer.save(tmp_path, {"w": torch.ones(2)}, {"w": torch.ones(2)}, {"epoch": 1})
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # raised once


def test_an_error_leaving_the_block_wins_over_a_failed_write(tmp_path, monkeypatch):
    release = threading.Event()
    _slow_save(monkeypatch, release, fail=True)
    release.set()
    with (pytest.raises(KeyError), pytest.warns(UserWarning, match="checkpoint write failed"),
          BackgroundWriter() as writer):
        writer.save(tmp_path, {"w": torch.ones(2)}, {"w": torch.ones(2)}, {"epoch": 1})
        raise KeyError("the training error")
