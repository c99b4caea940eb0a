"""A fault inside one run of a sweep, or while recording it, never takes the sweep down.

Each test runs ``peftbench run`` with real worker processes (isolation.py) on the tiny T5 model, a fault
injected into one run's worker (``fault_helpers``, armed through ``WORKER_SETUP``) or into the sweep process,
and checks what the user sees (one line for the run, the table, the exit status, no traceback), what is on
disk, and that the same command run again finishes the sweep. Disk full is an injected ``OSError`` (or
safetensors' own error) at the write, so the tests run wherever CI does; ``test_a_real_full_disk`` repeats
the first case on a real 96 KB tmpfs where this machine lets it mount one (root).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import subprocess
from pathlib import Path

import fault_helpers
import pytest
import sweep_helpers
import torch
from transformers import AutoModelForCausalLM, ByT5Tokenizer

from peftbench.catalog.models import tiny_llama_config
from peftbench.cli import main
from peftbench.recipe import checkpoint
from peftbench.running import isolation, results

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # worker processes or sweeps: over 10 s a file

TINY = ["tasks=[synthetic_classification]", "scales=[8]", "train.max_epochs=1", "train.batch_size=4",
        "train.grad_accum=1", "train.patience=5", "train.eval_examples=8", "train.eval_batch_size=4",
        "train.val_metric_examples=0", "train.precision=fp32", "train.num_threads=1",
        "train.checkpoint_interval_s=0"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


def sweep_argv(results_dir: Path, methods=("lora", "bitfit"), models=("t5-tiny-random",), *extra: str) -> list[str]:
    return ["run", f"models=[{','.join(models)}]", f"methods=[{','.join(methods)}]", *TINY,
            f"output_dir={results_dir}", *extra, "-q"]


def in_worker_of(method: str, inject, *args) -> list:
    """``WORKER_SETUP`` arming ``inject(*args)`` in the worker of ``method``'s run alone."""
    return [functools.partial(fault_helpers.for_method, method, functools.partial(inject, *args))]


def by_method(results_dir: Path) -> dict[str, dict]:
    return {r["config"]["method"]: r for r in results.iter_results(results_dir, warn=False)}


def run_line(stderr: str, method: str) -> str:
    """The one line of stderr about ``method``'s run; fails unless there is exactly one."""
    (line,) = [line for line in stderr.splitlines() if f"-{method}-" in line]
    return line


def assert_rerun_finishes(argv: list[str], results_dir: Path, capfd, ran: int, done: int) -> None:
    """The same command again (no fault): ``ran`` runs now, ``done`` were done; every result ok."""
    capfd.readouterr()
    assert main(argv) == 0
    assert f"\n{ran} ran, {done} already done, 0 not ok" in capfd.readouterr().err
    assert {r["status"] for r in by_method(results_dir).values()} == {"ok"}


# --- disk full inside a run: the run fails in one line, the sweep goes on, a re-run resumes it ----------

DISK_FULL_FAULTS = {
    # epoch 1's checkpoint (a background write, raised at the next optimiser step)
    "while training": (fault_helpers.raise_oserror_from, "peftbench.recipe.checkpoint:save_checkpoint", 1,
                       errno.ENOSPC),
    # safetensors' own error, "(os error 28)", with part of the weights on disk
    "while saving weights": (fault_helpers.adapter_save_fills_the_disk,),
    # the final result; its smaller failure record fails too, so the sweep process writes it
    "while writing the result": (fault_helpers.refuse_json_writes, "-lora-", errno.ENOSPC, True),
}


@pytest.mark.parametrize("where", list(DISK_FULL_FAULTS))
def test_disk_full_fails_the_run_in_one_line_and_the_rerun_completes_it(where, tmp_path, monkeypatch, capfd):
    results_dir = tmp_path / "results"
    argv = sweep_argv(results_dir, ("lora", "bitfit"), ("t5-tiny-random",), "train.max_epochs=2")
    monkeypatch.setattr(isolation, "WORKER_SETUP", in_worker_of("lora", *DISK_FULL_FAULTS[where]))
    assert main(argv) == 1
    captured = capfd.readouterr()

    assert "Traceback" not in captured.err + captured.out
    run_dir = next(results_dir.glob("*-lora-*"))
    assert run_line(captured.err, "lora") == (
        f"peftbench: failed: {run_dir.name}: StorageFault: No space left on device while writing in {run_dir}; "
        f"free space and run the sweep again to resume it")
    assert "\n1 ran, 0 already done, 1 not ok" in captured.err  # bitfit ran after it
    assert re.search(r"lora +0/1 +- +failed", captured.out) and re.search(r"bitfit +1/1 +accuracy", captured.out)
    swept = by_method(results_dir)
    assert swept["lora"]["status"] == "failed" and swept["lora"]["error"]["type"] == results.STORAGE_FAULT
    assert swept["bitfit"]["status"] == "ok"
    assert results.load_status(results_dir, run_dir.name) == results.UNSAVED  # unfinished: runs again
    assert not (run_dir / "adapter").exists() and not (run_dir / ".checkpoint.tmp").exists()  # nothing partial

    monkeypatch.setattr(isolation, "WORKER_SETUP", [])
    assert_rerun_finishes(argv, results_dir, capfd, ran=1, done=1)  # without --retry-failed


