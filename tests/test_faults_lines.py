"""Faults' lines stay short and their bookkeeping is exact: error lines for unknown names and keys, storage
faults recognised however a library words them, and a sweep whose results folder turns read-only before a
run's lock (training replaced by ``sweep_helpers.fake_run_cell``)."""

from __future__ import annotations

import errno
import os
import re

import pytest
import sweep_helpers

import peftbench.recipe.train
from peftbench.cli import main
from peftbench.config import SweepConfig
from peftbench.errors import MAX_CHOICES, unknown
from peftbench.running import results, sweep
from peftbench.running.summary import failure_lines

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("override, start, closest, rest", [
    ("methods=[lroa]", "unknown method 'lroa' (did you mean 'lora'?)",
     "adalora, delora, glora, gralora, hra, loha, lora, road, vblora, xlora", "peftbench list methods"),
    ("train.lrr=1", "command line: train: unknown key 'lrr'",
     "lr_final, lr_initial, lr_peak, lr_scale, max_grad_norm, max_oom_retries, min_delta, run_test, "
     "val_metric_examples, warmup_fraction", "pydoc peftbench.config.sections.TrainConfig"),
])
def test_an_unknown_name_or_key_gives_a_short_line(override, start, closest, rest, capsys):
    """The closest ten choices (sorted), how many there are and where to list them all: under 300 characters
    where every choice made 428 (train keys) and 558 (methods with PEFT's)."""
    assert main(["run", override, "--dry-run"]) == 2
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"peftbench: error: {re.escape(start)}; valid: {closest}, … \(\d+ in all: {rest}\)", line)
    assert len(closest.split(", ")) == MAX_CHOICES and len(line) < 300


def test_few_choices_are_all_listed():
    message = str(unknown("task", "sst", ["cola", "ag_news", "samsum"]))
    assert message == "unknown task 'sst'; valid: ag_news, cola, samsum"


@pytest.mark.parametrize("exc, number", [
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
    (PermissionError(errno.EACCES, "Permission denied"), errno.EACCES),
    (OSError(errno.EROFS, "Read-only file system"), errno.EROFS),
    (RuntimeError("shape mismatch (os error 2 is not in the message)"), None),
    (OSError(errno.ENOENT, "No such file or directory"), None),
])
def test_storage_faults_are_recognised_however_worded(exc, number):
    assert results.storage_errno(exc) == number


def test_a_denied_read_outside_the_run_is_no_storage_fault(tmp_path):
    denied = PermissionError(errno.EACCES, "Permission denied", "/models/private/config.json")
    assert not results.is_storage_fault(denied, tmp_path / "run")
    assert results.is_storage_fault(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / "x")),
                                    tmp_path / "run")


def test_a_storage_fault_behind_another_error_is_found():
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise ValueError("saving failed") from inner
    except ValueError as outer:
        assert results.storage_errno(outer) == errno.EDQUOT


def test_a_read_only_folder_before_a_run_stops_the_sweep(tmp_path, monkeypatch):
    """The results folder turns read-only after the first run: the second run's lock file cannot be opened.
    The sweep stops there with one line naming the folder, the first run's result intact."""
    monkeypatch.setattr(peftbench.recipe.train, "run_cell", sweep_helpers.fake_run_cell)
    config = SweepConfig(name="ro", models=["t5-tiny-random"], methods=["lora", "bitfit", "ia3"], tasks=["cola"],
                         scales=["low"], output_dir=str(tmp_path), isolate_runs=False)
    first, second, _ = config.expand()
    real_lock = sweep.run_lock

    def run_lock(run_dir):
        if run_dir.name == second.run_id():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(run_dir))
        return real_lock(run_dir)

    monkeypatch.setattr(sweep, "run_lock", run_lock)
    outcome = sweep.run_sweep(config, progress=False)

    assert outcome.ran == [first.run_id()] and outcome.failed == [second.run_id()]
    assert outcome.stopped == (f"cannot write in {tmp_path}: Read-only file system; the sweep stopped there. Once "
                               f"the folder takes writes again, run the same command: it resumes")
    assert failure_lines(outcome, tmp_path) == [
        f"peftbench: failed: {second.run_id()}: cannot write in {tmp_path}: Read-only file system; its result is "
        f"not recorded"]
    assert results.load_status(tmp_path, first.run_id()) == "ok"
    assert results.load_status(tmp_path, second.run_id()) is None  # nothing half-written

    monkeypatch.setattr(sweep, "run_lock", real_lock)
    outcome = sweep.run_sweep(config, progress=False)
    assert outcome.skipped == [first.run_id()] and len(outcome.ran) == 2 and outcome.stopped is None
