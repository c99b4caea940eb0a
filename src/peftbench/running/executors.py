"""The Ray executor: each pending run of a sweep is one Ray task with its own CPU/GPU request.

Every task goes through ``sweep.run_if_pending``, so the rules of the local executor hold unchanged: the
run's lock is taken in the worker, the result is written atomically into the same results directory
(which must be on a filesystem every node mounts at the same path, e.g. NFS), and a run already done or
held elsewhere is left alone. When a worker process or its node is lost, Ray starts the task again (up to
``max_retries`` times); the kernel has dropped the dead worker's lock and the run resumes from its last
epoch checkpoint. A run whose workers keep dying is written as failed (``WorkerLost``).

Ray is optional: ``pip install 'peftbench[ray]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peftbench.config import RunConfig, SweepConfig
from peftbench.errors import UserError
from peftbench.recipe import memory
from peftbench.running import results
from peftbench.running.progress import progress_bar, sweep_title
from peftbench.running.sweep import (
    SKIPPED,
    SweepOutcome,
    check_results_dir,
    result_base,
    run_if_pending,
    run_lock,
    should_run,
)

# Environment variables a worker needs as the driver has them (offline mode, caches, tokens stay unset).
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
                  "PEFTBENCH_CACHE", "TOKENIZERS_PARALLELISM")


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("executor=ray needs Ray: pip install 'peftbench[ray]'") from None
    return ray


def run_sweep_ray(sweep: SweepConfig, *, progress: bool = True) -> SweepOutcome:
    """Run every pending cell of the grid as Ray tasks; returns when all of them have ended."""
    ray = import_ray()
    results_dir = sweep.results_dir.resolve()  # workers may start in another directory
    check_results_dir(results_dir)
    outcome = SweepOutcome()
    pending: list[RunConfig] = []
    for run in sweep.expand():
        if should_run(results.load_status(results_dir, run.run_id()), sweep.retry_failed):
            pending.append(run)
        else:
            outcome.record(run.run_id(), SKIPPED)
    if not pending:
        return outcome
    started_here = not ray.is_initialized()
    if started_here:
        joining = sweep.ray_address or os.environ.get("RAY_ADDRESS")
        # A local instance is this sweep's alone: no dashboard. Worker logs stay in Ray's log files either
        # way; what a run has to say is in its result.
        options = {} if joining else {"include_dashboard": False}
        ray.init(address=sweep.ray_address, log_to_driver=False, **options)
    try:
        _run_tasks(ray, sweep, pending, results_dir, outcome, progress)
    finally:
        if started_here:
            ray.shutdown()
    return outcome


def gpus_per_run(ray, sweep: SweepConfig) -> float:
    """The configured GPUs per run, or 1 when the cluster has GPUs and 0 when it has none."""
    available = ray.cluster_resources().get("GPU", 0)
    wanted = sweep.ray_num_gpus_per_run if sweep.ray_num_gpus_per_run is not None else (1 if available else 0)
    if wanted > available:
        raise UserError(f"ray_num_gpus_per_run={wanted} but the Ray cluster has {available:g} GPU(s): "
                        f"no run could ever be scheduled")
    return wanted


def _run_tasks(ray, sweep: SweepConfig, pending: list[RunConfig], results_dir: Path, outcome: SweepOutcome,
               progress: bool) -> None:
    cpus = sweep.ray_num_cpus_per_run
    if cpus > ray.cluster_resources().get("CPU", 0):
        raise UserError(f"ray_num_cpus_per_run={cpus:g} is more than the Ray cluster's "
                        f"{ray.cluster_resources().get('CPU', 0):g} CPUs")
    # max_calls=1: each run gets a fresh worker process, so its peak memory is its own (memory.py), as in
    # the local executor; on GPUs also its own GPU memory and CUDA device.
    task = ray.remote(max_calls=1)(execute_in_worker).options(
        num_cpus=cpus, num_gpus=gpus_per_run(ray, sweep), max_retries=sweep.max_retries, retry_exceptions=False)
    env = {name: os.environ[name] for name in _FORWARDED_ENV if name in os.environ}
    refs = {task.remote(run, str(results_dir), sweep.retry_failed, sweep.device_map, env): run for run in pending}
    bar = progress_bar(len(refs), f"{sweep_title(sweep.name)} (ray)", "run", enabled=progress)
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                run = refs.pop(ref)
                outcome.record(run.run_id(), _task_outcome(ray, ref, run, results_dir))
                bar.update(1)
    except KeyboardInterrupt:
        for ref in refs:  # the cancelled runs stay resumable: "running" results and their checkpoints
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()


def execute_in_worker(run: RunConfig, results_dir: str, retry_failed: bool, device_map: str | None,
                      env: dict[str, str]) -> str:
    """The Ray task: run ``run`` under its lock, exactly as the local executor does; returns what happened."""
    os.environ.update(env)
    memory.dedicate_process_to_run()  # max_calls=1: this worker runs this task alone
    status = run_if_pending(run, Path(results_dir), retry_failed, progress=False, device_map=device_map)
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    return status


def _task_outcome(ray, ref, run: RunConfig, results_dir: Path) -> str:
    """The task's return value; when Ray gave up on it, a failed result written here (if none is final)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        error = {"type": "WorkerLost" if _worker_lost(ray, exc) else type(exc).__name__,
                 "message": str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else ""}
        _write_failure(run, results_dir, error)
        return "failed"


def _worker_lost(ray, exc: Exception) -> bool:
    lost = tuple(getattr(ray.exceptions, name) for name in
                 ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError")
                 if hasattr(ray.exceptions, name))
    return isinstance(exc, lost)


def _write_failure(run: RunConfig, results_dir: Path, error: dict[str, Any]) -> None:
    """Mark a run failed after Ray's retries, unless its result says otherwise (someone else ran it)."""
    run_id = run.run_id()
    try:
        with run_lock(results_dir / run_id) as acquired:
            if not acquired or results.load_status(results_dir, run_id) in ("ok", "failed", "diverged"):
                return
            results.atomic_write_json(results.result_path(results_dir, run_id),
                                      {**result_base(run), "status": "failed", "error": error})
    except OSError as exc:  # the results folder takes no writes: the run stays unfinished, re-run next time
        if not results.is_storage_fault(exc):
            raise
