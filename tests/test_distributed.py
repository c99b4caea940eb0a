"""One run as several processes (data parallel, distributed.py), launched for real: two CPU processes (gloo).

Two processes must train like one (same status, epochs, best epoch, parameters, test metric and decoded
predictions; losses within 1e-4 relative, since only the order of floating-point sums differs), write
exactly one result per run, fail a run everywhere when one process fails, stop together when one process
is asked to, and resume from the stop to the uninterrupted result.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed
from distributed_helpers import without_dropout
from sweep_helpers import read_results

import peftbench.recipe.train
from peftbench.cli import main as cli_main
from peftbench.config import load_sweep
from peftbench.running.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("distributed_helpers.py")
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))  # the launcher installed beside this Python
# 32 examples in batches of 4, 4 per step: 2 optimiser steps per epoch, each split 2 + 2 over the processes.
# 8 validation and 8 test examples in batches of 4: one batch of each per process.
COMMON = ("tasks=[synthetic_classification]", "scales=[32]", "train.max_epochs=2", "train.batch_size=4",
          "train.grad_accum=4", "train.patience=2", "train.eval_examples=16", "train.eval_batch_size=4",
          "train.val_metric_examples=8", "train.precision=fp32", "train.num_threads=1",
          "train.rank_classification=true")  # ranked in shares too: the metric must match one process's
ALL_MODELS, ALL_METHODS = "models=[t5-tiny-random,llama-tiny-random]", "methods=[lora,full]"
# Environmental reasons a launch can fail here (no free port, no loopback networking): skip, do not fail.
ENVIRONMENTAL = re.compile(r"Address already in use|EADDRINUSE|RendezvousConnectionError|Connection refused")

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                 reason="torch.distributed with gloo is not available")]


def overrides(out: Path, *grid: str) -> list[str]:
    return [*grid, *COMMON, f"output_dir={out}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(script: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script]


def launch(command: list[str], cache: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PEFTBENCH_CACHE": str(cache),
                   "OMP_NUM_THREADS": "1", **env}
    environment.pop("WORLD_SIZE", None)
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and ENVIRONMENTAL.search(done.stderr):
        pytest.skip(f"cannot launch processes here: {ENVIRONMENTAL.search(done.stderr).group(0)}")
    return done


def assert_trained_alike(got: dict, want: dict, rel: float = 1e-4) -> None:
    assert got["status"] == want["status"] == "ok"
    for key in ("epochs", "best_epoch", "params", "batch", "metrics"):
        assert got[key] == want[key], key
    assert [p["prediction"] for p in got["predictions_sample"]] == [p["prediction"] for p in want["predictions_sample"]]
    assert got["throughput"]["train_tokens"] == want["throughput"]["train_tokens"]
    assert got["optimizer"]["steps_done"] == want["optimizer"]["steps_done"]
    assert len(got["history"]) == len(want["history"])
    for mine, theirs in zip(got["history"], want["history"], strict=True):
        assert (mine["epoch"], mine["steps"], mine["val_metric"]) == (theirs["epoch"], theirs["steps"],
                                                                     theirs["val_metric"])
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-12)
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=rel)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=rel)


def assert_one_writer(out: Path, run_ids: list[str]) -> None:
    assert sorted(p.parent.name for p in out.glob("*/result.json")) == sorted(run_ids)
    assert not list(out.rglob(".*.tmp")) and not list(out.glob("*/checkpoint"))
    assert all((out / run_id / "adapter").is_dir() for run_id in run_ids)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def single(tmp_path_factory, cache) -> dict[str, dict]:
    """The reference: every run in this one process (where dropout is removed), without dropout."""
    out = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PEFTBENCH_CACHE", str(cache))
        patch.setattr(peftbench.recipe.train, "load_model", without_dropout(peftbench.recipe.train.load_model))
        run_sweep(load_sweep(None, [*overrides(out, ALL_MODELS, ALL_METHODS), "isolate_runs=false"]), progress=False)
    return read_results(out)


@pytest.fixture(scope="module")
def accelerate_launched(tmp_path_factory, cache) -> tuple[Path, subprocess.CompletedProcess]:
    """`accelerate launch` of the plain CLI with the shipped config: Llama (no dropout) and T5 (dropout)."""
    out = tmp_path_factory.mktemp("accelerate")
    command = [ACCELERATE, "launch", "--config_file", "configs/accelerate/data_parallel.yaml", "--num_processes", "2",
               "--main_process_port", str(free_port()), "-m", "peftbench.cli", "run",
               *overrides(out, "models=[llama-tiny-random,t5-tiny-random]", "methods=[lora]"), "-q"]
    return out, launch(command, cache)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, cache, single):
    done = launch(torchrun([str(HELPER), "run", *overrides(tmp_path, ALL_MODELS, ALL_METHODS), "-q"]), cache,
                  DP_TEST_NO_DROPOUT="1")
    assert done.returncode == 0, done.stderr[-3000:]
    # One process reports: the table and the summary line once.
    assert done.stderr.count("4 ran, 0 already done") == 1 and done.stdout.count("llama-tiny-random") == 2
    results = read_results(tmp_path)
    assert_one_writer(tmp_path, list(single))
    for run_id, want in single.items():
        assert_trained_alike(results[run_id], want)
        assert results[run_id]["hardware"]["processes"] == 2


@pytest.mark.slow
def test_accelerate_launch_of_the_cli_trains_like_one_process(accelerate_launched, single):
    out, done = accelerate_launched
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(out)
    assert_one_writer(out, list(results))
    (llama,) = [run_id for run_id in results if run_id.startswith("llama")]
    assert_trained_alike(results[llama], single[llama])


@pytest.mark.slow
def test_a_failing_process_fails_the_run_everywhere_and_a_stop_resumes_exactly(tmp_path, cache, accelerate_launched,
                                                                             single):
    grid = ("models=[llama-tiny-random,t5-tiny-random]", ALL_METHODS)
    first = launch(torchrun([str(HELPER), "run", *overrides(tmp_path, *grid), "-q"]), cache,
                   DP_TEST_FAIL="peft:1:before,full:0:after", DP_TEST_STOP_RANK="1")
    assert first.returncode == 1, first.stderr[-3000:]
    results = read_results(tmp_path)
    run_ids = {f"{r['config']['model'][:2]}-{r['config']['method']}": run_id for run_id, r in results.items()}
    assert sorted(run_ids) == ["ll-full", "ll-lora", "t5-lora"]  # the stop ended the sweep before T5 full
    # One process failed at a Llama run's second step, before or after the step's all-reduce: the run
    # is failed with that process's error, and the sweep went on.
    for name, rank, when in (("ll-lora", 1, "before"), ("ll-full", 0, "after")):
        result = results[run_ids[name]]
        assert result["status"] == "failed"
        assert {key: result["error"][key] for key in ("type", "message", "rank")} == {
            "type": "RuntimeError", "message": f"injected failure in process {rank} {when} the step", "rank": rank}
    # Process 1 alone was asked to stop after T5's third step: both stopped there; one checkpoint kept.
    t5 = run_ids["t5-lora"]
    assert results[t5]["status"] == "interrupted"
    assert "after optimiser step 3" in results[t5]["error"]["message"]
    assert (tmp_path / t5 / "checkpoint").is_dir()

    again = launch(torchrun(["-m", "peftbench.cli", "run", *overrides(tmp_path, *grid), "--retry-failed", "-q"]),
                   cache)
    assert again.returncode == 0, again.stderr[-3000:]
    results = read_results(tmp_path)
    assert_one_writer(tmp_path, list(single))
    assert results[t5]["resumed_from_epoch"] == 1
    # T5 trains with dropout: each batch's masks are seeded by its step and position, so the resumed run
    # equals the uninterrupted one.
    assert_trained_alike(results[t5], read_results(accelerate_launched[0])[t5])
    for name in ("ll-lora", "ll-full"):
        assert_trained_alike(results[run_ids[name]], single[run_ids[name]])


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_training_is_refused_before_any_work(tmp_path, monkeypatch, capsys, variable):
    monkeypatch.setenv(variable, "true")
    assert cli_main(["run", *overrides(tmp_path / "out", "models=[llama-tiny-random]", "methods=[lora]")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("peftbench: error: the accelerate config asks for ")
    assert "data parallel only" in error[0] and not (tmp_path / "out").exists()


def test_an_fsdp_accelerate_config_is_refused(tmp_path, cache):
    config = tmp_path / "fsdp.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_machines: 1\n"
                      "num_processes: 1\nmixed_precision: 'no'\nfsdp_config:\n  fsdp_sharding_strategy: FULL_SHARD\n")
    done = launch([ACCELERATE, "launch", "--config_file", str(config),
                   "--main_process_port", str(free_port()), "-m", "peftbench.cli", "run",
                   *overrides(tmp_path / "out", "models=[llama-tiny-random]", "methods=[lora]")], cache)
    assert done.returncode != 0
    assert "peftbench: error: the accelerate config asks for FSDP (ACCELERATE_USE_FSDP=true)" in done.stderr
    assert re.search(r"exitcode\s*:\s*2", done.stderr)  # the launcher's report of peftbench's exit status
    assert not (tmp_path / "out").exists()
