"""Every run of a local sweep in a worker process of its own: its peak memory is the run's own, whatever ran
before it; a worker that dies becomes a failed result and the run resumes on retry.

The model is llama-tiny-random's architecture widened to 13.05 M parameters (saved as a local model
directory), so that what full tuning keeps beside the weights (gradients, AdamW's two moments, the best
epoch's copy: 16 bytes per parameter, 209 MB) stands far above the interpreter's and the libraries' fixed
footprint and the allocator's noise.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import re
from pathlib import Path

import pytest
import sweep_helpers
import torch
from transformers import AutoModelForCausalLM, ByT5Tokenizer, LlamaConfig

from peftbench.catalog.models import tiny_llama_config
from peftbench.cli import main
from peftbench.running import isolation, results

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # worker processes or sweeps: over 10 s a file

WIDE_PARAMS = 13_046_272  # tied 384 × 512 embedding, 4 × (4 × 512² attention + 3 × 512 × 1408 MLP), norms
RUN = ["run", "methods=[full,lora,ia3]", "tasks=[synthetic_classification]", "scales=[16]", "train.max_epochs=1",
       "train.batch_size=4", "train.grad_accum=1", "train.eval_examples=8", "train.eval_batch_size=4",
       "train.val_metric_examples=0", "train.precision=fp32", "train.num_threads=1"]


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory) -> Path:
    """llama-tiny-random's vocabulary and tokenizer, hidden size 512, 4 layers: a local model directory."""
    tiny = tiny_llama_config()
    config = LlamaConfig(vocab_size=tiny.vocab_size, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                         pad_token_id=tiny.pad_token_id, eos_token_id=tiny.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=True)
    directory = tmp_path_factory.mktemp("wide-llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    ByT5Tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))


def _by_method(results_dir: Path) -> dict[str, dict]:
    return {r["config"]["method"]: r for r in results.iter_results(results_dir)}


def test_each_run_of_a_sweep_records_its_own_peak(wide_llama, tmp_path, capsys):
    assert main([*RUN, f"models=[{wide_llama}]", f"output_dir={tmp_path / 'sweep'}", "-q"]) == 0
    table = capsys.readouterr().out
    swept = _by_method(tmp_path / "sweep")
    alone = {}
    for method in ("full", "lora", "ia3"):
        argv = [*RUN, f"models=[{wide_llama}]", f"methods=[{method}]", f"output_dir={tmp_path / method}", "-q"]
        assert main(argv) == 0
        alone[method] = _by_method(tmp_path / method)[method]

    peak = {method: r["memory"]["peak_bytes"] for method, r in swept.items()}
    for method, result in swept.items():
        memory = result["memory"]
        assert result["status"] == "ok" and memory["kind"] == "process_peak_rss"
        assert memory["scope"] == "run_process"
        assert abs(peak[method] - alone[method]["memory"]["peak_bytes"]) <= 0.10 * alone[method]["memory"]["peak_bytes"]
        assert result["time"]["load_s"] > 0 and result["time"]["total_s"] > 0
        assert f"{peak[method] / 2**20:,.0f}" in next(line for line in table.splitlines() if f" {method} " in line)
    # Full tuning's peak holds AdamW's two moments (8 bytes per parameter, 104 MB) and more beyond LoRA's
    # and (IA)3's, although it ran first in the sweep.
    assert peak["lora"] + 8 * WIDE_PARAMS < peak["full"] and peak["ia3"] + 8 * WIDE_PARAMS < peak["full"]
    full = swept["full"]["memory"]
    assert swept["full"]["params"]["trainable"] == WIDE_PARAMS
    assert full["breakdown"]["gradients"] == 4 * WIDE_PARAMS
    assert full["breakdown"]["optimizer_state"] == 8 * WIDE_PARAMS + 4 * 38  # moments + a step count per tensor
    assert full["adapter_bytes"] == swept["full"]["adapter"]["bytes"] > 4 * WIDE_PARAMS  # the whole model
    assert swept["lora"]["memory"]["breakdown"]["optimizer_state"] < full["breakdown"]["optimizer_state"] / 100


def test_in_process_runs_report_the_process_peak(wide_llama, tmp_path):
    """isolate_runs=false: the process's peak never falls, so every run after full tuning reports at least its
    peak; the results say so (scope shared_process)."""
    assert main([*RUN, f"models=[{wide_llama}]", f"output_dir={tmp_path}", "isolate_runs=false", "-q"]) == 0
    swept = _by_method(tmp_path)
    assert {r["memory"]["scope"] for r in swept.values()} == {"shared_process"}
    assert swept["lora"]["memory"]["peak_bytes"] >= swept["full"]["memory"]["peak_bytes"]
    assert swept["ia3"]["memory"]["peak_bytes"] >= swept["lora"]["memory"]["peak_bytes"]


@pytest.mark.slow
def test_a_killed_worker_is_a_failed_run_that_retry_resumes(tmp_path, monkeypatch):
    argv = ["run", "models=[t5-tiny-random]", "methods=[lora]", "tasks=[synthetic_classification]", "scales=[8]",
            "train.max_epochs=3", "train.batch_size=4", "train.grad_accum=1", "train.patience=5",
            "train.eval_examples=8", "train.eval_batch_size=4", "train.val_metric_examples=0",
            "train.precision=fp32", "train.num_threads=1", "train.checkpoint_interval_s=0",
            f"output_dir={tmp_path}", "-q"]
    # The worker SIGKILLs itself, as the out-of-memory killer would, before epoch 3's second micro-batch (2 per
    # epoch): after the first optimiser step of epoch 3, which waited for the epoch 2 checkpoint's write.
    kill = functools.partial(sweep_helpers.install_kill, ("peftbench.recipe.steps:collate", "before", 6))
    monkeypatch.setattr(isolation, "WORKER_SETUP", [kill])
    assert main(argv) == 1
    (result_file,) = tmp_path.glob("*/result.json")
    failed = json.loads(result_file.read_text())
    assert failed["status"] == "failed" and failed["error"]["type"] == "WorkerDied"
    assert re.fullmatch(r"the run's worker process was killed by SIGKILL \(the kernel's out-of-memory killer sends "
                        r"it when memory runs out; its peak memory was [\d,]+ MiB of the machine's [\d,]+ MiB\)",
                        failed["error"]["message"])
    assert (result_file.parent / "checkpoint").is_dir()

    monkeypatch.setattr(isolation, "WORKER_SETUP", [])
    assert main(argv) == 0  # a failed run is left alone ...
    assert results.read_result(result_file)["status"] == "failed"
    assert main([*argv, "--retry-failed"]) == 0  # ... until retried: from the epoch 2 checkpoint
    resumed = results.read_result(result_file)
    assert resumed["status"] == "ok" and resumed["resumed_from_epoch"] == 2 and resumed["epochs"] == 3


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_workers_fork_from_the_server_with_the_sweep_process_environment(tmp_path, monkeypatch):
    """The fork server starts with a process's first worker (perhaps an earlier test's): a variable set after
    it started still reaches each worker, as it would a spawned one."""
    seen = tmp_path / "seen"
    monkeypatch.setattr(isolation, "WORKER_SETUP",
                        [functools.partial(sweep_helpers.note_environment, "PEFTBENCH_PROBE", seen)])
    for value in ("first", "second"):
        monkeypatch.setenv("PEFTBENCH_PROBE", value)
        overrides = sweep_helpers.tiny_overrides(tmp_path / value, methods=("lora",), epochs=1)
        assert main(["run", "-q", *overrides]) == 0
    assert seen.read_text().split() == ["first", "second"]
    (result,) = results.iter_results(tmp_path / "second")
    assert result["memory"]["process_start"] == "forkserver" and result["memory"]["scope"] == "run_process"
