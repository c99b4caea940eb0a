"""The local executor's worker processes: each run of a sweep in a process of its own.

A process's peak resident memory only ever rises, so runs that share a process cannot each report their own
(``memory.py``). As PEFT's method comparison runs one process per experiment, the sweep process keeps the
loop, the progress bar, the skip rules and each run's lock, and starts one worker per run that runs
``sweep.execute_run`` (which writes the run's result files) and exits. Workers are spawned, fresh
interpreters: a forked copy of a process whose OpenMP thread pool has run can deadlock.

- A stop request (SIGINT/SIGTERM to the sweep) is passed on to the worker as SIGTERM: it stops after its
  current optimiser step, checkpoints and writes an interrupted result, as a run in the sweep process does.
  A Ctrl-C in a terminal reaches both processes; the worker stops once.
- A worker dies with the sweep process (Linux: ``PR_SET_PDEATHSIG``), so a killed sweep leaves no run
  training on whose lock the kernel has already dropped.
- A worker that ends without a final result (killed by the out-of-memory killer or a signal, crashed in
  native code) has one written for it: interrupted if the sweep was asked to stop, else failed
  (``WorkerDied``). Its checkpoint stays, so ``retry_failed`` continues from its last epoch.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from peftbench.config import RunConfig
from peftbench.running import results

WORKER_SETUP: list[Callable[[], object]] = []
"""Called first in every worker, in order: what a worker must redo that a new interpreter lacks (the CLI
quiets library chatter). Each must pickle by reference: a module-level function or a partial of one."""

POLL_S = 0.2
"""How often the sweep process checks for a stop request while a worker runs."""
STOP_GRACE_S = 120.0
"""How long a worker may take to checkpoint and stop when the sweep process leaves on an exception."""
_FINAL = ("ok", "failed", "diverged", "interrupted")
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def execute_in_worker(run: RunConfig, results_dir: Path, *, progress: bool, stop_requested: Callable[[], bool],
                      device_map: str | None) -> str:
    """Run ``run`` in a new worker process (the caller holds its lock); returns its result's status."""
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=worker_main, name=f"peftbench {run.run_id()}",
                             args=(run, str(results_dir), progress, device_map, os.getpid(), list(WORKER_SETUP)))
    worker.start()
    stop_sent = False
    try:
        while worker.exitcode is None:
            worker.join(POLL_S)
            if not stop_sent and worker.exitcode is None and stop_requested():
                os.kill(worker.pid, signal.SIGTERM)
                stop_sent = True
    finally:
        if worker.exitcode is None:  # this process is leaving on an exception: the run must not outlive its lock
            worker.terminate()  # SIGTERM: it checkpoints its current step and writes interrupted
            worker.join(STOP_GRACE_S)
            worker.kill()
            worker.join()
    return _final_status(run, Path(results_dir), worker.exitcode, stop_sent or stop_requested())


def worker_main(run: RunConfig, results_dir: str, progress: bool, device_map: str | None, parent_pid: int,
                setup: list[Callable[[], object]]) -> None:
    """A worker's whole life: tie it to the sweep process, set up, run the cell and write its result."""
    # Until the run's own handlers are in place, a terminal's Ctrl-C is left to the sweep process, which
    # passes the stop on as SIGTERM (no traceback from a half-started worker).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    for step in setup:
        step()
    from peftbench.recipe import memory
    from peftbench.running import sweep

    memory.dedicate_process_to_run()
    flag = sweep.StopFlag()
    with sweep.stop_on_signals(flag):
        sweep.execute_run(run, Path(results_dir), progress=progress, stop_requested=flag, device_map=device_map)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the sweep process died before the line above took effect
        os._exit(1)


def _final_status(run: RunConfig, results_dir: Path, exitcode: int, stopping: bool) -> str:
    """The status the worker wrote; when it wrote no final one, an interrupted or failed result written here."""
    from peftbench.running.sweep import result_base

    status = results.load_status(results_dir, run.run_id())
    if status in _FINAL:
        return status
    if stopping:
        error = {"type": "Interrupted", "message": f"stop requested; the worker {_how_it_ended(exitcode)}"}
        status = "interrupted"
    else:
        error = {"type": "WorkerDied", "message": f"the run's worker process {_how_it_ended(exitcode)}"}
        status = "failed"
    results.atomic_write_json(results.result_path(results_dir, run.run_id()),
                              {**result_base(run), "status": status, "error": error})
    return status


def _how_it_ended(exitcode: int) -> str:
    if exitcode >= 0:
        return f"exited with status {exitcode} before writing a result"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    cause = " (the kernel's out-of-memory killer sends it when memory runs out)" if -exitcode == signal.SIGKILL else ""
    return f"was killed by {name}{cause}"
