"""Helpers for the sweep tests: tiny sweeps, child processes that die at a chosen point, comparable results.

A kill point is ``(target, when, nth)``: the child process SIGKILLs itself ``when`` ("before" or "after")
the ``nth`` call of ``target`` ("module:attribute.path"), counted from the child's start. The sweep's
worker processes (isolation.py) carry the same kill point, counted from each worker's start, and a worker
that reaches it SIGKILLs the sweep process with itself: the whole sweep dies at that moment. Deterministic,
so a failure always reproduces.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from result_helpers import fake_ok_result

KillPoint = tuple[str, str, int]


def lock_holder(run_dir: Path) -> str | None:
    """``pid@host`` of the last process that took the run's lock (it may have finished since)."""
    from peftbench.running.sweep import LOCK_FILE

    try:
        return (Path(run_dir) / LOCK_FILE).read_text().strip() or None
    except OSError:
        return None


def tiny_overrides(results_dir: Path, *, models=("t5-tiny-random",), methods=("lora", "bitfit"), seeds=(0,),
                   epochs: int = 3, extra: tuple[str, ...] = ()) -> list[str]:
    """A sweep of tiny-model runs: 8 training examples in batches of 4, a few seconds per run on a CPU."""
    return [f"models=[{','.join(models)}]", f"methods=[{','.join(methods)}]", "tasks=[synthetic_classification]",
            "scales=[8]", f"seeds=[{','.join(str(s) for s in seeds)}]", f"output_dir={results_dir}",
            f"train.max_epochs={epochs}", "train.batch_size=4", "train.grad_accum=1", "train.patience=2",
            "train.eval_examples=8", "train.eval_batch_size=4", "train.val_metric_examples=2",
            "train.precision=fp32", "train.num_threads=1", "train.checkpoint_interval_s=0", *extra]


def install_kill(point: KillPoint, sweep_pid: int | None = None) -> None:
    """Wrap ``point``'s target so that this process (first the sweep process ``sweep_pid``, where given: a
    worker's parent may be the fork server) is SIGKILLed at that call."""
    target, when, nth = point
    module_name, _, attr_path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = attr_path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = 0

    def kill() -> None:
        if sweep_pid is not None:
            os.kill(sweep_pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == nth and when == "before":
            kill()
        value = original(*args, **kwargs)
        if calls == nth and when == "after":
            kill()
        return value

    setattr(owner, name, wrapper)



def note_environment(name: str, path: Path) -> None:
    """Append this process's value of ``name`` ("-" when unset) to ``path``: a worker's setup step."""
    with open(path, "a") as out:
        out.write(os.environ.get(name, "-") + "\n")


def run_child(overrides: list[str], point: KillPoint | None = None) -> None:
    """A child process's whole life: maybe arm a kill point, then run the sweep as `peftbench run` would."""
    from peftbench.config import load_sweep
    from peftbench.running.isolation import WORKER_SETUP
    from peftbench.running.sweep import run_sweep

    if point is not None:
        install_kill(point)
        WORKER_SETUP.append(functools.partial(install_kill, point, os.getpid()))
    run_sweep(load_sweep(None, overrides), progress=False)


# Fields that legitimately differ between two runs of the same config: clocks, memory, where it ran.
VOLATILE = ("time", "throughput.train_tokens_per_s", "throughput.mfu", "memory", "versions", "hardware",
            "resumed_from_epoch", "resumed_from_step", "adapter.path")


def comparable(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its volatile fields (and without each epoch's timings)."""
    kept = copy.deepcopy(result)
    for dotted in VOLATILE:
        *parents, leaf = dotted.split(".")
        node = kept
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    for epoch in kept.get("history", []):
        epoch.pop("seconds", None)
        epoch.pop("val_metric_s", None)
    return kept


def read_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """run id → result, for every result file under ``results_dir``."""
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(results_dir.glob("*/result.json"))}


# --- a stand-in for training, for tests of the sweep's bookkeeping alone --------------------------------

def fake_run_cell(run, run_dir, **_options) -> dict:
    """Sleeps instead of training; appends ``<run id> <pid>`` to $FAKE_LOG (O_APPEND: one line per call)."""
    log = os.environ.get("FAKE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{run.run_id()} {os.getpid()}\n")
    time.sleep(float(os.environ.get("FAKE_SECONDS", "0")))
    return fake_ok_result(run, score=0.5 + run.seed / 10)


def main() -> None:
    """``python sweep_helpers.py fake OVERRIDES...``: a sweep with fake training in this process (for
    concurrent sweeps; give ``isolate_runs=false``)."""
    import peftbench.recipe.train

    peftbench.recipe.train.run_cell = fake_run_cell
    from peftbench.config import load_sweep
    from peftbench.running.sweep import run_sweep

    outcome = run_sweep(load_sweep(None, sys.argv[2:]), progress=False)
    print(json.dumps({"ran": outcome.ran, "skipped": outcome.skipped, "locked": outcome.locked,
                      "failed": outcome.failed}))


if __name__ == "__main__":
    main()
