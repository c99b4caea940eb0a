"""Sweeps: expand the grid, skip what is done, run the rest, write one result file per run.

A run is done when ``<results_dir>/<run_id>/result.json`` says ``ok``. Failed and diverged runs are
re-run only with ``retry_failed``; unfinished ones (no result, ``running``, ``interrupted``, corrupt)
are always re-run, continuing from their last epoch checkpoint. An exclusive ``flock`` on a lock file per
run keeps two sweeps on one directory (or two Ray workers) from running the same run twice; the kernel
drops the lock when its process dies, even by SIGKILL, so a crashed sweep never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from peftbench.config import RunConfig, SweepConfig
from peftbench.errors import UserError
from peftbench.recipe import checkpoint
from peftbench.running import distributed, lr_search, results
from peftbench.running.progress import progress_bar, sweep_title

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"

# What happened to one run in this sweep (besides its result status).
SKIPPED, LOCKED = "skipped", "locked"


@dataclass
class SweepOutcome:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: str | None = None
    """Why the sweep stopped before its last run (``results.Unwritable``'s line), or None."""
    unrecorded: dict[str, str] = field(default_factory=dict)
    """run id → the one-line error of a run whose result could not be written."""

    def record(self, run_id: str, what: str) -> None:
        """File a run under ran (ok), skipped, locked, or failed (any other result status)."""
        {"ok": self.ran, SKIPPED: self.skipped, LOCKED: self.locked}.get(what, self.failed).append(run_id)

    def record_unwritable(self, run_id: str, exc: results.Unwritable) -> None:
        """The sweep stops: ``run_id`` ended but nothing about it could be written."""
        self.failed.append(run_id)
        self.unrecorded[run_id] = f"{exc}; its result is not recorded"
        self.stopped = (f"{exc}; the sweep stopped there. Once the folder takes writes again, run the same "
                        f"command: it resumes")


class StopFlag:
    """Set by SIGINT/SIGTERM: the current run stops at the next optimiser step and is marked interrupted."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self, *_args) -> None:
        self._event.set()


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, flag.set) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def should_run(status: str | None, retry_failed: bool) -> bool:
    if status == "ok":
        return False
    if status in ("failed", "diverged"):
        return retry_failed
    return True  # absent, running (a crashed process), interrupted, corrupt


@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """An exclusive lock on a run directory; yields False when another process (or thread) holds it.

    The lock file is never deleted: deleting a locked file lets a second process lock a new file of the
    same name while a third still waits on the old one. Its text (``pid@host``) only helps a person see who
    holds it; the lock itself is the kernel's (NFS clients map ``flock`` onto the server's locks).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def result_base(run: RunConfig) -> dict:
    """The fields every result of ``run`` starts with, whatever its status."""
    return {"schema_version": results.SCHEMA_VERSION, "run_id": run.run_id(), "config": run.to_dict(),
            "seed": run.seed}


