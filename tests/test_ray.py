"""The Ray executor on a local Ray instance (2 CPUs): same results as the local executor, lost workers retried."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'peftbench[ray]'")

from sweep_helpers import comparable, lock_holder, read_results, tiny_overrides  # noqa: E402

from peftbench.config import load_sweep  # noqa: E402
from peftbench.running.executors import run_sweep_ray  # noqa: E402
from peftbench.running.sweep import run_sweep  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the Ray workers inherit the environment
        patch.setenv("PEFTBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same tiny sweep run by the local executor."""
    results_dir = tmp_path_factory.mktemp("local")
    run_sweep(load_sweep(None, tiny_overrides(results_dir)), progress=False)
    return read_results(results_dir)


def _sweep(results_dir, *extra):
    return load_sweep(None, tiny_overrides(results_dir, extra=("executor=ray", *extra)))


def test_ray_sweep_gives_the_local_executors_results(local_ray, reference, tmp_path):
    outcome = run_sweep_ray(_sweep(tmp_path), progress=False)
    assert sorted(outcome.ran) == sorted(reference) and not outcome.failed
    found = read_results(tmp_path)
    assert {run_id: comparable(r) for run_id, r in found.items()} == \
        {run_id: comparable(r) for run_id, r in reference.items()}
    again = run_sweep_ray(_sweep(tmp_path), progress=False)  # everything done: nothing is submitted
    assert sorted(again.skipped) == sorted(reference) and not again.ran


def _kill_a_worker_running_a_run(results_dir, deadline_s: float = 120.0) -> tuple[int, str]:
    """SIGKILL the Ray worker running a run (its result says running; it holds the lock): (pid, run id)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for run_id, result in read_results(results_dir).items():
            holder = lock_holder(results_dir / run_id)
            if result["status"] == "running" and holder:
                pid = int(holder.split("@")[0])
                os.kill(pid, signal.SIGKILL)
                return pid, run_id
        time.sleep(0.02)
    raise AssertionError("no run was ever started")


def _in_thread(function, *args):
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(value=function(*args, progress=False)))
    thread.start()
    return thread, box


@pytest.mark.parametrize("max_retries", [2, 0])
def test_a_lost_workers_run_is_retried_or_marked_failed(local_ray, reference, tmp_path, max_retries):
    thread, box = _in_thread(run_sweep_ray, _sweep(tmp_path, f"max_retries={max_retries}"))
    killed, victim = _kill_a_worker_running_a_run(tmp_path)
    thread.join(timeout=300)
    outcome = box["value"]
    assert killed != os.getpid()
    found = read_results(tmp_path)
    if max_retries:  # Ray started the task again in a new worker; it resumed and finished
        assert sorted(outcome.ran) == sorted(reference) and not outcome.failed
        assert int(lock_holder(tmp_path / victim).split("@")[0]) != killed
        assert {run_id: comparable(r) for run_id, r in found.items()} == \
            {run_id: comparable(r) for run_id, r in reference.items()}
        return
    (lost,) = outcome.failed
    assert lost == victim
    assert found[lost]["status"] == "failed" and found[lost]["error"]["type"] == "WorkerLost"
    retried = run_sweep_ray(_sweep(tmp_path, "retry_failed=true"), progress=False)
    assert retried.ran == [lost] and comparable(read_results(tmp_path)[lost]) == comparable(reference[lost])
