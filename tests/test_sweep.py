"""Sweep bookkeeping: skip, re-run and retry rules, the per-run lock, atomic writes, concurrent sweeps.

Training is replaced by ``sweep_helpers.fake_run_cell`` here, in this process (``isolate_runs=false``; the real
recipe and its worker processes are exercised by test_kill_resume.py, test_resume.py and test_isolation.py),
so these tests check the bookkeeping alone, in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sweep_helpers
from sweep_helpers import lock_holder

import peftbench.recipe.train
from peftbench.cli import main, resolve_config_path
from peftbench.config import load_sweep
from peftbench.running import results
from peftbench.running.sweep import run_lock, run_sweep, should_run

pytestmark = pytest.mark.integration

HELPERS = Path(sweep_helpers.__file__)


def _sweep(results_dir: Path, *extra: str):
    return load_sweep(None, ["models=[t5-tiny-random]", "methods=[lora,bitfit,ia3]", "tasks=[cola]",
                             "scales=[low]", f"output_dir={results_dir}", "isolate_runs=false", *extra])


class FakeTraining(list):
    """The methods training was called for, in order; methods in ``failing`` raise."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()

    def __call__(self, run, run_dir, **kwargs):
        self.append(run.method)
        if run.method in self.failing:
            raise RuntimeError(f"{run.method} broke")
        return sweep_helpers.fake_run_cell(run, run_dir, **kwargs)


@pytest.fixture
def calls(monkeypatch) -> FakeTraining:
    fake = FakeTraining()
    monkeypatch.setattr(peftbench.recipe.train, "run_cell", fake)
    return fake


def _statuses(results_dir: Path) -> dict[str, str]:
    return {r["config"]["method"]: r["status"] for r in results.iter_results(results_dir)}


def test_should_run_rules():
    assert [should_run(s, False) for s in (None, "running", "interrupted", "corrupt", "ok", "failed", "diverged")] \
        == [True, True, True, True, False, False, False]
    assert should_run("failed", True) and should_run("diverged", True) and not should_run("ok", True)


def test_done_runs_are_skipped_and_failed_ones_rerun_only_on_request(tmp_path, calls):
    calls.failing.add("bitfit")
    outcome = run_sweep(_sweep(tmp_path), progress=False)
    assert (len(outcome.ran), len(outcome.failed)) == (2, 1)
    assert _statuses(tmp_path) == {"lora": "ok", "bitfit": "failed", "ia3": "ok"}
    (failed,) = [r for r in results.iter_results(tmp_path) if r["status"] == "failed"]
    assert failed["error"]["type"] == "RuntimeError" and failed["error"]["message"] == "bitfit broke"

    calls.clear()
    outcome = run_sweep(_sweep(tmp_path), progress=False)
    assert calls == [] and len(outcome.skipped) == 3

    calls.failing.clear()
    outcome = run_sweep(_sweep(tmp_path, "retry_failed=true"), progress=False)
    assert calls == ["bitfit"] and len(outcome.ran) == 1 and len(outcome.skipped) == 2
    assert set(_statuses(tmp_path).values()) == {"ok"}


def test_unfinished_and_corrupt_results_are_rerun(tmp_path, calls):
    sweep = _sweep(tmp_path)
    run_sweep(sweep, progress=False)
    lora, bitfit, ia3 = sweep.expand()
    crashed = results.read_result(results.result_path(tmp_path, lora.run_id()))
    results.atomic_write_json(results.result_path(tmp_path, lora.run_id()), {**crashed, "status": "running"})
    results.result_path(tmp_path, ia3.run_id()).write_text('{"run_id": "half a fi')
    calls.clear()
    with pytest.warns(UserWarning, match="corrupt result"):
        outcome = run_sweep(sweep, progress=False)
    assert calls == ["lora", "ia3"] and outcome.skipped == [bitfit.run_id()]
    assert set(_statuses(tmp_path).values()) == {"ok"}


def test_an_interrupted_run_stops_the_sweep_and_is_rerun_next_time(tmp_path, monkeypatch):
    def interrupted(run, run_dir, **kwargs):
        raise peftbench.recipe.train.Interrupted("stop requested")

    monkeypatch.setattr(peftbench.recipe.train, "run_cell", interrupted)
    outcome = run_sweep(_sweep(tmp_path), progress=False)
    assert len(outcome.failed) == 1 and not outcome.ran  # the first run; the others never started
    assert _statuses(tmp_path) == {"lora": "interrupted"}
    monkeypatch.setattr(peftbench.recipe.train, "run_cell", sweep_helpers.fake_run_cell)
    assert len(run_sweep(_sweep(tmp_path), progress=False).ran) == 3