def execute_run(run: RunConfig, results_dir: Path, *, progress: bool = True,
                stop_requested: Callable[[], bool] = lambda: False, device_map: str | None = None) -> dict:
    """Run one cell and write its result file (whatever happens); returns the result. Hold the run's lock.

    A write the results folder refuses (disk full, read-only) fails the run with a ``STORAGE_FAULT`` (its
    partial outputs removed, its checkpoint kept); when not even that failure can be written, raises
    ``results.Unwritable``.
    """
    from peftbench.recipe.train import Diverged, Interrupted, run_cell  # heavy imports only when running

    run_id = run.run_id()
    run_dir = Path(results_dir) / run_id
    base = result_base(run)
    writer = distributed.is_main_process()  # in a multi-process launch the other processes only train
    try:
        if writer:
            _remove_partial_writes(run_dir)
            results.atomic_write_json(run_dir / CONFIG_FILE, base["config"])
            results.atomic_write_json(results.result_path(results_dir, run_id),
                                      {**base, "status": "running", "error": None, "started_at": time.time()})
        search = lr_search.choose(run, Path(results_dir)) if run.lr_search else None  # the factor to train
        trained = lr_search.chosen_run(run, search) if search else run
        result = {**base, **run_cell(trained, run_dir, progress=progress, stop_requested=stop_requested,
                                     device_map=device_map), **({"lr_search": search} if search else {})}
    except Diverged as exc:
        result = {**base, "status": "diverged", "error": {"type": "Diverged", "message": str(exc), "step": exc.step}}
    except (Interrupted, KeyboardInterrupt) as exc:
        result = {**base, "status": "interrupted", "error": {"type": "Interrupted", "message": str(exc)}}
    except UserError as exc:
        result = {**base, "status": "failed", "error": {"type": "UserError", "message": str(exc)}}
    except Exception as exc:  # noqa: BLE001 - a sweep goes on; the error is kept in the result
        result = {**base, "status": "failed", "error": _error_of(exc, run_dir)}
    result = distributed.agree_outcome(result, base)  # a failure in any process fails the run in all
    if not writer:
        return result
    result = _write_result(results_dir, run_id, result)
    if result["status"] == "ok":
        # Only now: a crash before the result is durable resumes from the last epoch instead of epoch 0.
        # A failed run keeps its checkpoint, so that --retry-failed continues from its last epoch.
        checkpoint.remove_checkpoint(run_dir)
    return result


def _error_of(exc: Exception, run_dir: Path) -> dict:
    if results.is_storage_fault(exc, run_dir):
        _remove_partial_outputs(run_dir)
        return results.storage_error(exc, run_dir)
    return {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(limit=20)}


def _write_result(results_dir: Path, run_id: str, result: dict) -> dict:
    """Write the run's result; when the folder refuses it, the storage fault in its place (smaller, and with
    the partial outputs removed first, it may fit); when that fails too, ``results.Unwritable``."""
    path = results.result_path(results_dir, run_id)
    try:
        results.atomic_write_json(path, result)
        return result
    except OSError as exc:
        if not results.is_storage_fault(exc):
            raise
        _remove_partial_outputs(path.parent)
        result = {**result_base_of(result), "status": "failed", "error": results.storage_error(exc, path.parent)}
    results.write_or_raise(path, result)
    return result


def result_base_of(result: dict) -> dict:
    """The ``result_base`` fields of a result."""
    return {key: result[key] for key in ("schema_version", "run_id", "config", "seed")}


def _remove_partial_outputs(run_dir: Path) -> None:
    """What a run that could not write leaves half-written: its adapter folder and an unfinished checkpoint.
    Its last complete checkpoint stays, so the run resumes from it."""
    import shutil

    for partial in (run_dir / "adapter", run_dir / f".{checkpoint.CHECKPOINT_DIR}.tmp"):
        shutil.rmtree(partial, ignore_errors=True)


def _remove_partial_writes(run_dir: Path) -> None:
    """Temporary files of a killed writer (only the lock holder writes in a run directory)."""
    for leftover in run_dir.glob(f".{results.RESULT_FILE}.*.tmp"):
        leftover.unlink(missing_ok=True)
    for leftover in run_dir.glob(f".{CONFIG_FILE}.*.tmp"):
        leftover.unlink(missing_ok=True)