# --- nothing can be written at all: the sweep stops in one line, naming the folder ----------------------

@pytest.mark.parametrize("number, reason", [(errno.ENOSPC, "No space left on device"),
                                            (errno.EROFS, "Read-only file system")])
def test_a_folder_that_takes_no_writes_stops_the_sweep_in_one_line(number, reason, tmp_path, monkeypatch, capfd):
    """After lora's run the results folder is full (or made read-only): bitfit's worker can write nothing,
    nor can the sweep process. The sweep stops before ia3, says why and where; a later run resumes it."""
    results_dir = tmp_path / "results"
    argv = sweep_argv(results_dir, ("lora", "bitfit", "ia3"))
    monkeypatch.setattr(isolation, "WORKER_SETUP",
                        in_worker_of("bitfit", fault_helpers.refuse_json_writes, "-bitfit-", number))
    real_write = results.atomic_write_json

    def sweep_process_write(path, payload):
        if "-bitfit-" in str(path):
            raise OSError(number, os.strerror(number))
        real_write(path, payload)

    monkeypatch.setattr(results, "atomic_write_json", sweep_process_write)
    assert main(argv) == 1
    captured = capfd.readouterr()

    assert "Traceback" not in captured.err + captured.out
    bitfit = next(results_dir.glob("*-bitfit-*")).name
    assert run_line(captured.err, "bitfit") == (
        f"peftbench: failed: {bitfit}: cannot write in {results_dir}: {reason}; its result is not recorded")
    assert captured.err.rstrip().splitlines()[-1] == (
        f"peftbench: error: cannot write in {results_dir}: {reason}; the sweep stopped there. Once the folder "
        f"takes writes again, run the same command: it resumes")
    assert "\n1 ran, 0 already done, 1 not ok" in captured.err
    assert re.search(r"ia3 +0/1 +- +missing", captured.out)  # the table: ia3 never started
    assert not list(results_dir.glob("*-ia3-*"))
    assert set(by_method(results_dir)) == {"lora"}  # nothing half-written is read as ok

    monkeypatch.setattr(isolation, "WORKER_SETUP", [])
    monkeypatch.setattr(results, "atomic_write_json", real_write)
    assert_rerun_finishes(argv, results_dir, capfd, ran=2, done=1)


