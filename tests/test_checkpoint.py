"""Checkpoint files: whole, readable back, and written without needless copies."""

from __future__ import annotations

import torch

from peftbench.checkpoint import CHECKPOINT_DIR, load_checkpoint, save_checkpoint


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