def run_if_pending(run: RunConfig, results_dir: Path, retry_failed: bool, *, progress: bool = True,
                   stop_requested: Callable[[], bool] = lambda: False, device_map: str | None = None,
                   isolate: bool = False, worker_timeout_s: float | None = None) -> str:
    """Run ``run`` unless it is done or another process holds it: its result status, SKIPPED or LOCKED.

    Every executor goes through here, so the skip rules and the lock are the same for all of them. In a
    multi-process launch the main process decides (and holds the lock) and tells the others. ``isolate``
    runs it in a worker process of its own (isolation.py) while this process holds the lock, stopped when it
    sends no heartbeat for ``worker_timeout_s``. Raises ``results.Unwritable`` when the results folder takes
    no writes at all.
    """
    def execute() -> str:
        if isolate:
            from peftbench.running.isolation import execute_in_worker

            return execute_in_worker(run, results_dir, progress=progress, stop_requested=stop_requested,
                                     device_map=device_map, timeout_s=worker_timeout_s)
        return execute_run(run, results_dir, progress=progress, stop_requested=stop_requested,
                           device_map=device_map)["status"]

    if not distributed.is_main_process():
        decision = distributed.share_decision(None)
        return execute() if decision == distributed.RUN else decision
    run_id = run.run_id()
    status = results.load_status(results_dir, run_id, warn=False)
    if not should_run(status, retry_failed):
        if status == "ok":
            _tidy_finished(Path(results_dir) / run_id)
        return distributed.share_decision(SKIPPED)
    try:
        with run_lock(Path(results_dir) / run_id) as acquired:
            if not acquired:
                return distributed.share_decision(LOCKED)
            # Re-check under the lock: another sweep may have finished it meanwhile.
            status = results.load_status(results_dir, run_id, warn=False)
            if not should_run(status, retry_failed):
                return distributed.share_decision(SKIPPED)
            if status == "corrupt":  # an earlier crash's half-written file: kept aside, the run runs again
                kept = results.set_aside_corrupt(results_dir, run_id)
                warnings.warn(f"{run_id}: corrupt result kept as {kept}; the run runs again", stacklevel=1)
            distributed.share_decision(distributed.RUN)
            return execute()
    except OSError as exc:  # the lock file or the corrupt result's rename: the folder takes no writes
        if not results.is_storage_fault(exc):
            raise
        raise results.Unwritable(results_dir, exc) from None


def _tidy_finished(run_dir: Path) -> None:
    """Remove the checkpoint a process killed right after writing an ok result left behind."""
    if not checkpoint.has_checkpoint_files(run_dir):
        return
    try:
        with run_lock(run_dir) as acquired:
            if acquired:
                checkpoint.remove_checkpoint(run_dir)
    except OSError:  # a read-only folder: the leftover checkpoint waits for a later sweep
        pass


def run_sweep(sweep: SweepConfig, *, progress: bool = True) -> SweepOutcome:
    """Run every pending cell of the grid one after another (the local executor): each in a worker process
    of its own (``isolate_runs``), or in this one; launched as several processes (``accelerate launch``,
    ``torchrun``), each run in-process and data parallel across them (distributed.py)."""
    distributed.check_launch(sweep)
    distributed.init()
    progress = progress and distributed.is_main_process()
    runs = sweep.expand()
    results_dir = sweep.results_dir
    check_results_dir(results_dir)
    outcome = SweepOutcome()
    flag = StopFlag()
    stop = distributed.agreed_stop(flag)  # several processes stop after the same step, or none does
    isolate = sweep.isolate_runs and distributed.launched_world_size() == 1
    with stop_on_signals(flag):
        bar = progress_bar(len(runs), sweep_title(sweep.name), "run", enabled=progress)
        for run in runs:
            if stop():  # a stop that came after the last run's final step: start nothing new
                break
            try:
                what = run_if_pending(run, results_dir, sweep.retry_failed, progress=progress,
                                      stop_requested=stop, device_map=sweep.device_map, isolate=isolate,
                                      worker_timeout_s=sweep.worker_timeout_s)
            except results.Unwritable as exc:  # not even a failure can be written: no later run could be
                outcome.record_unwritable(run.run_id(), exc)
                break
            outcome.record(run.run_id(), what)
            bar.set_postfix(last=f"{run.method}/{run.task} {what}")
            bar.update(1)
            if what == "interrupted" and not _stopped_as_hung(results_dir, run.run_id()):
                break
        bar.close()
    return outcome


def _stopped_as_hung(results_dir: Path, run_id: str) -> bool:
    """The run was interrupted because its worker sent no heartbeat (isolation.py), not by a stop request:
    the sweep goes on."""
    try:
        result = results.read_result(results.result_path(results_dir, run_id))
    except results.CorruptResult:
        return False
    return (result.get("error") or {}).get("type") == "NoHeartbeat"


def check_results_dir(results_dir: Path) -> None:
    if results_dir.exists() and not results_dir.is_dir():
        raise UserError(f"output_dir {results_dir} exists and is not a directory")
    results_dir.mkdir(parents=True, exist_ok=True)
