"""One cell end to end on a tiny model: the CLI writes a complete result file and prints the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from peftbench.cli import main

pytestmark = pytest.mark.integration

REQUIRED = {
    "status", "error", "config", "seed", "versions", "hardware", "params", "epochs", "best_epoch", "history",
    "metrics", "time", "throughput", "memory", "adapter", "run_id", "task", "model", "data",
}


LORA_TENSORS = {"t5-tiny-random": 48, "llama-tiny-random": 16}


@pytest.mark.parametrize("model", ["t5-tiny-random", "llama-tiny-random"])
def test_one_cell_writes_a_complete_result(tmp_path, capsys, model):
    code = main(["run", f"model={model}", "methods=[lora]", "tasks=[synthetic_classification]", "scales=[32]",
                 "train.max_epochs=2", "train.eval_examples=16", "train.eval_batch_size=3",  # several batches
                 f"output_dir={tmp_path}", "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "lora" in out and "synthetic_classification" in out and "accuracy" in out
    [result_file] = list(tmp_path.glob("*/result.json"))
    result = json.loads(result_file.read_text())
    assert set(result) >= REQUIRED
    assert result["status"] == "ok" and result["error"] is None
    assert result["config"]["model"] == model and result["config"]["method"] == "lora"
    assert result["params"]["trainable"] == (4608 if model == "t5-tiny-random" else 1344)
    assert 1 <= result["best_epoch"] <= result["epochs"] <= 2
    assert [h["epoch"] for h in result["history"]] == list(range(1, result["epochs"] + 1))
    assert set(result["history"][0]) >= {"train_loss", "val_loss", "val_metric", "seconds"}
    assert 0.0 <= result["metrics"]["test"]["accuracy"] <= 1.0
    assert set(result["time"]) == {"train_s", "train_to_best_s", "val_metric_s", "eval_s", "rank_eval_s", "load_s",
                                   "total_s", "forgetting_s"}
    # Forgetting: a number, or (offline without the general text, as in these tests) null with the reason.
    assert (result["metrics"]["forgetting"] is None) == (result["forgetting"]["reason"] is not None)
    assert result["throughput"]["train_tokens_per_s"] > 0
    # the matrix-product peak where it ran (recipe/peak.py); seq2seq tokens have no one FLOPs count: no MFU
    assert result["hardware"]["instruction_set"] and result["hardware"]["peak"]["gflops"]["bf16"] > 0
    mfu = result["throughput"]["mfu"]
    assert mfu is None if model == "t5-tiny-random" else 0 < mfu < 1
    memory = result["memory"]
    assert memory["kind"] == "process_peak_rss" and memory["scope"] == "run_process"  # a worker of its own
    assert memory["peak_bytes"] >= memory["after_load_bytes"] > 0
    assert memory["increment_bytes"] == memory["peak_bytes"] - memory["after_load_bytes"]
    trainable = result["params"]["trainable"]
    assert memory["breakdown"]["gradients"] == 4 * trainable  # fp32
    # AdamW: two fp32 moments per trainable value and a one-value step count per tensor (LoRA's A and B)
    assert memory["breakdown"]["optimizer_state"] == 8 * trainable + 4 * LORA_TENSORS[model]
    assert memory["adapter_bytes"] == result["adapter"]["bytes"]
    assert result["adapter"]["bytes"] > 0 and (tmp_path / result["run_id"] / "adapter").is_dir()
    assert result["data"]["train_examples"] == 32 and result["data"]["sample_hash"]
    assert (tmp_path / result["run_id"] / "config.json").is_file()


@pytest.mark.slow  # child processes: over 10 s
def test_the_console_script_lists_registries():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for what, expected in [("methods", "bitfit"), ("tasks", "e2e_nlg"), ("models", "smollm2-135m-q4")]:
        done = subprocess.run([sys.executable, "-m", "peftbench.cli", "list", what], capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


@pytest.mark.slow
def test_smollm2_cola_cell(tmp_path, shared_data):
    """The issue's real-data cell (minutes on two cores): run with `pytest -m slow`."""
    code = main(["run", "model=smollm2-135m-q4", "methods=[lora]", "tasks=[cola]", "scales=[low]",
                 "train.eval_examples=50", "train.test_examples=50", "train.max_epochs=1",
                 "forgetting.tokens=1024",
                 f"data_dir={shared_data}", f"output_dir={tmp_path}", "-q"])
    assert code == 0
    [result_file] = list(tmp_path.glob("*/result.json"))
    result = json.loads(result_file.read_text())
    assert result["status"] == "ok" and result["data"]["train_examples"] == 100
    assert result["data"]["test_examples"] == 50 and -1 <= result["metrics"]["test"]["mcc"] <= 1
    assert result["memory"]["breakdown"]["weights"] > 0 and result["metrics"]["forgetting"] is not None
