"""A sweep SIGKILLed at many points and re-run ends exactly as an uninterrupted sweep does.

Each kill is a separate process that SIGKILLs itself at a deterministic point (a call count of a function
on the write or training path, see ``sweep_helpers.install_kill``). The kills form a chain on one results
directory: each process starts from whatever the previous one left (a half-written result, a stale lock,
a checkpoint caught between its two renames, ...), and a last process runs the sweep to completion. Every
run must then be present exactly once, with results identical (all fields but clocks and memory) to a
sweep that was never interrupted, and nothing half-written may be left behind.

Processes are forked from a fork server that has imported torch but never computed with it, so each
starts in milliseconds and none inherits a used OpenMP thread pool.
"""

from __future__ import annotations

import multiprocessing
import signal
from pathlib import Path

import pytest
import sweep_helpers
from sweep_helpers import comparable, read_results, tiny_overrides

from peftbench.outcomes import REFERENCES_DIR

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Runs in sweep order: t5/lora, t5/bitfit, llama/lora, llama/bitfit; 3 epochs of 2 optimiser steps each.
T5_LORA, T5_BITFIT, LLAMA_LORA = "t5_tiny_random-lora", "t5_tiny_random-bitfit", "llama_tiny_random-lora"


def _dir(results_dir: Path, prefix: str) -> Path:
    (found,) = [p for p in results_dir.iterdir() if p.name.startswith(prefix)]
    return found


def _status(run_dir: Path) -> str | None:
    results = read_results(run_dir.parent)
    return results.get(run_dir.name, {}).get("status")


# (kill point, what the process must have left behind: proof that the kill hit the intended moment)
CHAIN = [
    (("peftbench.running.results:atomic_write_json", "before", 1),  # lock taken, nothing written
     lambda d: not (_dir(d, T5_LORA) / "config.json").exists()),
    (("os:replace", "before", 2),  # the "running" result written to its temporary file, not renamed
     lambda d: _status(_dir(d, T5_LORA)) is None and any(_dir(d, T5_LORA).glob(".result.json.*.tmp"))),
    (("peftbench.recipe.steps:collate", "before", 2),  # mid epoch 1, before any checkpoint
     lambda d: _status(_dir(d, T5_LORA)) == "running" and not (_dir(d, T5_LORA) / "checkpoint").exists()),
    (("peftbench.recipe.checkpoint:save_checkpoint", "after", 1),  # right after the epoch 1 checkpoint
     lambda d: (_dir(d, T5_LORA) / "checkpoint").is_dir()),
    (("peftbench.recipe.steps:collate", "before", 2),  # resumed at epoch 2, killed mid epoch 2
     lambda d: (_dir(d, T5_LORA) / "checkpoint").is_dir()),
    (("pathlib:Path.rename", "before", 2),  # epoch 2 checkpoint caught between its two renames
     lambda d: (_dir(d, T5_LORA) / ".checkpoint.old").is_dir() and not (_dir(d, T5_LORA) / "checkpoint").exists()),
    (("peftbench.recipe.checkpoint:save_checkpoint", "after", 1),  # resumed from .checkpoint.old, epoch 2 again
     lambda d: (_dir(d, T5_LORA) / "checkpoint").is_dir()),
    (("peftbench.recipe.train:_save_adapter", "after", 1),  # epoch 3 (no checkpoint: the last), tested, adapter saved
     lambda d: (_dir(d, T5_LORA) / "adapter").is_dir() and _status(_dir(d, T5_LORA)) == "running"),
    (("os:replace", "before", 5),  # the ok result in its temporary file, not renamed (3: the sample's
     # references, 4: the outcomes file)
     lambda d: _status(_dir(d, T5_LORA)) == "running" and any(_dir(d, T5_LORA).glob(".result.json.*.tmp"))),
    (("peftbench.recipe.checkpoint:remove_checkpoint", "before", 1),  # ok written, checkpoint not yet removed
     lambda d: _status(_dir(d, T5_LORA)) == "ok" and (_dir(d, T5_LORA) / "checkpoint").is_dir()),
    (("peftbench.running.sweep:execute_run", "before", 1),  # next run's lock held by a process that dies
     lambda d: (_dir(d, T5_BITFIT) / ".lock").exists() and _status(_dir(d, T5_BITFIT)) is None),
    # Mid epoch 3, after its first optimiser step: that step waited for the epoch 2 checkpoint, written in
    # the background (a kill while it is in flight would leave epoch 1's).
    (("peftbench.recipe.steps:collate", "before", 6),
     lambda d: _status(_dir(d, T5_BITFIT)) == "running"),
    (("peftbench.running.results:atomic_write_json", "after", 3),  # right after the ok result, lock still held
     lambda d: _status(_dir(d, T5_BITFIT)) == "ok"),
    (("peftbench.recipe.steps:collate", "before", 3),  # the causal model's run, mid epoch 2
     lambda d: _status(_dir(d, LLAMA_LORA)) == "running"),
    (("peftbench.running.sweep:run_if_pending", "after", 3),  # right after a run finished and unlocked
     lambda d: _status(_dir(d, LLAMA_LORA)) == "ok"),
]


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory):
    """A fork server with the training stack imported; children share a tokenisation cache of this module."""
    with pytest.MonkeyPatch.context() as patch:  # the fork server inherits the environment it starts with
        patch.setenv("PEFTBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["sweep_helpers", "peftbench.recipe.train", "peftbench.running.sweep",
                                        "peftbench.recipe.datacache"])
        yield context


def _child(context, overrides: list[str], point=None) -> int:
    process = context.Process(target=sweep_helpers.run_child, args=(overrides, point))
    process.start()
    process.join(timeout=300)
    return process.exitcode


def test_sigkilled_sweep_resumes_to_identical_results(forkserver, tmp_path):
    models = ("t5-tiny-random", "llama-tiny-random")
    reference_dir, chain_dir = tmp_path / "reference", tmp_path / "chain"
    assert _child(forkserver, tiny_overrides(reference_dir, models=models)) == 0
    reference = read_results(reference_dir)
    assert len(reference) == 4 and all(r["status"] == "ok" for r in reference.values())

    for step, (point, left_behind) in enumerate(CHAIN, start=1):
        code = _child(forkserver, tiny_overrides(chain_dir, models=models), point)
        assert code == -signal.SIGKILL, f"kill {step} {point} was never reached (exit code {code})"
        assert left_behind(chain_dir), f"kill {step} {point} left an unexpected state"
    assert _child(forkserver, tiny_overrides(chain_dir, models=models)) == 0

    final = read_results(chain_dir)
    assert sorted(final) == sorted(reference)  # every run exactly once, under the same id
    # and no stray directories: the run folders and the test samples' references (outcomes.REFERENCES_DIR)
    assert sorted(p.name for p in chain_dir.iterdir()) == sorted([*reference, REFERENCES_DIR])
    for run_id, result in final.items():
        assert comparable(result) == comparable(reference[run_id]), run_id
    leftovers = [p.name for p in chain_dir.rglob("*") if p.name.endswith(".tmp") or "checkpoint" in p.name]
    assert leftovers == []
    # The kills cost progress, never an epoch with a checkpoint: these runs continued from checkpoints. The
    # last epoch has none (its weights are tested at once), so a kill after it re-trains it.
    assert final[_dir(chain_dir, T5_LORA).name]["resumed_from_epoch"] == 2
    assert final[_dir(chain_dir, T5_BITFIT).name]["resumed_from_epoch"] == 2
