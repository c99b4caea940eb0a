"""The local executor's worker processes: each run of a sweep in a process of its own.

A process's peak resident memory only ever rises, so runs that share a process cannot each report their own
(``memory.py``). As PEFT's method comparison runs one process per experiment, the sweep process keeps the
loop, the progress bar, the skip rules and each run's lock, and starts one worker per run that runs
``sweep.execute_run`` (which writes the run's result files) and exits. A forked copy of a process whose
OpenMP thread pool has run can deadlock, so workers are forked from a fork server (``multiprocessing``'s
"forkserver"): a process that imported the training stack once (``PRELOAD``: torch, transformers, PEFT,
seconds of imports) and never computed with it, started with the sweep's first worker. Each worker then
starts in milliseconds, with the sweep process's current environment and working directory. Where there is
no fork server (Windows), workers are spawned, fresh interpreters.

- A stop request (SIGINT/SIGTERM to the sweep) is passed on to the worker as SIGTERM: it stops after its
  current optimiser step, checkpoints and writes an interrupted result, as a run in the sweep process does.
  A Ctrl-C in a terminal reaches both processes; the worker stops once.
- A worker dies with the sweep process (Linux: ``PR_SET_PDEATHSIG``), so a killed sweep leaves no run
  training on whose lock the kernel has already dropped.
- A worker that ends without a final result (killed by the out-of-memory killer or a signal, crashed in
  native code) has one written for it: interrupted if the sweep was asked to stop, else failed
  (``WorkerDied``, with its last measured peak memory and the machine's). Its checkpoint stays, so
  ``retry_failed`` continues from its last epoch.
- A worker sends a heartbeat once its imports are done, then once per optimiser step and per evaluation
  batch (the recipe's ``stop_requested`` and ``evaluate.BATCH_HOOKS``). One silent for
  ``worker_timeout_s`` is hung: sent SIGTERM (a slow step checkpoints and stops), then SIGKILL after the same
  time again at most; its run is interrupted (``NoHeartbeat``), its checkpoint kept, and the sweep goes on.
- What escapes a run in the worker (a result the results folder refused, a bug) reaches the sweep process
  through a pipe and is written as the run's error, without a traceback on the terminal.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
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
PRELOAD = ["peftbench.running.sweep", "peftbench.recipe.train"]
"""What the fork server imports before it forks a worker: everything a run imports at its start."""


def worker_context() -> multiprocessing.context.BaseContext:
    """The fork server's context where the platform has one (its preload list set), else spawn's."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # read when the server starts: with this process's first worker
    return context


def execute_in_worker(run: RunConfig, results_dir: Path, *, progress: bool, stop_requested: Callable[[], bool],
                      device_map: str | None, timeout_s: float | None = None) -> str:
    """Run ``run`` in a new worker process (the caller holds its lock); returns its result's status. Raises
    ``results.Unwritable`` when neither the worker nor this process could write it."""
    context = worker_context()
    # time.monotonic() of the worker's last heartbeat (CLOCK_MONOTONIC: one clock for all processes); 0 until
    # its first, once its imports are done (a loaded machine may take many seconds over them)
    heartbeat = context.Value("d", 0.0, lock=False)
    last_words, sender = context.Pipe(duplex=False)
    worker = context.Process(target=worker_main, name=f"peftbench {run.run_id()}",
                             args=(run, str(results_dir), progress, device_map, os.getpid(), list(WORKER_SETUP),
                                   heartbeat, sender, dict(os.environ)))
    worker.start()
    sender.close()
    watch = _Watch(worker, heartbeat, timeout_s)
    try:
        while worker.exitcode is None:
            worker.join(POLL_S)
            if worker.exitcode is None:
                watch.check(stop_requested)
    finally:
        if worker.exitcode is None:  # this process is leaving on an exception: the run must not outlive its lock
            worker.terminate()  # SIGTERM: it checkpoints its current step and writes interrupted
            worker.join(STOP_GRACE_S)
            worker.kill()
            worker.join()
    words = _last_words(last_words)
    return _final_status(run, Path(results_dir), _Ending(worker.exitcode, watch.stop_sent or stop_requested(),
                                                         watch.hung_after_s, watch.peak_bytes, words))


class _Watch:
    """What the sweep process watches in a running worker: stop requests, its heartbeat and its memory."""

    def __init__(self, worker, heartbeat, timeout_s: float | None) -> None:
        self.worker, self.heartbeat, self.timeout_s = worker, heartbeat, timeout_s
        self.stop_sent = False
        self.hung_after_s: float | None = None  # seconds without a heartbeat when it was stopped as hung
        self.hung_at = 0.0
        self.peak_bytes: int | None = None  # the worker's peak resident memory, as last read

    def check(self, stop_requested: Callable[[], bool]) -> None:
        # The worker resets its peak at each phase (memory.PhasePeaks): the highest read so far is its peak.
        self.peak_bytes = max(_peak_rss(self.worker.pid) or 0, self.peak_bytes or 0) or None
        now = time.monotonic()
        if not self.stop_sent and stop_requested():
            os.kill(self.worker.pid, signal.SIGTERM)
            self.stop_sent = True
        elif (self.hung_after_s is None and self.timeout_s and self.heartbeat.value
              and now - self.heartbeat.value > self.timeout_s):
            self.hung_after_s, self.hung_at = now - self.heartbeat.value, now
            os.kill(self.worker.pid, signal.SIGTERM)  # a slow step still checkpoints; a hung one will not answer
        if self.hung_after_s is not None and now - self.hung_at > min(STOP_GRACE_S, self.timeout_s):
            self.worker.kill()


