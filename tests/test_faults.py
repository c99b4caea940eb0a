"""Faults during training lose nothing: a NaN loss, CUDA out of memory, SIGTERM.

The faults are injected into the tiny T5 model's forward pass (wrapped when the recipe loads the model),
so the recipe, the sweep and the result files run exactly as in a real run.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from peftbench.cli import main
from peftbench.config import SweepConfig, TrainConfig
from peftbench.recipe import batching, checkpoint, train
from peftbench.running import results
from peftbench.running.sweep import execute_run, run_sweep

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


def tiny_sweep(tmp_path: Path, seeds=(0,), **train_options) -> SweepConfig:
    """16 synthetic examples in batches of 4 with accumulation 2: 2 optimiser steps per epoch."""
    options = dict(batch_size=4, grad_accum=2, max_epochs=1, patience=5, eval_examples=8, eval_batch_size=4,
                   val_metric_examples=0, precision="fp32", num_threads=1, checkpoint_every_epoch=False,
                   checkpoint_interval_s=0)
    options.update(train_options)
    return SweepConfig(name="faults", models=["t5-tiny-random"], methods=["lora"],
                       tasks=["synthetic_classification"], scales=[16], seeds=list(seeds),
                       output_dir=str(tmp_path / "results"), train=TrainConfig(**options),
                       isolate_runs=False)  # the faults are injected into this process


def wrap_training_forward(monkeypatch, fault, runs: int = 1) -> list[int]:
    """Wrap the forward of the model of the first ``runs`` runs: ``fault(call, batch_rows, output_fn)`` sees
    every training-mode call (1-based) and returns the output. Returns the rows of every training call."""
    real_load = train.load_model
    loads, rows = [], []
    monkeypatch.setattr(batching, "FUSE_MAX_TOKENS", 0)  # one forward pass per micro-batch, as counted here

    def load_model(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loads.append(loaded)
        if len(loads) <= runs:
            model, forward, calls = loaded.model, loaded.model.forward, [0]

            def faulty_forward(*args, **kwargs):
                if not model.training:
                    return forward(*args, **kwargs)
                calls[0] += 1
                rows.append(int(kwargs["input_ids"].shape[0]))
                return fault(calls[0], rows[-1], lambda: forward(*args, **kwargs))

            model.forward = faulty_forward
        return loaded

    monkeypatch.setattr(train, "load_model", load_model)
    return rows


# --- a non-finite loss -------------------------------------------------------------------------------

def test_nan_loss_marks_the_run_diverged_and_the_sweep_goes_on(tmp_path, monkeypatch):
    def nan_at_call_6(call, _rows, output):
        out = output()
        if call == 6:  # epoch 2, first micro-batch of optimiser step 3
            out.logits = out.logits * float("nan")  # the training loss is computed from the logits (loss.py)
        return out

    wrap_training_forward(monkeypatch, nan_at_call_6, runs=1)
    sweep = tiny_sweep(tmp_path, seeds=(0, 1), max_epochs=2, checkpoint_every_epoch=True)
    diverged_run, ok_run = sweep.expand()
    outcome = run_sweep(sweep, progress=False)

    assert outcome.failed == [diverged_run.run_id()] and outcome.ran == [ok_run.run_id()]
    results_dir = sweep.results_dir
    diverged = results.read_result(results.result_path(results_dir, diverged_run.run_id()))
    assert diverged["status"] == "diverged"
    assert diverged["error"]["step"] == 3
    assert diverged["error"]["message"] == "non-finite training loss nan at optimiser step 3"
    assert results.read_result(results.result_path(results_dir, ok_run.run_id()))["status"] == "ok"
    # Nothing broken is saved: no adapter, and the checkpoint left is epoch 1's, finite throughout.
    run_dir = results_dir / diverged_run.run_id()
    assert not (run_dir / "adapter").exists()
    current, best, state = checkpoint.load_checkpoint(run_dir)
    assert state["epoch"] == 1 and state["step"] == 2
    assert all(torch.isfinite(t).all() for t in [*current.values(), *best.values()])
    assert all(math.isfinite(e["train_loss"]) for e in state["history"])


# --- CUDA out of memory --------------------------------------------------------------------------------

def oom_above(max_rows: int):
    """A device that holds at most ``max_rows`` examples per forward pass."""
    def fault(_call, rows, output):
        if rows > max_rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return output()
    return fault


def test_oom_on_the_first_step_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path, monkeypatch):
    rows = wrap_training_forward(monkeypatch, oom_above(2))
    sweep = tiny_sweep(tmp_path)
    (run,) = sweep.expand()
    result = execute_run(run, sweep.results_dir, progress=False)

    assert result["status"] == "ok"
    assert result["batch"] == {"micro_batch_size": 2, "grad_accum": 4, "effective_batch_size": 8,
                               "oom_retries": 1, "max_tokens_per_pass": 2048}
    # The first forward pass (4 rows) runs out of memory; every later one holds 2: 2 steps × 4 micro-batches.
    assert rows == [4] + [2] * 8
    assert result["optimizer"]["steps_done"] == 2  # 16 examples / effective batch 8: unchanged by the fallback


def test_oom_beyond_the_retry_limit_fails_the_run_with_a_clear_message(tmp_path, monkeypatch):
    wrap_training_forward(monkeypatch, oom_above(0))
    sweep = tiny_sweep(tmp_path, max_oom_retries=1)
    (run,) = sweep.expand()
    result = execute_run(run, sweep.results_dir, progress=False)

    assert result["status"] == "failed"
    assert result["error"]["type"] == "OutOfMemory"
    assert result["error"]["message"] == (
        "CUDA out of memory at micro-batch 2 × accumulation 4 after 1 halving(s) (train.max_oom_retries=1); "
        "lower train.batch_size or train.max_source_tokens")


# --- SIGTERM -------------------------------------------------------------------------------------------

SIGTERM_RUN = ["run", "models=[t5-tiny-random]", "methods=[lora]", "tasks=[synthetic_classification]",
               "scales=[32]", "train.batch_size=4", "train.grad_accum=1", "train.max_epochs=3", "train.patience=5",
               "train.eval_examples=8", "train.eval_batch_size=4", "train.val_metric_examples=0",
               "train.precision=fp32", "train.num_threads=1", "train.save_adapter=false",
               "train.checkpoint_every_epoch=true", "train.checkpoint_interval_s=0"]


def wait_for_file(pattern: str, results_dir: Path, process: subprocess.Popen, timeout_s: float = 120) -> Path:
    deadline = time.monotonic() + timeout_s
    while not list(results_dir.glob(pattern)):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    return next(results_dir.glob(pattern))


@pytest.mark.slow
def test_sigterm_marks_the_run_interrupted_and_the_rerun_resumes(tmp_path, capsys):
    results_dir = tmp_path / "results"
    argv = [*SIGTERM_RUN, f"output_dir={results_dir}", "-q"]
    env = {**os.environ, "PEFTBENCH_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *argv], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Epoch 1's checkpoint: the cell is training epoch 2 of 3 (16 more optimiser steps) when the signal comes.
    result_file = wait_for_file("*/checkpoint/state.pt", results_dir, process).parent.parent / "result.json"
    process.send_signal(signal.SIGTERM)  # it stops after its current optimiser step
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 1, stderr  # a run that is not ok
    assert "Traceback" not in stderr
    interrupted = results.read_result(result_file)
    assert interrupted["status"] == "interrupted"
    assert interrupted["error"]["type"] == "Interrupted"
    saved = checkpoint.load_checkpoint(result_file.parent)
    assert saved is not None  # a checkpoint to resume from, at an optimiser step boundary
    _, _, state = saved
    assert state["epoch"] >= 1 and 8 < state["step"] < 24  # stopped mid-training, after epoch 1
    assert state["batches_done"] == state["step"] - 8 * state["epoch"]  # steps of the unfinished epoch

    capsys.readouterr()
    assert main(argv) == 0  # the same command again: the run resumes and finishes
    resumed = results.read_result(result_file)
    assert resumed["status"] == "ok"
    assert resumed["resumed_from_epoch"] == state["epoch"]
    assert resumed["optimizer"]["steps_done"] == 24 and resumed["epochs"] == 3
    assert checkpoint.load_checkpoint(result_file.parent) is None  # removed once the result is written