def test_a_run_locked_by_another_process_is_left_alone(tmp_path, calls):
    sweep = _sweep(tmp_path)
    held = sweep.expand()[1]
    with run_lock(tmp_path / held.run_id()) as acquired:
        assert acquired
        outcome = run_sweep(sweep, progress=False)
    assert outcome.locked == [held.run_id()] and calls == ["lora", "ia3"]
    assert not results.result_path(tmp_path, held.run_id()).exists()


def test_lock_is_exclusive_and_freed_when_its_process_is_sigkilled(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir) as first, run_lock(run_dir) as second:
        assert (first, second) == (True, False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom peftbench.running.sweep import run_lock\n"
         f"with run_lock({str(run_dir)!r}) as ok:\n    print(ok, flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert lock_holder(run_dir).startswith(f"{holder.pid}@")
        with run_lock(run_dir) as acquired:
            assert not acquired
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(run_dir) as acquired:  # no stale lock: the kernel dropped it with the process
        assert acquired


def test_atomic_write_leaves_the_old_file_whole_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "run" / "result.json"
    results.atomic_write_json(path, {"status": "running"})

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        results.atomic_write_json(path, {"status": "ok"})
    assert json.loads(path.read_text()) == {"status": "running"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


@pytest.mark.slow
def test_two_sweeps_on_one_directory_run_each_run_exactly_once(tmp_path):
    overrides = ["models=[t5-tiny-random]", "methods=[lora,bitfit,ia3,prompt]", "tasks=[cola]", "scales=[low]",
                 "seeds=[0,1]", f"output_dir={tmp_path / 'results'}", "isolate_runs=false"]
    log = tmp_path / "calls.log"
    env = {**os.environ, "FAKE_LOG": str(log), "FAKE_SECONDS": "0.3"}
    sweeps = [subprocess.Popen([sys.executable, str(HELPERS), "fake", *overrides], env=env,
                               stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [json.loads(process.communicate(timeout=120)[0]) for process in sweeps]
    assert all(process.returncode == 0 for process in sweeps)

    run_ids = [run.run_id() for run in load_sweep(None, overrides).expand()]
    executions = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert executions == Counter(run_ids)  # all 8 runs, each trained once
    ran = outcomes[0]["ran"] + outcomes[1]["ran"]
    assert sorted(ran) == sorted(run_ids)
    assert len({process_pid for process_pid in (line.split()[1] for line in log.read_text().splitlines())}) == 2
    for outcome in outcomes:
        assert sorted(outcome["ran"] + outcome["skipped"] + outcome["locked"]) == sorted(run_ids)
    assert {r["run_id"]: r["status"] for r in results.iter_results(tmp_path / "results")} == \
        dict.fromkeys(run_ids, "ok")


def test_paper_suite_is_table_1_and_takes_overrides(tmp_path, capsys):
    sweep = load_sweep(resolve_config_path("paper"), ["model=flan-t5-small", f"data_dir={tmp_path}"])
    runs = sweep.expand()
    assert len(runs) == 5 * 4 * 3 and {r.model for r in runs} == {"flan-t5-small"}
    assert {r.method for r in runs} == {"full", "ia3", "lora", "bitfit", "prompt"}
    assert {r.task for r in runs} == {"ag_news", "cola", "e2e_nlg", "samsum"}
    assert {str(r.scale) for r in runs} == {"low", "medium", "high"}
    assert (sweep.train.batch_size, sweep.train.grad_accum, sweep.train.patience) == (16, 4, 1)
    assert load_sweep(resolve_config_path("paper"), []).models == ["flan-t5-xl"]
    assert main(["list", "suites"]) == 0
    assert {"paper", "paper-ablations", "quickstart"} <= set(capsys.readouterr().out.split())


@pytest.mark.parametrize(("family", "method", "revision", "stale"), [
    ("causal", "prompt", None, True),  # decoded with the soft prompt re-injected at every step: runs again
    ("causal", "prefix_tuning", 1, True),
    ("causal", "prompt", results.DECODING_REVISION, False),
    ("seq2seq", "prompt", None, False),  # the soft prompt enters the encoder once: never affected
    ("causal", "lora", None, False),
])
def test_ok_results_decoded_before_a_decoding_fix_run_again(tmp_path, family, method, revision, stale):
    payload = {"run_id": "r", "status": "ok", "config": {"method": method}, "model": {"family": family}}
    if revision is not None:
        payload["decoding_revision"] = revision
    results.atomic_write_json(results.result_path(tmp_path, "r"), payload)
    if stale:
        with pytest.warns(UserWarning, match="decoding revision"):
            status = results.load_status(tmp_path, "r")
        assert status == "stale" and should_run(status, retry_failed=False)
    else:
        assert results.load_status(tmp_path, "r") == "ok"
