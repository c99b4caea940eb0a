"""Sweeps: expand the grid, skip what is done, run the rest, write one result file per run.

A run is done when ``<results_dir>/<run_id>/result.json`` says ``ok``. Failed and diverged runs are
re-run only with ``retry_failed``; unfinished ones (no result, ``running``, ``interrupted``, corrupt)
are always re-run, continuing from their last epoch checkpoint. A lock file per run keeps two sweeps on
one directory from running the same run twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from peftbench import results
from peftbench.config import RunConfig, SweepConfig
from peftbench.errors import UserError

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"


@dataclass
class SweepOutcome:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


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
    """An exclusive lock on a run directory; yields False when another live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    acquired = _try_lock(lock)
    try:
        yield acquired
    finally:
        if acquired:
            lock.unlink(missing_ok=True)


def _try_lock(lock: Path) -> bool:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _holder_alive(lock):
                return False
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}@{os.uname().nodename}\n")
        return True
    return False


def _holder_alive(lock: Path) -> bool:
    try:
        pid_text, _, host = lock.read_text().strip().partition("@")
        pid = int(pid_text)
    except (OSError, ValueError):
        return False  # a lock being written or unreadable: treat as stale on the second look
    if host and host != os.uname().nodename:
        return True  # another machine's process: cannot check, respect it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def execute_run(run: RunConfig, results_dir: Path, *, progress: bool = True,
                stop_requested: Callable[[], bool] = lambda: False) -> dict:
    """Run one cell and write its result file (whatever happens); returns the result."""
    from peftbench.train import Diverged, Interrupted, run_cell  # heavy imports only when running

    run_id = run.run_id()
    run_dir = Path(results_dir) / run_id
    base = {"schema_version": results.SCHEMA_VERSION, "run_id": run_id, "config": run.to_dict(),
            "seed": run.seed}
    results.atomic_write_json(run_dir / CONFIG_FILE, base["config"])
    results.atomic_write_json(results.result_path(results_dir, run_id),
                              {**base, "status": "running", "error": None, "started_at": time.time()})
    try:
        result = {**base, **run_cell(run, run_dir, progress=progress, stop_requested=stop_requested)}
    except Diverged as exc:
        result = {**base, "status": "diverged", "error": {"type": "Diverged", "message": str(exc), "step": exc.step}}
    except (Interrupted, KeyboardInterrupt) as exc:
        result = {**base, "status": "interrupted", "error": {"type": "Interrupted", "message": str(exc)}}
    except UserError as exc:
        result = {**base, "status": "failed", "error": {"type": "UserError", "message": str(exc)}}
    except Exception as exc:  # noqa: BLE001 - a sweep goes on; the error is kept in the result
        result = {**base, "status": "failed", "error": {
            "type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc(limit=20)}}
    results.atomic_write_json(results.result_path(results_dir, run_id), result)
    return result


def run_sweep(sweep: SweepConfig, *, progress: bool = True) -> SweepOutcome:
    """Run every pending cell of the grid in this process (the local executor)."""
    runs = sweep.expand()
    results_dir = sweep.results_dir
    _check_results_dir(results_dir)
    outcome = SweepOutcome()
    flag = StopFlag()
    with stop_on_signals(flag):
        for run in tqdm(runs, desc=f"sweep {sweep.name}", unit="run", disable=not progress):
            run_id = run.run_id()
            if not should_run(results.load_status(results_dir, run_id), sweep.retry_failed):
                outcome.skipped.append(run_id)
                continue
            with run_lock(results_dir / run_id) as acquired:
                if not acquired:
                    outcome.locked.append(run_id)
                    continue
                # Re-check under the lock: another sweep may have finished it meanwhile.
                if not should_run(results.load_status(results_dir, run_id), sweep.retry_failed):
                    outcome.skipped.append(run_id)
                    continue
                result = execute_run(run, results_dir, progress=progress, stop_requested=flag)
            (outcome.ran if result["status"] == "ok" else outcome.failed).append(run_id)
            if result["status"] == "interrupted":
                break
    return outcome


def _check_results_dir(results_dir: Path) -> None:
    if results_dir.exists() and not results_dir.is_dir():
        raise UserError(f"output_dir {results_dir} exists and is not a directory")
    results_dir.mkdir(parents=True, exist_ok=True)
