"""On CPU, the same config and seed give the same result, field by field (clocks and memory excepted), in
another process too; and a result records what is needed to repeat it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import torch
from task_helpers import tiny_task_yaml

from peftbench.cli import main
from peftbench.running.results import read_result

pytestmark = pytest.mark.integration

# Fields that measure the machine's speed rather than the run: wall-clock times, throughput and its share of
# the measured matrix-product peak, peak memory.
# ``adapter.path`` names the results directory, which differs by construction here.
EXCEPTED = ("time", "throughput.train_tokens_per_s", "throughput.mfu", "hardware.peak", "memory", "history.*.seconds",
            "history.*.val_metric_s",
            "adapter.path")

ROWS = [{"text": f"{word} number {i}", "label": i % 2} for i, word in enumerate(["alpha", "beta", "gamma"] * 4)]
TASK_YAML = tiny_task_yaml("rows.jsonl", "rows.jsonl", "rows.jsonl")


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted paths (list items by index) where ``a`` and ``b`` differ, except the EXCEPTED fields."""
    if any(re.fullmatch(pattern.replace(".", r"\.").replace("*", r"\d+"), path) for pattern in EXCEPTED):
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b), key=str)
                for d in (differences(a.get(key), b.get(key), f"{path}.{key}".lstrip(".")) if key in a and key in b
                          else [f"{path}.{key}".lstrip(".") + " (only in one)"])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}.{i}")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def test_differences_sees_every_field_but_the_excepted_ones():
    a = {"time": {"total_s": 1.0}, "history": [{"seconds": 1.0, "train_loss": 2.0}], "metrics": {"score": 0.5}}
    b = {"time": {"total_s": 9.0}, "history": [{"seconds": 9.0, "train_loss": 2.5}], "metrics": {"score": 0.5},
         "extra": 1}
    assert differences(a, b) == ["extra (only in one)", "history.0.train_loss: 2.0 != 2.5"]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_identical_runs_agree_field_by_field(tmp_path, restore_threads, monkeypatch):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "task.yaml").write_text(TASK_YAML, encoding="utf-8")
    args = ["run", "models=[t5-tiny-random]", "methods=[lora]", f"tasks=[{tmp_path / 'task.yaml'}]",
            "scales=[16]", "seeds=[3]", "train.batch_size=4", "train.grad_accum=1", "train.max_epochs=2",
            "train.patience=5", "train.eval_examples=8", "train.eval_batch_size=4", "train.val_metric_examples=2",
            "train.num_threads=1"]
    env = {**os.environ, "PEFTBENCH_CACHE": str(tmp_path / "cache_b")}
    other = subprocess.run([sys.executable, "-m", "peftbench.cli", *args, f"output_dir={tmp_path / 'b'}", "-q"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache_a"))  # nothing shared with the other process
    assert main([*args, f"output_dir={tmp_path / 'a'}", "-q"]) == 0
    (first_path,) = (tmp_path / "a").glob("*/result.json")
    (second_path,) = (tmp_path / "b").glob("*/result.json")
    assert first_path.parent.name == second_path.parent.name  # the same run id
    first, second = read_result(first_path), read_result(second_path)

    assert first["status"] == "ok"
    assert differences(first, second) == []
    assert len(first["history"]) == 2 and first["history"][0]["train_loss"] > 0  # real loss curves compared
    # What repeating the run takes: code, libraries, machine, seed, the exact data sample.
    assert {"peftbench", "python", "torch", "transformers", "peft", "accelerate", "git_sha",
            "git_dirty"} <= set(first["versions"])
    assert first["versions"]["torch"] == torch.__version__
    assert {"device", "platform", "cpu_count", "torch_threads", "processor"} <= set(first["hardware"])
    assert first["hardware"]["device"] == "cpu" and first["hardware"]["torch_threads"] == 1
    assert first["seed"] == 3 and first["config"]["seed"] == 3
    assert re.fullmatch(r"[0-9a-f]{16}", first["data"]["sample_hash"])
    # The scale asked for 16 examples of a 12-row file: said, and all 12 used.
    assert first["data"]["train_examples"] == 12 and first["data"]["requested_train_examples"] == 16
    assert first["data"]["note"] == "scale 16 asks for 16 training examples; the data has 12, all used"