def test_a_real_full_disk(tmp_path, capfd):
    """The issue's command on a 96 KB tmpfs: neither run's weights fit; each fails in one line, exit 1. With
    space back, the same command completes both runs, once each."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        argv = sweep_argv(mount / "results", ("full", "lora"))
        assert main(argv) == 1
        captured = capfd.readouterr()
        assert "Traceback" not in captured.err + captured.out
        for method in ("full", "lora"):
            assert ": StorageFault: No space left on device while writing in " in run_line(captured.err, method)
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        assert_rerun_finishes(argv, mount / "results", capfd, ran=2, done=0)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# --- the worker killed by SIGKILL (the out-of-memory killer) --------------------------------------------

def test_a_killed_worker_fails_with_its_memory_and_the_next_runs_complete(tmp_path, monkeypatch, capfd):
    results_dir = tmp_path / "results"
    argv = sweep_argv(results_dir)
    kill = functools.partial(sweep_helpers.install_kill, ("peftbench.recipe.steps:collate", "before", 2))
    monkeypatch.setattr(isolation, "WORKER_SETUP", [functools.partial(fault_helpers.for_method, "lora", kill)])
    assert main(argv) == 1
    captured = capfd.readouterr()

    assert "Traceback" not in captured.err
    line = run_line(captured.err, "lora")
    assert re.fullmatch(r"peftbench: failed: \S+: WorkerDied: the run's worker process was killed by SIGKILL "
                        r"\(the kernel's out-of-memory killer sends it when memory runs out; its peak memory "
                        r"was [\d,]+ MiB of the machine's [\d,]+ MiB\)", line), line
    peak_mib = int(re.search(r"was ([\d,]+) MiB", line).group(1).replace(",", ""))
    assert 100 < peak_mib < 4096  # torch and the tiny model: hundreds of MiB
    assert by_method(results_dir)["bitfit"]["status"] == "ok"

    monkeypatch.setattr(isolation, "WORKER_SETUP", [])
    capfd.readouterr()
    assert main([*argv, "--retry-failed"]) == 0
    assert by_method(results_dir)["lora"]["status"] == "ok"


# --- a worker that sends no heartbeat ---------------------------------------------------------------------

def test_a_silent_worker_is_stopped_its_run_interrupted_and_resumed(tmp_path, monkeypatch, capfd):
    """lora's worker hangs in its second epoch (2 optimiser steps per epoch): after worker_timeout_s without
    a heartbeat it is stopped (SIGTERM, then SIGKILL), the run is interrupted with epoch 1's checkpoint kept,
    bitfit runs, and the same command resumes lora from epoch 1."""
    results_dir = tmp_path / "results"
    argv = sweep_argv(results_dir, ("lora", "bitfit"), ("t5-tiny-random",), "train.max_epochs=2",
                      "worker_timeout_s=15")
    monkeypatch.setattr(isolation, "WORKER_SETUP",
                        in_worker_of("lora", fault_helpers.hang_at, "peftbench.recipe.steps:collate", 3))
    assert main(argv) == 1
    captured = capfd.readouterr()

    assert "Traceback" not in captured.err
    line = run_line(captured.err, "lora")
    assert re.fullmatch(r"peftbench: interrupted: \S+: NoHeartbeat: no heartbeat from the run's worker for \d+ s "
                        r"\(worker_timeout_s\): stopped, its last checkpoint kept; the next sweep resumes it", line)
    run_dir = next(results_dir.glob("*-lora-*"))
    _, _, state = checkpoint.load_checkpoint(run_dir)
    assert state["epoch"] == 1
    assert by_method(results_dir)["bitfit"]["status"] == "ok"  # the sweep went on

    monkeypatch.setattr(isolation, "WORKER_SETUP", [])
    assert_rerun_finishes(argv, results_dir, capfd, ran=1, done=1)
    assert by_method(results_dir)["lora"]["resumed_from_epoch"] == 1


# --- a result file left truncated by an earlier crash -----------------------------------------------------

def test_a_truncated_result_is_kept_aside_and_the_run_runs_again(tmp_path, capfd):
    results_dir = tmp_path / "results"
    argv = sweep_argv(results_dir, ("lora",))
    assert main(argv) == 0
    (result_file,) = results_dir.glob("*/result.json")
    text = result_file.read_text()
    result_file.write_text(text[: len(text) // 2])  # what a crash mid-write on a filesystem without rename leaves
    capfd.readouterr()

    assert main(argv) == 0
    captured = capfd.readouterr()
    (kept,) = result_file.parent.glob("result.json.corrupt-*")
    assert kept.read_text() == text[: len(text) // 2]
    assert [line for line in captured.err.splitlines() if "warning" in line] == [
        f"peftbench: warning: {result_file.parent.name}: corrupt result kept as {kept}; the run runs again"]
    assert "\n1 ran, 0 already done, 0 not ok" in captured.err
    assert results.read_result(result_file)["status"] == "ok"


# --- a tokenizer or model that fails to load in the worker ------------------------------------------------

@pytest.fixture
def broken_models(tmp_path) -> dict[str, Path]:
    """llama-tiny-random saved twice as a local directory: one with a weights file cut short, one with a
    tokenizer config that is not JSON."""
    directories = {}
    for broken in ("weights", "tokenizer"):
        directory = tmp_path / f"broken-{broken}"
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(tiny_llama_config()).save_pretrained(directory)
        ByT5Tokenizer().save_pretrained(directory)
        damaged = directory / ("model.safetensors" if broken == "weights" else "tokenizer_config.json")
        damaged.write_bytes(damaged.read_bytes()[:40])
        directories[broken] = directory
    return directories


@pytest.mark.parametrize("broken", ["weights", "tokenizer"])
def test_a_model_that_fails_to_load_fails_its_run_alone(broken, broken_models, tmp_path, capfd):
    results_dir = tmp_path / "results"
    argv = sweep_argv(results_dir, ("lora",), (str(broken_models[broken]), "t5-tiny-random"))
    assert main(argv) == 1
    captured = capfd.readouterr()

    assert "Traceback" not in captured.err
    failed = [line for line in captured.err.splitlines() if line.startswith("peftbench: failed: ")]
    assert len(failed) == 1 and f"broken_{broken}" in failed[0].split(":")[2], captured.err
    assert len(failed[0]) < 400
    statuses = sorted(r["status"] for r in results.iter_results(results_dir, warn=False))
    assert statuses == ["failed", "ok"]  # the t5 run after it


def test_result_files_stay_json(tmp_path, monkeypatch):
    """Every result a fault left is a whole JSON file (nothing half-written is ever read as ok)."""
    results.atomic_write_json(tmp_path / "r" / results.RESULT_FILE, {"run_id": "r", "status": "ok", "config": {}})

    def full_disk(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        results.atomic_write_json(tmp_path / "r" / results.RESULT_FILE, {"run_id": "r", "status": "failed"})
    monkeypatch.undo()
    assert json.loads((tmp_path / "r" / results.RESULT_FILE).read_text())["status"] == "ok"
    assert [p.name for p in (tmp_path / "r").iterdir()] == [results.RESULT_FILE]  # no temporary file left
