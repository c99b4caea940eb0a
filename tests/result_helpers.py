"""A complete ok result for tests that replace training (the sweep's bookkeeping, safety): it follows
peftbench/result.schema.json as a trained run's does, so the suite's schema check holds for them too."""

from __future__ import annotations


def fake_ok_result(run, score: float = 0.5) -> dict:
    """The fields ``recipe.train.run_cell`` returns for ``run`` (``sweep.execute_run`` adds the base ones)."""
    return {
        "status": "ok", "error": None, "seed": run.seed,
        "method": {"name": run.method, "kind": "fine_tuning"},
        "task": {"name": run.task, "type": "classification", "metric": "accuracy", "version": 1},
        "model": {"name": run.model, "source": run.model, "family": "seq2seq", "architecture": "t5",
                  "revision": None, "provenance": None},
        "data": {"train_examples": 1, "validation_examples": 1, "test_examples": 1, "scale": run.scale},
        "versions": {"peftbench": "test", "torch": "test"}, "hardware": {"device": "cpu", "device_map": None},
        "params": {"trainable": 1, "total": 2}, "epochs": 1, "max_epochs": 1, "best_epoch": 1, "history": [],
        "metrics": {"test": {"accuracy": score}, "score": score},
        "time": {"train_s": 0.0, "eval_s": 0.0, "total_s": 0.0}, "throughput": {"train_tokens_per_s": None},
        "memory": {"peak_bytes": None, "kind": None, "scope": None}, "adapter": {"path": None, "bytes": None},
        "speedups": {"setting": "none", "levers": {}},
    }
