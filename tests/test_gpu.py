"""GPU smoke test: what only a CUDA machine exercises (bf16 autocast, CUDA memory, out-of-memory halving,
``device_map=auto``), on tiny models in a minute or two. Skips without CUDA; the command that runs it on a
GPU is in docs/scaling.md."""

from __future__ import annotations

import json

import pytest
import torch
from test_faults import oom_above, tiny_sweep, wrap_training_forward

from peftbench.cli import main
from peftbench.running.sweep import execute_run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PAPER_METHODS = ["full", "ia3", "lora", "bitfit", "prompt"]
TINY = ["scales=[16]", "train.max_epochs=2", "train.eval_examples=16", "train.val_metric_examples=4",
        "train.checkpoint_interval_s=0", "-q"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


def _results(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/result.json"))]


@pytest.mark.parametrize("model", ["t5-tiny-random", "llama-tiny-random"])
def test_the_paper_suite_runs_every_method_on_the_gpu_in_bf16(tmp_path, model):
    """The paper suite's grid (its five methods and protocol, speed-ups off) on a tiny model and both synthetic
    tasks: every run ok, on CUDA, under bf16 autocast where the GPU has it, its peak from CUDA's allocator."""
    out = tmp_path / "paper"
    code = main(["run", "paper", f"model={model}", "tasks=[synthetic_classification,synthetic_data_to_text]",
                 f"output_dir={out}", *TINY])
    assert code == 0
    results = _results(out)
    assert sorted(r["method"]["name"] for r in results) == sorted(PAPER_METHODS * 2)
    expected_precision = "bf16" if torch.cuda.is_bf16_supported() else ("no" if model.startswith("t5") else "fp16")
    for result in results:
        assert result["status"] == "ok", result.get("error")
        assert result["hardware"]["device"] == "cuda"
        assert result["optimizer"]["precision"] == expected_precision
        assert result["memory"]["kind"] == "cuda_max_allocated" and result["memory"]["peak_bytes"] > 0
        assert result["speedups"]["setting"] == "none"


def test_a_cuda_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path, monkeypatch):
    """The first forward pass of 4 rows runs out of memory (raised as CUDA raises it); the run goes on with
    micro-batches of 2 and twice the accumulation, on the GPU."""
    rows = wrap_training_forward(monkeypatch, oom_above(2))
    sweep = tiny_sweep(tmp_path, precision="auto")
    (run,) = sweep.expand()
    result = execute_run(run, sweep.results_dir, progress=False)
    assert result["status"] == "ok", result.get("error")
    assert result["hardware"]["device"] == "cuda"
    assert result["batch"] == {"micro_batch_size": 2, "grad_accum": 4, "effective_batch_size": 8,
                               "oom_retries": 1}
    assert rows == [4] + [2] * 8


def test_device_map_auto_places_the_model_on_the_visible_gpus_and_trains(tmp_path):
    out = tmp_path / "device-map"
    code = main(["run", "model=llama-tiny-random", "methods=[lora,full]", "tasks=[synthetic_classification]",
                 "device_map=auto", f"output_dir={out}", *TINY])
    assert code == 0
    results = _results(out)
    assert len(results) == 2
    for result in results:
        assert result["status"] == "ok", result.get("error")
        assert result["hardware"]["device"] == "cuda"
        assert result["hardware"]["device_map"] == "auto"