def worker_main(run: RunConfig, results_dir: str, progress: bool, device_map: str | None, parent_pid: int,
                setup: list[Callable[[], object]], heartbeat=None, last_words=None,
                environ: dict[str, str] | None = None) -> None:
    """A worker's whole life: tie it to the sweep process, take its environment (a fork server's is the one
    it started with), set up, run the cell and write its result. What escapes the run (a result it could not
    write, a bug) goes to the sweep process as an ``error``."""
    # Until the run's own handlers are in place, a terminal's Ctrl-C is left to the sweep process, which
    # passes the stop on as SIGTERM (no traceback from a half-started worker).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    try:
        for step in setup:
            step()
        from peftbench.recipe import evaluate, memory
        from peftbench.running import sweep

        memory.dedicate_process_to_run("spawn" if os.getppid() == parent_pid else "forkserver")
        flag = sweep.StopFlag()

        def beat() -> None:
            if heartbeat is not None:
                heartbeat.value = time.monotonic()

        def stop_requested() -> bool:  # the recipe asks once per optimiser step: a heartbeat too
            beat()
            return flag()

        evaluate.BATCH_HOOKS.append(beat)
        beat()  # the imports are done: the run's own time starts here
        with sweep.stop_on_signals(flag):
            sweep.execute_run(run, Path(results_dir), progress=progress, stop_requested=stop_requested,
                              device_map=device_map)
    except results.Unwritable as exc:  # the sweep process tries to write it
        _say(last_words, results.storage_error(exc.cause, Path(results_dir) / run.run_id()))
    except Exception as exc:  # noqa: BLE001 - the sweep process records it; a traceback here helps no one
        _say(last_words, {"type": type(exc).__name__, "message": str(exc),
                          "traceback": traceback.format_exc(limit=20)})
        sys.exit(1)


def _last_words(receiver) -> dict | None:
    """What the worker said before it exited (``_say``), or None."""
    try:
        return receiver.recv() if receiver.poll() else None
    except (EOFError, OSError):  # it exited without a word
        return None
    finally:
        receiver.close()


def _say(last_words, error: dict) -> None:
    if last_words is not None:
        last_words.send(error)
        last_words.close()


def _die_with_parent(parent_pid: int) -> None:
    """Die with the process that forked this one: the sweep process, or its fork server, which exits as soon
    as the sweep process is gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    orphaned = os.getppid() == 1 and parent_pid != 1  # the fork server died before the line above took effect
    if orphaned or not _alive(parent_pid):  # ... or the sweep process did
        os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:  # gone (or its number taken by another user's process)
        return False
    return True


@dataclass
class _Ending:
    """How a worker ended, as the sweep process saw it."""

    exitcode: int
    stopping: bool  # the sweep was asked to stop
    hung_after_s: float | None  # stopped for want of a heartbeat after this many seconds
    peak_bytes: int | None  # its peak resident memory, as last read
    error: dict | None  # what it said before it exited without a result


def _final_status(run: RunConfig, results_dir: Path, ending: _Ending) -> str:
    """The status the worker wrote; when it wrote no final one, an interrupted or failed result written here
    (``results.Unwritable`` when that fails too). A hung worker's run is interrupted, whatever it wrote."""
    from peftbench.running.sweep import result_base

    status = results.load_status(results_dir, run.run_id(), warn=False)
    status = "failed" if status == results.UNSAVED else status
    if ending.hung_after_s is not None and status in (None, "running", "interrupted", "corrupt"):
        status, error = "interrupted", {"type": "NoHeartbeat", "message": (
            f"no heartbeat from the run's worker for {ending.hung_after_s:.0f} s (worker_timeout_s): stopped, "
            f"its last checkpoint kept; the next sweep resumes it")}
    elif status in _FINAL:
        return status
    elif ending.stopping:
        status, error = "interrupted", {"type": "Interrupted",
                                        "message": f"stop requested; the worker {_how_it_ended(ending)}"}
    elif ending.error is not None:
        status, error = "failed", ending.error
    else:
        status, error = "failed", {"type": "WorkerDied", "message": f"the run's worker process {_how_it_ended(ending)}"}
    results.write_or_raise(results.result_path(results_dir, run.run_id()),
                           {**result_base(run), "status": status, "error": error})
    return status


def _how_it_ended(ending: _Ending) -> str:
    exitcode = ending.exitcode
    if exitcode >= 0:
        return f"exited with status {exitcode} before writing a result"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    if -exitcode != signal.SIGKILL:
        return f"was killed by {name}"
    return (f"was killed by {name} (the kernel's out-of-memory killer sends it when memory runs out; "
            f"{_memory_text(ending.peak_bytes)})")


def _memory_text(peak_bytes: int | None) -> str:
    """The worker's last measured peak and the machine's memory, in MiB."""
    total = _machine_bytes()
    peak = f"its peak memory was {peak_bytes / 2**20:,.0f} MiB" if peak_bytes else "its memory was not measured"
    return f"{peak} of the machine's {total / 2**20:,.0f} MiB" if total else peak


def _peak_rss(pid: int) -> int | None:
    """A process's peak resident memory (bytes, ``VmHWM``), or None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _machine_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
